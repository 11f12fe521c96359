/*
 * osl_pg_posix.c - spawn and signal helpers for POSIX systems.
 *
 * The spawn never uses fork(): copying the page tables of a large parent is
 * what makes fork-based spawning slow, and a forked child of a threaded
 * program may only make async-signal-safe calls anyway. Two paths share the
 * parent's memory instead: a vfork() child that does every step itself,
 * using only async-signal-safe calls, and reports a failure as an errno
 * (the default on Linux, where it is the faster: see needs_vfork), and
 * posix_spawn(), elsewhere, when it can express the request on the running
 * libc (it has no action for a parent-death signal, a cgroup, or a change
 * of user, groups or umask, and older libcs none for chdir, closefrom or
 * setsid).
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
#include <sys/stat.h> /* umask() */
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <sched.h> /* clone() */
#include <stdio.h> /* snprintf() of the id maps, in the parent */
#include <stdint.h> /* uintptr_t */
#include <stdlib.h> /* malloc() of the clone child's stack, in the parent */
#include <sys/prctl.h>
#include <sys/syscall.h>
#else
#include <grp.h> /* setgroups() */
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

/* macOS: POSIX_SPAWN_CLOEXEC_DEFAULT closes every fd the file actions do not
 * name, which is close_fds without a vfork child. */
#ifdef POSIX_SPAWN_CLOEXEC_DEFAULT
#define HAVE_CLOEXEC_DEFAULT 1
#else
#define HAVE_CLOEXEC_DEFAULT 0
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
    if (spawn_addclosefrom || HAVE_CLOEXEC_DEFAULT)
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

/* The signals subprocess's restore_signals=True puts back to default:
 * Python ignores SIGPIPE and SIGXFSZ, and the child must not. */
static int restored_signal(int sig)
{
#ifdef SIGXFZ
    if (sig == SIGXFZ)
        return 1;
#endif
    return sig == SIGPIPE || sig == SIGXFSZ;
}

/* Whether the child keeps `sig` ignored when the parent ignores it. */
static int keeps_ignored(int sig, int mode)
{
    if (mode == OSL_SIGNALS_ALL)
        return 0;
    return !(mode == OSL_SIGNALS_RESTORE && restored_signal(sig));
}

/* posix_spawn's sigdefault set for `mode`: the signals the child must not
 * keep ignored. posix_spawn resets every *handled* signal by itself (glibc
 * and musl in the child, macOS in exec), so only ignored ones matter. Made
 * from a full set minus the signals to keep: sigdelset() refuses the C
 * library's internal signals (glibc's 32 and 33, musl's 32 to 34), which
 * therefore stay in the set, so posix_spawn resets them too instead of
 * leaving them ignored (see fill_all_signals). */
static void default_signals(int mode, sigset_t *set)
{
    int sig;
    fill_all_signals(set);
    for (sig = 1; sig < NSIG; sig++) {
        if (keeps_ignored(sig, mode))
            sigdelset(set, sig);
    }
}

