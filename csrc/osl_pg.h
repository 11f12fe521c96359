/*
 * osl_pg.h - the one portability header of the osl_pg C layer.
 *
 * Every helper returns 0 or a positive error code (errno on POSIX,
 * GetLastError() on Windows); values come back through out-parameters.
 * No helper touches the Python C API: cffi calls them with the GIL released.
 */
#ifndef OSL_PG_H
#define OSL_PG_H

/* What a spawned child's process group becomes. */
#define OSL_PGROUP_INHERIT 0 /* stay in the caller's group */
#define OSL_PGROUP_NEW 1     /* lead a new group whose pgid is its pid */
#define OSL_PGROUP_JOIN 2    /* join the existing group `pgid` */

/* An fd slot value meaning "the child inherits the parent's stdio fd". */
#define OSL_FD_INHERIT (-1)

/* Which step of a spawn failed (reported next to the error code). */
#define OSL_STEP_NONE 0
#define OSL_STEP_SPAWN 1 /* setting up or creating the child */
#define OSL_STEP_PGROUP 2
#define OSL_STEP_SESSION 3
#define OSL_STEP_CHDIR 4
#define OSL_STEP_EXEC 5
#define OSL_STEP_CGROUP 6 /* joining a cgroup (writing "0" to cgroup.procs) */
#define OSL_STEP_PASS_FDS 7 /* making a pass_fds fd inheritable */
#define OSL_STEP_GROUPS 8 /* setgroups(): the supplementary groups */
#define OSL_STEP_GID 9    /* setregid() */
#define OSL_STEP_UID 10   /* setreuid() */
#define OSL_STEP_USERNS 11 /* pid_namespace: clone() of the namespaces, or
                              writing setgroups / uid_map / gid_map */

/* osl_spawn_attr.signal_reset: what the child's signal dispositions start
 * as. Handled signals are reset to default in every mode (exec does that;
 * the vfork child does it before it unblocks signals), and so are the C
 * library's internal signals (glibc's 32 and 33, musl's 32 to 34). */
#define OSL_SIGNALS_RESTORE 0 /* SIGPIPE, SIGXFSZ (and SIGXFZ) to default,
                                 other ignored signals stay ignored:
                                 subprocess's restore_signals=True */
#define OSL_SIGNALS_INHERIT 1 /* every ignored signal stays ignored */
#define OSL_SIGNALS_ALL 2     /* every signal to default */

/* osl_spawn_attr.spawn_path: how the child is created. AUTO is the fastest
 * way that can do what is asked (see needs_vfork in osl_pg_posix.c); the
 * others force one path, for tests and benchmarks. */
#define OSL_SPAWN_AUTO 0
#define OSL_SPAWN_POSIX 1 /* posix_spawn when it can express the request */
#define OSL_SPAWN_VFORK 2 /* always the vfork child */
#define OSL_SPAWN_VFORK_ONLY 3 /* the vfork child, by vfork() even where
                                 clone3 would clear its handlers (tests) */

/* osl_spawn_attr.set_ids bits: which credentials the child changes. */
#define OSL_SET_GROUPS 1 /* setgroups(n_groups, groups) */
#define OSL_SET_GID 2    /* setregid(gid, gid) */
#define OSL_SET_UID 4    /* setreuid(uid, uid) */
#define OSL_SET_UMASK 8  /* umask(umask) */

/* How many cgroups (one per hierarchy: cgroup2, and cgroup v1 pids, memory,
 * cpu) a child can join before exec. */
#define OSL_MAX_CGROUPS 4

#ifndef _WIN32
#include <sys/types.h> /* uid_t, gid_t, mode_t */

