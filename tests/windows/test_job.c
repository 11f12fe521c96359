/*
 * test_job.c - the Windows C layer (csrc/osl_pg_win.c) against a real kernel
 * or Wine. Build: x86_64-w64-mingw32-gcc -I csrc tests/windows/test_job.c
 * csrc/osl_pg_win.c -o test_job.exe; run it with no argument.
 *
 * The program re-executes itself for the processes it needs:
 *   child N EVENT     start N "grandchild"s, then set EVENT and sleep
 *   grandchild        sleep
 *   echo              print "$OSL_PG_TEST|<cwd>" to stdout
 *   alloc MB          commit MB MiB: exit 0 if that worked, 3 if not
 *   ctrlparent c|break  own a fresh console, start a "ctrlchild" in a new
 *                     group, send it the event; exit 0 if it arrived
 *   ctrlparent plain  the same with CTRL_C_EVENT to a "ctrlchild plain" and
 *                     then to a "ctrlchild"; exit 0 if only the second got it
 *   ctrlchild EVENT [plain]  re-enable Ctrl+C (unless plain), set EVENT,
 *                     exit 42/43 on C/Break
 * Sleepers end on their own after a minute, in case a kill is missed.
 *
 * wineserver 8 can crash when a tree is killed while a member is inside
 * CreateProcess, so a tree is only killed after its child set EVENT, which
 * it does once its own CreateProcess calls returned.
 *
 * One line per check; checks that Wine 8 is known to get wrong are marked
 * and reported as "expected to differ under Wine" when they fail there.
 * Last line: "N passed, N failed"; the exit status is 1 on any failure.
 */
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "osl_pg.h"

#define MAX_PIDS 64
#define SLEEPER_MS 60000

static int passed, failed, differed, under_wine;
static wchar_t self[MAX_PATH];

/* One check line. wine_differs: Wine 8 is known to get this one wrong. */
static void check(int ok, int wine_differs, const char *fmt, ...)
{
    va_list ap;

    if (ok) {
        passed++;
        printf("ok    ");
    } else if (wine_differs && under_wine) {
        differed++;
        printf("WINE  ");
    } else {
        failed++;
        printf("FAIL  ");
    }
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (!ok && wine_differs && under_wine)
        printf("  [expected to differ under Wine]");
    printf("\n");
    fflush(stdout); /* a pipe is fully buffered: keep lines if we crash */
}

static double now_ms(void)
{
    static LARGE_INTEGER freq;
    LARGE_INTEGER t;

    if (!freq.QuadPart)
        QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&t);
    return (double)t.QuadPart * 1000.0 / (double)freq.QuadPart;
}

/* Start this program with `args` (ASCII) in `job` (may be NULL). */
static int spawn_self(osl_job *job, const char *args, unsigned long flags,
                      unsigned long *pid, HANDLE *process, int *fallback)
{
    wchar_t cmd[1024];
    struct osl_win_spawn_attr a;

    _snwprintf(cmd, 1023, L"\"%ls\" %hs", self, args);
    cmd[1023] = 0;
    memset(&a, 0, sizeof a);
    a.application = self;
    a.command_line = cmd;
    a.flags = flags;
    a.job = job;
    return osl_win_spawn(&a, pid, (void **)process, fallback);
}

/* A fresh named manual-reset event; its name goes into *name. */
static HANDLE new_event(char *name, size_t size)
{
    static int serial;

    snprintf(name, size, "osl_pg_test_%lu_%d", GetCurrentProcessId(),
             ++serial);
    return CreateEventA(NULL, TRUE, FALSE, name);
}

/* Start "child N" in `job` and wait until it has started its grandchildren.
 * Returns 0, or the spawn error, or -1 if the child never got ready. */
static int start_tree(osl_job *job, int n, unsigned long flags,
                      unsigned long *pid, HANDLE *process, int *fallback,
                      double *ready_ms)
{
    char name[64], args[128];
    HANDLE ev = new_event(name, sizeof name), both[2];
    double t0 = now_ms();
    int rc;
    DWORD w;

    snprintf(args, sizeof args, "child %d %s", n, name);
    rc = spawn_self(job, args, flags, pid, process, fallback);
    if (rc) {
        CloseHandle(ev);
        return rc;
    }
    both[0] = ev;
    both[1] = *process;
    w = WaitForMultipleObjects(2, both, FALSE, 20000);
    *ready_ms = now_ms() - t0;
    CloseHandle(ev);
    return w == WAIT_OBJECT_0 ? 0 : -1;
}

