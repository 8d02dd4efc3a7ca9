"""The test harness that runs INSIDE the sandbox: the program, then each assert-style test.

Standard library only; it is copied into the sandbox and run as `python harness.py <fd>`. It reads
its job from stdin ({"program", "tests", "nonce", "test_timeout"}), then points stdin at /dev/null.

Why a test cannot be passed by a trick (each case is tested in tests/test_code_tests_attacks.py):
- A test passes only when a positive report for it arrives, never by default: a program that calls
  `sys.exit(0)` or `os._exit(0)`, crashes or hangs leaves its tests failed.
- Each test runs in its own child process (a fresh fork of this harness, which never runs program
  code itself): the program runs there, then the one test, and the child reports to this harness
  through a private pipe with a per-test random token. A test that hangs is killed at `test_timeout`.
- This harness alone writes the results, to an fd the parent opened, each line prefixed with the
  parent's random nonce. The children close that fd before running program code; stdout and stderr
  are never read for results, so printing what the harness prints does nothing.
- A test sees the builtins as they were before the program ran (a private copy), and the program's
  top-level names that shadow a builtin are not visible to it: redefining `len`, `print` or
  `AssertionError` cannot change a test's verdict.
What it does NOT stop (docs/sandbox.md): a program written against this harness that reads the token
from its own memory and writes to the pipe; values whose `__eq__` always returns True; monkeypatching
a module the tests import. The stdin/stdout test format compares outside the sandbox and is immune.
"""

import builtins
import json
import os
import secrets
import select
import signal
import sys


def _child(program: str, test: str, token: bytes, write_fd: int, result_fd: int, pristine: dict) -> None:
    os.close(result_fd)  # the program never holds the channel to the parent
    os.setpgid(0, 0)  # so this harness can kill the test with everything it started
    report = b"fail program"
    try:
        namespace = {"__name__": "solution", "__builtins__": builtins}
        exec(compile(program, "solution.py", "exec"), namespace)
        report = b"fail test"
        test_namespace = {k: v for k, v in namespace.items() if k not in pristine}
        test_namespace["__builtins__"] = dict(pristine)
        exec(compile(test, "test.py", "exec"), test_namespace)
        report = b"pass"
    except BaseException as e:  # SystemExit included: a program that exits has not passed
        report += b" " + f"{type(e).__name__}: {e}"[:200].encode("utf-8", "replace")
    try:
        os.write(write_fd, token + b" " + report)
    finally:
        os._exit(0)


def _run_test(program: str, test: str, timeout: float, result_fd: int, pristine: dict) -> tuple[bool, str]:
    token = secrets.token_hex(16).encode()
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(program, test, token, write_fd, result_fd, pristine)
    os.close(write_fd)
    data, verdict = b"", "no report (the program exited or crashed before the test ended)"
    ready, _, _ = select.select([read_fd], [], [], timeout)
    if not ready:
        verdict = f"timed out after {timeout:g} s"
    else:
        while len(data) < 4096:  # the child writes once; a forged flood is cut short
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            data += chunk
    for target in (-pid, pid):  # the test's group, then the child if it left the group
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    os.waitpid(pid, 0)
    os.close(read_fd)
    if data.startswith(token + b" "):
        message = data[len(token) + 1:].decode("utf-8", "replace")
        if message == "pass":
            return True, "pass"
        verdict = message
    return False, verdict


def main() -> None:
    result_fd = int(sys.argv[1])
    job = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    pristine = dict(builtins.__dict__)  # before any program code runs
    nonce = job["nonce"]
    for i, test in enumerate(job["tests"]):
        passed, why = _run_test(job["program"], test, float(job["test_timeout"]), result_fd, pristine)
        line = json.dumps({"nonce": nonce, "test": i, "passed": passed, "why": why[:300]}) + "\n"
        os.write(result_fd, line.encode())


if __name__ == "__main__":
    main()
