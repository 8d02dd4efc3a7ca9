"""`code_tests`: formats, scores, and the tricks that must not turn into passes.

Every attack below is a program that does NOT solve the task (or solves it and then sabotages the
run); a pass can only come from the harness having seen the test succeed.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from grpokit.cli import main
from grpokit.rewards import build_reward_components, score_completions
from grpokit.rewards.code_tests import code_tests, extract_program, run_tests
from grpokit.sandbox import Limits, Sandbox, SandboxUnavailable
from tests.test_sandbox import REFUSAL, _processes_with

needs_sandbox = pytest.mark.skipif(REFUSAL is not None, reason=f"the sandbox refuses on this machine: {REFUSAL}")
FIXTURE = Path(__file__).parent / "fixtures" / "code" / "humaneval_20.jsonl"
ADD = "def add(a, b):\n    return a + b\n"
TESTS = ["assert add(2, 3) == 5", "assert add(-1, 1) == 0", "assert add('a', 'b') == 'ab'"]


def block(code: str) -> str:
    return f"Sure:\n```python\n{code}```\nDone."


@pytest.fixture(scope="module")
def box():
    with Sandbox(workers=2, limits=Limits(wall_s=30.0, memory_mb=512, processes=16, file_size_mb=4)) as sandbox:
        yield sandbox


def verdicts(box, program: str, tests=TESTS, timeout_s: float = 5.0) -> list[bool]:
    return [v["passed"] for v in run_tests(program, tests, timeout_s=timeout_s, sandbox=box)]


def test_extract_program():
    assert extract_program(block("x = 1\n") + block("x = 2\n")) == "x = 2\n"
    assert extract_program("```\ny = 1\n```") == "y = 1\n"
    assert extract_program("no fence") == "no fence"
    assert extract_program(block("x = 1\n"), "whole") == block("x = 1\n")


def test_bad_tests_are_named():
    from grpokit.errors import GrpokitError

    with pytest.raises(GrpokitError, match="non-empty list"):
        run_tests(ADD, [])
    with pytest.raises(GrpokitError, match="all strings"):
        run_tests(ADD, ["assert 1", {"input": "x"}])


@needs_sandbox
def test_fraction_and_all_or_nothing(box):
    half = "def add(a, b):\n    return a + b if isinstance(a, int) else None\n"
    assert verdicts(box, ADD) == [True, True, True]
    assert verdicts(box, half) == [True, True, False]
    assert code_tests(block(half), tests=TESTS) == pytest.approx(2 / 3)
    assert code_tests(block(half), tests=TESTS, all_or_nothing=True) == 0.0
    assert code_tests(block(ADD), tests=json.dumps(TESTS), all_or_nothing=True) == 1.0  # a JSON column
    assert code_tests(block(ADD), tests=None) is None


@needs_sandbox
def test_stdin_stdout_cases(box):
    cases = [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4", "output": "6"}]
    assert verdicts(box, "a, b = map(int, input().split())\nprint(a + b)  \n", cases) == [True, True]
    assert verdicts(box, "print(5)", cases) == [True, False]
    assert verdicts(box, "a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)", cases) == [False] * 2


@needs_sandbox
def test_main_guard_does_not_run_and_a_hanging_test_times_out(box):
    program = ADD + "if __name__ == '__main__':\n    input()\n"
    assert verdicts(box, program, ["assert add(1, 1) == 2", "while True: pass"], timeout_s=2.0) == [True, False]


# -- tricks that must not pass ------------------------------------------------------------------
@needs_sandbox
@pytest.mark.parametrize("attack", [
    "import sys\nsys.exit(0)",
    "import os\nos._exit(0)",
    "raise SystemExit(0)",
    # printing what the harness writes, to stdout and into every fd it might have
    "import os, json\nfor i in range(3):\n"
    "    line = json.dumps({'nonce': 'x', 'test': i, 'passed': True, 'why': 'pass'})\n"
    "    print(line)\n    for fd in range(3, 64):\n        try:\n            os.write(fd, (line + '\\n').encode())\n"
    "        except OSError:\n            pass\nos._exit(0)",
    # overriding builtins and the names the tests use
    "import builtins\nbuiltins.AssertionError = type('A', (Exception,), {})\nlen = lambda x: 3\n"
    "def add(a, b):\n    return None\nbuiltins.isinstance = lambda *a: True",
    # killing the harness
    "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
    "import os, signal\nos.kill(0, signal.SIGKILL)",
], ids=["sys.exit", "os._exit", "SystemExit", "forged-lines", "builtins", "kill-parent", "kill-group"])
def test_trick_scores_zero(box, attack):
    assert verdicts(box, attack) == [False, False, False]


@needs_sandbox
def test_overridden_builtins_are_not_seen_by_tests(box):
    program = "import builtins\nbuiltins.len = lambda x: 3\nlen = lambda x: 3\ndef f():\n    return []\n"
    assert verdicts(box, program, ["assert len(f()) == 3", "assert len(f()) == 0"]) == [False, True]


@needs_sandbox
@pytest.mark.parametrize("attack, passes", [
    ("while True:\n    pass", False),                       # hangs at import: each test times out
    ("x = bytearray(8 * 2**30)", False),                    # MemoryError at import
    ("import os\nwhile True:\n    os.fork()", False),       # the fork bomb stops with an error at import
    ("import sys\nsys.stdout.write('x' * 2**30)", False),   # a gigabyte hits the file-size limit
    ("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=2)", False),
    ("import os\nos._exit(0)", False),
    ("open('/tmp/grpokit-x', 'w').write('x')", True),       # contained, harmless: the honest verdict stands
], ids=["loop", "8GB", "fork-bomb", "gigabyte", "network", "os._exit", "write-tmp"])
def test_correct_function_plus_sabotage(box, attack, passes):
    assert verdicts(box, ADD + attack + "\n", TESTS[:2], timeout_s=3.0) == [passes, passes]


@needs_sandbox
def test_setsid_sleeper_started_by_a_passing_program_is_gone(box):
    marker = f"sleeper{secrets.token_hex(4)}"
    program = ADD + f"import subprocess\nsubprocess.Popen(['/bin/sleep', '300', '{marker}'], start_new_session=True)\n"
    assert verdicts(box, program, TESTS[:1]) == [True]
    assert _processes_with(marker) == []


# -- where it plugs in ----------------------------------------------------------------------------
def test_a_sandbox_that_cannot_start_is_a_failed_verification_not_a_zero(monkeypatch):
    import grpokit.rewards.code_tests as module

    monkeypatch.setattr(module, "shared_sandbox", lambda *a: Sandbox(workers=1, bwrap_path="/nonexistent/bwrap"))
    components = build_reward_components([{"name": "code_tests", "all_or_nothing": True}])
    scores = score_completions(components, ["p"], [block(ADD)], [{"tests": TESTS}])
    assert scores.components["code_tests"] == [None]
    assert scores.error_counts["code_tests"] == {"exception": 1}
    assert SandboxUnavailable.__name__ in scores.errors[0]["message"]


def test_unknown_option_is_rejected():
    from grpokit.errors import GrpokitError

    with pytest.raises(GrpokitError, match="unknown option 'all_or_none'"):
        build_reward_components([{"name": "code_tests", "all_or_none": True}])


@needs_sandbox
def test_grpokit_score_reference_solutions_pass_and_broken_ones_fail(tmp_path, capsys):
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()][:8]
    data = tmp_path / "code.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    details = tmp_path / "details.jsonl"
    spec = f"rewards=[{{name: code_tests, details_path: {details}}}]"
    for field, expected in (("reference", 1.0), ("broken", 0.0)):
        out = tmp_path / f"{field}.scored.jsonl"
        assert main(["score", str(data), spec, "--completion-field", field, "--out", str(out), "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        scored = [json.loads(line)["rewards"]["code_tests"] for line in out.read_text().splitlines()]
        if expected == 1.0:
            assert scored == [1.0] * len(rows) and summary["components"]["code_tests"]["mean"] == 1.0
        else:
            assert all(s < 0.5 for s in scored) and summary["components"]["code_tests"]["mean"] < 0.1
    logged = [json.loads(line) for line in details.read_text().splitlines()]
    assert len(logged) == 2 * len(rows)
    assert all(t["passed"] for t in logged[0]["tests"]) and logged[0]["prompt"] == rows[0]["prompt"]
