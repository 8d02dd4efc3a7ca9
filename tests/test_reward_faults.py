"""Rewards that misbehave: each failing cell is None plus a counted error, and never stalls a step.

The isolated scorer runs every reward call in a worker process with a 1 s limit here. A step
must end within (calls that fail by timing out) x 1 s + MARGIN_S, where the margin covers
starting fresh workers on a loaded 2-core machine (~35 ms each when idle).
"""

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from grpokit.errors import GrpokitError
from grpokit.rewards import (
    ERROR_KINDS,
    InProcessScorer,
    IsolatedScorer,
    Scores,
    check_error_rate,
    make_scorer,
    math_answers,
)

BAD = Path(__file__).resolve().parent / "fixtures" / "rewards" / "bad_rewards.py"
TIMEOUT_S = 1.0
MARGIN_S = 3.0
# Sample 1 is the bad one: the samples after it must still be scored, by a fresh worker.
PROMPTS = ["p0", "p1", "p2", "p3"]
COMPLETIONS = ["ok", "bad one", "fine", "alright"]
EXAMPLES = [{"answer": "1"}] * 4


def spec(name: str, alias: str | None = None) -> dict:
    return {"name": f"{BAD}:{name}", "alias": alias or name}


def good_values(completions: list[str]) -> list[float]:
    return [float(len(c)) for c in completions]


