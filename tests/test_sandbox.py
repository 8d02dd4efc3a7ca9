"""The sandbox contains hostile programs: each finishes within its limits and leaves the machine as it was.

Tests that need confinement skip, with the sandbox's own refusal as the reason, where this machine
cannot confine (no bubblewrap, no namespaces); the refusal itself is tested everywhere.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
from pathlib import Path

import pytest

from grpokit.sandbox import Limits, Sandbox, SandboxUnavailable
from grpokit.sandbox.bwrap import probe

try:
    probe("bwrap", sys.executable)
    REFUSAL = None
except SandboxUnavailable as e:
    REFUSAL = str(e)

needs_sandbox = pytest.mark.skipif(REFUSAL is not None, reason=f"the sandbox refuses on this machine: {REFUSAL}")

# Generous: a loaded 2-core machine starts Python slowly; nothing here asserts a duration.
LIMITS = Limits(wall_s=20.0, cpu_s=10, memory_mb=512, processes=16, file_size_mb=4)


@pytest.fixture(scope="module")
def box():
    with Sandbox(workers=2, limits=LIMITS) as sandbox:
        yield sandbox


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


# -- the refusal path: runs on every machine ---------------------------------------------------
def test_missing_bubblewrap_is_refused_with_the_reason():
    sandbox = Sandbox(workers=1, bwrap_path="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailable, match="bubblewrap.*not installed.*unconfined_ok"):
        sandbox.run_python("print(1)")


def test_unconfined_runs_only_when_the_user_opts_in_and_says_so():
    sandbox = Sandbox(workers=1, limits=LIMITS, bwrap_path="/nonexistent/bwrap", unconfined_ok=True)
    with pytest.warns(RuntimeWarning, match="UNCONFINED"):
        result = sandbox.run_python("print(6 * 7)", stdin="")
    assert result.stdout == "42\n" and result.ok and result.confined is False


def test_limits_are_checked():
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=0).check()
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)


# -- ordinary programs -------------------------------------------------------------------------
@needs_sandbox
def test_a_correct_program_runs_with_stdin_and_an_empty_environment(box):
    result = box.run_python("import os\nprint(input()[::-1], os.getcwd(), sorted(os.environ))", stdin="abc\n")
    assert result.ok and result.confined
    reversed_, cwd, env = result.stdout.split(" ", 2)
    assert reversed_ == "cba" and cwd == "/sandbox"
    assert "PATH" not in env and "HOME" not in env


@needs_sandbox
def test_a_python_under_tmp_stays_visible_under_the_sandboxs_own_tmp(tmp_path):
    # A venv in a CI checkout under /tmp: the sandbox's fresh /tmp must not hide the interpreter.
    assert str(tmp_path).startswith("/tmp/")
    venv_python = tmp_path / "venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.symlink_to(os.path.realpath(sys.executable))
    with Sandbox(workers=1, limits=LIMITS, python=str(venv_python)) as sandbox:
        result = sandbox.run_python("import sys\nprint(sys.executable)\nopen('/tmp/scratch', 'w').write('x')")
    assert result.ok, result.stderr
    assert result.stdout == f"{venv_python}\n"


@needs_sandbox
def test_trainer_environment_is_not_visible(box, monkeypatch):
    monkeypatch.setenv("GRPOKIT_TRAINER_SECRET", "hunter2")
    result = box.run_python("import os\nprint(dict(os.environ))\nprint(open('/proc/1/environ','rb').read())")
    assert "hunter2" not in result.stdout and "GRPOKIT_TRAINER_SECRET" not in result.stdout


@needs_sandbox
def test_the_pool_runs_in_parallel_and_reports_throughput():
    with Sandbox(workers=2, limits=LIMITS) as sandbox:
        results = sandbox.map(lambda b, i: b.run_python(f"print({i} * 2)"), list(range(6)))
        stats = sandbox.stats()
    assert [r.stdout for r in results] == [f"{i * 2}\n" for i in range(6)]
    assert stats["programs"] == 6 and stats["programs_per_s"] > 0 and stats["backend"] == "bubblewrap"


# -- hostile programs --------------------------------------------------------------------------
@needs_sandbox
def test_infinite_loop_is_killed_at_the_wall_clock_limit(box):
    result = box.run_python("while True:\n    pass", timeout=2.0)
    assert result.timed_out and not result.ok and result.exit_code is None


@needs_sandbox
def test_cpu_limit_kills_a_busy_program(box):
    result = box.run_python("while True:\n    pass", limits=LIMITS.with_(cpu_s=1, wall_s=30.0))
    assert not result.timed_out and result.signal in ("SIGXCPU", "SIGKILL")


@needs_sandbox
def test_allocating_8_gb_fails_inside(box):
    result = box.run_python("x = bytearray(8 * 2**30)\nprint('allocated')")
    assert not result.ok and "allocated" not in result.stdout and "MemoryError" in result.stderr


@needs_sandbox
def test_fork_bomb_is_stopped_and_leaves_nothing(box):
    marker = f"bomb{secrets.token_hex(4)}"
    code = ("import os, time\nwhile True:\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '300', '{marker}'])")
    result = box.run_python(code)
    assert not result.ok and "BlockingIOError" in result.stderr  # NPROC stopped the loop
    assert _processes_with(marker) == []


@needs_sandbox
def test_setsid_child_is_gone_when_the_run_returns(box):
    marker = f"setsid{secrets.token_hex(4)}"
    code = ("import subprocess, time\n"
            f"subprocess.Popen(['/bin/sleep', '300', '{marker}'], start_new_session=True)\n"
            "print('started', flush=True)\n")
    result = box.run_python(code)
    assert result.stdout == "started\n" and _processes_with(marker) == []
    # and when the program is killed at its time limit instead of exiting
    result = box.run_python(code + "time.sleep(300)", timeout=3.0)
    assert result.timed_out and _processes_with(marker) == []


@needs_sandbox
def test_no_network_a_local_server_sees_no_connection(box):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        result = box.run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                                "print('connected')")
        assert "connected" not in result.stdout and not result.ok
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


@needs_sandbox
def test_files_written_to_tmp_or_home_do_not_exist_afterwards(box):
    name = f"grpokit-escape-{secrets.token_hex(4)}"
    targets = [f"/tmp/{name}", os.path.join(os.path.expanduser("~"), name), f"{os.getcwd()}/{name}"]
    code = (f"for p in {targets!r}:\n    try:\n        open(p, 'w').write('x')\n"
            "        print('wrote', p)\n    except OSError as e:\n        print('refused', p, e.errno)\n")
    result = box.run_python(code)
    assert result.ok
    assert [p for p in targets if os.path.exists(p)] == []


@needs_sandbox
def test_killing_the_parent_does_not_stop_the_caller(box):
    result = box.run_python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(0, signal.SIGKILL)")
    assert not result.ok  # it killed only its own sandbox; this process is still here
    assert box.run_python("print('still fine')").stdout == "still fine\n"


@needs_sandbox
def test_printing_a_gigabyte_is_cut_short(box):
    result = box.run_python("import sys\nchunk = 'x' * 2**20\nfor _ in range(1024):\n    sys.stdout.write(chunk)")
    assert not result.ok and result.stdout_truncated
    assert len(result.stdout) <= LIMITS.output_bytes
