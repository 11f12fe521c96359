/*
 * cdef_windows.h - the cffi cdef of the Windows helpers in osl_pg.h.
 * Plain declarations only (cffi's parser, not a C compiler, reads this);
 * constants are `#define X ...` so their values come from osl_pg.h when the
 * module is compiled (API mode: ffi.set_source(..., '#include "osl_pg.h"')).
 * Keep it in step with the `#ifdef _WIN32` block of osl_pg.h.
 */
typedef struct osl_job osl_job;

#define OSL_JOB_KILL_ON_CLOSE ...
#define OSL_JOB_NO_PORT ...
#define OSL_WIN_NEW_GROUP ...
#define OSL_WIN_DETACHED ...
#define OSL_WIN_FORCE_SUSPEND ...
#define OSL_WIN_CTRL_C ...
#define OSL_WIN_CTRL_BREAK ...
#define OSL_WIN_INFINITE ...
#define OSL_WIN_WAIT_TIMEOUT ...
#define OSL_WIN_MORE_DATA ...
#define OSL_WIN_STILL_ACTIVE ...

struct osl_win_spawn_attr {
    const wchar_t *application;
    const wchar_t *command_line;
    const wchar_t *environment;
    const wchar_t *cwd;
    void *std_handles[3];
    unsigned long flags;
    osl_job *job;
};

int osl_job_create(unsigned long flags, osl_job **job_out);
int osl_job_close(osl_job *job);
int osl_job_handle(osl_job *job, void **handle_out);
int osl_job_assign(osl_job *job, void *process);
int osl_job_terminate(osl_job *job, unsigned long exit_code);
int osl_job_pids(osl_job *job, unsigned long *pids, unsigned long capacity,
                 unsigned long *count_out);
int osl_job_accounting(osl_job *job, unsigned long *active_out,
                       unsigned long *total_out,
                       unsigned long *terminated_out);
int osl_job_set_limits(osl_job *job, unsigned long active_processes,
                       size_t job_memory);
int osl_job_wait_empty(osl_job *job, unsigned long timeout_ms);

int osl_win_spawn(const struct osl_win_spawn_attr *attr,
                  unsigned long *pid_out, void **process_out,
                  int *used_fallback);
int osl_win_wait(void *process, unsigned long timeout_ms);
int osl_win_exit_code(void *process, unsigned long *code_out);
int osl_win_close_handle(void *handle);
int osl_win_ctrl_event(unsigned long event, unsigned long pgid);