static int needs_vfork(const struct osl_spawn_attr *a)
{
    if (a->spawn_path == OSL_SPAWN_VFORK || a->spawn_path == OSL_SPAWN_VFORK_ONLY)
        return 1;
#ifdef __linux__
    /* Linux: the vfork child by default. glibc's posix_spawn child makes
     * two sigaction() calls per signal (a read, then SIG_DFL even where it
     * already is: ~120 syscalls, where ours reads each once and resets only
     * what is handled or must not stay ignored), mmaps and unmaps a stack
     * per spawn, and calls getrlimit() per file action. Measured on glibc
     * 2.36, the spawn call until exec (the parent is suspended meanwhile),
     * minimum of 2000 interleaved, with a 1 MB and a 40 MB parent alike:
     * 76 us with posix_spawn, 57 us with vfork. CPython's _posixsubprocess
     * prefers vfork too. */
    if (a->spawn_path == OSL_SPAWN_AUTO)
        return 1;
#endif
    /* posix_spawn has no action that writes to a file, so it cannot put the
     * child in a cgroup before exec (see join_cgroups). */
    if (a->pdeathsig || a->n_cgroups > 0)
        return 1;
    /* posix_spawn has no action that changes the user, groups or umask. */
    if (a->set_ids)
        return 1;
    if (a->cwd && !spawn_addchdir)
        return 1;
    if (a->close_fds && !spawn_addclosefrom && !HAVE_CLOEXEC_DEFAULT)
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

    /* The dispositions a->signal_reset asks for, an empty mask. */
    default_signals(a->signal_reset, &set);
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

    for (i = 0; i < 3; i++) {
        /* The caller guarantees fds[i] != i: dup2() onto itself would not
         * clear FD_CLOEXEC on every libc. */
        if (a->fds[i] != OSL_FD_INHERIT &&
            (err = posix_spawn_file_actions_adddup2(&fa, a->fds[i], i)) != 0)
            goto out;
    }
#if HAVE_CLOEXEC_DEFAULT
    if (a->close_fds) {
        /* Every fd not named by a file action is closed: name the stdio
         * fds the child inherits as they are (those that are open). */
        flags |= POSIX_SPAWN_CLOEXEC_DEFAULT;
        for (i = 0; i < 3; i++) {
            if (a->fds[i] == OSL_FD_INHERIT && fcntl(i, F_GETFD) != -1 &&
                (err = posix_spawn_file_actions_addinherit_np(&fa, i)) != 0)
                goto out;
        }
    }
#else
    if (a->close_fds && (err = spawn_addclosefrom(&fa, 3)) != 0)
        goto out;
#endif
    if (a->cwd && (err = spawn_addchdir(&fa, a->cwd)) != 0)
        goto out;

    /* Last: the file actions above may add flags. */
    if ((err = posix_spawnattr_setflags(&attr, flags)) != 0)
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

/* Whether `fd` is one of the n sorted fds in `keep`. */
static int is_kept(int fd, const int *keep, int n)
{
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        if (keep[mid] == fd)
            return 1;
        if (keep[mid] < fd)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return 0;
}

#if defined(__linux__) && defined(SYS_close_range)
/* close_range() (Linux 5.9) on each gap between the sorted pass_fds: one
 * syscall per gap. -1 when the kernel lacks it (ENOSYS) or a seccomp
 * filter refuses it. */
static int close_gaps(int lo, const int *keep, int n)
{
    int i;
    for (i = 0; i < n; i++) {
        if (keep[i] > lo &&
            syscall(SYS_close_range, (unsigned)lo, (unsigned)keep[i] - 1, 0) != 0)
            return -1;
        if (keep[i] >= lo)
            lo = keep[i] + 1;
    }
    return syscall(SYS_close_range, (unsigned)lo, ~0U, 0) == 0 ? 0 : -1;
}
#endif

#if defined(__linux__) && defined(SYS_getdents64)
/* The record getdents64 fills in; glibc < 2.30 declares none. */
struct osl_dirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* Close every fd >= lo that /proc/self/fd lists, but `keep`. This reaches
 * fds above RLIMIT_NOFILE (opened before the limit was lowered), which a
 * loop up to the limit misses. opendir()/readdir() allocate, which the vfork
 * child must not do (it shares the parent's heap and maybe its malloc
 * locks), so the directory is read with the raw getdents64 syscall into a
 * buffer on the stack, as CPython's _posixsubprocess does. Closing entries
 * while reading is safe: /proc/self/fd positions are fd numbers. -1 when
 * the listing cannot be read (no /proc, no free fd to open it with). */
static int close_listed(int lo, const int *keep, int n)
{
    union {
        struct osl_dirent64 align; /* entries are 8-byte aligned */
        char bytes[2048];
    } buf;
    long got = 0;
    int dir;

    do {
        dir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } while (dir < 0 && errno == EINTR);
    if (dir < 0)
        return -1;
    while ((got = syscall(SYS_getdents64, dir, buf.bytes, sizeof(buf))) > 0) {
        long off = 0;
        while (off < got) {
            const struct osl_dirent64 *e =
                (const struct osl_dirent64 *)(void *)(buf.bytes + off);
            const char *c = e->d_name;
            long fd = 0;
            off += e->d_reclen;
            if (*c < '0' || *c > '9')
                continue; /* "." and ".." */
            for (; *c >= '0' && *c <= '9' && fd <= 0x7fffffffL; c++)
                fd = fd * 10 + (*c - '0');
            if (fd >= lo && fd <= 0x7fffffffL && fd != dir &&
                !is_kept((int)fd, keep, n))
                close((int)fd);
        }
    }
    close(dir);
    return got < 0 ? -1 : 0;
}
#endif

/* Close every fd >= 3 except the pass_fds, which are sorted. close_range
 * first, else the /proc/self/fd listing, and only as a last resort a loop up
 * to the fd limit (which misses fds opened above a since lowered limit). */
static void close_fds_but(const struct osl_spawn_attr *a)
{
    const int *keep = a->pass_fds;
    int n = a->n_pass_fds;
    struct rlimit rl;
    long max = 1024, fd;

#if defined(__linux__) && defined(SYS_close_range)
    if (close_gaps(3, keep, n) == 0)
        return;
#endif
#if defined(__linux__) && defined(SYS_getdents64)
    if (close_listed(3, keep, n) == 0)
        return;
#endif
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        max = (long)rl.rlim_cur;
    if (n > 0 && keep[n - 1] >= max)
        max = (long)keep[n - 1] + 1;
    for (fd = 3; fd < max; fd++) {
        if (!is_kept((int)fd, keep, n))
            close((int)fd);
    }
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

#if defined(__linux__) && defined(SYS_rt_sigaction)
/* SIG_DFL for a signal the C library's sigaction() refuses (its internal
 * ones: glibc's 32 and 33, musl's 32 to 34), through the raw syscall. If
 * this process inherited them ignored (as every child of a glibc
 * posix_spawn that did not list them in its sigdefault set does), exec
 * would keep them ignored. A zeroed kernel sigaction is SIG_DFL with no
 * flags and an empty mask on every architecture, whatever its field order
 * (SIG_DFL is 0); the kernel's sigset size is NSIG / 8 bytes. */
static void default_internal_signal(int sig)
{
    unsigned long ksa[8];
    memset(ksa, 0, sizeof(ksa));
    syscall(SYS_rt_sigaction, sig, ksa, NULL, (size_t)(NSIG / 8));
}
#endif

/* The vfork child's signal dispositions, before it unblocks signals:
 * every handled signal back to default (a parent's handler, a Python one
 * included, must never run in the child), the ignored ones as `mode` says
 * (keeps_ignored), the C library's internal ones to default. */
static void reset_child_signals(int mode)
{
    struct sigaction dfl, old;
    int sig;

    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (sigaction(sig, NULL, &old) != 0) {
#if defined(__linux__) && defined(SYS_rt_sigaction)
            default_internal_signal(sig);
#endif
            continue;
        }
        if (old.sa_handler == SIG_DFL ||
            (old.sa_handler == SIG_IGN && keeps_ignored(sig, mode)))
            continue;
        sigaction(sig, &dfl, NULL);
    }
}

/* reset_child_signals() for a child whose handlers the kernel has already
 * put back to SIG_DFL (clone3's CLONE_CLEAR_SIGHAND; ignored signals stay
 * ignored): what is left is the ignored signals `mode` must not keep, set
 * without reading them first, and the internal ones. Four syscalls in the
 * usual mode instead of one or two per signal (66 here, ~0.24 us each on
 * this mitigated x86-64 VM: ~15 us of every spawn). */
static void reset_cleared_signals(int mode)
{
    struct sigaction dfl;
    int sig;

    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    for (sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP || keeps_ignored(sig, mode))
            continue;
        if (sigaction(sig, &dfl, NULL) != 0) {
#if defined(__linux__) && defined(SYS_rt_sigaction)
            default_internal_signal(sig);
#endif
        }
    }
#if defined(__linux__) && defined(SYS_rt_sigaction)
    if (mode != OSL_SIGNALS_ALL) { /* ALL did them above */
        for (sig = 32; sig < SIGRTMIN; sig++)
            default_internal_signal(sig);
    }
#endif
}

