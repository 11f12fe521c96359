"""run() at a real terminal: Ctrl-Z under an interactive shell, and two
threads that both want the terminal. Driven through a pty."""
import os
import re
import sys
import time

import psutil
import pytest

from conftest import Pty, linux_only, py

pytestmark = linux_only


def state(pid):
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


def wait_state(pid, wanted, timeout=20):
    deadline = time.monotonic() + timeout
    while state(pid) != wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return state(pid)


RUN_AT_THE_SHELL = (
    "import os, osl_pg; "
    "r = osl_pg.run(['sh', '-c', 'echo child-pid:$$; read x; echo got:$x']); "
    "print('rc', r.returncode, flush=True)")


CHILD = "echo child-pid:\\$\\$; read x; echo got:\\$x"  # $ escaped for bash: the child's sh expands them
COMMANDS = {
    "osl_pg.run": f"{sys.executable} -c \"{RUN_AT_THE_SHELL.replace('$', chr(92) + '$')}\"",
    "osl-pg run": f"{sys.executable} -m osl_pg run -- sh -c \"{CHILD}\"",
}


@pytest.mark.skipif(not os.path.exists("/bin/bash"), reason="needs bash for an interactive shell")
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ctrl_z_stops_run_as_a_nested_shell_and_fg_continues_it(command):
    # Under an interactive bash: Ctrl-Z stops the child (the terminal sends
    # SIGTSTP to its group); run() must then take the terminal back and stop
    # itself, so bash says "Stopped" and has its prompt; `fg` continues both
    # and the child reads the terminal again. run() used to keep waiting
    # with the terminal left to a stopped group: bash never got it back.
    env = dict(os.environ, PS1="PROMPT$ ", TERM="dumb")
    tty = Pty(["/bin/bash", "--norc", "--noprofile", "-i"], env=env)
    try:
        tty.expect("PROMPT$ ")
        tty.send(COMMANDS[command].encode() + b"\n")
        tty.expect_re(rb"child-pid:(\d+)\s")  # the child's output, not bash's echo of the line
        child = int(re.search(rb"child-pid:(\d+)\s", tty.seen).group(1))
        parent = psutil.Process(child).ppid()
        tty.send(b"\x1a")  # Ctrl-Z
        tty.expect("Stopped")
        tty.expect("PROMPT$ ")
        assert wait_state(child, psutil.STATUS_STOPPED) == psutil.STATUS_STOPPED
        assert wait_state(parent, psutil.STATUS_STOPPED) == psutil.STATUS_STOPPED
        assert os.tcgetpgrp(tty.master) == os.getpgid(tty.proc.pid)  # the shell has the terminal
        tty.send(b"fg\n")
        assert wait_state(child, psutil.STATUS_SLEEPING) == psutil.STATUS_SLEEPING
        assert os.tcgetpgrp(tty.master) == os.getpgid(child)  # the child's group has it again
        tty.send(b"hello\n")
        tty.expect("got:hello")
        tty.seen = b""
        tty.expect("PROMPT$ ")
        tty.send(b"echo status $?\n")  # the job's exit status, as bash saw it after fg
        tty.expect("status 0")
        tty.send(b"exit\n")
        assert tty.proc.wait(20) == 0
    finally:
        tty.close()


TWO_THREADS = r"""
import fcntl, os, sys, termios, threading
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
import osl_pg
codes = {}
def reader(name):
    r = osl_pg.run(["sh", "-c", f"echo {name}-waiting; read x; echo {name}-got:$x"])
    codes[name] = r.returncode
threads = [threading.Thread(target=reader, args=(n,)) for n in ("a", "b")]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("codes", sorted(codes.items()), os.tcgetpgrp(0) == os.getpgrp(), flush=True)
"""


def test_two_threads_running_commands_at_the_terminal_take_turns():
    # Both children want to read the terminal; it has one foreground group.
    # The one that does not get it stops on SIGTTIN and must get it, and a
    # SIGCONT, once the first is done; they used to push each other into
    # the background, and one stayed stopped for ever.
    tty = Pty(py(TWO_THREADS))
    try:
        tty.expect("a-waiting")
        tty.expect("b-waiting")
        tty.send(b"first\n")
        tty.expect("-got:first")
        tty.send(b"second\n")
        tty.expect("-got:second")
        tty.expect("codes [('a', 0), ('b', 0)] True")
        assert tty.proc.wait(20) == 0
    finally:
        tty.close()
