/*
 * C tests of csrc/osl_pg_posix.c, built with -Wall -Wextra -Werror and run
 * under AddressSanitizer and UndefinedBehaviorSanitizer in CI. Each check
 * prints a line; the last line is "N passed, N failed".
 */
#define _GNU_SOURCE
#include "osl_pg.h"
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
/* The kernel headers (seccomp) are not on musl-gcc's path. */
#if defined(__has_include) && defined(__NR_close_range)
#if __has_include(<linux/seccomp.h>)
#include <linux/filter.h>
#include <linux/seccomp.h>
#define HAVE_SECCOMP_TEST 1
#endif
#endif
#endif

static struct osl_spawn_attr base(const char *path, char *const *argv)
{
    struct osl_spawn_attr a;
    memset(&a, 0, sizeof(a));
    a.path = path;
    a.argv = argv;
    a.fds[0] = a.fds[1] = a.fds[2] = OSL_FD_INHERIT;
    a.close_fds = 1;
    return a;
}

/* The path a test asks for: 1 the vfork child (by clone3 where the kernel
 * clears its handlers), 2 the vfork child by vfork() itself, 0 posix_spawn
 * where it can do the request (on Linux the default is the vfork child:
 * see needs_vfork). */
static void on_path(struct osl_spawn_attr *a, int force_vfork)
{
    a->spawn_path = force_vfork == 2 ? OSL_SPAWN_VFORK_ONLY
                    : force_vfork   ? OSL_SPAWN_VFORK
                                    : OSL_SPAWN_POSIX;
}

#if defined(__linux__) && defined(__x86_64__)
#include <sys/utsname.h>
/* What the vfork child's path reports on this kernel: 2 (clone3 with
 * CLONE_CLEAR_SIGHAND) from Linux 5.5, 1 (vfork) before. */
static int vfork_kind(void)
{
    struct utsname u;
    int major = 0, minor = 0;
    if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &major, &minor) != 2)
        return 2;
    return major > 5 || (major == 5 && minor >= 5) ? 2 : 1;
}
#else
static int vfork_kind(void) { return 1; }
#endif

/* The used_vfork a spawn on path `force_vfork` reports, posix_spawn aside. */
static int vfork_reported(int force_vfork)
{
    return force_vfork == 2 ? 1 : vfork_kind();
}

static int wait_code(int pid)
{
    int done = 0, status = -999, err;
    while ((err = osl_wait(pid, 0, &done, &status)) == EINTR)
        ;
    return err ? -1000 - err : status;
}

static void test_new_group(int force_vfork)
{
    char *argv[] = {"/bin/sh", "-c", "exit 3", NULL};
    struct osl_spawn_attr a = base("/bin/sh", argv);
    int pid = 0, step, vf, pgid = 0, err;
    a.pgroup_mode = OSL_PGROUP_NEW;
    on_path(&a, force_vfork);
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == 0 && pid > 0, "spawn in a new group (vfork=%d): err %d", vf, err);
    /* close_fds needs posix_spawn_file_actions_addclosefrom_np (glibc 2.34;
     * musl has none): without it the vfork path is the only way. */
    CHECK(vf == (force_vfork || !(osl_features() & OSL_FEAT_SPAWN_CLOSEFROM)
                     ? vfork_reported(force_vfork) : 0),
          "path taken: vfork=%d (features 0x%x)", vf, osl_features());
    err = osl_getpgid(pid, &pgid);
    CHECK(err == 0 && pgid == pid, "getpgid(child) == child pid (%d, %d)", pgid, pid);
    CHECK(wait_code(pid) == 3, "exit status 3 collected");
}

static void test_default_path(void)
{
    char *argv[] = {"/bin/true", NULL};
    struct osl_spawn_attr a = base("/bin/true", argv);
    int pid = 0, step, vf = -1, err;
    a.pgroup_mode = OSL_PGROUP_NEW;
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == 0 && pid > 0, "spawn on the default path: err %d", err);
#ifdef __linux__
    CHECK(vf == vfork_kind(), "the default path on Linux is the vfork child, "
          "by clone3 from Linux 5.5 on x86-64 (vfork=%d)", vf);
#endif
    CHECK(wait_code(pid) == 0, "exit status 0 collected");
    a.spawn_path = OSL_SPAWN_VFORK_ONLY + 1;
    CHECK(osl_spawn(&a, &pid, &step, &vf) == EINVAL, "an unknown spawn_path is refused");
}