struct osl_spawn_attr {
    const char *path;    /* executable, already resolved against PATH */
    char *const *argv;   /* NULL-terminated */
    char *const *envp;   /* NULL-terminated, or NULL for the parent's environ */
    const char *cwd;     /* NULL: the parent's working directory */
    int fds[3];          /* fd that becomes 0/1/2, or OSL_FD_INHERIT */
    int pgroup_mode;     /* OSL_PGROUP_* */
    int pgid;            /* with OSL_PGROUP_JOIN */
    int new_session;     /* setsid(): a session and group leader, no terminal */
    int close_fds;       /* close every fd >= 3 before exec, but pass_fds */
    const int *pass_fds; /* fds >= 3 the child keeps open and inheritable,
                            ascending without duplicates (subprocess's
                            pass_fds); NULL when n_pass_fds is 0 */
    int n_pass_fds;
    int pdeathsig;       /* Linux: signal sent to the child when the spawning
                            thread dies; 0 for none */
    int n_cgroups;       /* Linux: how many cgroup_procs_fds the child joins */
    int cgroup_procs_fds[OSL_MAX_CGROUPS]; /* open cgroup.procs files; the
                            child writes "0" to each before exec, so it and
                            everything it starts are inside from the start */
    int signal_reset;    /* OSL_SIGNALS_* */
    int spawn_path;      /* OSL_SPAWN_* (0, AUTO, when zero-initialised) */
    int set_ids;         /* OSL_SET_* bits; any of them takes the vfork path
                            (posix_spawn has no action for these) */
    uid_t uid;
    gid_t gid;
    const gid_t *groups; /* n_groups supplementary groups (may be NULL when
                            n_groups is 0: drop them all) */
    int n_groups;
    mode_t umask;
};

/* Feature bits reported by osl_features(). */
#define OSL_FEAT_SPAWN_SETSID 1     /* posix_spawn can setsid() */
#define OSL_FEAT_SPAWN_CHDIR 2      /* posix_spawn can chdir() */
#define OSL_FEAT_SPAWN_CLOSEFROM 4  /* posix_spawn can close fds >= n */
#define OSL_FEAT_PDEATHSIG 8        /* prctl(PR_SET_PDEATHSIG) exists */

int osl_features(void);

/* Spawn a child without fork(). On success *pid_out is the child's pid and
 * 0 is returned; else the errno, and *step_out says which step failed.
 * *used_vfork says how (for tests and benchmarks): 0 posix_spawn, 1 the
 * vfork child by vfork(), 2 the vfork child by clone3 with its signal
 * handlers cleared by the kernel (Linux 5.5 on x86-64). */
int osl_spawn(const struct osl_spawn_attr *attr, int *pid_out, int *step_out,
              int *used_vfork);

/* The "pid_namespace" tier (Linux): spawn `attr` (whose path and argv
 * name csrc/osl_pg_init.c's program and its arguments) as pid 1 of a new
 * user namespace, in which the caller's effective uid and gid are mapped
 * to themselves and setgroups() is denied, and a new PID namespace. The
 * rest of `attr` applies as in osl_spawn() (the child is always the vfork
 * kind). ENOSYS where there are no namespaces; EPERM, ENOSPC or EUSERS
 * when they are refused here (OSL_STEP_USERNS). */
int osl_spawn_pidns(const struct osl_spawn_attr *attr, int *pid_out,
                    int *step_out);

/* What the init writes to its status fd: one record per write(). */
struct osl_init_record {
    int kind;  /* OSL_INIT_STARTED, _EXEC_FAILED, _EXITED, _STOPPED */
    int value; /* EXEC_FAILED: errno; EXITED: exit code, or -signal */
};
#define OSL_INIT_STARTED 1
#define OSL_INIT_EXEC_FAILED 2
#define OSL_INIT_EXITED 3
#define OSL_INIT_STOPPED 4 /* value: the stop signal */
/* The init's own exit codes when it wrote no EXITED record. */
#define OSL_INIT_USAGE 120        /* bad arguments */
#define OSL_INIT_SETUP_FAILED 121 /* fcntl() or signalfd() failed (EXEC_FAILED sent) */
#define OSL_INIT_PARENT_GONE 122  /* the status pipe's reader is gone */

