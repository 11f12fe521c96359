/*
 * C tests of osl_spawn_pidns() (csrc/osl_pg_posix.c) and the init it
 * starts (csrc/osl_pg_init.c), under ASan and UBSan in CI:
 *
 *     test_pidns PATH_OF_OSL_PG_INIT
 *
 * Skipped (exit 0, one "skip" line) where this process may not create a
 * user + PID namespace. The last line is "N passed, N failed".
 */
#define _GNU_SOURCE
#include "osl_pg.h"
#include "check.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *init_path;

struct started {
    int pid;        /* host pid of the init */
    int status_rd;  /* read end of its status pipe */
    int err, step;  /* osl_spawn_pidns's result */
    struct osl_init_record first;
};

/* Start `sh -c script` under the init; stdout to `out_fd` unless -1. */
static struct started start(const char *script, int out_fd)
{
    struct started s;
    struct osl_spawn_attr a;
    char fd_arg[16];
    int pipefd[2], pass[1];
    char *argv[] = {(char *)init_path, fd_arg, "/bin/sh", "sh", "-c",
                    (char *)script, NULL};

    memset(&s, 0, sizeof(s));
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        s.err = errno;
        return s;
    }
    snprintf(fd_arg, sizeof(fd_arg), "%d", pipefd[1]);
    memset(&a, 0, sizeof(a));
    a.path = init_path;
    a.argv = argv;
    a.fds[0] = a.fds[2] = OSL_FD_INHERIT;
    a.fds[1] = out_fd >= 0 ? out_fd : OSL_FD_INHERIT;
    a.pgroup_mode = OSL_PGROUP_NEW;
    a.close_fds = 1;
    pass[0] = pipefd[1];
    a.pass_fds = pass;
    a.n_pass_fds = 1;
    s.err = osl_spawn_pidns(&a, &s.pid, &s.step);
    close(pipefd[1]);
    s.status_rd = pipefd[0];
    if (s.err != 0) {
        close(s.status_rd);
        s.status_rd = -1;
    } else if (read(s.status_rd, &s.first, sizeof(s.first)) !=
               (ssize_t)sizeof(s.first)) {
        s.first.kind = -1;
    }
    return s;
}

/* start(), with the command's stdout a new pipe whose read end is *out_rd
 * (-1 when the pipe or the spawn failed). */
static struct started start_piped(const char *script, int *out_rd)
{
    struct started s;
    int out[2];

    *out_rd = -1;
    if (pipe2(out, O_CLOEXEC) != 0) {
        memset(&s, 0, sizeof(s));
        s.err = errno;
        s.status_rd = -1;
        return s;
    }
    s = start(script, out[1]);
    close(out[1]);
    if (s.err != 0)
        close(out[0]);
    else
        *out_rd = out[0];
    return s;
}

/* A test's own spawn succeeded; else it fails the test (main() has
 * probed: namespaces are available, so a refusal here is a failure). */
static int spawned(const struct started *s)
{
    if (s->err == 0)
        return 1;
    CHECK(0, "pidns: osl_spawn_pidns failed (%s, step %d)", strerror(s->err),
          s->step);
    return 0;
}

/* Reap the init; its status as osl_wait reports it. */
static int reap(int pid)
{
    int done = 0, status = -999, err;
    while ((err = osl_wait(pid, 0, &done, &status)) == EINTR)
        ;
    return err ? -1000 - err : status;
}

static struct osl_init_record last_record(int fd)
{
    struct osl_init_record r;
    memset(&r, 0, sizeof(r));
    if (read(fd, &r, sizeof(r)) != (ssize_t)sizeof(r))
        r.kind = -1;
    return r;
}

static void test_exit_status(void)
{
    struct started s = start("exit 3", -1);
    struct osl_init_record r;
    int code;
    CHECK(s.err == 0 && s.first.kind == OSL_INIT_STARTED,
          "pidns: spawned, init reports STARTED (err %d, kind %d)", s.err,
          s.first.kind);
    if (!spawned(&s))
        return;
    r = last_record(s.status_rd);
    code = reap(s.pid);
    CHECK(r.kind == OSL_INIT_EXITED && r.value == 3 && code == 3,
          "pidns: exit 3 reported as EXITED 3 and init's exit code 3 (%d %d %d)",
          r.kind, r.value, code);
    close(s.status_rd);
}

