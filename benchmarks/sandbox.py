"""Throughput of the code sandbox: programs per second, confined vs a bare `python` subprocess.

    python benchmarks/sandbox.py                 # --workers 1 2 4 --n 40 --repeats 3

Two workloads:
- trivial: `print(1)`;
- test suite: a HumanEval reference solution with its asserts (tests/fixtures/code/humaneval_20.jsonl,
  3-7 tests each), through the `code_tests` harness (one fork per test).
Three ways to run each program:
- bare: `python -E -s main.py` (trivial) or `python -E -s harness.py` (suite) in a temporary folder, no
  limits and no confinement: the floor any executor pays to start an interpreter;
- sandbox: `grpokit.sandbox.Sandbox` (bubblewrap + setpriv/prlimit, a fresh tmpfs each run).
Each cell is the median of `--repeats` rounds of `--n` programs run `--workers` at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grpokit.rewards.code_tests import _HARNESS, extract_program, run_tests  # noqa: E402
from grpokit.sandbox import Limits, Sandbox  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "code" / "humaneval_20.jsonl"


def bare_trivial(_) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "main.py").write_text("print(1)")
        done = subprocess.run([sys.executable, "-E", "-s", "main.py"], cwd=tmp, capture_output=True, env={})
        return done.stdout == b"1\n"


def bare_suite(row: dict) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "harness.py").write_text(_HARNESS)
        job = json.dumps({"program": extract_program(row["reference"]), "tests": row["tests"],
                          "nonce": secrets.token_hex(8), "test_timeout": 5.0})
        with open(Path(tmp, "channel"), "wb") as channel:
            subprocess.run([sys.executable, "-E", "-s", "harness.py", str(channel.fileno())], cwd=tmp, env={},
                           input=job.encode(), capture_output=True, pass_fds=(channel.fileno(),))
        return all(json.loads(line)["passed"] for line in Path(tmp, "channel").read_text().splitlines())


def rate(fn, items: list, workers: int) -> tuple[float, bool]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        ok = all(pool.map(fn, items))
    return len(items) / (time.perf_counter() - start), ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--n", type=int, default=40, help="programs per round")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    suites = [rows[i % len(rows)] for i in range(args.n)]
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.n} programs per round, "
          f"median of {args.repeats}; programs/s (all results checked correct)")
    print(f"{'workload':<12}{'workers':>8}{'bare':>10}{'sandbox':>10}{'sandbox/bare':>14}")
    for workers in args.workers:
        box = Sandbox(workers=workers, limits=Limits(wall_s=60.0))
        box.check()

        def sandbox_trivial(_, box=box) -> bool:
            return box.run_python("print(1)").stdout == "1\n"

        def sandbox_suite(row: dict, box=box) -> bool:
            return all(v["passed"] for v in run_tests(extract_program(row["reference"]), row["tests"], sandbox=box))

        for name, bare, confined, items in (("trivial", bare_trivial, sandbox_trivial, list(range(args.n))),
                                            ("test suite", bare_suite, sandbox_suite, suites)):
            results = {"bare": [], "sandbox": []}
            for _ in range(args.repeats):  # alternate, so drift in machine load hits both
                for key, fn in (("bare", bare), ("sandbox", confined)):
                    value, ok = rate(fn, items, workers)
                    if not ok:
                        raise SystemExit(f"{name}/{key}: a program gave a wrong result")
                    results[key].append(value)
            b, s = statistics.median(results["bare"]), statistics.median(results["sandbox"])
            print(f"{name:<12}{workers:>8}{b:>10.1f}{s:>10.1f}{s / b:>14.2f}")
        box.close()


if __name__ == "__main__":
    main()