/* setgroups(), setregid() and setreuid() in the vfork child. On Linux they
 * are raw syscalls: credentials are per thread in the kernel, and glibc's
 * and musl's wrappers make them per process by signalling every other
 * thread of the library's thread list and waiting for each (glibc's
 * SIGSETXID, musl's __synccall). That list is the parent's, in memory the
 * vfork child shares: the wrappers would signal threads the child does not
 * have and wait on locks the parent may hold (CPython avoids vfork here for
 * this reason, see bpo-35823). The child has one thread, so the syscall
 * alone is the whole change. 32-bit x86 and arm name the calls that take
 * 32-bit ids *32. Elsewhere credentials are per process and the libc calls
 * are plain syscalls.
 * Running with other credentials in memory shared with the parent until
 * exec is safe from the new user: a credential change makes the kernel mark
 * the memory non-dumpable, so that user can neither ptrace the child nor
 * read its /proc/<pid>/mem. The flag lives on the shared mm, so the parent
 * restores its own after the vfork (spawn_vfork). */
#ifdef __linux__
#ifdef SYS_setreuid32
#define OSL_SYS_SETGROUPS SYS_setgroups32
#define OSL_SYS_SETREGID SYS_setregid32
#define OSL_SYS_SETREUID SYS_setreuid32
#else
#define OSL_SYS_SETGROUPS SYS_setgroups
#define OSL_SYS_SETREGID SYS_setregid
#define OSL_SYS_SETREUID SYS_setreuid
#endif
#endif

