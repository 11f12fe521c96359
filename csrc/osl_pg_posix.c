/*
 * osl_pg_posix.c - spawn and signal helpers for POSIX systems.
 *
 * The spawn never uses fork(): copying the page tables of a large parent is
 * what makes fork-based spawning slow, and a forked child of a threaded
 * program may only make async-signal-safe calls anyway. posix_spawn() on
 * glibc and musl creates the child with clone(CLONE_VM|CLONE_VFORK), so the
 * parent's memory is shared, not copied. When posix_spawn cannot express a
 * request on the running libc (chdir, closefrom or setsid unsupported, or a
 * parent-death signal), a vfork() child does the same steps itself, using
 * only async-signal-safe calls, and reports a failure as an errno.
 */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* POSIX_SPAWN_SETSID, close_range */
#endif

#include "osl_pg.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

extern char **environ;

/* Built on glibc >= 2.34, dlsym would bind to dlsym@GLIBC_2.34 (it moved
 * from libdl into libc) and pthread_sigmask to @GLIBC_2.32 (moved from
 * libpthread): a wheel built there would not load on manylinux_2_28's glibc.
 * Every glibc still exports the original versions, so bind to those; the
 * build links libdl without --as-needed so it is loaded where dlsym still
 * lives there (csrc/build_ffi.py). */
#if defined(__GLIBC__) && (defined(__x86_64__) || defined(__aarch64__))
#ifdef __x86_64__
#define OSL_GLIBC_BASE "GLIBC_2.2.5"
#else
#define OSL_GLIBC_BASE "GLIBC_2.17"
#endif
__asm__(".symver dlsym,dlsym@" OSL_GLIBC_BASE);
__asm__(".symver pthread_sigmask,pthread_sigmask@" OSL_GLIBC_BASE);
#endif

/* posix_spawn_file_actions_addchdir_np (glibc 2.29, macOS 10.15, musl 1.1.24)
 * and ..._addclosefrom_np (glibc 2.34) are newer than manylinux_2_28's glibc,
 * so they are looked up at run time: a wheel that linked them directly would
 * not load on an older glibc. */
typedef int (*addchdir_fn)(posix_spawn_file_actions_t *, const char *);
typedef int (*addclosefrom_fn)(posix_spawn_file_actions_t *, int);

static addchdir_fn spawn_addchdir;
static addclosefrom_fn spawn_addclosefrom;
static int features_ready;

static void load_features(void)
{
    if (features_ready)
        return;
    /* A race here is benign: every thread stores the same values. */
    spawn_addchdir = (addchdir_fn)dlsym(RTLD_DEFAULT,
                                        "posix_spawn_file_actions_addchdir_np");
    spawn_addclosefrom = (addclosefrom_fn)dlsym(
        RTLD_DEFAULT, "posix_spawn_file_actions_addclosefrom_np");
    features_ready = 1;
}

int osl_features(void)
{
    int f = 0;
    load_features();
#ifdef POSIX_SPAWN_SETSID
    f |= OSL_FEAT_SPAWN_SETSID;
#endif
    if (spawn_addchdir)
        f |= OSL_FEAT_SPAWN_CHDIR;
    if (spawn_addclosefrom)
        f |= OSL_FEAT_SPAWN_CLOSEFROM;
#if defined(__linux__) && defined(PR_SET_PDEATHSIG)
    f |= OSL_FEAT_PDEATHSIG;
#endif
    return f;
}

/* A sigset_t with every bit set. sigfillset() on glibc leaves out the two
 * signals it uses internally (32 and 33); posix_spawn then leaves those
 * *ignored* in the child, and a program that later installs handlers for
 * them via raw syscalls inherits SIG_IGN. Filling the bytes covers them. */
static void fill_all_signals(sigset_t *set)
{
    memset(set, 0xff, sizeof(*set));
}

static int needs_vfork(const struct osl_spawn_attr *a)
{
    /* posix_spawn has no action that writes to a file, so it cannot put the
     * child in a cgroup before exec (see join_cgroups). */
    if (a->pdeathsig || a->n_cgroups > 0)
        return 1;
    if (a->cwd && !spawn_addchdir)
        return 1;
    if (a->close_fds && !spawn_addclosefrom)
        return 1;
    /* addclosefrom_np closes every fd from n up, with no exceptions, and
     * adddup2(fd, fd) clears FD_CLOEXEC only on newer libcs (glibc 2.29,
     * POSIX 2024): the child makes pass_fds inheritable itself. */
    if (a->n_pass_fds > 0)
        return 1;
#ifndef POSIX_SPAWN_SETSID
    if (a->new_session)
        return 1;
#endif
    return 0;
}