/* Handles (SYNCHRONIZE + query) on every member, to see them end. */
static int open_members(const unsigned long *pids, unsigned long n,
                        HANDLE *out)
{
    unsigned long i;
    int opened = 0;

    for (i = 0; i < n; i++) {
        out[i] = OpenProcess(SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION,
                             FALSE, pids[i]);
        if (out[i])
            opened++;
    }
    return opened;
}

/* How many of the n handles are signalled (ended) within timeout_ms. */
static int count_ended(HANDLE *h, unsigned long n, DWORD timeout_ms)
{
    double t0 = now_ms();
    unsigned long i;
    int ended = 0;

    for (i = 0; i < n; i++) {
        double spent = now_ms() - t0;
        DWORD left = spent >= timeout_ms ? 0 : (DWORD)(timeout_ms - spent);

        if (h[i] && osl_win_wait(h[i], left) == 0)
            ended++;
    }
    return ended;
}

static void close_all(HANDLE *h, unsigned long n)
{
    unsigned long i;

    for (i = 0; i < n; i++)
        if (h[i])
            CloseHandle(h[i]);
}

static int contains(const unsigned long *pids, unsigned long n,
                    unsigned long pid)
{
    unsigned long i;

    for (i = 0; i < n; i++)
        if (pids[i] == pid)
            return 1;
    return 0;
}

/* Round 0: what osl_win_spawn passes on (environment, cwd, a std handle,
 * flags) and how it fails. */
static void round_spawn(void)
{
    static const wchar_t env[] = L"OSL_PG_TEST=yes\0SystemRoot=C:\\windows\0";
    wchar_t cmd[1024];
    struct osl_win_spawn_attr a;
    HANDLE rd, wr, h = NULL;
    unsigned long pid = 0, code = 99;
    char got[512];
    DWORD n, total = 0;
    osl_job *job;
    int rc, fb;

    printf("# round 0: spawn options and errors\n");
    /* A non-inheritable pipe: osl_win_spawn must make its own inheritable copy. */
    if (!CreatePipe(&rd, &wr, NULL, 0)) {
        check(0, 0, "CreatePipe (error %lu)", GetLastError());
        return;
    }
    rc = osl_job_create(OSL_JOB_KILL_ON_CLOSE, &job);
    _snwprintf(cmd, 1023, L"\"%ls\" echo", self);
    cmd[1023] = 0;
    memset(&a, 0, sizeof a);
    a.application = self;
    a.command_line = cmd;
    a.environment = env; /* the literal adds the block's final NUL */
    a.cwd = L"C:\\windows";
    a.std_handles[1] = wr;
    a.flags = OSL_WIN_NEW_GROUP | OSL_WIN_DETACHED;
    a.job = job;
    if (rc == 0)
        rc = osl_win_spawn(&a, &pid, (void **)&h, &fb);
    CloseHandle(wr); /* the child holds the only write end now */
    if (rc == 0) {
        while (total < sizeof got - 1 &&
               ReadFile(rd, got + total, (DWORD)(sizeof got - 1 - total), &n, NULL) &&
               n)
            total += n;
        osl_win_wait(h, 10000);
        osl_win_exit_code(h, &code);
        CloseHandle(h);
    }
    got[total] = 0;
    while (total && (got[total - 1] == '\n' || got[total - 1] == '\r'))
        got[--total] = 0;
    check(rc == 0 && code == 0 && _stricmp(got, "yes|C:\\windows") == 0, 0,
          "a detached new-group child gets the env block, cwd and a stdout pipe "
          "(rc %d, exit %lu, read \"%s\")", rc, code, got);
    CloseHandle(rd);

    memset(&a, 0, sizeof a);
    a.application = L"C:\\osl_pg_no_such_dir\\missing.exe";
    a.command_line = L"missing.exe";
    a.job = job;
    h = (HANDLE)1;
    rc = osl_win_spawn(&a, &pid, (void **)&h, &fb);
    check((rc == ERROR_FILE_NOT_FOUND || rc == ERROR_PATH_NOT_FOUND) &&
              h == NULL && pid == 0, 0,
          "a missing executable fails with ERROR_FILE/PATH_NOT_FOUND (rc %d)", rc);
    rc = osl_win_ctrl_event(OSL_WIN_CTRL_C, 0);
    check(rc == ERROR_INVALID_PARAMETER, 0,
          "ctrl_event refuses group 0, which would hit the caller (rc %d)", rc);
    osl_job_close(job);
}