static void test_nowait_keeps_zombie(void)
{
    char *argv[] = {"/bin/true", NULL};
    struct osl_spawn_attr a = base("/bin/true", argv);
    int pid, step, vf, done = 0, status = -1, pgid;
    a.pgroup_mode = OSL_PGROUP_NEW;
    osl_spawn(&a, &pid, &step, &vf);
    osl_wait(pid, OSL_WAIT_NOWAIT, &done, &status);
    CHECK(done == 1 && status == 0, "WNOWAIT reads the status");
    CHECK(osl_getpgid(pid, &pgid) == 0 && pgid == pid, "the zombie still holds its pgid");
    CHECK(wait_code(pid) == 0, "then it is reaped");
    CHECK(osl_getpgid(pid, &pgid) == ESRCH, "and its pid is free");
}

static void test_errors(int force_vfork)
{
    char *argv[] = {"/nonexistent/cmd", NULL};
    struct osl_spawn_attr a = base("/nonexistent/cmd", argv);
    int pid = -1, step = -1, vf, err;
    on_path(&a, force_vfork);
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == ENOENT, "missing command gives ENOENT (vfork=%d), got %d", vf, err);
    if (force_vfork)
        CHECK(step == OSL_STEP_EXEC, "vfork path names the exec step (%d)", step);

    {
        char *argv2[] = {"/bin/true", NULL};
        struct osl_spawn_attr b = base("/bin/true", argv2);
        b.cwd = "/nonexistent/dir";
        on_path(&b, force_vfork);
        err = osl_spawn(&b, &pid, &step, &vf);
        CHECK(err == ENOENT, "missing cwd gives ENOENT, got %d", err);
        if (force_vfork)
            CHECK(step == OSL_STEP_CHDIR, "vfork path names the chdir step (%d)", step);
    }
    {
        char *argv3[] = {"/bin/true", NULL};
        struct osl_spawn_attr c = base("/bin/true", argv3);
        c.pgroup_mode = OSL_PGROUP_JOIN;
        c.pgid = 4194000; /* above pid_max: no such group */
        on_path(&c, force_vfork);
        err = osl_spawn(&c, &pid, &step, &vf);
        CHECK(err == EPERM || err == ESRCH, "joining a missing group fails (%d)", err);
    }
}

static void test_session_and_join(void)
{
    char *argv[] = {"/bin/sleep", "5", NULL};
    struct osl_spawn_attr a = base("/bin/sleep", argv);
    int leader, member, step, vf, sid = 0, pgid = 0;
    a.new_session = 1;
    CHECK(osl_spawn(&a, &leader, &step, &vf) == 0, "spawn a session leader");
    CHECK(osl_getsid(leader, &sid) == 0 && sid == leader, "getsid(child) == child");
    osl_killpg(leader, SIGKILL);
    CHECK(wait_code(leader) == -SIGKILL, "killpg ended the session's group");

    a = base("/bin/sleep", argv);
    a.pgroup_mode = OSL_PGROUP_NEW;
    osl_spawn(&a, &leader, &step, &vf);
    a.pgroup_mode = OSL_PGROUP_JOIN;
    a.pgid = leader;
    CHECK(osl_spawn(&a, &member, &step, &vf) == 0, "spawn into the leader's group");
    CHECK(osl_getpgid(member, &pgid) == 0 && pgid == leader, "member's pgid is the leader's");
    CHECK(osl_killpg(leader, SIGTERM) == 0, "killpg the group");
    CHECK(wait_code(leader) == -SIGTERM && wait_code(member) == -SIGTERM, "both died of SIGTERM");
    CHECK(osl_killpg(1, 0) == EINVAL && osl_killpg(0, 0) == EINVAL, "killpg refuses pgid 0 and 1");
}

static void test_stdio(void)
{
    char *argv[] = {"/bin/sh", "-c", "echo hello", NULL};
    struct osl_spawn_attr a = base("/bin/sh", argv);
    int p[2], pid, step, vf;
    char buf[32] = {0};
    ssize_t n;
    CHECK(pipe(p) == 0, "pipe");
    a.fds[1] = p[1];
    osl_spawn(&a, &pid, &step, &vf);
    close(p[1]);
    n = read(p[0], buf, sizeof(buf) - 1);
    close(p[0]);
    CHECK(n == 6 && strcmp(buf, "hello\n") == 0, "stdout went to the pipe");
    wait_code(pid);
}

