"""The `code_tests` reward: run the completion's program against the row's tests, in the sandbox.

Two test formats (row field `tests`, or the field named by the `field` option):
- assert statements, `["assert add(2, 3) == 5", ...]`: the program's definitions are loaded
  (with `__name__ == "solution"`, so a `if __name__ == "__main__":` block does not run), then each
  statement runs in its own process (grpokit/sandbox/harness.py); it passes when it raises nothing;
- stdin/stdout cases, `[{"input": "2 3\\n", "output": "5\\n"}, ...]`: the program runs as a script
  once per case; it passes when it exits with status 0 and its stdout equals the expected output
  (trailing whitespace of each line and trailing blank lines ignored). The comparison happens
  outside the sandbox.

Score: the fraction of tests passed, or 1.0/0.0 with `all_or_nothing`. A test that fails, raises,
times out or crashes counts as failed. A sandbox that cannot start raises SandboxUnavailable, so
the cell becomes None plus a counted error, never a 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from pathlib import Path

from grpokit.errors import GrpokitError
from grpokit.sandbox import Limits, RunResult, SandboxUnavailable, shared_sandbox

EXTRACT = ("last_block", "whole")
_HARNESS = (Path(__file__).resolve().parent.parent / "sandbox" / "harness.py").read_text()
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_details_lock = threading.Lock()


def extract_program(completion: str, extract: str = "last_block") -> str:
    """The last fenced ```python block (an unlabelled ``` block counts), or the whole completion.

    >>> extract_program("Here:\\n```python\\nx = 1\\n```\\nand\\n```python\\nx = 2\\n```")
    'x = 2\\n'
    >>> extract_program("x = 3", "last_block")
    'x = 3'
    """
    if extract not in EXTRACT:
        raise GrpokitError(f"reward 'code_tests': extract={extract!r}; expected one of {', '.join(EXTRACT)}.")
    if extract == "last_block":
        blocks = _FENCE.findall(completion)
        if blocks:
            return blocks[-1]
    return completion


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def _check_tests(tests: object) -> str:
    """'asserts' or 'io'; GrpokitError names what is wrong with the row's tests."""
    if not isinstance(tests, list) or not tests:
        raise GrpokitError(f"reward 'code_tests': tests must be a non-empty list, got {tests!r:.80}.")
    if all(isinstance(t, str) for t in tests):
        return "asserts"
    if all(isinstance(t, dict) and isinstance(t.get("input", ""), str) and isinstance(t.get("output"), str)
           for t in tests):
        return "io"
    raise GrpokitError("reward 'code_tests': tests must be all strings (assert statements) or all "
                       f"{{'input': str, 'output': str}} cases; got {tests!r:.120}.")


def run_tests(program: str, tests: list, *, timeout_s: float = 5.0, sandbox=None,
              limits: Limits | None = None) -> list[dict]:
    """Run `program` against `tests`; one {"passed": bool, "why": str} per test, in order.

    Raises SandboxUnavailable when the sandbox cannot run (that is not a verdict on the program)."""
    kind = _check_tests(tests)
    sandbox = sandbox or shared_sandbox()
    limits = limits or sandbox.limits
    if kind == "io":
        def one(box, case: dict) -> dict:
            result = box.run_python(program, stdin=case.get("input", ""), limits=limits.with_(wall_s=timeout_s))
            if not result.ok:
                return {"passed": False, "why": _why(result)}
            same = _normalise(result.stdout) == _normalise(case["output"])
            return {"passed": same, "why": "pass" if same else f"wrong output: {result.stdout[:100]!r}"}
        return sandbox.map(one, tests)
    nonce = secrets.token_hex(16)
    job = json.dumps({"program": program, "tests": tests, "nonce": nonce, "test_timeout": timeout_s})
    # The whole run's wall limit leaves each test its own timeout plus slack for starting on a busy machine.
    result = sandbox.run([sandbox.python, "-E", "-s", "harness.py"], stdin=job, files={"harness.py": _HARNESS},
                         limits=limits.with_(wall_s=timeout_s * len(tests) + 10.0), result_channel=True)
    verdicts = [{"passed": False, "why": f"no result: harness {_why(result)}"} for _ in tests]
    for line in result.extra.get("channel", "").splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue
        i = report.get("test") if isinstance(report, dict) else None
        if report.get("nonce") == nonce and isinstance(i, int) and 0 <= i < len(tests):
            verdicts[i] = {"passed": report.get("passed") is True, "why": str(report.get("why", ""))[:300]}
    return verdicts


def _why(result: RunResult) -> str:
    tail = result.stderr.strip().splitlines()[-1:] if result.stderr.strip() else []
    return result.describe() + (f": {tail[0][:200]}" if tail else "")


def code_tests(completion: str, tests: object = None, *, field: str = "tests", extract: str = "last_block",
               all_or_nothing: bool = False, timeout_s: float = 5.0, memory_mb: int = 1024, workers: int = 4,
               unconfined_ok: bool = False, details_path: str | None = None, **fields) -> float | None:
    """Fraction of the row's tests that the completion's program passes, run in the sandbox.

    Options (reward kwargs in the config): `field` (row field with the tests), `extract`
    ("last_block" | "whole"), `all_or_nothing`, `timeout_s` per test, `memory_mb`, `workers`
    (programs run at once), `unconfined_ok` (see docs/sandbox.md) and `details_path` (a JSONL file
    that gets one line per scored completion with its per-test results). Returns None when the row
    has no tests. Needs a `verify.timeout` above the time the tests may take (about `timeout_s` x tests).

    >>> code_tests("```python\\ndef add(a, b):\\n    return a + b\\n```",
    ...            tests=["assert add(2, 3) == 5", "assert add(0, 0) == 1"])  # doctest: +SKIP
    0.5
    """
    if field != "tests":
        tests = fields.get(field)
    if tests is None:
        return None
    if isinstance(tests, str):  # a JSON-encoded list, as CSV and Parquet columns often hold
        try:
            tests = json.loads(tests)
        except ValueError as e:
            raise GrpokitError(f"reward 'code_tests': field {field!r} is a string that is not JSON: {e}") from e
    program = extract_program(completion, extract)
    sandbox = shared_sandbox(workers, unconfined_ok)
    limits = sandbox.limits.with_(memory_mb=memory_mb, cpu_s=max(1, int(timeout_s + 1)))
    verdicts = run_tests(program, tests, timeout_s=timeout_s, sandbox=sandbox, limits=limits)
    passed = sum(v["passed"] for v in verdicts)
    score = float(passed == len(verdicts)) if all_or_nothing else passed / len(verdicts)
    if details_path:
        _log_details(details_path, fields.get("prompt"), completion, verdicts, score)
    return score


def _log_details(path: str, prompt: object, completion: str, verdicts: list[dict], score: float) -> None:
    line = json.dumps({"prompt": prompt, "completion_sha1": hashlib.sha1(completion.encode()).hexdigest(),
                       "score": score, "tests": verdicts}) + "\n"
    with _details_lock:  # one write per line with O_APPEND: whole lines even from several processes
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


__all__ = ["EXTRACT", "SandboxUnavailable", "code_tests", "extract_program", "run_tests"]