/* Round 1: the JOB_LIST path, listing, accounting, TerminateJobObject. */
static void round_terminate(void)
{
    enum { N = 3 };
    osl_job *job;
    unsigned long pid, pids[MAX_PIDS], count = 0, active = 0, total = 0,
                                          terminated = 0, code = 0;
    HANDLE child = NULL, members[MAX_PIDS];
    int rc, fallback = -1, opened, ended;
    double ready, t0, took;

    printf("# round 1: JOB_LIST spawn, list, account, TerminateJobObject\n");
    rc = osl_job_create(OSL_JOB_KILL_ON_CLOSE, &job);
    check(rc == 0, 0, "create a KILL_ON_CLOSE job with a completion port (rc %d)", rc);
    if (rc)
        return;
    rc = start_tree(job, N, 0, &pid, &child, &fallback, &ready);
    check(rc == 0 && fallback == 0, 0,
          "spawn child + %d grandchildren in the job at creation "
          "(PROC_THREAD_ATTRIBUTE_JOB_LIST; rc %d, fallback %d, ready in %.0f ms)",
          N, rc, fallback, ready);
    if (rc) {
        osl_job_close(job);
        if (child)
            CloseHandle(child);
        return;
    }

    rc = osl_job_pids(job, pids, 1, &count);
    check(rc == OSL_WIN_MORE_DATA && count == 1 + N, 0,
          "pids into a 1-slot array: MORE_DATA and count %d (rc %d, count %lu)",
          1 + N, rc, count);
    rc = osl_job_pids(job, pids, MAX_PIDS, &count);
    check(rc == 0 && count == 1 + N && contains(pids, count, pid), 0,
          "pids lists all %d members, the child included (rc %d, count %lu)",
          1 + N, rc, count);
    rc = osl_job_accounting(job, &active, &total, NULL);
    check(rc == 0 && active == 1 + N && total == 1 + N, 0,
          "accounting: active %lu, total %lu (want %d, %d)", active, total,
          1 + N, 1 + N);
    opened = open_members(pids, count, members);
    check(opened == (int)count, 0, "opened a handle on each member (%d of %lu)",
          opened, count);

    t0 = now_ms();
    rc = osl_job_wait_empty(job, 200);
    took = now_ms() - t0;
    check(rc == OSL_WIN_WAIT_TIMEOUT && took >= 150, 0,
          "wait_empty(200 ms) times out while members run (rc %d after %.0f ms)",
          rc, took);
    rc = osl_win_exit_code(child, &code);
    check(rc == 0 && code == OSL_WIN_STILL_ACTIVE, 0,
          "the running child's exit code is STILL_ACTIVE (%lu)", code);

    t0 = now_ms();
    rc = osl_job_terminate(job, 77);
    if (rc == 0)
        rc = osl_job_wait_empty(job, 5000);
    took = now_ms() - t0;
    check(rc == 0, 0, "TerminateJobObject -> wait_empty returned 0 in %.1f ms (rc %d)",
          took, rc);
    ended = count_ended(members, count, 2000);
    check(ended == (int)count, 0, "every member's handle is signalled (%d of %lu)",
          ended, count);
    rc = osl_win_wait(child, 0);
    osl_win_exit_code(child, &code);
    check(rc == 0 && code == 77, 0,
          "the child's own handle is signalled with exit code 77 (rc %d, code %lu)",
          rc, code);
    rc = osl_job_pids(job, pids, MAX_PIDS, &count);
    check(rc == 0 && count == 0, 0, "pids is empty (rc %d, count %lu)", rc, count);
    rc = osl_job_accounting(job, &active, &total, &terminated);
    check(rc == 0 && active == 0 && total == 1 + N, 0,
          "accounting: active %lu, total %lu (want 0, %d)", active, total, 1 + N);
    check(rc == 0 && terminated == 1 + N, 1,
          "accounting: TotalTerminatedProcesses %lu (want %d)", terminated, 1 + N);

    close_all(members, opened > 0 ? count : 0);
    CloseHandle(child);
    rc = osl_job_close(job);
    check(rc == 0, 0, "close the empty job (rc %d)", rc);
}