#ifdef __linux__
/* pass_fds: 50 and 60 (close-on-exec here) reach the child open; 51 in the
 * gap between them, inheritable, is closed by close_fds. The child lists
 * its own fds from /proc/self/fd. */
static void test_pass_fds(void)
{
    char *argv[] = {"/bin/ls", "/proc/self/fd", NULL};
    struct osl_spawn_attr a = base("/bin/ls", argv);
    int p[2], pid, step, vf, keep[2] = {50, 60}, bad[2] = {60, 50}, err;
    char buf[512] = "\n";
    size_t len = 1;
    ssize_t n;
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe");
    CHECK(dup3(p[1], 50, O_CLOEXEC) == 50 && dup2(p[1], 51) == 51 &&
              dup3(p[1], 60, O_CLOEXEC) == 60, "fds 50, 51, 60");
    a.fds[1] = p[1];
    a.pass_fds = keep;
    a.n_pass_fds = 2;
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == 0 && vf == vfork_kind(), "spawn with pass_fds takes the vfork path (%d)", err);
    close(p[1]);
    close(50);
    close(51);
    close(60);
    while (len < sizeof(buf) - 1 &&
           (n = read(p[0], buf + len, sizeof(buf) - 1 - len)) > 0)
        len += (size_t)n;
    close(p[0]);
    CHECK(wait_code(pid) == 0, "ls exited 0");
    CHECK(strstr(buf, "\n50\n") && strstr(buf, "\n60\n"),
          "the child has fds 50 and 60 open");
    CHECK(!strstr(buf, "\n51\n"), "and not the inheritable fd 51 between them");

    a.fds[1] = OSL_FD_INHERIT;
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == EBADF && step == OSL_STEP_PASS_FDS,
          "a pass fd that is not open: EBADF at the pass_fds step (%d, %d)", err, step);
    a.pass_fds = bad;
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == EINVAL && step == OSL_STEP_PASS_FDS && vf == 0,
          "unsorted pass_fds are refused before any child exists");
    keep[0] = 2;
    a.pass_fds = keep;
    CHECK(osl_spawn(&a, &pid, &step, &vf) == EINVAL, "and so is a stdio fd");
}
#endif

/* Run `a` with stdout into a pipe; the output (NUL-terminated) in buf. */
static int spawn_output(struct osl_spawn_attr *a, char *buf, size_t len,
                        int *vf)
{
    int p[2], pid = -1, step, err;
    size_t got = 0;
    ssize_t n;
    buf[0] = 0;
    if (pipe(p) != 0)
        return errno;
    a->fds[1] = p[1];
    err = osl_spawn(a, &pid, &step, vf);
    close(p[1]);
    while (err == 0 && got + 1 < len &&
           (n = read(p[0], buf + got, len - 1 - got)) > 0)
        got += (size_t)n;
    buf[got] = 0;
    close(p[0]);
    if (err == 0 && wait_code(pid) != 0)
        err = -1;
    return err;
}

#ifdef __linux__
/* The SigIgn mask the child reports for its own /proc/self/status. */
static unsigned long long child_ignored(int mode, int force_vfork, int *vf)
{
    char *argv[] = {"/bin/grep", "^SigIgn", "/proc/self/status", NULL};
    struct osl_spawn_attr a = base("/bin/grep", argv);
    char buf[256], *colon;
    a.signal_reset = mode;
    on_path(&a, force_vfork);
    if (spawn_output(&a, buf, sizeof(buf), vf) != 0 ||
        !(colon = strchr(buf, ':')))
        return ~0ULL;
    return strtoull(colon + 1, NULL, 16);
}

#define BIT(sig) (1ULL << ((sig) - 1))

/* Ignored signals stay ignored but SIGPIPE/SIGXFSZ (subprocess's
 * restore_signals), or all of them, or none, on both paths; the C
 * library's internal 32 and 33 never stay ignored, even when this process
 * ignores them (set here through the raw syscall their sigaction refuses:
 * a parent started by a posix_spawn that did not reset them has them so). */
