/*
 * osl_pg_win.c - the Windows half of the osl_pg C layer: Job Objects.
 *
 * A "group" on Windows is a Job Object. A child is put in its job before it
 * runs a single instruction, so every process it starts is a member too
 * (job membership is inherited), and the whole tree can be listed, counted,
 * limited, waited for and killed at once.
 *
 * Conventions (see osl_pg.h): every function returns 0 or a GetLastError()
 * code, results come back through out-parameters, no Python API.
 */
#ifndef _WIN32_WINNT
#define _WIN32_WINNT 0x0A00 /* PROC_THREAD_ATTRIBUTE_JOB_LIST is a Win10 name */
#endif
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "osl_pg.h"

/* The job handle and the completion port that reports "no process left".
 * Both handles are owned here; neither is inheritable, so no child holds the
 * job open (a child holding it would keep KILL_ON_JOB_CLOSE from firing). */
struct osl_job {
    HANDLE job;
    HANDLE port; /* NULL with OSL_JOB_NO_PORT */
    unsigned long flags;
};

/* Longest single sleep on the completion port in osl_job_wait_empty(). */
#define PORT_SLICE_MS 100
/* Longest sleep between two accounting polls without a port. */
#define POLL_MAX_MS 20

/* GetLastError(), never 0: a failed call must not read as success. */
static int last_error(void)
{
    DWORD e = GetLastError();
    return e ? (int)e : ERROR_GEN_FAILURE;
}

/* Write the job's whole limit set. Built from scratch rather than
 * read-modify-write: Wine 8 answers the ExtendedLimitInformation query with
 * zeros, which would silently drop KILL_ON_JOB_CLOSE. This file is the only
 * writer of the limits, so job->flags plus the arguments are the truth. */
static int write_limits(osl_job *job, unsigned long active_processes,
                        size_t job_memory)
{
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION info;
    DWORD *lf = &info.BasicLimitInformation.LimitFlags;

    memset(&info, 0, sizeof info);
    if (job->flags & OSL_JOB_KILL_ON_CLOSE)
        *lf |= JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    if (active_processes) {
        *lf |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
        info.BasicLimitInformation.ActiveProcessLimit = active_processes;
    }
    if (job_memory) {
        *lf |= JOB_OBJECT_LIMIT_JOB_MEMORY;
        info.JobMemoryLimit = job_memory;
    }
    if (!SetInformationJobObject(job->job, JobObjectExtendedLimitInformation,
                                 &info, sizeof info))
        return last_error();
    return 0;
}

int osl_job_create(unsigned long flags, osl_job **job_out)
{
    osl_job *job;
    int rc;

    *job_out = NULL;
    job = calloc(1, sizeof *job);
    if (!job)
        return ERROR_NOT_ENOUGH_MEMORY;
    job->flags = flags;
    /* Anonymous and with default security: only our handle reaches it. */
    job->job = CreateJobObjectW(NULL, NULL);
    if (!job->job) {
        rc = last_error();
        goto fail;
    }
    if (flags & OSL_JOB_KILL_ON_CLOSE) {
        rc = write_limits(job, 0, 0);
        if (rc)
            goto fail;
    }
    if (!(flags & OSL_JOB_NO_PORT)) {
        /* The port must be associated before the first process joins: the
         * kernel posts only events that happen after association, and a job
         * takes one association for its lifetime. */
        JOBOBJECT_ASSOCIATE_COMPLETION_PORT acp;

        job->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
        if (!job->port) {
            rc = last_error();
            goto fail;
        }
        acp.CompletionKey = job->job;
        acp.CompletionPort = job->port;
        if (!SetInformationJobObject(job->job,
                                     JobObjectAssociateCompletionPortInformation,
                                     &acp, sizeof acp)) {
            rc = last_error();
            goto fail;
        }
    }
    *job_out = job;
    return 0;

fail:
    osl_job_close(job);
    return rc;
}