static int child_set_groups(const struct osl_spawn_attr *a)
{
#ifdef __linux__
    return (int)syscall(OSL_SYS_SETGROUPS, (unsigned long)a->n_groups,
                        a->groups);
#else
    return setgroups(a->n_groups, a->groups);
#endif
}

static int child_set_gid(gid_t gid)
{
#ifdef __linux__
    return (int)syscall(OSL_SYS_SETREGID, (unsigned long)gid,
                        (unsigned long)gid);
#else
    return setregid(gid, gid);
#endif
}

static int child_set_uid(uid_t uid)
{
#ifdef __linux__
    return (int)syscall(OSL_SYS_SETREUID, (unsigned long)uid,
                        (unsigned long)uid);
#else
    return setreuid(uid, uid);
#endif
}

/* umask, then groups, gid and uid in the order subprocess uses: the
 * groups and the gid need privilege that setting the uid gives up. Real
 * and effective ids both change (as subprocess's setregid/setreuid), and
 * with them the saved ones, so the program cannot switch back. */
static int child_set_ids(const struct osl_spawn_attr *a, int *step)
{
    if (a->set_ids & OSL_SET_UMASK)
        umask(a->umask); /* always succeeds */
    if (a->set_ids & OSL_SET_GROUPS) {
        *step = OSL_STEP_GROUPS;
        if (child_set_groups(a) < 0)
            return -1;
    }
    if (a->set_ids & OSL_SET_GID) {
        *step = OSL_STEP_GID;
        if (child_set_gid(a->gid) < 0)
            return -1;
    }
    if (a->set_ids & OSL_SET_UID) {
        *step = OSL_STEP_UID;
        if (child_set_uid(a->uid) < 0)
            return -1;
    }
    return 0;
}

/* Runs in the vfork child, which shares the parent's memory and whose parent
 * thread is suspended until exec or _exit. Only async-signal-safe calls; the
 * result is written to *report, which the parent reads after vfork returns. */
__attribute__((noinline, noreturn)) static void
vfork_child(const struct osl_spawn_attr *a, pid_t parent,
            struct child_report *report, int cleared)
{
    sigset_t empty;
    int i, step = OSL_STEP_SPAWN;

    if (cleared)
        reset_cleared_signals(a->signal_reset);
    else
        reset_child_signals(a->signal_reset);

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
     * overwrite or close the cgroup.procs fds, and before giving up
     * privileges (the write is checked against the writer). */
    if (a->n_cgroups) {
        step = OSL_STEP_CGROUP;
        if (join_cgroups(a) < 0)
            goto fail;
    }

    /* Before the uid changes, as subprocess does: a working directory only
     * the caller may enter still works, and fails as it does there. */
    if (a->cwd) {
        step = OSL_STEP_CHDIR;
        if (chdir(a->cwd) < 0)
            goto fail;
    }