/* Round 2: the CREATE_SUSPENDED + assign fallback; closing kills the tree. */
static void round_close(void)
{
    enum { N = 2 };
    osl_job *job;
    unsigned long pid, pids[MAX_PIDS], count = 0;
    HANDLE child = NULL, members[MAX_PIDS];
    int rc, fallback = -1, opened, ended;
    double ready, t0, took;

    printf("# round 2: suspended-assign spawn, KILL_ON_JOB_CLOSE\n");
    rc = osl_job_create(OSL_JOB_KILL_ON_CLOSE, &job);
    check(rc == 0, 0, "create a KILL_ON_CLOSE job (rc %d)", rc);
    if (rc)
        return;
    rc = start_tree(job, N, OSL_WIN_FORCE_SUSPEND, &pid, &child, &fallback,
                    &ready);
    check(rc == 0 && fallback == 1, 0,
          "spawn child + %d grandchildren by CREATE_SUSPENDED + assign + resume "
          "(rc %d, fallback %d, ready in %.0f ms)", N, rc, fallback, ready);
    if (rc) {
        osl_job_close(job);
        if (child)
            CloseHandle(child);
        return;
    }
    rc = osl_job_pids(job, pids, MAX_PIDS, &count);
    check(rc == 0 && count == 1 + N && contains(pids, count, pid), 0,
          "pids lists all %d members (rc %d, count %lu)", 1 + N, rc, count);
    opened = open_members(pids, count, members);

    t0 = now_ms();
    rc = osl_job_close(job);
    ended = count_ended(members, count, 5000);
    took = now_ms() - t0;
    check(rc == 0 && ended == (int)count && ended == 1 + N, 0,
          "closing the job handle ended all %d members in %.1f ms (rc %d, ended %d)",
          1 + N, took, rc, ended);
    close_all(members, opened > 0 ? count : 0);
    CloseHandle(child);
}

/* Round 3: active process limit 2 refuses a third process. */
static void round_limit(void)
{
    osl_job *job;
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION info;
    HANDLE procs[4] = {NULL, NULL, NULL, NULL}, jh, members[MAX_PIDS];
    unsigned long pid, pids[MAX_PIDS], count = 0, active = 0;
    int rc, fallback, ok, i, ended, opened;
    double ready;

    printf("# round 3: active process limit\n");
    rc = osl_job_create(OSL_JOB_KILL_ON_CLOSE, &job);
    check(rc == 0, 0, "create a KILL_ON_CLOSE job (rc %d)", rc);
    if (rc)
        return;
    rc = osl_job_set_limits(job, 2, 0);
    check(rc == 0, 0, "set an active process limit of 2 (rc %d)", rc);
    osl_job_handle(job, (void **)&jh);
    memset(&info, 0, sizeof info);
    ok = QueryInformationJobObject(jh, JobObjectExtendedLimitInformation,
                                   &info, sizeof info, NULL);
    check(ok && info.BasicLimitInformation.LimitFlags ==
                    (JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE |
                     JOB_OBJECT_LIMIT_ACTIVE_PROCESS) &&
              info.BasicLimitInformation.ActiveProcessLimit == 2,
          1, "query reads back KILL_ON_JOB_CLOSE|ACTIVE_PROCESS, limit 2 "
             "(flags 0x%lx, limit %lu)",
          info.BasicLimitInformation.LimitFlags,
          info.BasicLimitInformation.ActiveProcessLimit);

    for (i = 0; i < 2; i++) {
        rc = start_tree(job, 0, 0, &pid, &procs[i], &fallback, &ready);
        check(rc == 0, 0, "process %d of 2 starts in the job (rc %d)", i + 1, rc);
    }
    /* Third and fourth: once through JOB_LIST, once through assign. */
    for (i = 2; i < 4; i++) {
        rc = start_tree(job, 0, i == 2 ? 0 : OSL_WIN_FORCE_SUSPEND, &pid,
                        &procs[i], &fallback, &ready);
        /* Wine 8 passes only the limit flags to wineserver, not the
         * count, and wineserver enforces no process limit. */
        check(rc != 0, 1, "a third process is refused via %s (rc %d)",
              i == 2 ? "JOB_LIST" : "suspended assign", rc);
    }
    rc = osl_job_accounting(job, &active, NULL, NULL);
    check(rc == 0 && active == 2, 1, "accounting: active %lu (want 2)", active);

    /* The limits were rewritten: KILL_ON_JOB_CLOSE must have survived. */
    osl_job_pids(job, pids, MAX_PIDS, &count);
    opened = open_members(pids, count, members);
    rc = osl_job_close(job);
    ended = count_ended(members, count, 5000);
    check(rc == 0 && count >= 2 && ended == (int)count, 0,
          "closing the job after set_limits still kills all %lu members (ended %d)",
          count, ended);
    close_all(members, opened > 0 ? count : 0);
    close_all(procs, 4);
}

