/*
 * osl_pg_init.c - pid 1 of the "pid_namespace" containment tier (Linux).
 *
 * osl_spawn_pidns() (osl_pg_posix.c) starts this program as the first
 * process of a new user + PID namespace:
 *
 *     _osl_pg_init STATUS_FD PATH ARGV0 [ARGS...]
 *
 * It starts PATH as pid 2, leader of its own process group, and then only
 * forwards signals, reaps and reports. When it exits the kernel SIGKILLs
 * every other process of the namespace, however it daemonized
 * (zap_pid_ns_processes), and our exit is reported to our parent only once
 * they are all gone: "pid 1 has exited" means "the namespace is empty".
 *
 * A pid 1 gets only the signals it has a handler for (the kernel drops the
 * others, SIGKILL from inside included), so the signals a parent forwards
 * have handlers here and are read from a signalfd; each is passed on to the
 * command's process group. We exit once the command has exited and no
 * process of its group is left (setsid'd escapees do not hold us; they end
 * with the namespace).
 *
 * STATUS_FD is the write end of a pipe whose read end only our parent
 * holds. Records on it (struct osl_init_record, one write() each, below
 * PIPE_BUF so atomic): STARTED once PATH has been executed, or EXEC_FAILED
 * with the errno; STOPPED with the signal each time the command stops;
 * EXITED with the command's status (exit code >= 0, or -signal) just
 * before we exit. Our own exit code is the command's, or
 * 128 + signal: a pid 1 cannot die of a signal it sends itself, so the
 * parent takes the signal from the EXITED record. The pipe also tells us
 * when the parent dies: the write end then reports POLLERR, and we exit,
 * which ends the namespace. That is per process, where PR_SET_PDEATHSIG
 * would fire at the exit of the *thread* that spawned us, and it has no
 * race with a parent that died before we started watching.
 *
 * No Python, no allocation, no stdio: a few syscalls around one poll loop.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* signalfd, close_range via syscall */
#endif

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "osl_pg.h"

/* The signals forwarded to the command's group: what a terminal, a shell
 * or a supervisor sends a process tree. SIGKILL and SIGSTOP cannot be
 * caught; our parent kills this pid 1 (which ends the namespace) or stops
 * the members itself. */
static const int forwarded[] = {SIGTERM, SIGINT,  SIGHUP,  SIGQUIT, SIGUSR1,
                                SIGUSR2, SIGWINCH, SIGCONT, SIGTSTP, SIGALRM,
                                SIGTTIN, SIGTTOU};
#define N_FORWARDED ((int)(sizeof(forwarded) / sizeof(forwarded[0])))

/* While the command has exited but members of its group remain, a member
 * whose parent is not us can exit without a SIGCHLD reaching us: look
 * again at this interval. */
#define GROUP_POLL_MS 50

static int status_fd = -1;

static void report(int kind, int value)
{
    struct osl_init_record r;
    ssize_t n;
    r.kind = kind;
    r.value = value;
    do {
        n = write(status_fd, &r, sizeof(r));
    } while (n < 0 && errno == EINTR);
    /* EPIPE: the parent is gone (SIGPIPE is dropped for a pid 1). Exiting
     * then is what the parent's death asks for anyway. */
    if (n < 0 && errno == EPIPE)
        _exit(OSL_INIT_PARENT_GONE);
}

static void on_signal(int sig)
{
    (void)sig; /* never runs: the signals are blocked and read from a signalfd */
}

static int parse_fd(const char *s)
{
    long v = 0;
    if (!*s)
        return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > 1000000)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return (int)v;
}

/* Close what the command needed and we do not: its stdio (so that the end
 * of its output is seen when it and its children close theirs, as in the
 * other tiers) and its pass_fds. Only STATUS_FD stays. */
static void close_all_but_status(void)
{
    int fd;
    for (fd = 0; fd < 3; fd++) {
        if (fd != status_fd)
            close(fd);
    }
#ifdef SYS_close_range
    if (status_fd > 3)
        syscall(SYS_close_range, 3U, (unsigned)status_fd - 1, 0U);
    syscall(SYS_close_range, (unsigned)status_fd + 1, ~0U, 0U);
#endif
}

/* The command's exec error, written by the vfork child into the memory it
 * shares with us: a global, not a local of start_command(), which the
 * compiler may treat as dead before _exit() (lost with gcc -O1). */
static volatile int start_err;

/* vfork: we are small, but the child only has to exec, and reports a
 * failure through memory we share until then. Its own function, so that
 * main's variables cannot be clobbered by the second return. Returns the
 * command's pid, or -1 with *err set (the child, if any, reaped). */