/* ------------------------------------------------------------------ */
/* posix_spawn path                                                    */

static int spawn_posix(const struct osl_spawn_attr *a, pid_t *pid)
{
    posix_spawnattr_t attr;
    posix_spawn_file_actions_t fa;
    sigset_t set;
    short flags = POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK;
    int err, i;

    if ((err = posix_spawnattr_init(&attr)) != 0)
        return err;
    if ((err = posix_spawn_file_actions_init(&fa)) != 0) {
        posix_spawnattr_destroy(&attr);
        return err;
    }

    /* Default dispositions for every signal, an empty mask: Python ignores
     * SIGPIPE and SIGXFSZ, and the child must not inherit that. */
    fill_all_signals(&set);
    if ((err = posix_spawnattr_setsigdefault(&attr, &set)) != 0)
        goto out;
    sigemptyset(&set);
    if ((err = posix_spawnattr_setsigmask(&attr, &set)) != 0)
        goto out;

    if (a->new_session) {
#ifdef POSIX_SPAWN_SETSID
        /* setsid() also makes the child leader of a new group. */
        flags |= POSIX_SPAWN_SETSID;
#endif
    } else if (a->pgroup_mode != OSL_PGROUP_INHERIT) {
        /* The child calls setpgid(0, pgid) itself before exec, so the group
         * is in place before the program runs: no window in which the program
         * could fork a grandchild outside the group. */
        flags |= POSIX_SPAWN_SETPGROUP;
        err = posix_spawnattr_setpgroup(
            &attr, a->pgroup_mode == OSL_PGROUP_NEW ? 0 : (pid_t)a->pgid);
        if (err != 0)
            goto out;
    }
    if ((err = posix_spawnattr_setflags(&attr, flags)) != 0)
        goto out;

    for (i = 0; i < 3; i++) {
        /* The caller guarantees fds[i] != i: dup2() onto itself would not
         * clear FD_CLOEXEC on every libc. */
        if (a->fds[i] != OSL_FD_INHERIT &&
            (err = posix_spawn_file_actions_adddup2(&fa, a->fds[i], i)) != 0)
            goto out;
    }
    if (a->close_fds && (err = spawn_addclosefrom(&fa, 3)) != 0)
        goto out;
    if (a->cwd && (err = spawn_addchdir(&fa, a->cwd)) != 0)
        goto out;

    err = posix_spawn(pid, a->path, &fa, &attr, a->argv,
                      a->envp ? a->envp : environ);
out:
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return err;
}

/* ------------------------------------------------------------------ */
/* vfork fallback                                                      */

struct child_report {
    volatile int err;
    volatile int step;
};

/* Close fds lo..hi (hi < 0: every fd from lo up). */
static void close_range_of(int lo, int hi)
{
#if defined(__linux__) && defined(SYS_close_range)
    /* One syscall instead of a loop over the fd limit. */
    if (syscall(SYS_close_range, (unsigned)lo, hi < 0 ? ~0U : (unsigned)hi,
                0) == 0)
        return;
#endif
    {
        struct rlimit rl;
        long max = 1024, fd;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
            max = (long)rl.rlim_cur;
        if (hi >= 0 && hi < max)
            max = (long)hi + 1;
        for (fd = lo; fd < max; fd++)
            close((int)fd);
    }
}

/* Close every fd >= 3 except the pass_fds, which are sorted: the gaps
 * between them are closed range by range. */
static void close_fds_but(const struct osl_spawn_attr *a)
{
    int lo = 3, i;
    for (i = 0; i < a->n_pass_fds; i++) {
        int keep = a->pass_fds[i];
        if (keep > lo)
            close_range_of(lo, keep - 1);
        if (keep >= lo)
            lo = keep + 1;
    }
    close_range_of(lo, -1);
}