static void test_ids_and_pids(void)
{
    int out, code;
    char buf[128];
    ssize_t n;
    unsigned long uid = 0, gid = 0;
    int ppid = -1, mypid = -1;
    struct started s;

    s = start_piped("echo $(id -u) $(id -g) $PPID $$", &out);
    if (!spawned(&s))
        return;
    n = read(out, buf, sizeof(buf) - 1);
    buf[n > 0 ? n : 0] = 0;
    code = reap(s.pid);
    CHECK(sscanf(buf, "%lu %lu %d %d", &uid, &gid, &ppid, &mypid) == 4 &&
              uid == (unsigned long)geteuid() && gid == (unsigned long)getegid() &&
              ppid == 1 && mypid == 2 && code == 0,
          "pidns: the command runs as our uid/gid, pid 2 with parent 1 (%s)",
          buf);
    close(out);
    close(s.status_rd);
}

static void test_exec_failure(void)
{
    struct osl_spawn_attr a;
    struct osl_init_record r;
    char fd_arg[16];
    int pipefd[2], pass[1], pid = 0, step = 0, err, code;
    char *argv[] = {(char *)init_path, fd_arg, "/nonexistent/osl-pg", "x", NULL};

    if (pipe2(pipefd, O_CLOEXEC) != 0)
        return;
    snprintf(fd_arg, sizeof(fd_arg), "%d", pipefd[1]);
    memset(&a, 0, sizeof(a));
    a.path = init_path;
    a.argv = argv;
    a.fds[0] = a.fds[1] = a.fds[2] = OSL_FD_INHERIT;
    a.pgroup_mode = OSL_PGROUP_NEW;
    pass[0] = pipefd[1];
    a.pass_fds = pass;
    a.n_pass_fds = 1;
    err = osl_spawn_pidns(&a, &pid, &step);
    close(pipefd[1]);
    r = last_record(pipefd[0]);
    code = err ? -1 : reap(pid);
    CHECK(err == 0 && r.kind == OSL_INIT_EXEC_FAILED && r.value == ENOENT &&
              code == 127,
          "pidns: a missing command is EXEC_FAILED ENOENT (%d %d %d %d)", err,
          r.kind, r.value, code);
    close(pipefd[0]);
}

static void test_missing_init(void)
{
    struct osl_spawn_attr a;
    char *argv[] = {"/nonexistent/init", NULL};
    int pid = 0, step = 0, err;
    memset(&a, 0, sizeof(a));
    a.path = argv[0];
    a.argv = argv;
    a.fds[0] = a.fds[1] = a.fds[2] = OSL_FD_INHERIT;
    err = osl_spawn_pidns(&a, &pid, &step);
    CHECK(err == ENOENT && step == OSL_STEP_EXEC,
          "pidns: a missing init fails at exec with ENOENT (%d, step %d)", err,
          step);
    a.set_ids = OSL_SET_UID;
    err = osl_spawn_pidns(&a, &pid, &step);
    CHECK(err == EINVAL, "pidns: a credential change is refused (%d)", err);
}

/* The command's TERM handler runs: the init forwards what it gets. */
static void test_forwarding(void)
{
    int out, code;
    char buf[64];
    ssize_t n;
    struct osl_init_record r;
    struct started s;

    s = start_piped("trap 'echo got-term; exit 7' TERM; echo ready; "
              "while :; do sleep 0.05; done", &out);
    if (!spawned(&s))
        return;
    n = read(out, buf, sizeof(buf) - 1); /* "ready": the trap is set */
    kill(s.pid, SIGTERM);
    n = read(out, buf, sizeof(buf) - 1);
    buf[n > 0 ? n : 0] = 0;
    r = last_record(s.status_rd);
    code = reap(s.pid);
    CHECK(strstr(buf, "got-term") && r.kind == OSL_INIT_EXITED && r.value == 7 &&
              code == 7,
          "pidns: SIGTERM to the init reaches the command's handler (%s, %d, %d)",
          buf, r.value, code);
    close(out);
    close(s.status_rd);
}

