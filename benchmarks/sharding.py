"""Plain data parallel against FSDP and DeepSpeed ZeRO-2 / ZeRO-3 on the same GRPO work: what sharding
saves per process and what its communication costs. Two processes (torchrun; gloo on CPU, NCCL on
GPUs), the demo model, no warm-up. DeepSpeed is switched on through the environment that
`accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml` would set.

    python benchmarks/sharding.py [--steps 20] [--processes 2] [--out runs/bench_sharding]

Prints a Markdown table: per-process trained state (weights, gradients, AdamW moments and the KL
reference, from the live tensors), median seconds per step (sampling + scoring + update, the first two
steps left out) and its sampling and update parts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


MODES = {"data parallel": {}, "FSDP": {}, "ZeRO-2": {"ACCELERATE_USE_DEEPSPEED": "true",
                                                    "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"},
         "ZeRO-3": {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}}


def run(mode: str, home: dict, out: Path, steps: int, processes: int) -> dict:
    folder = out / mode.replace(" ", "_")
    overrides = [f"model.path={home['model']}", f"data.train={home['train']}", f"data.eval={home['eval']}",
                 "data.max_eval_examples=32", "warmup.steps=0", f"train.steps={steps}", "eval.every=0",
                 "train.progress=false", f"train.out_dir={folder}", f"train.fsdp={mode == 'FSDP'}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "grpokit", "train", str(ROOT / "grpokit" / "tiny" / "demo.yaml"), *overrides]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **MODES[mode]})
    if done.returncode != 0:
        sys.exit(f"{mode} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps_ = [r for r in rows if r.get("phase") == "train"][2:]
    summary = json.loads((folder / "summary.json").read_text())
    return {
        "trained state per process (MB)": summary["trained_state_mb"],
        "s/step": statistics.median(r["time_sampling"] + r["time_scoring"] + r["time_training"] for r in steps_),
        "sampling (s)": statistics.median(r["time_sampling"] for r in steps_),
        "update (s)": statistics.median(r["time_training"] for r in steps_),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_sharding")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from grpokit.tiny import ensure_tiny

    out = Path(args.out)
    home = ensure_tiny(out / "tiny", size="demo")
    results = {mode: run(mode, home, out, args.steps, args.processes) for mode in MODES}
    print(f"| {args.processes} processes, {args.steps} GRPO steps | " + " | ".join(MODES) + " |")
    print("|---|" + "---:|" * len(MODES))
    for key in results["FSDP"]:
        print(f"| {key} | " + " | ".join(f"{results[mode][key]:.3f}" for mode in MODES) + " |")


if __name__ == "__main__":
    main()