    if (a->set_ids && child_set_ids(a, &step) < 0)
        goto fail;

#if defined(__linux__) && defined(PR_SET_PDEATHSIG)
    /* After the credentials: changing them clears the parent-death
     * signal (prctl(2)). */
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

    step = OSL_STEP_EXEC;
    execve(a->path, a->argv, a->envp ? a->envp : environ);
fail:
    report->step = step;
    report->err = errno ? errno : EINVAL;
    _exit(127);
}

#ifdef __linux__
/* The stack of a clone child (clone3's below, the pid_namespace one's).
 * With CLONE_VM it cannot use ours (the call must return in the parent on
 * a stack the child has not written), and with CLONE_VFORK we are
 * suspended until it execs, so one allocation per spawn, freed after, is
 * all it needs; vfork_child's largest frame is close_listed's 2 KiB
 * buffer. */
#define CHILD_STACK_SIZE (64 * 1024)
#endif

/* After vfork() or clone() has returned in the parent (the child has
 * exec'd or exited): `err` is its errno (the spawn failed at
 * `spawn_step`), or the child's report says which step failed; then the
 * child has exited with 127 and is reaped so no zombie is left. */
static int spawn_outcome(pid_t child, int err, int spawn_step,
                         const struct child_report *report, pid_t *pid,
                         int *step)
{
    int status;

    if (err != 0) {
        *step = spawn_step;
        return err;
    }
    if (report->err != 0) {
        while (waitpid(child, &status, 0) < 0 && errno == EINTR)
            ;
        *step = report->step;
        return report->err;
    }
    *pid = child;
    return 0;
}

#if defined(__linux__) && defined(__x86_64__) && defined(SYS_rt_sigaction)
/* ------------------------------------------------------------------ */
/* clone3(CLONE_VM | CLONE_VFORK | CLONE_CLEAR_SIGHAND)                */

/* vfork() with the child's signal handlers reset by the kernel (Linux
 * 5.5): the child then skips reading and resetting every signal, and the
 * parent blocking and unblocking them around the spawn, since no handler
 * of ours can run in a child that never had one. On this machine that is
 * ~66 of the spawn's ~75 syscalls before exec. Defined here rather than
 * taken from the headers: wheels are built against old kernel headers. */
#define OSL_CLONE3 1
#define OSL_SYS_clone3 435
#define OSL_CLONE_CLEAR_SIGHAND 0x100000000ULL
#define NO_CLONE3 (-2)

struct osl_clone_args { /* struct clone_args, CLONE_ARGS_SIZE_VER0 */
    unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal,
        stack, stack_size, tls;
};

/* Set once clone3 was refused (a kernel before 5.5, or a seccomp filter
 * that answers clone3 with ENOSYS, as container runtimes' default profiles
 * do so that the C library falls back to clone): vfork() from then on. */
static int clone3_refused;

/* The raw syscall, with the child's first steps in the same asm: the child
 * starts on its own stack right after the syscall instruction, where no
 * compiled code of ours could run (it would return into a frame that is
 * not there), so it calls fn(arg) from here, which never returns. Every
 * register but rax, rcx and r11 is the parent's in the child too, so fn and
 * arg arrive intact; %rbp is zeroed to end frame-pointer walks there. Only
 * on x86-64, the one architecture this is tested on; elsewhere vfork(). */
static long clone3_call(struct osl_clone_args *ca, void (*fn)(void *),
                        void *arg)
{
    long ret;
    __asm__ volatile("syscall\n\t"
                     "testq %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xorl %%ebp, %%ebp\n\t"
                     "movq %[arg], %%rdi\n\t"
                     "callq *%[fn]\n\t"
                     "ud2\n"
                     "1:"
                     : "=a"(ret)
                     : "0"((long)OSL_SYS_clone3), "D"(ca), "S"(sizeof(*ca)),
                       [fn] "r"(fn), [arg] "r"(arg)
                     : "rcx", "r11", "memory", "cc");
    return ret;
}

struct cleared_child_args {
    const struct osl_spawn_attr *attr;
    pid_t parent;
    struct child_report *report;
};

__attribute__((noreturn)) static void cleared_child(void *arg)
{
    struct cleared_child_args *c = (struct cleared_child_args *)arg;
    vfork_child(c->attr, c->parent, c->report, 1);
}