/* A command killed by a signal: 128 + N, and -N in the EXITED record. */
static void test_signal_death(void)
{
    struct started s = start("kill -USR1 $$", -1);
    struct osl_init_record r;
    int code;
    if (!spawned(&s))
        return;
    r = last_record(s.status_rd);
    code = reap(s.pid);
    CHECK(r.kind == OSL_INIT_EXITED && r.value == -SIGUSR1 &&
              code == 128 + SIGUSR1,
          "pidns: death by SIGUSR1 is EXITED -%d and exit code %d (%d, %d)",
          SIGUSR1, 128 + SIGUSR1, r.value, code);
    close(s.status_rd);
}

/* A stop of the command is reported (the init cannot stop itself), and a
 * SIGCONT to the init continues it. */
static void test_stop_reported(void)
{
    struct started s = start("kill -STOP $$; exit 4", -1);
    struct osl_init_record stop, r;
    int code;
    if (!spawned(&s))
        return;
    stop = last_record(s.status_rd);
    kill(s.pid, SIGCONT);
    r = last_record(s.status_rd);
    code = reap(s.pid);
    CHECK(stop.kind == OSL_INIT_STOPPED && stop.value == SIGSTOP &&
              r.kind == OSL_INIT_EXITED && r.value == 4 && code == 4,
          "pidns: the command's stop is STOPPED %d, SIGCONT to the init continues it "
          "(%d %d, %d %d, %d)", SIGSTOP, stop.kind, stop.value, r.kind, r.value, code);
    close(s.status_rd);
}

/* An escaper (setsid, then the command exits) does not keep the init, and
 * dies with the namespace: the init's exit is reported only after it. */
static void test_escaper_dies(void)
{
    int out, code;
    struct pollfd p;
    struct started s;

    /* The escaper holds the write end of `out`: EOF means it is gone. */
    s = start_piped("setsid sleep 1000 & exit 0", &out);
    if (!spawned(&s))
        return;
    code = reap(s.pid);
    p.fd = out;
    p.events = POLLIN;
    CHECK(code == 0 && poll(&p, 1, 0) == 1 && read(out, &code, 1) == 0,
          "pidns: the setsid escaper is gone once the init is reaped");
    close(out);
    close(s.status_rd);
}

/* SIGKILL of the init (from outside: the only way) ends the namespace. */
static void test_kill_init(void)
{
    int out, code;
    char c;
    struct started s;

    s = start_piped("sleep 1000 & sleep 1000", &out);
    if (!spawned(&s))
        return;
    kill(s.pid, SIGKILL);
    code = reap(s.pid);
    CHECK(code == -SIGKILL && read(out, &c, 1) == 0,
          "pidns: SIGKILL of the init ends every process (%d)", code);
    close(out);
    close(s.status_rd);
}

/* Closing the status pipe's read end (our death) ends the namespace. */
static void test_parent_gone(void)
{
    struct started s = start("sleep 1000", -1);
    int code;
    if (!spawned(&s))
        return;
    close(s.status_rd);
    code = reap(s.pid);
    CHECK(code == OSL_INIT_PARENT_GONE,
          "pidns: the init exits when its status pipe's reader is gone (%d)",
          code);
}

int main(int argc, char **argv)
{
    struct started probe;
    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH_OF_OSL_PG_INIT\n", argv[0]);
        return 2;
    }
    init_path = argv[1];
    probe = start("exit 0", -1);
    if (probe.err == EPERM || probe.err == ENOSPC || probe.err == EUSERS ||
        probe.err == ENOSYS || (probe.err == EACCES && probe.step == OSL_STEP_USERNS)) {
        printf("skip: no user + PID namespace here (%s, step %d)\n",
               strerror(probe.err), probe.step);
        return 0;
    }
    if (probe.err == 0) {
        reap(probe.pid);
        close(probe.status_rd);
    }
    test_exit_status();
    test_ids_and_pids();
    test_exec_failure();
    test_missing_init();
    test_forwarding();
    test_signal_death();
    test_stop_reported();
    test_escaper_dies();
    test_kill_init();
    test_parent_gone();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