/* Move the calling (vfork child) process into each cgroup: writing "0" to a
 * cgroup.procs file moves the writer, in cgroup v2 and v1 alike. Done before
 * exec, so there is no moment in which the program, or a grandchild it
 * forks, runs outside the cgroups. clone3(CLONE_INTO_CGROUP) would place
 * the child at creation, but only in cgroup v2 (v1 limit hierarchies still
 * need this write), it needs Linux 5.7 and a raw syscall with its own
 * stack; one write() per hierarchy covers every case with one code path.
 * The fds are O_CLOEXEC in the parent: the program never sees them. */
static int join_cgroups(const struct osl_spawn_attr *a)
{
    int i;
    if (a->n_cgroups < 0 || a->n_cgroups > OSL_MAX_CGROUPS) {
        errno = EINVAL;
        return -1;
    }
    for (i = 0; i < a->n_cgroups; i++) {
        ssize_t n;
        do {
            n = write(a->cgroup_procs_fds[i], "0", 1);
        } while (n < 0 && errno == EINTR);
        if (n != 1) {
            if (n >= 0)
                errno = EIO;
            return -1;
        }
    }
    return 0;
}

/* Runs in the vfork child, which shares the parent's memory and whose parent
 * thread is suspended until exec or _exit. Only async-signal-safe calls; the
 * result is written to *report, which the parent reads after vfork returns. */
__attribute__((noinline, noreturn)) static void
vfork_child(const struct osl_spawn_attr *a, pid_t parent,
            struct child_report *report)
{
    struct sigaction dfl, old;
    sigset_t empty;
    int sig, i, step = OSL_STEP_SPAWN;

    /* Reset every handled or ignored signal before unblocking: a parent's
     * Python-level handler must never run in the child. */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, &old) == 0 && old.sa_handler != SIG_DFL)
            sigaction(sig, &dfl, NULL);
    }

    if (a->new_session) {
        step = OSL_STEP_SESSION;
        if (setsid() < 0)
            goto fail;
    } else if (a->pgroup_mode != OSL_PGROUP_INHERIT) {
        step = OSL_STEP_PGROUP;
        if (setpgid(0, a->pgroup_mode == OSL_PGROUP_NEW ? 0 : a->pgid) < 0)
            goto fail;
    }

    /* Before the stdio dup2()s and the closing of fds >= 3, which could
     * overwrite or close the cgroup.procs fds. */
    if (a->n_cgroups) {
        step = OSL_STEP_CGROUP;
        if (join_cgroups(a) < 0)
            goto fail;
    }

#if defined(__linux__) && defined(PR_SET_PDEATHSIG)
    if (a->pdeathsig) {
        step = OSL_STEP_SPAWN;
        if (prctl(PR_SET_PDEATHSIG, (unsigned long)a->pdeathsig) < 0)
            goto fail;
    }
#endif

    sigemptyset(&empty);
    sigprocmask(SIG_SETMASK, &empty, NULL);

#if defined(__linux__) && defined(PR_SET_PDEATHSIG)
    /* The parent may have died before prctl() took effect; the signal would
     * then never come. Our parent changed if so: deliver it ourselves. */
    if (a->pdeathsig && getppid() != parent) {
        /* kill(getpid()), not raise(): in a vfork child some libcs (musl)
         * take raise()'s target tid from the parent thread's TLS. */
        kill(getpid(), a->pdeathsig);
        _exit(128 + a->pdeathsig);
    }
#else
    (void)parent;
#endif

    step = OSL_STEP_SPAWN;
    for (i = 0; i < 3; i++) {
        if (a->fds[i] == OSL_FD_INHERIT)
            continue;
        if (a->fds[i] == i) {
            /* dup2 onto itself is a no-op that keeps FD_CLOEXEC. */
            if (fcntl(i, F_SETFD, 0) < 0)
                goto fail;
        } else if (dup2(a->fds[i], i) < 0) {
            goto fail;
        }
    }
    /* After the dup2()s: a pass_fds fd may also be a stdio source. A pass
     * fd that is not open fails here with EBADF, before exec. */
    step = OSL_STEP_PASS_FDS;
    for (i = 0; i < a->n_pass_fds; i++) {
        if (fcntl(a->pass_fds[i], F_SETFD, 0) < 0)
            goto fail;
    }
    if (a->close_fds)
        close_fds_but(a);

    if (a->cwd) {
        step = OSL_STEP_CHDIR;
        if (chdir(a->cwd) < 0)
            goto fail;
    }

    step = OSL_STEP_EXEC;
    execve(a->path, a->argv, a->envp ? a->envp : environ);