static void test_signal_reset(int force_vfork)
{
    struct sigaction ign, old_hup, old_pipe;
    unsigned long long got;
    int vf = -1;
#if defined(__x86_64__) || defined(__aarch64__)
    unsigned long ksa[8], saved[2][8];
    int internal = 1, sig;
#else
    int internal = 0;
#endif
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigaction(SIGHUP, &ign, &old_hup);
    sigaction(SIGPIPE, &ign, &old_pipe);
#if defined(__x86_64__) || defined(__aarch64__)
    for (sig = 32; sig <= 33; sig++) { /* the handler is the first field */
        memset(ksa, 0, sizeof(ksa));
        ksa[0] = (unsigned long)SIG_IGN;
        syscall(SYS_rt_sigaction, sig, ksa, saved[sig - 32], (size_t)8);
    }
#endif
    got = child_ignored(OSL_SIGNALS_RESTORE, force_vfork, &vf);
    CHECK(got == BIT(SIGHUP), "restore (vfork=%d): SIGHUP stays ignored, "
          "SIGPIPE%s does not (SigIgn %#llx)", vf,
          internal ? ", 32 and 33" : "", got);
    got = child_ignored(OSL_SIGNALS_INHERIT, force_vfork, &vf);
    CHECK(got == (BIT(SIGHUP) | BIT(SIGPIPE)),
          "inherit (vfork=%d): SIGHUP and SIGPIPE stay ignored (%#llx)", vf,
          got);
    got = child_ignored(OSL_SIGNALS_ALL, force_vfork, &vf);
    CHECK(got == 0, "all (vfork=%d): nothing stays ignored (%#llx)", vf, got);
#if defined(__x86_64__) || defined(__aarch64__)
    for (sig = 32; sig <= 33; sig++)
        syscall(SYS_rt_sigaction, sig, saved[sig - 32], NULL, (size_t)8);
#endif
    sigaction(SIGHUP, &old_hup, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    {
        char *argv[] = {"/bin/true", NULL};
        struct osl_spawn_attr a = base("/bin/true", argv);
        int pid, step;
        a.signal_reset = OSL_SIGNALS_ALL + 1;
        CHECK(osl_spawn(&a, &pid, &step, &vf) == EINVAL,
              "an unknown signal_reset is EINVAL");
    }
}

/* As root: user, groups and umask reach the child (vfork path); the
 * parent-death signal survives the uid change (which clears it: prctl must
 * come after); the parent stays dumpable although the child changed its
 * credentials in memory shared with it. */
static void test_ids(void)
{
    char *argv[] = {"/bin/sh", "-c", "id -u; id -g; id -G; umask", NULL};
    struct osl_spawn_attr a = base("/bin/sh", argv);
    gid_t groups[2] = {65534, 100};
    char buf[256];
    int vf = 0, err, pid, step;

    if (geteuid() != 0) {
        a.set_ids = OSL_SET_UID;
        a.uid = 0;
        err = osl_spawn(&a, &pid, &step, &vf);
        CHECK(err == EPERM && step == OSL_STEP_UID && vf == vfork_kind(),
              "not root: setreuid(0) fails with EPERM at the uid step "
              "(%d, %d)", err, step);
        printf("skip the rest of the id tests: not root\n");
        return;
    }
    a.set_ids = OSL_SET_UID | OSL_SET_GID | OSL_SET_GROUPS | OSL_SET_UMASK;
    a.uid = 65534;
    a.gid = 65534;
    a.groups = groups;
    a.n_groups = 2;
    a.umask = 027;
    err = spawn_output(&a, buf, sizeof(buf), &vf);
    CHECK(err == 0 && vf == vfork_kind() &&
              strcmp(buf, "65534\n65534\n65534 100\n0027\n") == 0,
          "the child runs as 65534:65534, groups 65534 100, umask 027 "
          "(err %d, vfork=%d): %s", err, vf, buf);
    CHECK(prctl(PR_GET_DUMPABLE) == 1, "and the parent is still dumpable");

    a.set_ids = OSL_SET_GROUPS | OSL_SET_GID;
    a.n_groups = 0;
    a.groups = NULL;
    err = spawn_output(&a, buf, sizeof(buf), &vf);
    CHECK(err == 0 && strstr(buf, "0\n65534\n65534\n") == buf,
          "no supplementary groups: id -G shows only the new gid: %s", buf);

    {
        /* A helper spawns sleep as 65534 with a parent-death signal, then
         * exits: the sleep must die with it. */
        char *sargv[] = {"/bin/sleep", "30", NULL};
        int p[2], helper, sleeper = -1, i, gone = 0;
        CHECK(pipe(p) == 0, "pipe");
        helper = fork();
        if (helper == 0) {
            struct osl_spawn_attr s = base("/bin/sleep", sargv);
            int spid = -1, sstep, svf;
            s.set_ids = OSL_SET_UID;
            s.uid = 65534;
            s.pdeathsig = SIGKILL;
            osl_spawn(&s, &spid, &sstep, &svf);
            if (write(p[1], &spid, sizeof(spid)) != sizeof(spid))
                _exit(2);
            _exit(0);
        }
        close(p[1]);
        if (read(p[0], &sleeper, sizeof(sleeper)) != sizeof(sleeper))
            sleeper = -1;
        close(p[0]);
        waitpid(helper, NULL, 0);
        for (i = 0; i < 500 && sleeper > 0 && !gone; i++) {
            struct timespec ts = {0, 10000000};
            char path[64], state = 0;
            FILE *f;
            snprintf(path, sizeof(path), "/proc/%d/stat", sleeper);
            f = fopen(path, "r");
            /* Gone, or a zombie until its new parent reaps it. */
            gone = !f || (fscanf(f, "%*d %*s %c", &state) == 1 && state == 'Z');
            if (f)
                fclose(f);
            if (!gone)
                nanosleep(&ts, NULL);
        }
        CHECK(sleeper > 0 && gone, "the parent-death signal survived the "
              "uid change: sleep %d died with its parent", sleeper);
        if (!gone && sleeper > 0)
            kill(sleeper, SIGKILL);
    }

    a = base("/bin/true", argv);
    a.set_ids = OSL_SET_GROUPS;
    a.n_groups = -1;
    CHECK(osl_spawn(&a, &pid, &step, &vf) == EINVAL, "n_groups < 0 is EINVAL");
}

#ifdef HAVE_SECCOMP_TEST
/* Where clone3 is refused (a seccomp filter answers ENOSYS here, as
 * container runtimes' default profiles do, and a kernel before 5.3 does),
 * the vfork child comes from vfork() and still resets what it must: SIGPIPE
 * back to default, SIGHUP kept ignored. In a forked helper that owns the
 * filter; its exit code is the result. */
static void test_without_clone3(void)
{
    int helper = fork(), status = -1;
    if (helper == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 435 /* clone3 */, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
        struct sigaction ign;
        int vf = -1, round;
        memset(&ign, 0, sizeof(ign));
        ign.sa_handler = SIG_IGN;
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            _exit(78);
        sigaction(SIGHUP, &ign, NULL);
        sigaction(SIGPIPE, &ign, NULL);
        for (round = 0; round < 2; round++) { /* the refusal is remembered */
            if (child_ignored(OSL_SIGNALS_RESTORE, 1, &vf) != BIT(SIGHUP))
                _exit(10 + round);
            if (vf != 1)
                _exit(20 + vf);
        }
        _exit(0);
    }
    waitpid(helper, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 78) {
        printf("skip the spawn without clone3: no seccomp\n");
        return;
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "with clone3 refused the vfork child comes from vfork() and resets "
          "SIGPIPE, keeps SIGHUP (helper status %#x)", status);
}

/* Without close_range (a seccomp filter makes it ENOSYS here, as on a
 * kernel before 5.9), close_fds still closes an fd above the fd limit (the
 * limit was lowered after it was opened), which a loop up to the limit
 * misses, and keeps a pass fd. Runs in a forked helper that owns the
 * filter; its exit code is the result. */
static void test_close_fds_without_close_range(void)
{
    int helper = fork(), status = -1;
    if (helper == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_close_range, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {sizeof(f) / sizeof(f[0]), f};
        struct rlimit rl;
        char *argv[] = {"/bin/ls", "/proc/self/fd", NULL};
        struct osl_spawn_attr a = base("/bin/ls", argv);
        int keep[1] = {50}, vf, force;
        char buf[1024];
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_max < 2001)
            _exit(77);
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 || dup2(0, 2000) != 2000 ||
            dup2(0, 50) != 50)
            _exit(3);
        rl.rlim_cur = 1024;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 ||
            prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
            _exit(78);
        if (syscall(__NR_close_range, 3000U, 3001U, 0) == 0 || errno != ENOSYS)
            _exit(4);
        for (force = 0; force < 2; force++) {
            a = base("/bin/ls", argv);
            a.pass_fds = keep;
            a.n_pass_fds = force; /* with pass_fds: vfork */
            if (force)
                a.pdeathsig = SIGKILL;
            strcpy(buf, "\n");
            if (spawn_output(&a, buf + 1, sizeof(buf) - 1, &vf) != 0)
                _exit(5);
            if (strstr(buf, "\n2000\n"))
                _exit(10 + force);
            if (force && !strstr(buf, "\n50\n"))
                _exit(20);
        }
        _exit(0);
    }
    waitpid(helper, &status, 0);
    if (WIFEXITED(status) && (WEXITSTATUS(status) == 77 || WEXITSTATUS(status) == 78)) {
        printf("skip close_fds without close_range: no fd limit >= 2001 or no seccomp (%d)\n",
               WEXITSTATUS(status));
        return;
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "without close_range, fd 2000 above the lowered fd limit is "
          "closed and pass fd 50 kept (helper status %d)",
          WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}