static __attribute__((noinline)) pid_t
start_command(char **argv, const struct sigaction *original,
              const sigset_t *original_mask, int *err)
{
    pid_t command;
    int i, status;

    start_err = 0;
    command = vfork();
    if (command == 0) {
        for (i = 0; i < N_FORWARDED; i++)
            sigaction(forwarded[i], &original[i], NULL);
        sigprocmask(SIG_SETMASK, original_mask, NULL);
        /* Its own group, so our forwarding reaches it and everything it
         * starts, and a stop (Ctrl-Z) stops the group and not us. */
        if (setpgid(0, 0) == 0)
            execv(argv[2], argv + 3);
        start_err = errno ? errno : EINVAL;
        _exit(127);
    }
    if (command < 0) {
        *err = errno;
        return -1;
    }
    if (start_err) {
        *err = start_err;
        while (waitpid(command, &status, 0) < 0 && errno == EINTR)
            ;
        return -1;
    }
    return command;
}

int main(int argc, char **argv)
{
    struct sigaction handler, original[N_FORWARDED];
    sigset_t all, waited, original_mask;
    struct pollfd fds[2];
    pid_t command;
    int i, sfd, err = 0, command_status = 0, command_done = 0;

    if (argc < 4 || (status_fd = parse_fd(argv[1])) < 3)
        return OSL_INIT_USAGE;

    /* Block everything first (no handler may run before the signalfd is
     * set up), keeping the original mask for the command. */
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &original_mask);
    memset(&handler, 0, sizeof(handler));
    handler.sa_handler = on_signal;
    sigemptyset(&waited);
    sigaddset(&waited, SIGCHLD);
    for (i = 0; i < N_FORWARDED; i++) {
        /* The original disposition goes back in the command: an ignored
         * signal stays ignored there, as it would without us. */
        sigaction(forwarded[i], &handler, &original[i]);
        sigaddset(&waited, forwarded[i]);
    }
    if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) < 0) {
        report(OSL_INIT_EXEC_FAILED, errno ? errno : EINVAL);
        return OSL_INIT_SETUP_FAILED;
    }

    command = start_command(argv, original, &original_mask, &err);
    if (command < 0) {
        report(OSL_INIT_EXEC_FAILED, err);
        return 127;
    }
    close_all_but_status();
    /* After the closing (it would close this fd too): signals that came
     * meanwhile are pending, blocked, and the signalfd reads them. */
    sfd = signalfd(-1, &waited, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) {
        err = errno;
        kill(-command, SIGKILL);
        report(OSL_INIT_EXEC_FAILED, err);
        return OSL_INIT_SETUP_FAILED;
    }
    report(OSL_INIT_STARTED, 0);

    fds[0].fd = sfd;
    fds[0].events = POLLIN;
    fds[1].fd = status_fd;
    fds[1].events = 0; /* POLLERR (and POLLHUP) are always reported */
    for (;;) {
        int ready = poll(fds, 2, command_done ? GROUP_POLL_MS : -1);
        if (ready < 0 && errno != EINTR)
            break;
        if (ready > 0 && (fds[1].revents & (POLLERR | POLLHUP)))
            _exit(OSL_INIT_PARENT_GONE); /* the namespace goes with us */
        if (ready > 0 && (fds[0].revents & (POLLERR | POLLNVAL)))
            break; /* cannot happen; never spin on it */
        if (ready > 0 && (fds[0].revents & POLLIN)) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                int sig = (int)si.ssi_signo;
                /* A group whose leader has exited may still have members;
                 * with none left there is nobody to forward to. */
                if (sig != SIGCHLD)
                    kill(-command, sig);
            }
        }
        /* Reap every child: the command, and the orphans that the kernel
         * reparents to the namespace's pid 1. */
        for (;;) {
            int status;
            /* WUNTRACED: a stop of the command (Ctrl-Z) is reported to
             * our parent, which cannot see it otherwise: we cannot stop
             * ourselves (a pid 1 ignores stop signals from inside). */
            pid_t done = waitpid(-1, &status, WNOHANG | WUNTRACED);
            if (done <= 0)
                break;
            if (done == command && WIFSTOPPED(status)) {
                report(OSL_INIT_STOPPED, WSTOPSIG(status));
            } else if (done == command) {
                command_done = 1;
                command_status = WIFSIGNALED(status) ? -WTERMSIG(status)
                                                     : WEXITSTATUS(status);
            }
        }
        if (command_done && kill(-command, 0) < 0 && errno == ESRCH)
            break;
    }
    report(OSL_INIT_EXITED, command_status);
    return command_status >= 0 ? command_status : 128 - command_status;
}