int osl_job_close(osl_job *job)
{
    int rc = 0;

    if (!job)
        return 0;
    /* With KILL_ON_JOB_CLOSE this kills every member, provided this was the
     * last handle to the job (the caller may have duplicated it). */
    if (job->job && !CloseHandle(job->job))
        rc = last_error();
    if (job->port && !CloseHandle(job->port) && !rc)
        rc = last_error();
    free(job);
    return rc;
}

int osl_job_handle(osl_job *job, void **handle_out)
{
    *handle_out = job->job;
    return 0;
}

int osl_job_assign(osl_job *job, void *process)
{
    if (!AssignProcessToJobObject(job->job, process))
        return last_error();
    return 0;
}

int osl_job_terminate(osl_job *job, unsigned long exit_code)
{
    if (!TerminateJobObject(job->job, exit_code))
        return last_error();
    return 0;
}

int osl_job_pids(osl_job *job, unsigned long *pids, unsigned long capacity,
                 unsigned long *count_out)
{
    JOBOBJECT_BASIC_PROCESS_ID_LIST *list = NULL;
    const ULONG_PTR *ids;
    DWORD room = capacity > 16 ? capacity : 16; /* ids the buffer can hold */
    DWORD n, i;
    int tries;

    *count_out = 0;
    for (tries = 0;; tries++) {
        size_t size = offsetof(JOBOBJECT_BASIC_PROCESS_ID_LIST, ProcessIdList) +
                      (size_t)room * sizeof(ULONG_PTR);

        free(list);
        list = malloc(size);
        if (!list)
            return ERROR_NOT_ENOUGH_MEMORY;
        if (QueryInformationJobObject(job->job, JobObjectBasicProcessIdList,
                                      list, (DWORD)size, NULL))
            break;
        if (GetLastError() != ERROR_MORE_DATA || tries == 8) {
            int rc = last_error();
            free(list);
            return rc;
        }
        /* The header says how many there are; the job may grow before the
         * next call, hence the slack (and doubling if the header is 0). */
        room = list->NumberOfAssignedProcesses > room
                   ? list->NumberOfAssignedProcesses + 16
                   : room * 2;
    }
    /* Index through a pointer to the whole buffer, never list->ProcessIdList[i]
     * past the declared one-element array: mingw gcc -O1 miscompiled that. */
    ids = (const ULONG_PTR *)&list->ProcessIdList[0];
    n = list->NumberOfProcessIdsInList;
    for (i = 0; i < n && i < capacity; i++)
        pids[i] = (unsigned long)ids[i]; /* pids are DWORDs in a ULONG_PTR */
    free(list);
    *count_out = n;
    return n > capacity ? OSL_WIN_MORE_DATA : 0;
}

int osl_job_accounting(osl_job *job, unsigned long *active_out,
                       unsigned long *total_out, unsigned long *terminated_out)
{
    JOBOBJECT_BASIC_ACCOUNTING_INFORMATION info;

    if (!QueryInformationJobObject(job->job,
                                   JobObjectBasicAccountingInformation, &info,
                                   sizeof info, NULL))
        return last_error();
    if (active_out)
        *active_out = info.ActiveProcesses;
    if (total_out)
        *total_out = info.TotalProcesses;
    if (terminated_out)
        *terminated_out = info.TotalTerminatedProcesses;
    return 0;
}

int osl_job_set_limits(osl_job *job, unsigned long active_processes,
                       size_t job_memory)
{
    return write_limits(job, active_processes, job_memory);
}

/* Milliseconds left of `timeout_ms` since `start`; INFINITE stays INFINITE. */
static DWORD time_left(ULONGLONG start, unsigned long timeout_ms)
{
    ULONGLONG spent;

    if (timeout_ms == INFINITE)
        return INFINITE;
    spent = GetTickCount64() - start;
    return spent >= timeout_ms ? 0 : (DWORD)(timeout_ms - spent);
}

