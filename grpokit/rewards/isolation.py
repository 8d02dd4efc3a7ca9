"""Where rewards run: in this process, or in a worker process with a time limit on every call.

Why a process: a Python thread cannot be stopped, and `signal.alarm` works only in the main
thread and cannot interrupt code stuck in C (a backtracking regex, `2**(10**10)`). A process can
always be killed. The worker loads the rewards itself from their specs (the list that
`build_reward_components` takes), so only plain data crosses the pipe and rewards loaded from
`file.py:function` work.

Protocol, over one pipe per worker:
  worker -> ("ready",) once its rewards are loaded, or ("failed", message)
  parent -> ("per_sample", c, prompts, completions, examples): the worker sends one Outcome per
            sample, in order, as each finishes
  parent -> ("batched", c, prompts, completions, examples): the worker sends one list of Outcomes
  parent -> ("stop",)
The parent waits at most `timeout` seconds for each reply. When none comes, or the worker dies,
it kills and reaps the worker, marks that cell "timeout" or "crashed", and goes on with the
next sample in a fresh worker.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import weakref

from grpokit.errors import GrpokitError
from grpokit.rewards import math_answers
from grpokit.rewards.builtin import accuracy
from grpokit.rewards.components import RewardComponent, build_reward_components
from grpokit.rewards.scoring import (
    Outcome,
    Scores,
    assemble_scores,
    check_batch,
    error_outcome,
    score_batched,
    score_completions,
    score_one,
)
from grpokit.workers import Worker, serve

# Measured on 2 CPU cores, trainer-like parent (torch threads used, a model run, tqdm thread):
# scoring 128 completions x (accuracy, format) takes ~5 ms in a worker for every start method
# (~2 ms in-process). A restart costs fork ~200 ms, forkserver ~390 ms, spawn ~440 ms, most of
# it the math_verify warm-up below (with `format` only: 15 / 33 / 50 ms). The worker does not
# import the parent's main module (see `_parent_main_hidden`), so a trainer script's torch stays
# out of it (~200 MB resident). Restarts happen only after a failure, which has already cost up to `timeout`, so
# we take forkserver (CPython's own default from 3.14) over fork: forking a trainer that holds
# torch, CUDA, tokenizer and tqdm threads can copy a lock some thread holds, and the child then
# waits on it forever.
DEFAULT_START_METHOD = "forkserver"
DEFAULT_STARTUP_TIMEOUT_S = 60.0


def _worker_main(conn, specs: list, cwd: str, sys_path: list[str], timeout: float | None) -> None:
    def setup():
        components = build_reward_components(specs)
        _warm_up(components, timeout)
        return components

    def handle(components, message):
        how, c, prompts, completions, examples = message
        if how == "batched":
            conn.send(score_batched(components[c], prompts, completions, examples))
        else:
            for completion, prompt, example in zip(completions, prompts, examples):
                conn.send(score_one(components[c], completion, prompt, example))

    serve(conn, cwd, sys_path, setup, handle)


def _warm_up(components: list[RewardComponent], timeout: float | None) -> None:
    if not any(c.fn is accuracy for c in components):
        return
    # The first symbolic comparison imports math_verify and sympy (~0.4 s): pay that while starting,
    # not inside the first call's time limit.
    math_answers.answers_match("\\frac{1}{2}", "\\sqrt{x}")
    if timeout is not None:
        # math_verify stops a runaway comparison ("10^{100000000}") on its own and calls it a
        # mismatch, which is the right score for such an answer; give it a budget that ends before the
        # call's limit (it may be spent three times: two parses and one verify; whole seconds).
        math_answers._SYMBOLIC_TIMEOUT_S = max(1, min(math_answers._SYMBOLIC_TIMEOUT_S, int(timeout / 4)))


def _stop_worker(slot: list) -> None:
    # Module-level so the finalizer holds no reference to the scorer itself.
    if slot[0] is not None:
        slot[0].stop()
        slot[0] = None


class IsolatedScorer:
    """Score in a worker process; each reward call gets at most `timeout` seconds (None: no limit).

    A reward that hangs, loops in C, or kills its process costs one cell (None, counted as
    "timeout" or "crashed") and one worker restart, never the run. Usable from any thread, as a
    context manager; `close()` stops and reaps the worker.

    >>> with IsolatedScorer(["format"], timeout=5.0) as scorer:
    ...     scorer.score(["q"], ["<think>a</think><answer>1</answer>"], [{}]).components
    {'format': [1.0]}
    """

    def __init__(
        self,
        specs: list,
        *,
        timeout: float | None = 5.0,
        start_method: str = DEFAULT_START_METHOD,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
    ) -> None:
        if timeout is not None and not timeout > 0:
            raise GrpokitError(f"reward timeout {timeout!r} must be a positive number of seconds, or None.")
        # Loaded here as well as in the worker: errors in the config surface in the caller, and
        # eval code reads the components (and their options) from the scorer.
        self.components: list[RewardComponent] = build_reward_components(specs)
        self.timeout = timeout
        self.restarts = 0  # workers replaced after a timeout or a crash, over the scorer's life
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The server imports only what a worker needs. By default it would import the parent's
            # __main__ (a trainer script: torch and transformers), adding ~200 MB to the worker's
            # resident memory. Takes effect when the server starts (the first worker of the process).
            self._ctx.set_forkserver_preload(["grpokit.rewards.isolation"])
        self._args = (list(specs), os.getcwd(), list(sys.path), timeout)
        self._startup_timeout = startup_timeout
        self._lock = threading.Lock()  # one batch at a time: the worker is a single pipe
        self._slot: list[Worker | None] = [None]
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop_worker, self._slot)
        self._worker()  # start now: a worker that cannot load the rewards fails here, not mid-run

    def _worker(self) -> Worker:
        if self._slot[0] is None:
            self._slot[0] = Worker(self._ctx, _worker_main, self._args, self._startup_timeout, what="reward")
        return self._slot[0]

    def _send(self, message: tuple) -> None:
        try:
            self._worker().send(message)
        except OSError:  # the idle worker died since the last batch (e.g. killed from outside)
            self._replace()
            self._worker().send(message)

    def _receive(self) -> tuple[object, Outcome | None]:
        """(reply, None), or (None, error outcome) after killing a stuck or dead worker."""
        worker = self._worker()
        status, reply = worker.receive(self.timeout)
        if status == "ok":
            return reply, None
        worker.kill()
        if status == "timeout":
            failed = error_outcome("timeout", f"no result within {self.timeout:g} s; the worker was killed")
        else:
            failed = error_outcome("crashed", f"the worker process died ({worker.exit_description()})")
        self._replace()
        return None, failed

    def _discard_worker(self) -> None:
        if self._slot[0] is not None:
            self._slot[0].kill()
            self._slot[0] = None  # the next use starts a fresh worker

    def _replace(self) -> None:
        self._discard_worker()
        self.restarts += 1

    def _per_sample(self, c: int, prompts: list, completions: list, examples: list) -> list[Outcome]:
        outcomes: list[Outcome] = []
        while len(outcomes) < len(completions):
            i = len(outcomes)  # (re)start from the first sample without a result
            self._send(("per_sample", c, prompts[i:], completions[i:], examples[i:]))
            while len(outcomes) < len(completions):
                reply, failed = self._receive()
                outcomes.append(failed or reply)
                if failed:
                    break  # that worker is gone; send the rest to a fresh one
        return outcomes

    def _batched(self, c: int, prompts: list, completions: list, examples: list) -> list[Outcome]:
        self._send(("batched", c, prompts, completions, examples))
        reply, failed = self._receive()
        return [failed] * len(completions) if failed else reply

    def score(self, prompts: list[str], completions: list[str], examples: list[dict]) -> Scores:
        """Like `score_completions`, with the time limit and crash protection of the worker."""
        check_batch(prompts, completions, examples)
        with self._lock:
            if self._closed:
                raise RuntimeError("IsolatedScorer.score called after close()")
            outcomes: dict[str, list[Outcome]] = {}
            try:
                for c, component in enumerate(self.components):
                    run = self._batched if component.batched else self._per_sample
                    outcomes[component.name] = run(c, prompts, completions, examples) if completions else []
            except BaseException:
                # Interrupted mid-batch (Ctrl-C): the worker may still send this batch's results,
                # which the next batch must not read.
                self._discard_worker()
                raise
        return assemble_scores(self.components, completions, outcomes)

    def close(self) -> None:
        """Stop and reap the worker; safe to call twice."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> IsolatedScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessScorer:
    """Score in this process: no overhead, no time limit, no protection from a crash.

    Errors still become None plus a counted error, as everywhere.
    """

    def __init__(self, specs: list) -> None:
        self.components: list[RewardComponent] = build_reward_components(specs)
        self.restarts = 0  # no worker here; kept so both scorers log the same fields

    def score(self, prompts: list[str], completions: list[str], examples: list[dict]) -> Scores:
        return score_completions(self.components, prompts, completions, examples)

    def close(self) -> None:
        pass

    def __enter__(self) -> InProcessScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_scorer(
    specs: list, *, timeout: float | None, isolate: bool, start_method: str = DEFAULT_START_METHOD
) -> InProcessScorer | IsolatedScorer:
    """The scorer the trainer uses: `.components`, `.score(prompts, completions, examples)`, `.close()`.

    `isolate=True` runs rewards in a worker process with `timeout` seconds per call (None: no
    limit, but a crash is still survived); `isolate=False` runs them here and ignores `timeout`,
    since nothing can stop a call running in this process.

    >>> scorer = make_scorer(["accuracy"], timeout=None, isolate=False)
    >>> scorer.score(["1+1?"], ["<answer>2</answer>"], [{"answer": "2"}]).total
    [1.0]
    """
    if isolate:
        return IsolatedScorer(specs, timeout=timeout, start_method=start_method)
    return InProcessScorer(specs)