def alive(pid: int, zombie_is_alive: bool = True) -> bool:
    """True while the process exists; a zombie (a dead child nobody reaped) counts unless told."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("X", "x") and (zombie_is_alive or state != "Z")


@pytest.fixture
def scorer_for():
    """An isolated scorer for a bad reward (with `good` beside it), closed after the test."""
    made = []

    def make(name: str) -> IsolatedScorer:
        scorer = IsolatedScorer([spec("good"), spec(name, "bad")], timeout=TIMEOUT_S)
        made.append(scorer)
        return scorer

    yield make
    for scorer in made:
        scorer.close()


# ------------------------------------------------------------- each kind of failure, isolated


@pytest.mark.parametrize(
    ("name", "kind", "n_timeouts", "message"),
    [
        ("loops_forever", "timeout", 1, "no result within 1 s; the worker was killed"),
        ("sleeps", "timeout", 1, "no result within 1 s"),
        ("catastrophic_regex", "timeout", 1, "no result within 1 s"),
        ("huge_power", "timeout", 1, "no result within 1 s"),
        ("exits", "crashed", 0, "the worker process died (exit code 3)"),
        ("raises", "exception", 0, "ValueError: cannot score 'bad one'"),
        ("returns_string", "not_a_number", 0, "returned '1.0' of type str; expected a number or None"),
        ("returns_nan", "nan", 0, "returned NaN"),
        ("returns_inf", "not_a_number", 0, "returned inf; expected a finite number"),
    ],
)
def test_per_sample_failure_costs_one_cell(scorer_for, name, kind, n_timeouts, message):
    scorer = scorer_for(name)
    restarts_before = scorer.restarts
    started = time.perf_counter()
    scores = scorer.score(PROMPTS, COMPLETIONS, EXAMPLES)
    elapsed = time.perf_counter() - started

    assert elapsed < n_timeouts * TIMEOUT_S + MARGIN_S
    assert scores.components == {"good": good_values(COMPLETIONS), "bad": [1.0, None, 1.0, 1.0]}
    assert scores.total == [3.0, 7.0, 5.0, 8.0]  # the failed cell adds nothing, not a 0 "wrong answer"
    assert scores.error_counts == {"good": {}, "bad": {kind: 1}}
    assert len(scores.errors) == 1
    error = scores.errors[0]
    assert (error["component"], error["index"], error["kind"], error["completion"]) == ("bad", 1, kind, "bad one")
    assert message in error["message"]
    assert scores.error_rate() == pytest.approx(1 / 8)
    # A killed worker was replaced, and the next batch is scored normally.
    assert scorer.restarts - restarts_before == (1 if kind in ("timeout", "crashed") else 0)
    after = scorer.score(["p"] * 2, ["ok", "fine"], [{}] * 2)
    assert after.components == {"good": [2.0, 4.0], "bad": [1.0, 1.0]}
    assert after.errors == []


@pytest.mark.parametrize(
    ("name", "kind", "n_timeouts", "message"),
    [
        ("batched_wrong_length", "wrong_length", 0, "returned 3 values for 4 completions"),
        ("batched_sleeps", "timeout", 1, "no result within 1 s"),
        ("batched_exits", "crashed", 0, "exit code 4"),
    ],
)
def test_batched_failure_fails_every_cell_of_that_component(scorer_for, name, kind, n_timeouts, message):
    scorer = scorer_for(name)
    started = time.perf_counter()
    scores = scorer.score(PROMPTS, COMPLETIONS, EXAMPLES)
    assert time.perf_counter() - started < n_timeouts * TIMEOUT_S + MARGIN_S
    assert scores.components == {"good": good_values(COMPLETIONS), "bad": [None] * 4}
    assert scores.error_counts == {"good": {}, "bad": {kind: 4}}
    assert [(e["index"], e["completion"]) for e in scores.errors] == list(enumerate(COMPLETIONS))
    assert all(message in e["message"] for e in scores.errors)
    assert scores.error_rate() == 0.5
    assert scorer.score(["p"], ["ok"], [{}]).components == {"good": [2.0], "bad": [1.0]}


def test_every_sample_timing_out_costs_one_limit_each():
    with IsolatedScorer([spec("sleeps")], timeout=0.5) as scorer:
        started = time.perf_counter()
        scores = scorer.score(["p"] * 3, ["bad 1", "bad 2", "bad 3"], [{}] * 3)
        elapsed = time.perf_counter() - started
        assert scores.components == {"sleeps": [None] * 3}
        assert scores.error_counts == {"sleeps": {"timeout": 3}}
        assert 1.5 <= elapsed < 1.5 + MARGIN_S
        assert scorer.restarts == 3


def test_builtins_score_normally_in_the_worker():
    completions = ["<think>a</think><answer>1</answer>", "<answer>2</answer>", "no answer",
                   "<answer>\\frac{2}{2}</answer>"]
    with make_scorer(["accuracy", "format"], timeout=TIMEOUT_S, isolate=True) as scorer:
        scores = scorer.score(PROMPTS, completions, EXAMPLES)
    assert scores.components == {"accuracy": [1.0, 0.0, 0.0, 1.0], "format": [1.0, 0.0, 0.0, 0.0]}
    assert scores.error_counts == {"accuracy": {}, "format": {}} and scores.errors == []
    assert [c.name for c in scorer.components] == ["accuracy", "format"]


# ------------------------------------------------------------------------ in-process scoring


def test_in_process_and_isolated_scorers_agree_on_errors_that_need_no_kill():
    specs = [spec("good"), spec("raises"), spec("returns_string"), spec("returns_nan"), spec("returns_inf"),
             spec("batched_wrong_length")]
    here, there = make_scorer(specs, timeout=None, isolate=False), make_scorer(specs, timeout=None, isolate=True)
    with here, there:
        assert isinstance(here, InProcessScorer) and isinstance(there, IsolatedScorer)
        a = here.score(PROMPTS, COMPLETIONS, EXAMPLES)
        b = there.score(PROMPTS, COMPLETIONS, EXAMPLES)
    assert (a.components, a.total, a.errors, a.error_counts) == (b.components, b.total, b.errors, b.error_counts)
    assert a.error_counts == {
        "good": {},
        "raises": {"exception": 1},
        "returns_string": {"not_a_number": 1},
        "returns_nan": {"nan": 1},
        "returns_inf": {"not_a_number": 1},
        "batched_wrong_length": {"wrong_length": 4},
    }
    assert {e["kind"] for e in a.errors} <= set(ERROR_KINDS)


def test_an_error_inside_a_builtin_is_counted_not_raised(monkeypatch):
    def broken(predicted, gold):
        raise RecursionError("maximum recursion depth exceeded in sympy")

    monkeypatch.setattr("grpokit.rewards.builtin.answers_match", broken)
    scores = make_scorer(["accuracy", "format"], timeout=5, isolate=False).score(
        ["q"], ["<answer>\\frac{1}{2}</answer>"], [{"answer": "0.5"}]
    )
    assert scores.components == {"accuracy": [None], "format": [0.0]}
    assert scores.error_counts == {"accuracy": {"exception": 1}, "format": {}}
    assert scores.errors[0]["message"] == "RecursionError: maximum recursion depth exceeded in sympy"


def test_errors_log_entries_are_truncated():
    long_completion = "bad" + "x" * 5000
    scores = make_scorer([spec("raises")], timeout=None, isolate=False).score(["p"], [long_completion], [{}])
    error = scores.errors[0]
    assert error["completion"].startswith(long_completion[:2000])
    assert error["completion"].endswith("... [3003 more characters]")
    assert len(error["message"]) < 400 and error["message"].startswith("ValueError: cannot score 'badxxx")


def test_error_rate_counts_cells():
    scores = Scores({"a": [1.0, None], "b": [None, None]}, [1.0, 0.0],
                    errors=[{"component": "b", "index": i, "kind": "timeout"} for i in range(2)],
                    error_counts={"a": {}, "b": {"timeout": 2}})
    assert scores.error_rate() == 0.5
    assert Scores({}, []).error_rate() == 0.0


# ---------------------------------------------------------------------------- the rate limit


def test_check_error_rate_stops_a_broken_verifier_with_a_clear_message():
    scores = make_scorer([spec("good"), spec("raises")], timeout=None, isolate=False).score(
        ["p"] * 4, ["bad 1", "bad 2", "bad 3", "ok"], [{}] * 4
    )
    check_error_rate(scores, max_error_rate=0.75)  # 3 of 4 is not above 0.75
    with pytest.raises(GrpokitError) as raised:
        check_error_rate(scores, max_error_rate=0.5)
    message = str(raised.value)
    for part in ("reward 'raises' failed on 3 of 4 samples", "(75%)", "verify.max_error_rate=0.5",
                 "exception 3", "ValueError: cannot score 'bad 1'", "errors log", "Fix the reward"):
        assert part in message, part


def test_check_error_rate_ignores_none_that_means_not_applicable():
    scores = make_scorer(["accuracy"], timeout=None, isolate=False).score(["q"] * 2, ["1", "2"], [{}, {}])
    assert scores.components == {"accuracy": [None, None]} and scores.errors == []
    check_error_rate(scores, max_error_rate=0.0)


# --------------------------------------------------------------- threads, processes, cleanup


def test_isolated_scorer_works_off_the_main_thread():
    results, failures = [], []

    def run():
        try:
            with IsolatedScorer([spec("good"), spec("loops_forever", "bad")], timeout=TIMEOUT_S) as scorer:
                results.append(scorer.score(PROMPTS, COMPLETIONS, EXAMPLES))
        except BaseException as e:  # surfaced in the main thread below
            failures.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=TIMEOUT_S + MARGIN_S + 5)
    assert not worker.is_alive() and failures == []
    assert results[0].components["bad"] == [1.0, None, 1.0, 1.0]
    assert results[0].error_counts["bad"] == {"timeout": 1}


def test_no_worker_is_left_after_close():
    scorer = IsolatedScorer([spec("worker_pid", "pid"), spec("exits")], timeout=TIMEOUT_S)
    first = scorer.score(["p"] * 3, ["ok", "bad", "fine"], [{}] * 3)  # `exits` kills worker 1 at sample 1
    second = scorer.score(["p"], ["ok"], [{}])  # scored by worker 2
    pids = {int(first.components["pid"][0]), int(second.components["pid"][0])}
    assert len(pids) == 2 and os.getpid() not in pids
    assert first.error_counts["exits"] == {"crashed": 1}
    scorer.close()
    scorer.close()  # twice is fine
    assert not any(alive(pid) for pid in pids)
    assert not [p for p in multiprocessing.active_children() if p.name == "grpokit-reward-worker"]
    with pytest.raises(RuntimeError, match="after close"):
        scorer.score(["p"], ["ok"], [{}])


def test_a_process_started_by_a_reward_is_killed_with_its_worker(tmp_path):
    pid_file = tmp_path / "sleeper.pid"
    with IsolatedScorer([{**spec("starts_a_process"), "pid_file": str(pid_file)}], timeout=TIMEOUT_S) as scorer:
        scores = scorer.score(["p"] * 2, ["bad", "ok"], [{}] * 2)
    assert scores.components == {"starts_a_process": [None, 1.0]}
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 2.0
    while alive(sleeper, zombie_is_alive=False) and time.monotonic() < deadline:  # reaped by init, not by us
        time.sleep(0.05)
    assert not alive(sleeper, zombie_is_alive=False)


def test_isolated_without_time_limit_still_survives_a_crash():
    with IsolatedScorer([spec("exits")], timeout=None) as scorer:
        scores = scorer.score(["p"] * 2, ["bad", "ok"], [{}] * 2)
    assert scores.components == {"exits": [None, 1.0]}
    assert scores.error_counts == {"exits": {"crashed": 1}}


def test_configuration_errors_surface_in_the_caller():
    with pytest.raises(GrpokitError, match="has no attribute 'no_such_reward'"):
        IsolatedScorer([f"{BAD}:no_such_reward"], timeout=TIMEOUT_S)
    with pytest.raises(GrpokitError, match="timeout 0 must be a positive number"):
        IsolatedScorer(["format"], timeout=0)
    assert not [p for p in multiprocessing.active_children() if p.name == "grpokit-reward-worker"]


def test_worker_gives_math_verify_a_budget_inside_the_call_limit():
    # Checked in this process: the worker runs the same code at start-up.
    from grpokit.rewards.isolation import _warm_up

    before = math_answers._SYMBOLIC_TIMEOUT_S
    try:
        _warm_up(make_scorer(["accuracy"], timeout=None, isolate=False).components, timeout=8.0)
        assert math_answers._SYMBOLIC_TIMEOUT_S == 2
    finally:
        math_answers._SYMBOLIC_TIMEOUT_S = before


def test_the_reward_worker_does_not_import_the_trainers_main_module(tmp_path):
    """A trainer script imports torch at the top; its reward worker must not (it would hold ~200 MB more)."""
    import subprocess
    import sys

    reward = Path(__file__).parent / "fixtures" / "rewards" / "sample_rewards.py"
    script = tmp_path / "trainer_like.py"
    script.write_text(
        "import torch  # a trainer's main module\n"
        "from grpokit.rewards import make_scorer\n"
        "if __name__ == '__main__':\n"
        f"    with make_scorer([{{'name': '{reward}:torch_is_imported'}}], timeout=30, isolate=True) as scorer:\n"
        "        print(scorer.score(['p'], ['c'], [{}]).total[0])\n")
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(repo)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "0.0"