/* Round 4: job memory limit. */
static void round_memory(void)
{
    osl_job *job;
    unsigned long pid, code;
    HANDLE h;
    int rc, fb, i;
    static const int mb[2] = {16, 512};

    printf("# round 4: job memory limit\n");
    rc = osl_job_create(OSL_JOB_KILL_ON_CLOSE, &job);
    check(rc == 0, 0, "create a KILL_ON_CLOSE job (rc %d)", rc);
    if (rc)
        return;
    rc = osl_job_set_limits(job, 0, (size_t)256 << 20);
    check(rc == 0, 0, "set a job memory limit of 256 MiB (rc %d)", rc);
    for (i = 0; i < 2; i++) {
        char args[32];

        snprintf(args, sizeof args, "alloc %d", mb[i]);
        code = 99;
        rc = spawn_self(job, args, 0, &pid, &h, &fb);
        if (rc == 0) {
            osl_win_wait(h, 20000);
            osl_win_exit_code(h, &code);
            CloseHandle(h);
        }
        if (i == 0)
            check(rc == 0 && code == 0, 0,
                  "a member may commit %d MiB (rc %d, exit %lu)", mb[i], rc, code);
        else
            check(rc == 0 && code == 3, 1,
                  "a member may not commit %d MiB (rc %d, exit %lu, 3 = refused)",
                  mb[i], rc, code);
    }
    osl_job_close(job);
}

/* Round 5: no completion port (polling), and assigning a running process. */
static void round_poll_assign(void)
{
    osl_job *job;
    unsigned long pid, pids[MAX_PIDS], count = 0, code = 0;
    HANDLE child = NULL;
    int rc, fb;
    double ready, t0, took;

    printf("# round 5: no completion port, assign a running process\n");
    rc = osl_job_create(OSL_JOB_KILL_ON_CLOSE | OSL_JOB_NO_PORT, &job);
    check(rc == 0, 0, "create a KILL_ON_CLOSE job without a port (rc %d)", rc);
    if (rc)
        return;
    rc = start_tree(NULL, 0, 0, &pid, &child, &fb, &ready);
    check(rc == 0, 0, "spawn a child outside any job (rc %d)", rc);
    if (rc) {
        osl_job_close(job);
        if (child) {
            TerminateProcess(child, 1);
            CloseHandle(child);
        }
        return;
    }
    rc = osl_job_assign(job, child);
    check(rc == 0, 0, "assign the running child to the job (rc %d)", rc);
    rc = osl_job_pids(job, pids, MAX_PIDS, &count);
    check(rc == 0 && count == 1 && pids[0] == pid, 0,
          "pids lists it (rc %d, count %lu)", rc, count);
    t0 = now_ms();
    rc = osl_job_wait_empty(job, 100);
    took = now_ms() - t0;
    check(rc == OSL_WIN_WAIT_TIMEOUT, 0,
          "polling wait_empty(100 ms) times out (rc %d after %.0f ms)", rc, took);
    t0 = now_ms();
    rc = osl_job_terminate(job, 78);
    if (rc == 0)
        rc = osl_job_wait_empty(job, 5000);
    took = now_ms() - t0;
    check(rc == 0, 0, "TerminateJobObject -> polling wait_empty returned 0 in %.1f ms (rc %d)",
          took, rc);
    rc = osl_win_wait(child, 2000);
    osl_win_exit_code(child, &code);
    check(rc == 0 && code == 78, 0, "the child ended with exit code 78 (rc %d, code %lu)",
          rc, code);
    if (rc)
        TerminateProcess(child, 1);
    CloseHandle(child);
    osl_job_close(job);
}