#endif
#endif

static void test_autoreaped(void)
{
    struct sigaction ign, old;
    int on = -1;
    CHECK(osl_children_autoreaped(&on) == 0 && on == 0, "children are not auto-reaped by default");
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_DFL;
    ign.sa_flags = SA_NOCLDWAIT;
    sigaction(SIGCHLD, &ign, &old);
    CHECK(osl_children_autoreaped(&on) == 0 && on == 1, "SA_NOCLDWAIT is seen");
    ign.sa_handler = SIG_IGN;
    ign.sa_flags = 0;
    sigaction(SIGCHLD, &ign, NULL);
    CHECK(osl_children_autoreaped(&on) == 0 && on == 1, "SIG_IGN is seen");
    sigaction(SIGCHLD, &old, NULL);
}

static void test_floor(void)
{
    long long ns = 0;
    int err = osl_bench_spawn_wait("/bin/true", 5, &ns);
    CHECK(err == 0 && ns > 0, "bench floor ran 5 spawns in %lld ns", ns);
}

/* The mount point of the cgroup2 hierarchy (fstype "cgroup2" after the
 * " - " separator in /proc/self/mountinfo), or of the cgroup v1 hierarchy
 * whose super options name `controller`. 0 when there is none. */
static int find_cgroup_mount(const char *controller, char *out, size_t len)
{
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[1024];
    int found = 0;
    if (!f)
        return 0;
    while (!found && fgets(line, sizeof(line), f)) {
        char mnt[512], fstype[64], source[256], opts[512];
        const char *sep = strstr(line, " - ");
        if (!sep || sscanf(line, "%*s %*s %*s %*s %511s", mnt) != 1 ||
            sscanf(sep + 3, "%63s %255s %511s", fstype, source, opts) != 3)
            continue;
        if (controller == NULL) {
            found = strcmp(fstype, "cgroup2") == 0;
        } else if (strcmp(fstype, "cgroup") == 0) {
            char *tok, *save = NULL;
            for (tok = strtok_r(opts, ",", &save); tok && !found;
                 tok = strtok_r(NULL, ",", &save))
                found = strcmp(tok, controller) == 0;
        }
        if (found)
            snprintf(out, len, "%s", mnt);
    }
    fclose(f);
    return found;
}

