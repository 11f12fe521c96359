/*
 * C tests of csrc/osl_pg_posix.c, built with -Wall -Wextra -Werror and run
 * under AddressSanitizer and UndefinedBehaviorSanitizer in CI. Each check
 * prints a line; the last line is "N passed, N failed".
 */
#define _GNU_SOURCE
#include "osl_pg.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int passed, failed;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) {                                                           \
            passed++;                                                         \
            printf("ok   ");                                                  \
        } else {                                                              \
            failed++;                                                         \
            printf("FAIL ");                                                  \
        }                                                                     \
        printf(__VA_ARGS__);                                                  \
        printf("\n");                                                         \
    } while (0)

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
    if (force_vfork)
        a.pdeathsig = SIGKILL;
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == 0 && pid > 0, "spawn in a new group (vfork=%d): err %d", vf, err);
    /* close_fds needs posix_spawn_file_actions_addclosefrom_np (glibc 2.34;
     * musl has none): without it the vfork path is the only way. */
    CHECK(vf == (force_vfork || !(osl_features() & OSL_FEAT_SPAWN_CLOSEFROM)),
          "path taken: vfork=%d (features 0x%x)", vf, osl_features());
    err = osl_getpgid(pid, &pgid);
    CHECK(err == 0 && pgid == pid, "getpgid(child) == child pid (%d, %d)", pgid, pid);
    CHECK(wait_code(pid) == 3, "exit status 3 collected");
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
    if (force_vfork)
        a.pdeathsig = SIGKILL;
    err = osl_spawn(&a, &pid, &step, &vf);
    CHECK(err == ENOENT, "missing command gives ENOENT (vfork=%d), got %d", vf, err);
    if (force_vfork)
        CHECK(step == OSL_STEP_EXEC, "vfork path names the exec step (%d)", step);

    {
        char *argv2[] = {"/bin/true", NULL};
        struct osl_spawn_attr b = base("/bin/true", argv2);
        b.cwd = "/nonexistent/dir";
        if (force_vfork)
            b.pdeathsig = SIGKILL;
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
        if (force_vfork)
            c.pdeathsig = SIGKILL;
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
    CHECK(err == 0 && vf == 1, "spawn with pass_fds takes the vfork path (%d)", err);
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
        CHECK(err != 0 && step == OSL_STEP_CGROUP && vf == 1,
              "a bad cgroup fd fails the spawn at the cgroup step (err %d, "
              "step %d)", err, step);
    } else {
        CHECK(err == 0 && vf == 1, "spawn into %d cgroup(s) took the vfork "
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
    test_nowait_keeps_zombie();
    test_errors(0);
    test_errors(1);
    test_session_and_join();
    test_stdio();
#ifdef __linux__
    test_pass_fds();
#endif
    test_autoreaped();
    test_floor();
    test_cgroup_join();
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