/* The child's pid, -1 with *err set, or NO_CLONE3: use vfork(). */
static pid_t spawn_cleared(const struct osl_spawn_attr *a, pid_t parent,
                           struct child_report *report, int *err)
{
    struct osl_clone_args ca;
    struct cleared_child_args c;
    char *stack;
    long ret;

    if (clone3_refused || a->spawn_path == OSL_SPAWN_VFORK_ONLY)
        return NO_CLONE3;
    if ((stack = malloc(CHILD_STACK_SIZE)) == NULL)
        return NO_CLONE3;
    memset(&ca, 0, sizeof(ca));
    ca.flags = CLONE_VM | CLONE_VFORK | OSL_CLONE_CLEAR_SIGHAND;
    ca.exit_signal = SIGCHLD;
    ca.stack = (unsigned long long)(uintptr_t)stack;
    ca.stack_size = CHILD_STACK_SIZE;
    c.attr = a;
    c.parent = parent;
    c.report = report;
    ret = clone3_call(&ca, cleared_child, &c);
    free(stack);
    if (ret == -ENOSYS || ret == -EINVAL || ret == -EPERM) {
        clone3_refused = 1;
        return NO_CLONE3;
    }
    if (ret < 0) {
        *err = (int)-ret;
        return -1;
    }
    *err = 0;
    return (pid_t)ret;
}
#endif