/* Round 6: console control events, sent from a process with its own console. */
static void round_ctrl(void)
{
    static const char *const kinds[3] = {"c", "break", "plain"};
    static const char *const why[] = {
        "arrived", "?", "spawn failed", "child not ready", "ctrl_event failed",
        "child did not exit", "wrong exit code", "the plain child got it too"};
    static const char *const what[3] = {
        "CTRL_C_EVENT reaches a new process group that re-enabled Ctrl+C",
        "CTRL_BREAK_EVENT reaches a new process group",
        "CTRL_C_EVENT reaches no process of a new group that left Ctrl+C "
        "disabled (why osl_pg refuses SIGINT)"};
    osl_job *job;
    int i, rc, fb;

    printf("# round 6: console control events\n");
    for (i = 0; i < 3; i++) {
        unsigned long pid, code = 99;
        HANDLE h;
        char args[32];

        rc = osl_job_create(OSL_JOB_KILL_ON_CLOSE, &job);
        if (rc) {
            check(0, 0, "create a job (rc %d)", rc);
            continue;
        }
        snprintf(args, sizeof args, "ctrlparent %s", kinds[i]);
        rc = spawn_self(job, args, 0, &pid, &h, &fb);
        if (rc == 0) {
            osl_win_wait(h, 30000);
            osl_win_exit_code(h, &code);
            CloseHandle(h);
        }
        check(rc == 0 && code == 0, i == 1, "%s (rc %d, %s)", what[i], rc,
              code < 8 ? why[code] : "no answer");
        osl_job_close(job);
    }
}

/* --- the re-executed roles --- */

static int role_child(int n, const char *event)
{
    HANDLE ev;
    int i;

    for (i = 0; i < n; i++) {
        unsigned long pid;
        HANDLE h;
        int fb, rc, tries = 0;

        /* Under Wine 8, CreateProcess from a process that is itself only
         * just created now and then fails with ERROR_INTERNAL_ERROR (1359;
         * seen once in a few dozen CI runs); a retry succeeds. Other errors
         * are reported at once. */
        do {
            rc = spawn_self(NULL, "grandchild", 0, &pid, &h, &fb);
            if (rc == ERROR_INTERNAL_ERROR)
                Sleep(50);
        } while (rc == ERROR_INTERNAL_ERROR && ++tries < 5);
        if (rc)
            printf("child: grandchild %d failed: %d\n", i, rc);
        else
            CloseHandle(h);
    }
    fflush(stdout);
    ev = OpenEventA(EVENT_MODIFY_STATE, FALSE, event);
    if (ev) {
        SetEvent(ev);
        CloseHandle(ev);
    }
    Sleep(SLEEPER_MS);
    return 0;
}

static int role_echo(void)
{
    char val[64] = "", cwd[MAX_PATH] = "";

    GetEnvironmentVariableA("OSL_PG_TEST", val, sizeof val);
    GetCurrentDirectoryA(sizeof cwd, cwd);
    printf("%s|%s\n", val, cwd);
    fflush(stdout);
    return 0;
}

static int role_alloc(int mb)
{
    void *p = VirtualAlloc(NULL, (SIZE_T)mb << 20, MEM_COMMIT | MEM_RESERVE,
                           PAGE_READWRITE);

    return p ? 0 : 3;
}

static BOOL WINAPI on_ctrl(DWORD ev)
{
    ExitProcess(ev == CTRL_C_EVENT ? 42 : ev == CTRL_BREAK_EVENT ? 43 : 44);
    return TRUE;
}

static int role_ctrlchild(const char *event, int plain)
{
    HANDLE ev;

    /* CREATE_NEW_PROCESS_GROUP starts us with Ctrl+C ignored: undo that,
     * unless we play an ordinary program, which never does. */
    if (!plain)
        SetConsoleCtrlHandler(NULL, FALSE);
    SetConsoleCtrlHandler(on_ctrl, TRUE);
    ev = OpenEventA(EVENT_MODIFY_STATE, FALSE, event);
    if (ev) {
        SetEvent(ev);
        CloseHandle(ev);
    }
    Sleep(20000);
    return 1;
}

