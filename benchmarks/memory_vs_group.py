"""How GRPO's memory and time grow with the group size G, with and without micro-batching.

    python benchmarks/memory_vs_group.py [--groups 2,4,8,16,32] [--steps 4] [--out runs/bench_memory_vs_group]

A GRPO step samples prompts_per_step x G completions and back-propagates through all of them, so
the activations of one update grow linearly with G unless the update is split into micro-batches
(`optim.micro_batch_size`), which caps them at one micro-batch's worth while the time keeps growing.
Each (G, micro-batch) cell is one `grpokit train` process on the embedded tiny model (16 prompts
per step, 40-token completions, beta 0.04 so a reference model is held too, no evaluation); the
table reports that process's peak resident set size (summary.json's peak_memory_mb, ru_maxrss),
its growth over the smallest G, and the median seconds per step after the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from settings import DEMO_CONFIG, SETTINGS, grpokit_overrides  # noqa: E402

DEMO_MICRO_BATCH = 128  # grpokit/tiny/demo.yaml's optim.micro_batch_size


def run_cell(home: Path, out: Path, group_size: int, micro_batch: int | None, steps: int) -> dict:
    """One training process; micro_batch None = the whole batch in one pass."""
    settings = {**SETTINGS, "group_size": group_size}
    run_dir = out / f"G{group_size}_{'whole' if micro_batch is None else f'mb{micro_batch}'}"
    overrides = grpokit_overrides(str(home / "model"), home, steps, 0, 0, str(run_dir), settings)
    overrides += ["data.eval=", "train.threads=1", "--overwrite"]
    if micro_batch is not None:
        overrides.append(f"optim.micro_batch_size={micro_batch}")
    subprocess.run([sys.executable, "-m", "grpokit", "train", str(DEMO_CONFIG), *overrides],
                   check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_seconds = [r["time_step"] for r in rows if r.get("phase") == "train"][1:]
    tokens = [r["tokens_backpropagated"] for r in rows if r.get("phase") == "train"]
    return {"group_size": group_size, "micro_batch": micro_batch or 16 * group_size,
            "whole_batch": micro_batch is None, "peak_rss_mb": summary["peak_memory_mb"],
            "seconds_per_step": statistics.median(step_seconds), "tokens_per_step": statistics.mean(tokens)}


def table(cells: list[dict]) -> str:
    lines = ["| G | completions / step | micro-batch | peak RSS, MB | growth over smallest G, MB | s / step |",
             "|---:|---:|---|---:|---:|---:|"]
    for whole in (True, False):
        group = [c for c in cells if c["whole_batch"] == whole]
        base = group[0]["peak_rss_mb"]
        for c in group:
            mb = "whole batch" if whole else str(c["micro_batch"])
            lines.append(f"| {c['group_size']} | {16 * c['group_size']} | {mb} | {c['peak_rss_mb']:.0f} | "
                         f"{c['peak_rss_mb'] - base:+.0f} | {c['seconds_per_step']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", default="2,4,8,16,32")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="runs/bench_memory_vs_group")
    parser.add_argument("--home", default=".grpokit/tiny", help="where the tiny model and data are (built if missing)")
    args = parser.parse_args()
    from grpokit.tiny import ensure_tiny

    home = Path(args.home)
    ensure_tiny(home)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    for micro_batch in (None, DEMO_MICRO_BATCH):
        for g in (int(x) for x in args.groups.split(",")):
            cells.append(run_cell(home, out, g, micro_batch, args.steps))
            print(json.dumps(cells[-1]), flush=True)
    text = table(cells)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps(cells, indent=1))
    print(text)


if __name__ == "__main__":
    main()