static int spawn_vfork(const struct osl_spawn_attr *a, pid_t *pid, int *step,
                       int *how)
{
    struct child_report report;
    sigset_t all, old;
    pid_t parent = getpid(), child;
    int err;
#if defined(__linux__) && defined(PR_GET_DUMPABLE)
    int dumpable;
#endif

    report.err = 0;
    report.step = OSL_STEP_NONE;

    /* Block signals so no handler of the parent runs in the child (which
     * shares the parent's memory) before it has reset the dispositions.
     * glibc's pthread_sigmask silently keeps its two internal signals
     * (cancellation, setxid) unblocked; their handlers only run when another
     * thread cancels or changes ids during the spawn, which Python does not. */
#if defined(__linux__) && defined(PR_GET_DUMPABLE)
    /* A credential change in the child marks the memory it shares with
     * us non-dumpable (the kernel keeps that flag on the mm, see
     * child_set_ids): put ours back once the child has exec'd or exited. */
    dumpable = a->set_ids ? prctl(PR_GET_DUMPABLE) : -1;
#endif
#ifdef OSL_CLONE3
    child = spawn_cleared(a, parent, &report, &err);
    *how = child == NO_CLONE3 ? 1 : 2;
    if (child == NO_CLONE3)
#else
    *how = 1;
#endif
    {
        fill_all_signals(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        child = vfork();
        if (child == 0)
            vfork_child(a, parent, &report, 0);
        err = child < 0 ? errno : 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
#if defined(__linux__) && defined(PR_GET_DUMPABLE)
    if (dumpable > 0 && prctl(PR_GET_DUMPABLE) != dumpable)
        prctl(PR_SET_DUMPABLE, (unsigned long)dumpable);
#endif

    return spawn_outcome(child, err, OSL_STEP_SPAWN, &report, pid, step);
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

#if defined(__linux__) && defined(CLONE_NEWUSER) && defined(CLONE_NEWPID)
/* ------------------------------------------------------------------ */
/* pid_namespace: the vfork child, in new user and PID namespaces      */

struct pidns_child_args {
    const struct osl_spawn_attr *attr;
    struct child_report *report;
    char uid_map[32]; /* "E E 1\n": the caller's euid mapped to itself */
    char gid_map[32];
};

/* Write all of `text` to `path` (one write: the kernel takes a map only
 * whole). Async-signal-safe. */
static int write_file(const char *path, const char *text)
{
    ssize_t n, len = (ssize_t)strlen(text);
    int fd;
    do {
        fd = open(path, O_WRONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0)
        return -1;
    do {
        n = write(fd, text, (size_t)len);
    } while (n < 0 && errno == EINTR);
    close(fd);
    if (n != len) {
        if (n >= 0)
            errno = EIO;
        return -1;
    }
    return 0;
}

/* The clone child: pid 1 of the new PID namespace, in a user namespace
 * with no ids mapped yet. It maps its own (an unprivileged process may map
 * exactly its euid and egid, and the gid only once setgroups is denied:
 * user_namespaces(7)), then does what osl_spawn's vfork child does. Writing
 * the maps here rather than from the parent needs no second round trip
 * and no helper (newuidmap). /proc is the host's, whose /proc/self is this
 * process's host pid. Its parent is outside the namespace, so getppid()
 * reads 0, which vfork_child's parent-death check is given to compare. */
static int pidns_child(void *arg)
{
    struct pidns_child_args *c = (struct pidns_child_args *)arg;
    if (write_file("/proc/self/setgroups", "deny") < 0 ||
        write_file("/proc/self/uid_map", c->uid_map) < 0 ||
        write_file("/proc/self/gid_map", c->gid_map) < 0) {
        c->report->step = OSL_STEP_USERNS;
        c->report->err = errno ? errno : EINVAL;
        _exit(127);
    }
    vfork_child(c->attr, 0, c->report, 0);
}

int osl_spawn_pidns(const struct osl_spawn_attr *attr, int *pid_out,
                    int *step_out)
{
    struct pidns_child_args c;
    struct child_report report;
    sigset_t all, old;
    char *stack;
    pid_t child;
    int err;

    load_features();
    *step_out = OSL_STEP_SPAWN;
    if (!valid_pass_fds(attr) || attr->signal_reset < OSL_SIGNALS_RESTORE ||
        attr->signal_reset > OSL_SIGNALS_ALL || attr->set_ids) {
        /* Credentials cannot change inside: only one uid is mapped. */
        return EINVAL;
    }
    report.err = 0;
    report.step = OSL_STEP_NONE;
    c.attr = attr;
    c.report = &report;
    snprintf(c.uid_map, sizeof(c.uid_map), "%lu %lu 1\n",
             (unsigned long)geteuid(), (unsigned long)geteuid());
    snprintf(c.gid_map, sizeof(c.gid_map), "%lu %lu 1\n",
             (unsigned long)getegid(), (unsigned long)getegid());
    if ((stack = malloc(CHILD_STACK_SIZE)) == NULL)
        return ENOMEM;

    /* As spawn_vfork: no handler of ours may run in the child. */
    fill_all_signals(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    /* CLONE_VM | CLONE_VFORK: vfork's sharing, so a large parent costs no
     * page-table copy; CLONE_NEWUSER gives the namespaces without
     * privilege; CLONE_NEWPID makes the child pid 1 of a new namespace.
     * The stack grows down on every architecture Linux wheels target. */
    child = clone(pidns_child, stack + CHILD_STACK_SIZE,
                  CLONE_VM | CLONE_VFORK | CLONE_NEWUSER | CLONE_NEWPID |
                      SIGCHLD,
                  &c);
    err = child < 0 ? errno : 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    free(stack);

    /* Refused namespaces fail in clone(): OSL_STEP_USERNS. */
    *step_out = OSL_STEP_NONE;
    err = spawn_outcome(child, err, OSL_STEP_USERNS, &report, &child, step_out);
    if (err == 0)
        *pid_out = (int)child;
    return err;
}
#else
int osl_spawn_pidns(const struct osl_spawn_attr *attr, int *pid_out,
                    int *step_out)
{
    (void)attr;
    (void)pid_out;
    *step_out = OSL_STEP_USERNS;
    return ENOSYS;
}
#endif

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
    if (attr->signal_reset < OSL_SIGNALS_RESTORE ||
        attr->signal_reset > OSL_SIGNALS_ALL || attr->spawn_path < OSL_SPAWN_AUTO ||
        attr->spawn_path > OSL_SPAWN_VFORK_ONLY || attr->n_groups < 0 ||
        (attr->n_groups > 0 && !attr->groups)) {
        *step_out = OSL_STEP_SPAWN;
        return EINVAL;
    }
    *used_vfork = needs_vfork(attr);
    if (*used_vfork) {
        err = spawn_vfork(attr, &pid, step_out, used_vfork);
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