/* Spawn `sh -c 'cat /proc/self/cgroup'` in the cgroups behind `fds`: the
 * cat is a grandchild, so its lines show where the child's descendants
 * start. Returns the output (NUL-terminated) in buf, or "" on failure. */
static int spawn_in_cgroups(const int *fds, int n, int force_bad, char *buf,
                            size_t len)
{
    char *argv[] = {"/bin/sh", "-c", "cat /proc/self/cgroup", NULL};
    struct osl_spawn_attr a = base("/bin/sh", argv);
    int p[2], pid = -1, step = -1, vf = 0, err, i;
    size_t got = 0;
    ssize_t r;
    buf[0] = 0;
    if (pipe(p) != 0)
        return -1;
    a.fds[1] = p[1];
    a.pgroup_mode = OSL_PGROUP_NEW;
    a.n_cgroups = n;
    for (i = 0; i < n && i < OSL_MAX_CGROUPS; i++)
        a.cgroup_procs_fds[i] = fds[i]; /* n beyond the array: EINVAL */
    err = osl_spawn(&a, &pid, &step, &vf);
    close(p[1]);
    if (force_bad) {
        CHECK(err != 0 && step == OSL_STEP_CGROUP && vf == vfork_kind(),
              "a bad cgroup fd fails the spawn at the cgroup step (err %d, "
              "step %d)", err, step);
    } else {
        CHECK(err == 0 && vf == vfork_kind(), "spawn into %d cgroup(s) took the vfork "
              "path (err %d)", n, err);
    }
    while (err == 0 && got + 1 < len &&
           (r = read(p[0], buf + got, len - 1 - got)) > 0)
        got += (size_t)r;
    buf[got] = 0;
    close(p[0]);
    if (err == 0)
        CHECK(wait_code(pid) == 0, "the child exited 0");
    return err;
}

