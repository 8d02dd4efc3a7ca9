"""Run model-written code where nothing escapes: a pool of confined, resource-limited executors.

One home for everything that executes untrusted programs: the `code_tests` reward, the `python`
tool of multi-turn rollouts, and user rewards. What it stops and what it does not: docs/sandbox.md.

    >>> from grpokit.sandbox import run_python
    >>> run_python("print(sum(range(10)))", timeout=10).stdout   # doctest: +SKIP
    '45\\n'
"""

from __future__ import annotations

import functools
import threading

from grpokit.sandbox.limits import Limits, RunResult, SandboxUnavailable
from grpokit.sandbox.pool import Sandbox

_shared_lock = threading.Lock()


@functools.lru_cache(maxsize=8)
def _shared(workers: int, unconfined_ok: bool) -> Sandbox:
    return Sandbox(workers=workers, unconfined_ok=unconfined_ok)


def shared_sandbox(workers: int = 4, unconfined_ok: bool = False) -> Sandbox:
    """One pool per (workers, unconfined_ok) in this process, so callers share its slots and its stats."""
    with _shared_lock:
        return _shared(workers, unconfined_ok)


def run_python(code: str, stdin: str | bytes = "", timeout: float | None = 10.0, *,
               files: dict[str, str | bytes] | None = None, limits: Limits | None = None,
               unconfined_ok: bool = False) -> RunResult:
    """Run Python source in a fresh sandbox of the shared pool; returns `RunResult` (stdout, stderr,
    exit_code, timed_out, ...). Raises SandboxUnavailable where programs cannot be confined."""
    return shared_sandbox(unconfined_ok=unconfined_ok).run_python(code, stdin=stdin, timeout=timeout, files=files,
                                                                  limits=limits)


__all__ = ["Limits", "RunResult", "Sandbox", "SandboxUnavailable", "run_python", "shared_sandbox"]