int osl_job_wait_empty(osl_job *job, unsigned long timeout_ms)
{
    ULONGLONG start = GetTickCount64();
    DWORD poll = 1;

    /* The accounting count is the truth; port messages only wake us up. A
     * message may be stale (an ACTIVE_PROCESS_ZERO before a new member
     * joined) or taken by another thread waiting on the same job, so every
     * wake-up re-reads the count, and port waits are sliced so a second
     * waiter that lost the message still sees the job empty. Reading the
     * port also drains the NEW_PROCESS/EXIT_PROCESS messages that would
     * otherwise pile up in it. */
    for (;;) {
        unsigned long active;
        DWORD left, msg;
        ULONG_PTR key;
        LPOVERLAPPED ov;
        int rc = osl_job_accounting(job, &active, NULL, NULL);

        if (rc)
            return rc;
        if (active == 0)
            return 0;
        left = time_left(start, timeout_ms);
        if (left == 0)
            return WAIT_TIMEOUT;
        if (job->port) {
            if (!GetQueuedCompletionStatus(job->port, &msg, &key, &ov,
                                           left < PORT_SLICE_MS ? left
                                                                : PORT_SLICE_MS) &&
                GetLastError() != WAIT_TIMEOUT)
                return last_error();
        } else {
            Sleep(left < poll ? left : poll);
            if (poll < POLL_MAX_MS)
                poll *= 2;
        }
    }
}

/* One CreateProcessW call. The attribute list carries the handle list and,
 * when *job_attr is set on entry, the job; *job_attr is cleared when the
 * system refuses the job attribute (before Windows 10), and then the child
 * is created suspended so the caller can assign it before it runs. */
static int create_process(const struct osl_win_spawn_attr *a, wchar_t *cmd,
                          HANDLE std[3], HANDLE *inherit, DWORD n_inherit,
                          int *job_attr, PROCESS_INFORMATION *pi)
{
    STARTUPINFOEXW si;
    LPPROC_THREAD_ATTRIBUTE_LIST attrs;
    SIZE_T size = 0;
    DWORD flags = EXTENDED_STARTUPINFO_PRESENT | CREATE_UNICODE_ENVIRONMENT;
    int rc = 0;

    memset(&si, 0, sizeof si);
    si.StartupInfo.cb = sizeof si;
    /* Always pass the std handles explicitly: a slot the caller left NULL got
     * the parent's handle, so "inherit" means the same thing whether or not
     * the parent has a console. */
    si.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
    si.StartupInfo.hStdInput = std[0];
    si.StartupInfo.hStdOutput = std[1];
    si.StartupInfo.hStdError = std[2];

    /* The first call only reports the size (and fails by design). */
    InitializeProcThreadAttributeList(NULL, 2, 0, &size);
    attrs = malloc(size);
    if (!attrs)
        return ERROR_NOT_ENOUGH_MEMORY;
    if (!InitializeProcThreadAttributeList(attrs, 2, 0, &size)) {
        rc = last_error();
        free(attrs);
        return rc;
    }
    /* An empty handle list is invalid; with nothing to inherit, inherit
     * nothing (bInheritHandles below is FALSE then). */
    if (n_inherit &&
        !UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_HANDLE_LIST,
                                   inherit, n_inherit * sizeof(HANDLE), NULL,
                                   NULL)) {
        rc = last_error();
        goto out;
    }
    /* The child joins the job as it is created, before its first instruction:
     * nothing it starts can escape. Unknown to Windows before 10: fall back. */
    if (*job_attr &&
        !UpdateProcThreadAttribute(attrs, 0, PROC_THREAD_ATTRIBUTE_JOB_LIST,
                                   &a->job->job, sizeof(HANDLE), NULL, NULL))
        *job_attr = 0;
    si.lpAttributeList = attrs;

    if (a->job && !*job_attr)
        flags |= CREATE_SUSPENDED;
    if (a->flags & OSL_WIN_NEW_GROUP)
        flags |= CREATE_NEW_PROCESS_GROUP;
    if (a->flags & OSL_WIN_DETACHED)
        flags |= DETACHED_PROCESS;
    if (!CreateProcessW(a->application, cmd, NULL, NULL, n_inherit > 0, flags,
                        (LPVOID)a->environment, a->cwd, &si.StartupInfo, pi))
        rc = last_error();
out:
    DeleteProcThreadAttributeList(attrs);
    free(attrs);
    return rc;
}

