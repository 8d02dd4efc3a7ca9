"""grpokit against Hugging Face TRL's GRPOTrainer on the same GRPO work, side by side.

    python benchmarks/vs_trl.py [--out runs/bench_vs_trl] [--mode throughput|accuracy|both]

1. builds the embedded tiny task and model (demo size) and one SFT warm-up, shared by every run;
2. throughput: `--rounds` rounds of `--steps` GRPO steps per tool, alternating which tool goes
   first, each run in its own process; plus grpokit ablations (each optimisation switched off);
3. time-to-accuracy: each tool trains up to `--max-steps` steps, evaluating every `--eval-every`,
   and the training time until held-out accuracy first reaches `--target` is reported;
4. prints Markdown tables and writes them, with every run's raw numbers, to the output folder.

Settings both tools run are in benchmarks/settings.py; what differs is in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from settings import DEMO_CONFIG, SETTINGS  # noqa: E402

# What each grpokit optimisation buys: the same run with it switched off.
ABLATIONS = {
    "grpokit, generate() sampler": ["sampling.engine=transformers"],
    "grpokit, no shared prompt forward": ["train.share_prompt_forward=false"],
    "grpokit, neither": ["sampling.engine=transformers", "train.share_prompt_forward=false"],
}


# Time to accuracy: the same settings through each tool, plus grpokit with DAPO dynamic sampling
# (more sampling per step, but every group in the update carries signal).
ACCURACY_RUNS = {
    "grpokit": ("grpokit", []),
    "grpokit + dynamic sampling": ("grpokit", ["sampling.dynamic=true"]),
    "trl": ("trl", []),
}


def prepare(out: Path) -> tuple[Path, Path]:
    """The tiny task and an SFT warm-up of the demo model, built once into out/."""
    from grpokit.compare import warmup_overrides
    from grpokit.config import load_config
    from grpokit.tiny import ensure_tiny

    home = out / "tiny"
    paths = ensure_tiny(home, size="demo")
    warm = out / "warmup" / "final"
    if not (warm / "config.json").is_file():
        print(f"bench: SFT warm-up -> {warm.parent}", file=sys.stderr)
        overrides = warmup_overrides(load_config(DEMO_CONFIG, [])) + [
            f"model.path={paths['model']}", f"data.train={paths['train']}", f"data.eval={paths['eval']}",
            "train.progress=false", "--out", str(warm.parent)]
        subprocess.run([sys.executable, "-m", "grpokit", "train", str(DEMO_CONFIG), *overrides], check=True,
                       stdout=subprocess.DEVNULL)
    return home, warm


def run_worker(tool: str, home: Path, model: Path, out: Path, name: str, *, steps: int, eval_every: int = 0,
               seed: int = 0, threads: int, overrides: list[str] = ()) -> dict:
    result_path = out / f"{name}.json"
    command = [sys.executable, str(HERE / "worker.py"), "--tool", tool, "--model", str(model), "--home", str(home),
               "--steps", str(steps), "--eval-every", str(eval_every), "--seed", str(seed),
               "--threads", str(threads), "--out", str(result_path)]
    for override in overrides:
        command += ["--set", override]
    print(f"bench: {name} ({tool}, {steps} steps)", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"bench: {name} failed (exit {code}); see {out / f'{name}.log'}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = time.perf_counter() - started
    return result


def throughput_row(runs: list[dict]) -> dict:
    """Medians over every step of every run, the first step of each run left out (lazy initialisation)."""
    steps = [s for r in runs for s in r["steps"][1:]]
    median = {k: statistics.median(s[k] for s in steps) for k in ("total", "sampling", "scoring", "reference")}
    rest = statistics.median(s["total"] - s["sampling"] - s["scoring"] - s["reference"] for s in steps)
    total_time = sum(s["total"] for s in steps)
    return {
        "s_per_step": median["total"],
        "completions_per_s": sum(s["completions"] for s in steps) / total_time,
        "tokens_per_s": sum(s["tokens"] for s in steps) / total_time,
        "sampling": median["sampling"], "scoring": median["scoring"], "reference": median["reference"],
        "update_and_rest": rest,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "accuracy_before": statistics.mean(r["accuracy_before"] for r in runs),
        "accuracy_after": statistics.mean(r["accuracy_after"] for r in runs),
        "steps_measured": len(steps),
    }


def throughput_table(rows: dict[str, dict], steps: int) -> str:
    g, t = rows["grpokit"], rows["trl"]
    lines = ["| | grpokit | TRL | grpokit / TRL |", "|---|---:|---:|---:|"]

    def line(label, key, fmt, better):
        ratio = g[key] / t[key] if t[key] else float("nan")
        lines.append(f"| {label} | {fmt.format(g[key])} | {fmt.format(t[key])} | {ratio:.2f} ({better}) |")

    line("seconds per step (median)", "s_per_step", "{:.3f}", "lower is better")
    line("completions per second", "completions_per_s", "{:.0f}", "higher is better")
    line("generated tokens per second", "tokens_per_s", "{:.0f}", "higher is better")
    line("  sampling, s/step", "sampling", "{:.3f}", "lower is better")
    line("  scoring, s/step", "scoring", "{:.3f}", "lower is better")
    line("  reference log-probs, s/step", "reference", "{:.3f}", "lower is better")
    line("  policy forward + backward + optimiser + rest, s/step", "update_and_rest", "{:.3f}", "lower is better")
    line("peak RSS, MB (process tree)", "peak_rss_mb", "{:.0f}", "lower is better")
    lines.append(f"| held-out accuracy before → after {steps} steps (mean of runs) | "
                 f"{g['accuracy_before']:.1%} → {g['accuracy_after']:.1%} | "
                 f"{t['accuracy_before']:.1%} → {t['accuracy_after']:.1%} | |")
    return "\n".join(lines)


def ablation_table(rows: dict[str, dict], trl_row: dict) -> str:
    trl = trl_row["s_per_step"]
    lines = ["| run | s/step | sampling | reference | update + rest | speed-up over TRL |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['s_per_step']:.3f} | {r['sampling']:.3f} | {r['reference']:.3f} | "
                     f"{r['update_and_rest']:.3f} | {trl / r['s_per_step']:.2f}× |")
    return "\n".join(lines)


SMOOTHING = 3  # evaluations averaged for the steadier "time to accuracy"


def time_to_accuracy(run: dict, target: float) -> dict:
    """When held-out accuracy first reaches `target`: at a single evaluation (`first`), and as the mean
    of the last SMOOTHING evaluations (`smoothed`; steadier: one evaluation of 200 prompts has a
    standard error of ~3.5 points)."""
    evals = run["evals"]
    if evals[0]["accuracy"] >= target:
        raise SystemExit(f"bench: the warmed-up model already scores {evals[0]['accuracy']:.1%} >= --target "
                         f"{target:.0%}; choose a higher target.")
    trained = [e for e in evals if e["step"] > 0]
    first = next((e for e in trained if e["accuracy"] >= target), None)
    smoothed = next((trained[i] for i in range(SMOOTHING - 1, len(trained))
                     if sum(e["accuracy"] for e in trained[i - SMOOTHING + 1: i + 1]) / SMOOTHING >= target), None)
    return {"first": first, "smoothed": smoothed, "best": max(e["accuracy"] for e in evals),
            "train_seconds": run["train_seconds"]}


def accuracy_table(results: dict[int, dict[str, dict]], target: float, max_steps: int) -> str:
    lines = [f"| seed | run | first eval ≥ {target:.0%}: step, training s | mean of {SMOOTHING} evals ≥ {target:.0%}: "
             f"step, training s | speed-up over TRL (first / mean) | best accuracy in {max_steps} steps | "
             "sampled completions per step |", "|---|---|---:|---:|---:|---:|---:|"]

    def cell(hit):
        return f"{hit['step']}, {hit['train_seconds']:.1f}" if hit else "not reached"

    def speedup(r, trl, key):
        return f"{trl[key]['train_seconds'] / r[key]['train_seconds']:.2f}×" if r[key] and trl[key] else "n/a"

    for seed, by_run in results.items():
        trl = by_run["trl"]
        for name, r in by_run.items():
            lines.append(f"| {seed} | {name} | {cell(r['first'])} | {cell(r['smoothed'])} | "
                         f"{speedup(r, trl, 'first')} / {speedup(r, trl, 'smoothed')} | {r['best']:.1%} | "
                         f"{r['completions_per_step']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_vs_trl")
    parser.add_argument("--mode", choices=("throughput", "accuracy", "both"), default="both")
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps per throughput run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating throughput rounds per tool")
    parser.add_argument("--no-ablations", action="store_true", help="skip the grpokit ablation runs")
    parser.add_argument("--target", type=float, default=0.45, help="held-out accuracy to reach")
    parser.add_argument("--max-steps", type=int, default=160, help="time-to-accuracy budget in steps")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both tools")
    parser.add_argument("--tables-only", action="store_true",
                        help="run nothing: rebuild the tables from the run results already in --out")
    args = parser.parse_args()
    out = Path(args.out)
    started = time.perf_counter()
    if not args.tables_only:
        try:
            import trl  # noqa: F401
        except ImportError:
            raise SystemExit("bench: TRL is not installed; `pip install -e '.[bench]'` (or `make bench`).") from None
        out.mkdir(parents=True, exist_ok=True)
        run_all(args, out)
    text = report(args, out)
    if not args.tables_only:
        text += f"\n\nTotal benchmark wall time: {time.perf_counter() - started:.0f} s."
    (out / "results.md").write_text(text + "\n")
    print(text)


def _accuracy_name(name: str, seed: int) -> str:
    return f"accuracy_{name.replace(' ', '_')}_seed{seed}"


def run_all(args, out: Path) -> None:
    """Every run, each writing its result file into `out` (read back by `report`)."""
    home, warm = prepare(out)
    common = dict(threads=args.threads)
    if args.mode in ("throughput", "both"):
        for r in range(args.rounds):  # alternate the order, so drift in machine speed hits both
            for tool in (("grpokit", "trl") if r % 2 == 0 else ("trl", "grpokit")):
                run_worker(tool, home, warm, out, f"throughput_{tool}_{r}", steps=args.steps, seed=r, **common)
        if not args.no_ablations:
            for i, overrides in enumerate(ABLATIONS.values()):
                run_worker("grpokit", home, warm, out, f"ablation_{i}", steps=args.steps, overrides=overrides,
                           **common)
    if args.mode in ("accuracy", "both"):
        for seed in args.seeds:
            for name, (tool, overrides) in ACCURACY_RUNS.items():
                run_worker(tool, home, warm, out, _accuracy_name(name, seed), steps=args.max_steps,
                           eval_every=args.eval_every, seed=seed, overrides=overrides, **common)


def report(args, out: Path) -> str:
    """The Markdown tables, from the result files in `out`."""
    def load(name: str) -> dict:
        return json.loads((out / f"{name}.json").read_text())

    lines = [f"Settings: {json.dumps(SETTINGS)}; torch threads {args.threads}."]
    if args.mode in ("throughput", "both"):
        rows = {tool: throughput_row([load(f"throughput_{tool}_{r}") for r in range(args.rounds)])
                for tool in ("grpokit", "trl")}
        lines += ["", "## Throughput", "", throughput_table(rows, args.steps)]
        if not args.no_ablations:
            table_rows = {"TRL GRPOTrainer": rows["trl"],
                          **{name: throughput_row([load(f"ablation_{i}")]) for i, name in enumerate(ABLATIONS)},
                          "grpokit (default)": rows["grpokit"]}
            lines += ["", "### What each optimisation buys", "", ablation_table(table_rows, rows["trl"])]
    if args.mode in ("accuracy", "both"):
        results = {}
        for seed in args.seeds:
            results[seed] = {}
            for name in ACCURACY_RUNS:
                run = load(_accuracy_name(name, seed))
                results[seed][name] = {**time_to_accuracy(run, args.target),
                                       "completions_per_step": statistics.mean(s["completions"] for s in run["steps"])}
        lines += ["", "## Time to accuracy", "", accuracy_table(results, args.target, args.max_steps)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