static void test_cgroup_join(void)
{
    char v2[512], v1[512], dir2[700], dir1[700], path[800], buf[4096];
    char line2[128], line1[128];
    int fds[2], n = 0, have_v1;

    if (!find_cgroup_mount(NULL, v2, sizeof(v2))) {
        printf("skip cgroup join: no cgroup2 mount\n");
        return;
    }
    snprintf(dir2, sizeof(dir2), "%s/osl_ctest_%d", v2, (int)getpid());
    if (mkdir(dir2, 0755) != 0) {
        printf("skip cgroup join: cannot create %s: %s\n", dir2,
               strerror(errno));
        return;
    }
    snprintf(path, sizeof(path), "%s/cgroup.procs", dir2);
    fds[n++] = open(path, O_WRONLY | O_CLOEXEC);
    /* Optionally a cgroup v1 pids hierarchy too (hybrid hosts). */
    have_v1 = find_cgroup_mount("pids", v1, sizeof(v1));
    if (have_v1) {
        snprintf(dir1, sizeof(dir1), "%s/osl_ctest_%d", v1, (int)getpid());
        have_v1 = mkdir(dir1, 0755) == 0;
    }
    if (have_v1) {
        snprintf(path, sizeof(path), "%s/cgroup.procs", dir1);
        fds[n++] = open(path, O_WRONLY | O_CLOEXEC);
    }

    spawn_in_cgroups(fds, n, 0, buf, sizeof(buf));
    /* Our own cgroup is the root of the mount here, as the test creates
     * its directories at the top of each hierarchy. */
    snprintf(line2, sizeof(line2), "0::/osl_ctest_%d\n", (int)getpid());
    CHECK(strstr(buf, line2) != NULL, "the grandchild is in the cgroup2 "
          "directory (%s)", dir2);
    if (have_v1) {
        snprintf(line1, sizeof(line1), ":pids:/osl_ctest_%d\n",
                 (int)getpid());
        CHECK(strstr(buf, line1) != NULL, "and in the v1 pids directory");
    }

    {
        int bad[1];
        bad[0] = open("/dev/null", O_RDONLY | O_CLOEXEC); /* not writable */
        spawn_in_cgroups(bad, 1, 1, buf, sizeof(buf));
        close(bad[0]);
    }
    {
        int many[OSL_MAX_CGROUPS + 1], i;
        for (i = 0; i <= OSL_MAX_CGROUPS; i++)
            many[i] = fds[0];
        CHECK(spawn_in_cgroups(many, OSL_MAX_CGROUPS + 1, 1, buf,
                               sizeof(buf)) == EINVAL,
              "more than OSL_MAX_CGROUPS cgroups is EINVAL");
    }

    close(fds[0]);
    CHECK(rmdir(dir2) == 0, "the emptied cgroup2 directory is removed");
    if (have_v1) {
        close(fds[1]);
        CHECK(rmdir(dir1) == 0, "the emptied v1 directory is removed");
    }
}

int main(void)
{
    printf("features: %#x\n", osl_features());
    test_new_group(0);
    test_new_group(1);
    test_new_group(2);
    test_default_path();
    test_nowait_keeps_zombie();
    test_errors(0);
    test_errors(1);
    test_errors(2);
    test_session_and_join();
    test_stdio();
#ifdef __linux__
    test_pass_fds();
    test_signal_reset(0);
    test_signal_reset(1);
    test_signal_reset(2);
    test_ids();
#ifdef HAVE_SECCOMP_TEST
    test_close_fds_without_close_range();
    test_without_clone3();
#endif
#endif
    test_autoreaped();
    test_floor();
    test_cgroup_join();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
