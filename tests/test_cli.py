"""osl-pg run: the main job. Runs the real console script."""
import os
import re
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from conftest import alive

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "spawn-children.sh")


def osl_pg(*args, timeout=60):
    exe = shutil.which("osl-pg") or None
    cmd = [exe] if exe else [sys.executable, "-m", "osl_pg"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


def pids_named(stderr):
    return [int(p) for p in re.findall(r"(\d+) \(", stderr)]


def test_run_example_kills_and_names_leftovers():
    out = osl_pg("run", "--", "sh", EXAMPLE)
    assert out.returncode == 0, out.stderr
    assert "leaving its children running" in out.stdout
    named = pids_named(out.stderr)
    # sleep 300, sleep 301, the inner sh and its sleep 302 and sleep 303
    assert len(named) == 5, out.stderr
    assert out.stderr.count("(sleep)") == 4 and "(sh)" in out.stderr
    assert not any(alive(p) for p in named)


def test_run_timeout_ends_whole_tree_with_124():
    start = time.monotonic()
    out = osl_pg("run", "--timeout", "1", "--grace", "1", "--", "sh", "-c", "sleep 300 & sleep 300 & sleep 300")
    took = time.monotonic() - start
    assert out.returncode == 124, out.stderr
    assert "timeout" in out.stderr
    assert took < 30
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "300"]
                 and p.status() != psutil.STATUS_ZOMBIE]
    assert not leftovers


def test_run_exit_status_follows_timeout_command():
    assert osl_pg("run", "--", "sh", "-c", "exit 3").returncode == 3
    assert osl_pg("run", "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    assert osl_pg("run", "--", "no-such-cmd-osl").returncode == 127


def test_run_forwards_sigterm_to_the_group(tmp_path):
    exe = shutil.which("osl-pg")
    cmd = [exe] if exe else [sys.executable, "-m", "osl_pg"]
    marker = tmp_path / "pids"
    p = subprocess.Popen(cmd + ["run", "--grace", "2", "--", "sh", "-c",
                                f"sleep 300 & echo $! > {marker}; wait"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    child = int(marker.read_text())
    assert alive(child)
    p.send_signal(15)
    p.wait(20)
    assert not alive(child)
    assert p.returncode in (128 + 15, 0)


def test_help_shows_examples():
    out = osl_pg("run", "--help")
    assert out.returncode == 0 and "examples:" in out.stdout