int osl_kill(int pid, int sig);
int osl_killpg(int pgid, int sig);
int osl_getpgid(int pid, int *pgid_out);
int osl_getsid(int pid, int *sid_out);
int osl_setpgid(int pid, int pgid);
int osl_setsid(int *sid_out);

/* waitid() on one child. `flags` are OSL_WAIT_*. Returns 0 and sets
 * *done to 1 with the status when the child has exited, or *done to 0 when
 * OSL_WAIT_NOHANG was given and it is still running. The status is
 * *exit_code (>= 0) for a normal exit or -signal for a death by signal. */
#define OSL_WAIT_NOHANG 1
#define OSL_WAIT_NOWAIT 2 /* leave the child a zombie: it stays reapable */
int osl_wait(int pid, int flags, int *done, int *status);

/* Mark the calling process a child subreaper (Linux), or clear it. */
int osl_set_child_subreaper(int on);

/* *out = 1 when the kernel reaps this process's children by itself
 * (SIGCHLD ignored, or SA_NOCLDWAIT): their exit statuses are lost and a
 * child's pid is free the moment it exits. */
int osl_children_autoreaped(int *out);

/* The C floor for benchmarks: spawn `path` in a new group and wait for it,
 * `n` times, with no Python in the loop. *elapsed_ns is the total time. */
int osl_bench_spawn_wait(const char *path, int n, long long *elapsed_ns);

/* Single samples for `osl-pg bench`, timed in C. osl_bench_spawn: spawn
 * `path` as a new group's leader (closing fds >= 3 if asked) and wait for it;
 * *call_ns covers osl_spawn() alone, *total_ns the spawn and the wait.
 * osl_bench_killpg: one osl_killpg(). osl_bench_kill_group: SIGKILL group
 * `pgid` and reap until no member is left; every member must be a
 * descendant of the caller, which must be their child subreaper. */
int osl_bench_spawn(const char *path, int close_fds, long long *call_ns,
                    long long *total_ns);
int osl_bench_killpg(int pgid, int sig, long long *elapsed_ns);
int osl_bench_kill_group(int pgid, long long *elapsed_ns);

#endif /* !_WIN32 */

#ifdef _WIN32
/*
 * Windows: Job Objects instead of process groups. The prototypes use plain C
 * types so that this block pastes into a cffi cdef (csrc/cdef_windows.h):
 * `void *` is a HANDLE, `unsigned long` a DWORD (32 bits on Windows),
 * `wchar_t` is UTF-16. Every helper returns 0 or a GetLastError() code.
 */
#include <stddef.h> /* size_t, wchar_t */

/* A job: the Job Object plus the I/O completion port that reports when it
 * empties. Opaque; osl_job_close() frees it. */
typedef struct osl_job osl_job;

/* osl_job_create() flags. */
#define OSL_JOB_KILL_ON_CLOSE 1 /* closing the job kills every member */
#define OSL_JOB_NO_PORT 2       /* no completion port: wait_empty polls */

/* osl_win_spawn_attr.flags. */
#define OSL_WIN_NEW_GROUP 1      /* CREATE_NEW_PROCESS_GROUP: a ctrl group */
#define OSL_WIN_DETACHED 2       /* DETACHED_PROCESS: no console */
#define OSL_WIN_FORCE_SUSPEND 4  /* skip PROC_THREAD_ATTRIBUTE_JOB_LIST and
                                    use CREATE_SUSPENDED + assign (tests) */

/* osl_win_ctrl_event() events (CTRL_C_EVENT, CTRL_BREAK_EVENT). */
#define OSL_WIN_CTRL_C 0
#define OSL_WIN_CTRL_BREAK 1

/* Timeouts are in milliseconds; this one never ends (INFINITE). */
#define OSL_WIN_INFINITE 0xFFFFFFFF
/* Returned by the waits on timeout (WAIT_TIMEOUT). */
#define OSL_WIN_WAIT_TIMEOUT 258
/* Returned by osl_job_pids() when the out array was too small. */
#define OSL_WIN_MORE_DATA 234
/* osl_win_exit_code() of a process that still runs (STILL_ACTIVE). */
#define OSL_WIN_STILL_ACTIVE 259