/* Start a "ctrlchild" (plain or not) in a new group and in `job`; wait
 * until it is ready. 0, or 2 (spawn failed) or 3 (never ready). */
static int start_ctrlchild(osl_job *job, int plain, unsigned long *pid,
                           HANDLE *h)
{
    char name[64], args[128];
    HANDLE ev, both[2];
    int fb, ready;

    ev = new_event(name, sizeof name);
    snprintf(args, sizeof args, "ctrlchild %s%s", name, plain ? " plain" : "");
    if (spawn_self(job, args, OSL_WIN_NEW_GROUP, pid, h, &fb)) {
        CloseHandle(ev);
        return 2;
    }
    both[0] = ev;
    both[1] = *h;
    ready = WaitForMultipleObjects(2, both, FALSE, 10000) == WAIT_OBJECT_0;
    CloseHandle(ev);
    return ready ? 0 : 3;
}

/* Exit: 0 arrived, 2 spawn failed, 3 not ready, 4 ctrl_event failed,
 * 5 child did not exit, 6 wrong exit code, 7 the plain child got it.
 * `kind` 0: CTRL_C, 1: CTRL_BREAK, 2: CTRL_C to a plain child, then to a
 * willing one; once the willing one has exited on it, the plain one must
 * still run (the event to it was sent first). */
static int role_ctrlparent(int kind)
{
    HANDLE h, plain = NULL;
    unsigned long pid, plain_pid = 0, code = 0;
    osl_job *job;
    int rc;

    /* A console of our own, so the event does not reach the test's
     * console (if any) and Wine has a real console to deliver it on. */
    FreeConsole();
    AllocConsole();
    if (osl_job_create(OSL_JOB_KILL_ON_CLOSE, &job))
        return 2;
    if (kind == 2 && (rc = start_ctrlchild(job, 1, &plain_pid, &plain)))
        return rc;
    if ((rc = start_ctrlchild(job, 0, &pid, &h)))
        return rc;
    /* GenerateConsoleCtrlEvent succeeds for the plain group too: Windows
     * documents that CTRL_C_EVENT to a group "succeeds" but is not received. */
    if (plain && osl_win_ctrl_event(OSL_WIN_CTRL_C, plain_pid))
        return 4;
    rc = osl_win_ctrl_event(kind == 1 ? OSL_WIN_CTRL_BREAK : OSL_WIN_CTRL_C, pid);
    if (rc)
        return 4;
    if (osl_win_wait(h, 5000))
        return 5;
    osl_win_exit_code(h, &code);
    if (code != (kind == 1 ? 43u : 42u))
        return 6;
    if (plain && osl_win_wait(plain, 0) == 0)
        return 7;
    osl_job_close(job); /* ends the plain child */
    return 0;
}

int main(int argc, char **argv)
{
    HMODULE ntdll = GetModuleHandleA("ntdll.dll");

    under_wine = ntdll && GetProcAddress(ntdll, "wine_get_version") != NULL;
    GetModuleFileNameW(NULL, self, MAX_PATH);

    if (argc >= 4 && !strcmp(argv[1], "child"))
        return role_child(atoi(argv[2]), argv[3]);
    if (argc >= 2 && !strcmp(argv[1], "grandchild")) {
        Sleep(SLEEPER_MS);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "echo"))
        return role_echo();
    if (argc >= 3 && !strcmp(argv[1], "alloc"))
        return role_alloc(atoi(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "ctrlchild"))
        return role_ctrlchild(argv[2], argc >= 4 && !strcmp(argv[3], "plain"));
    if (argc >= 3 && !strcmp(argv[1], "ctrlparent"))
        return role_ctrlparent(!strcmp(argv[2], "break") ? 1
                               : !strcmp(argv[2], "plain") ? 2 : 0);

    printf("# osl_pg Windows job tests%s\n", under_wine ? " (under Wine)" : "");
    round_spawn();
    round_terminate();
    round_close();
    round_limit();
    round_memory();
    round_poll_assign();
    round_ctrl();
    if (differed)
        printf("# %d checks differed as expected under Wine\n", differed);
    printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed ? 1 : 0;
}
