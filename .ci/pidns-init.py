"""pid 1 of a new pid namespace for .ci/run: runs the command given as its
own process group and reaps every orphan until it is gone. Inside, the
session leader (outside the namespace) is invisible: os.getsid(0) reads 0,
as on CI runners that run jobs in a container."""
import os
import sys

pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.execvp(sys.argv[1], sys.argv[1:])
rc = 1
while True:
    try:
        done, status = os.wait()
    except ChildProcessError:
        break
    if done == pid:
        rc = os.waitstatus_to_exitcode(status)
sys.exit(rc)