fail:
    report->step = step;
    report->err = errno ? errno : EINVAL;
    _exit(127);
}

static int spawn_vfork(const struct osl_spawn_attr *a, pid_t *pid, int *step)
{
    struct child_report report;
    sigset_t all, old;
    pid_t parent = getpid(), child;
    int status, err;

    report.err = 0;
    report.step = OSL_STEP_NONE;

    /* Block signals so no handler of the parent runs in the child (which
     * shares the parent's memory) before it has reset the dispositions.
     * glibc's pthread_sigmask silently keeps its two internal signals
     * (cancellation, setxid) unblocked; their handlers only run when another
     * thread cancels or changes ids during the spawn, which Python does not. */
    fill_all_signals(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    child = vfork();
    if (child == 0)
        vfork_child(a, parent, &report);
    err = child < 0 ? errno : 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    if (err != 0) {
        *step = OSL_STEP_SPAWN;
        return err;
    }
    if (report.err != 0) {
        /* The child has exited with 127; reap it so no zombie is left. */
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
        *step = report.step;
        return report.err;
    }
    *pid = child;
    return 0;
}

/* close_fds_but() relies on this: ascending, no duplicates, none < 3. */
static int valid_pass_fds(const struct osl_spawn_attr *a)
{
    int i;
    if (a->n_pass_fds < 0 || (a->n_pass_fds > 0 && !a->pass_fds))
        return 0;
    for (i = 0; i < a->n_pass_fds; i++) {
        if (a->pass_fds[i] < 3 || (i > 0 && a->pass_fds[i] <= a->pass_fds[i - 1]))
            return 0;
    }
    return 1;
}

int osl_spawn(const struct osl_spawn_attr *attr, int *pid_out, int *step_out,
              int *used_vfork)
{
    pid_t pid = -1;
    int err;

    load_features();
    *step_out = OSL_STEP_NONE;
    *used_vfork = 0;
    if (!valid_pass_fds(attr)) {
        *step_out = OSL_STEP_PASS_FDS;
        return EINVAL;
    }
    *used_vfork = needs_vfork(attr);
    if (*used_vfork) {
        err = spawn_vfork(attr, &pid, step_out);
    } else {
        err = spawn_posix(attr, &pid);
        /* posix_spawn reports every failure, including exec's, as one errno
         * without naming the step; the caller tells them apart. */
        if (err != 0)
            *step_out = OSL_STEP_SPAWN;
    }
    if (err == 0)
        *pid_out = (int)pid;
    return err;
}

/* ------------------------------------------------------------------ */
/* Thin wrappers: 0 or errno                                           */

int osl_kill(int pid, int sig)
{
    return kill((pid_t)pid, sig) == 0 ? 0 : errno;
}

int osl_killpg(int pgid, int sig)
{
    /* killpg(0 or 1, ...) would mean "my group" or "every process"; the
     * Python layer refuses those before calling, and so do we. */
    if (pgid <= 1)
        return EINVAL;
    return killpg((pid_t)pgid, sig) == 0 ? 0 : errno;
}

int osl_getpgid(int pid, int *pgid_out)
{
    pid_t r = getpgid((pid_t)pid);
    if (r < 0)
        return errno;
    *pgid_out = (int)r;
    return 0;
}

int osl_getsid(int pid, int *sid_out)
{
    pid_t r = getsid((pid_t)pid);
    if (r < 0)
        return errno;
    *sid_out = (int)r;
    return 0;
}

int osl_setpgid(int pid, int pgid)
{
    return setpgid((pid_t)pid, (pid_t)pgid) == 0 ? 0 : errno;
}

int osl_setsid(int *sid_out)
{
    pid_t r = setsid();
    if (r < 0)
        return errno;
    *sid_out = (int)r;
    return 0;
}

int osl_wait(int pid, int flags, int *done, int *status)
{
    siginfo_t info;
    int options = WEXITED;

    if (flags & OSL_WAIT_NOHANG)
        options |= WNOHANG;
    if (flags & OSL_WAIT_NOWAIT)
        options |= WNOWAIT;
    /* waitid() rather than waitpid(): WNOWAIT lets a group handle read the
     * leader's status while keeping it a zombie, which pins its pid (and so
     * the pgid) against reuse. */
    memset(&info, 0, sizeof(info));
    /* EINTR goes back to Python, which runs its signal handlers (Ctrl-C,
     * forwarding) and calls again: looping here would hold them off. */
    if (waitid(P_PID, (id_t)pid, &info, options) < 0)
        return errno;
    /* With WNOHANG and no state change, si_pid stays 0. */
    if (info.si_pid == 0) {
        *done = 0;
        return 0;
    }
    *done = 1;
    *status = info.si_code == CLD_EXITED ? info.si_status : -info.si_status;
    return 0;
}

int osl_set_child_subreaper(int on)
{
#if defined(__linux__) && defined(PR_SET_CHILD_SUBREAPER)
    return prctl(PR_SET_CHILD_SUBREAPER, (unsigned long)(on != 0)) == 0 ? 0
                                                                      : errno;
#else
    (void)on;
    return ENOSYS;
#endif
}

int osl_children_autoreaped(int *out)
{
    struct sigaction sa;
    /* Read with sigaction() rather than trusting Python's view: a C
     * library may have set SA_NOCLDWAIT, which signal.getsignal() cannot
     * show, and which has the same effect as SIG_IGN. */
    if (sigaction(SIGCHLD, NULL, &sa) != 0)
        return errno;
    *out = sa.sa_handler == SIG_IGN || (sa.sa_flags & SA_NOCLDWAIT) != 0;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Benchmark floor                                                     */

/* What ProcessSpawnOperation(path).with_new_process_group() asks for. */
static void bench_attr(struct osl_spawn_attr *a, const char *path,
                       char *argv[2])
{
    memset(a, 0, sizeof(*a));
    argv[0] = (char *)path;
    argv[1] = NULL;
    a->path = path;
    a->argv = argv;
    a->fds[0] = a->fds[1] = a->fds[2] = OSL_FD_INHERIT;
    a->pgroup_mode = OSL_PGROUP_NEW;
}

int osl_bench_spawn_wait(const char *path, int n, long long *elapsed_ns)
{
    struct osl_spawn_attr a;
    struct timespec t0, t1;
    char *argv[2];
    int i, pid, step, vf, done, status, err;

    bench_attr(&a, path, argv);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < n; i++) {
        if ((err = osl_spawn(&a, &pid, &step, &vf)) != 0)
            return err;
        while ((err = osl_wait(pid, 0, &done, &status)) == EINTR)
            ;
        if (err != 0)
            return err;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    *elapsed_ns = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL +
                  (long long)(t1.tv_nsec - t0.tv_nsec);
    return 0;
}

/* One sample per call for `osl-pg bench`: the clock is read here, so no
 * Python runs inside the measured span, and the bench interleaves these
 * samples with the Python contenders'. */

static long long monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + (long long)t.tv_nsec;
}

int osl_bench_spawn(const char *path, int close_fds, long long *call_ns,
                    long long *total_ns)
{
    struct osl_spawn_attr a;
    char *argv[2];
    long long t0, t1;
    int pid, step, vf, done, status, err;

    bench_attr(&a, path, argv);
    a.close_fds = close_fds;

    t0 = monotonic_ns();
    if ((err = osl_spawn(&a, &pid, &step, &vf)) != 0)
        return err;
    t1 = monotonic_ns();
    while ((err = osl_wait(pid, 0, &done, &status)) == EINTR)
        ;
    *call_ns = t1 - t0;
    *total_ns = monotonic_ns() - t0;
    return err;
}

int osl_bench_killpg(int pgid, int sig, long long *elapsed_ns)
{
    long long t0 = monotonic_ns();
    int err = osl_killpg(pgid, sig);
    *elapsed_ns = monotonic_ns() - t0;
    return err;
}

int osl_bench_kill_group(int pgid, long long *elapsed_ns)
{
    long long t0 = monotonic_ns();
    int status;

    if (pgid <= 1)
        return EINVAL;
    if (killpg((pid_t)pgid, SIGKILL) < 0)
        return errno;
    /* waitpid(-pgid) reaps our children in the group. The caller is the
     * child subreaper of every member, so a member whose parent dies is
     * reparented to us before that parent becomes reapable: once no child
     * of ours is left in the group (ECHILD), no member is. Blocking in
     * waitpid wakes exactly at each exit, with no polling interval. */
    for (;;) {
        if (waitpid(-(pid_t)pgid, &status, 0) < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ECHILD)
                break;
            return errno;
        }
    }
    *elapsed_ns = monotonic_ns() - t0;
    return 0;
}