struct osl_win_spawn_attr {
    const wchar_t *application; /* full path of the executable, or NULL:
                                   CreateProcessW's search for the first
                                   token of command_line */
    const wchar_t *command_line;/* whole command line, already quoted */
    const wchar_t *environment; /* UTF-16 block "K=V\0...\0\0", or NULL for
                                   the parent's environment */
    const wchar_t *cwd;         /* NULL: the parent's working directory */
    void *std_handles[3];       /* stdin/stdout/stderr; NULL: the parent's.
                                   Need not be inheritable: the child gets
                                   duplicates of these and no other handle */
    unsigned long flags;        /* OSL_WIN_* */
    osl_job *job;               /* job the child starts in, or NULL */
};

int osl_job_create(unsigned long flags, osl_job **job_out);
/* Close the job and free it. With OSL_JOB_KILL_ON_CLOSE that kills the
 * members, without waiting for them (use terminate + wait_empty first to
 * know they are gone). No other call may use `job` meanwhile. */
int osl_job_close(osl_job *job);
/* The Job Object HANDLE, still owned by `job`. */
int osl_job_handle(osl_job *job, void **handle_out);
int osl_job_assign(osl_job *job, void *process);
int osl_job_terminate(osl_job *job, unsigned long exit_code);
/* Member pids. Writes up to `capacity` pids to `pids` (may be NULL when
 * capacity is 0) and the number of members to *count_out. Returns 0 when
 * all fitted, OSL_WIN_MORE_DATA when *count_out > capacity: grow the array
 * to *count_out (plus slack: the job may grow) and call again. */
int osl_job_pids(osl_job *job, unsigned long *pids, unsigned long capacity,
                 unsigned long *count_out);
/* Processes running now, ever assigned, and ended by a limit or terminate
 * (the last stays 0 under Wine 8). Out pointers may be NULL. */
int osl_job_accounting(osl_job *job, unsigned long *active_out,
                       unsigned long *total_out,
                       unsigned long *terminated_out);
/* Replace the job's limits: at most `active_processes` members at once and
 * `job_memory` bytes committed by all of them (0: no such limit).
 * OSL_JOB_KILL_ON_CLOSE stays set when the job was created with it.
 * Wine 8 accepts but enforces neither limit. */
int osl_job_set_limits(osl_job *job, unsigned long active_processes,
                       size_t job_memory);
/* 0 once the job has no running member, OSL_WIN_WAIT_TIMEOUT after
 * `timeout_ms`. Wakes on the completion port's ACTIVE_PROCESS_ZERO (polls
 * the accounting with OSL_JOB_NO_PORT); several threads may wait at once. */
int osl_job_wait_empty(osl_job *job, unsigned long timeout_ms);

/* CreateProcessW. *process_out is the process HANDLE (close it with
 * osl_win_close_handle); *used_fallback is 1 when the child was put in the
 * job by CREATE_SUSPENDED + AssignProcessToJobObject instead of at creation. */
int osl_win_spawn(const struct osl_win_spawn_attr *attr,
                  unsigned long *pid_out, void **process_out,
                  int *used_fallback);
/* 0 when `process` has ended, OSL_WIN_WAIT_TIMEOUT after `timeout_ms`. */
int osl_win_wait(void *process, unsigned long timeout_ms);
/* The exit code, or OSL_WIN_STILL_ACTIVE while it runs. */
int osl_win_exit_code(void *process, unsigned long *code_out);
int osl_win_close_handle(void *handle);
/* GenerateConsoleCtrlEvent(event, pgid): pgid is the pid of a child started
 * with OSL_WIN_NEW_GROUP that shares the caller's console. */
int osl_win_ctrl_event(unsigned long event, unsigned long pgid);

#endif /* _WIN32 */

#endif /* OSL_PG_H */