int osl_win_spawn(const struct osl_win_spawn_attr *a, unsigned long *pid_out,
                  void **process_out, int *used_fallback)
{
    static const DWORD std_ids[3] = {STD_INPUT_HANDLE, STD_OUTPUT_HANDLE,
                                     STD_ERROR_HANDLE};
    HANDLE std[3] = {NULL, NULL, NULL}, inherit[3];
    DWORD n_inherit = 0;
    PROCESS_INFORMATION pi;
    wchar_t *cmd = NULL;
    int job_attr = a->job && !(a->flags & OSL_WIN_FORCE_SUSPEND);
    int rc = 0, i;

    *pid_out = 0;
    *process_out = NULL;
    if (used_fallback)
        *used_fallback = 0;

    /* CreateProcessW may write into the command line: give it a copy. */
    if (a->command_line) {
        size_t len = wcslen(a->command_line) + 1;

        cmd = malloc(len * sizeof(wchar_t));
        if (!cmd)
            return ERROR_NOT_ENOUGH_MEMORY;
        memcpy(cmd, a->command_line, len * sizeof(wchar_t));
    }

    /* Each std handle is duplicated as inheritable and only the duplicates
     * go in PROC_THREAD_ATTRIBUTE_HANDLE_LIST: the caller's handles need not
     * be inheritable, inheritable handles of other threads' spawns don't
     * leak into this child, and stdout == stderr still makes two distinct
     * list entries (a repeated handle makes CreateProcess fail). */
    for (i = 0; i < 3; i++) {
        HANDLE h = a->std_handles[i] ? a->std_handles[i]
                                     : GetStdHandle(std_ids[i]);

        if (h == NULL || h == INVALID_HANDLE_VALUE)
            continue; /* the parent has none (a GUI process): neither has the child */
        if (!DuplicateHandle(GetCurrentProcess(), h, GetCurrentProcess(),
                             &std[i], 0, TRUE, DUPLICATE_SAME_ACCESS)) {
            rc = last_error();
            goto out;
        }
        inherit[n_inherit++] = std[i];
    }

    rc = create_process(a, cmd, std, inherit, n_inherit, &job_attr, &pi);
    if (rc)
        goto out;
    if (a->job && !job_attr) {
        if (used_fallback)
            *used_fallback = 1;
        /* Created suspended: it has run nothing yet. If it cannot join (or
         * cannot be resumed), kill it rather than let it run outside the job. */
        if (!AssignProcessToJobObject(a->job->job, pi.hProcess) ||
            ResumeThread(pi.hThread) == (DWORD)-1) {
            rc = last_error();
            TerminateProcess(pi.hProcess, 1);
            CloseHandle(pi.hThread);
            CloseHandle(pi.hProcess);
            goto out;
        }
    }
    CloseHandle(pi.hThread);
    *pid_out = pi.dwProcessId;
    *process_out = pi.hProcess;

out:
    /* The child has its own copies now. */
    for (i = 0; i < 3; i++)
        if (std[i])
            CloseHandle(std[i]);
    free(cmd);
    return rc;
}

int osl_win_wait(void *process, unsigned long timeout_ms)
{
    switch (WaitForSingleObject(process, timeout_ms)) {
    case WAIT_OBJECT_0:
        return 0;
    case WAIT_TIMEOUT:
        return WAIT_TIMEOUT;
    default:
        return last_error();
    }
}

int osl_win_exit_code(void *process, unsigned long *code_out)
{
    DWORD code;

    if (!GetExitCodeProcess(process, &code))
        return last_error();
    *code_out = code;
    return 0;
}

int osl_win_close_handle(void *handle)
{
    if (!CloseHandle(handle))
        return last_error();
    return 0;
}

int osl_win_ctrl_event(unsigned long event, unsigned long pgid)
{
    /* Group 0 means every process on the console, the caller included. */
    if (pgid == 0)
        return ERROR_INVALID_PARAMETER;
    if (!GenerateConsoleCtrlEvent(event, pgid))
        return last_error();
    return 0;
}
