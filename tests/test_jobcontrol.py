"""Sessions and terminal job control, on a real pseudo-terminal.

pytest runs without a terminal, so each test opens a pty and starts a
helper that is a session leader (start_new_session) and takes the pty's
slave as its controlling terminal. The helper plays the shell: it runs the
scenario with osl_pg and writes what it saw (tcgetpgrp, psutil states) to a
JSON file; the test plays the user at the keyboard, reading the master side
and typing Ctrl-Z or lines into it."""
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import alive, wait_for

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="needs a pty")

# Preamble of every helper: become the session leader of the pty.
TAKE_TTY = textwrap.dedent("""
    import json, os, sys, signal, threading, termios, time, psutil
    tty, out = sys.argv[1], sys.argv[2]
    fd = os.open(tty, os.O_RDWR)  # a session leader opening a tty gets it as its terminal
    for i in range(3):
        os.dup2(fd, i)
    facts = {"mine": os.tcgetpgrp(0) == os.getpgrp()}
    def save():
        with open(out, "w") as f:
            json.dump(facts, f)
    def states(job):
        return sorted(psutil.Process(m.pid).status() for m in job.group.members() if not m.zombie)
""")


class Pty:
    """The user's side of a pty whose slave is a helper's terminal."""

    def __init__(self, code, tmp_path, *args):
        # Our slave fd stays open (O_NOCTTY: it is not our terminal) so the
        # master does not read EIO before the helper has opened the slave.
        self.master, self.slave = os.openpty()
        name = os.ttyname(self.slave)
        self.out = tmp_path / "facts.json"
        self.seen = b""
        self.proc = subprocess.Popen([sys.executable, "-c", TAKE_TTY + textwrap.dedent(code), name, str(self.out), *args],
                                     start_new_session=True, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def expect(self, text, timeout=30.0):
        """Read the terminal's output until `text` shows up."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.master], [], [], remaining)[0]:
                raise AssertionError(f"{text!r} never appeared on the terminal; it showed {self.seen!r}"
                                     f"{self._why()}")
            try:
                self.seen += os.read(self.master, 4096)
            except OSError:  # EIO: every slave fd closed
                raise AssertionError(f"terminal closed before {text!r}; it showed {self.seen!r}")
        return self.seen

    def _why(self):
        if self.proc.poll() is None:
            return ""
        return f"; the helper exited {self.proc.returncode}: {self.proc.stderr.read().decode()}"

    def type(self, data):
        os.write(self.master, data)

    def facts(self, timeout=60.0):
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            self.drain()
        assert self.proc.returncode == 0, err.decode()
        return json.loads(self.out.read_text())

    def drain(self):
        while select.select([self.master], [], [], 0)[0]:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                break
            if not data:
                break
            self.seen += data

    def close(self):
        os.close(self.slave)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


@pytest.fixture
def pty_of(tmp_path):
    made = []

    def start(code, *args):
        p = Pty(code, tmp_path, *args)
        made.append(p)
        return p

    yield start
    for p in made:
        p.close()


# -- sessions ---------------------------------------------------------------------------

DETACHED = """
    from osl_pg import ProcessExecutor, ProcessSpawnOperation
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a shell survives Ctrl-C
    ex = ProcessExecutor("shell")
    d = ex.execute(ProcessSpawnOperation("sleep").arg("120").with_detach_from_terminal())
    d.group.detach()  # it is meant to outlive us
    # An ordinary job of ours: a shell resets for its jobs the SIGINT it
    # ignores itself (an ignored signal is otherwise inherited, as in subprocess).
    n = ex.execute(ProcessSpawnOperation("sleep").arg("120").with_signal_reset("all"))
    print("PIDS", d.pid, n.pid, "END", flush=True)
    while True:
        signal.pause()
"""


def test_detached_session_survives_sigint_and_hangup_of_the_terminal(pty_of):
    p = pty_of(DETACHED)
    seen = p.expect("END").decode()
    detached, attached = map(int, seen.split("PIDS")[1].split("END")[0].split())
    tty = psutil.Process(p.proc.pid).terminal()
    try:
        assert psutil.Process(attached).terminal() == tty and os.getsid(attached) == p.proc.pid
        assert psutil.Process(detached).terminal() is None
        assert os.getsid(detached) == detached == os.getpgid(detached)
        p.type(b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground group
        assert wait_for(lambda: not alive(attached), timeout=30)
        assert alive(detached)
        os.close(p.master)  # hang up: SIGHUP to the session leader and the foreground group
        p.master = -1
        p.proc.wait(30)
        assert p.proc.returncode == -signal.SIGHUP
        assert alive(detached), "a session leader without a terminal gets no SIGHUP"
    finally:
        try:
            os.kill(detached, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_for(lambda: not alive(detached))


# -- job control ------------------------------------------------------------------------

# The job: a leader and its child. After Ctrl-Z and a SIGCONT it waits until
# it has the terminal again, then reads a line from it.
FOREGROUND_JOB = textwrap.dedent("""
    import os, signal, sys, time
    conts = []
    signal.signal(signal.SIGCONT, lambda *a: conts.append(1))
    child = os.fork()
    if child == 0:
        while True:
            signal.pause()
    print("READY1 fg=%s" % (os.tcgetpgrp(0) == os.getpgrp()), flush=True)
    while not conts:                         # until stopped (Ctrl-Z) and continued
        time.sleep(0.01)
    while os.tcgetpgrp(0) != os.getpgrp():   # and until it is back in the foreground
        time.sleep(0.01)
    print("READY2", flush=True)
    print("GOT", sys.stdin.readline().strip(), flush=True)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
""")

FOREGROUND = """
    from osl_pg import ProcessSpawnOperation
    from osl_pg.jobcontrol import Job
    attr = termios.tcgetattr(0)
    attr[3] |= termios.TOSTOP  # background writes stop the writer (SIGTTOU)
    termios.tcsetattr(0, termios.TCSANOW, attr)
    JOB = sys.argv[3]
    job = Job.start(ProcessSpawnOperation(sys.executable).with_args(["-c", JOB]))
    facts["pgid"] = job.group.pgid
    facts["first"] = job.foreground()             # the user types Ctrl-Z
    facts["mine_after_stop"] = os.tcgetpgrp(0) == os.getpgrp()
    # The leader's stop is what foreground() saw; the kernel stops the other
    # member when it next runs: give it that moment (bounded), then look.
    deadline = time.monotonic() + 30
    while states(job) != ["stopped", "stopped"] and time.monotonic() < deadline:
        time.sleep(0.01)
    facts["stopped_states"] = states(job)
    facts["stopped_state"] = job.state
    job.background()                              # continue it without the terminal
    deadline = time.monotonic() + 30
    while job.state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    facts["running_states"] = states(job)

    def chatter():  # we write to the terminal while the job has it (tostop is set)
        while os.tcgetpgrp(0) != job.group.pgid:
            time.sleep(0.01)
        os.write(1, b"CALLER-WRITE\\n")
    t = threading.Thread(target=chatter)
    t.start()
    facts["second"] = job.foreground()            # the user types a line
    t.join()
    facts["mine_at_end"] = os.tcgetpgrp(0) == os.getpgrp()
    facts["returncode"] = job.group.leader.returncode
    save()
"""


def test_foreground_job_gets_the_terminal_stops_continues_and_gives_it_back(pty_of):
    p = pty_of(FOREGROUND, FOREGROUND_JOB)
    p.expect("READY1 fg=True\r\n")  # the whole line: its write() is over, no tty I/O is pending
    p.type(b"\x1a")  # Ctrl-Z: SIGTSTP to the foreground group, which is the job
    p.expect("READY2")
    p.expect("CALLER-WRITE")
    p.type(b"hello\n")
    p.expect("GOT hello")
    f = p.facts()
    assert f["mine"] and f["first"] == "stopped" and f["mine_after_stop"]
    assert f["stopped_states"] == ["stopped", "stopped"] and f["stopped_state"] == "stopped"
    assert "stopped" not in f["running_states"] and len(f["running_states"]) == 2
    assert f["second"] == "done" and f["mine_at_end"] and f["returncode"] == 0


BACKGROUND = """
    from osl_pg import ProcessSpawnOperation
    from osl_pg.jobcontrol import Job
    attr = termios.tcgetattr(0)
    attr[3] |= termios.TOSTOP
    termios.tcsetattr(0, termios.TCSANOW, attr)
    code = "import sys; print('BG-WRITE', flush=True); print('BG-READ', sys.stdin.readline().strip(), flush=True)"
    job = Job.start(ProcessSpawnOperation(sys.executable).with_args(["-c", code]))
    facts["writer"] = job.wait()                  # SIGTTOU: it stops instead of writing
    facts["writer_states"] = states(job)
    facts["mine"] = os.tcgetpgrp(0) == os.getpgrp()
    job.stop()                                    # stop/continue it as a unit meanwhile
    job.cont()
    facts["again"] = job.wait()                   # continued in the background: stops again
    print("NOW-FG", flush=True)
    facts["fg"] = job.foreground()                # writes, then reads the user's line
    facts["mine_at_end"] = os.tcgetpgrp(0) == os.getpgrp()
    facts["returncode"] = job.group.leader.returncode
    reader = Job.start(ProcessSpawnOperation(sys.executable).with_args(["-c", "input()"]))
    facts["reader"] = reader.wait()               # SIGTTIN
    reader.group.close()
    facts["reader_end"] = reader.state
    save()
"""


def test_background_job_stops_on_terminal_io_instead_of_hanging_the_caller(pty_of):
    p = pty_of(BACKGROUND)
    p.expect("NOW-FG")
    p.expect("BG-WRITE")
    p.type(b"line\n")
    p.expect("BG-READ line")
    f = p.facts()
    assert f["writer"] == "stopped" and f["writer_states"] == ["stopped"] and f["mine"]
    assert f["again"] == "stopped"
    assert f["fg"] == "done" and f["mine_at_end"] and f["returncode"] == 0
    assert f["reader"] == "stopped" and f["reader_end"] == "done"
    assert p.seen.count(b"BG-WRITE") == 1


def test_foreground_needs_a_terminal(executor):
    from osl_pg import ProcessSpawnOperation
    from osl_pg.jobcontrol import Job
    job = Job.start(ProcessSpawnOperation("sleep").arg("120"), executor)
    try:
        assert job.state == "running"
        job.stop(signal.SIGSTOP)
        assert job.wait(30) == "stopped" and job.state == "stopped"
        assert psutil.Process(job.group.pgid).status() == psutil.STATUS_STOPPED
        with pytest.raises(NotImplementedError, match="terminal"):
            job.foreground()
        job.cont()
        assert wait_for(lambda: job.state == "running")
    finally:
        job.group.close()
    assert job.state == "done"
