"""`grpokit compare`: several update rules on the same task, from the same start, side by side.

Is a gain due to the update rule, or to sampling and verifying? Every method here samples the
same number of completions per step from the same warmed-up model, with the same seed, rewards
and evaluation; only the rule that turns verified groups into an update differs. Steps:
1. one SFT warm-up (method `sft` on the demonstrations), shared by every method;
2. each method in its own process (so peak memory is that method's own), from the warm-up's
   model, with the same config: per-method settings live in their own sections (dpo.beta,
   orpo.lam, ppo.*, online.*), so one config serves every method;
3. a Markdown table and two plots (held-out accuracy against step and against training time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from grpokit.config import CHOICES, load_config, save_config
from grpokit.errors import GrpokitError

DEFAULT_METHODS = ("grpo", "rloo", "rft", "online_dpo", "online_orpo", "ppo")

def _run(args: list[str], log: Path) -> None:
    """One `grpokit train` in its own process; its output goes to a log file, which a failure names."""
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.call([sys.executable, "-m", "grpokit", "train", *args], stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise GrpokitError(f"`grpokit train {' '.join(args)}` failed (exit {code}); see {log}:\n" + "\n".join(tail))


def warmup_overrides(config) -> list[str]:
    """The config's SFT warm-up, expressed as an `sft` run of its own."""
    w = config.warmup
    return ["train.method=sft", f"train.steps={w.steps}", f"offline.batch_size={w.batch_size}",
            f"offline.completion_field={w.completion_field}", f"optim.lr={w.lr}", f"optim.schedule={w.schedule}",
            "optim.warmup_steps=0", "warmup.steps=0", "eval.every=0", "train.save_every=0"]


def compare(config_path: str, overrides: list[str], out_dir: str | Path, methods: tuple[str, ...] = DEFAULT_METHODS,
            progress: bool = False) -> dict:
    """Run `methods` from one shared warm-up; write table.md, accuracy plots and summary.json into out_dir."""
    from grpokit.methods import online_methods

    online = online_methods()

    unknown = [m for m in methods if m not in CHOICES["train.method"]]
    offline = [m for m in methods if m not in unknown and m not in online]
    if not methods or unknown or offline:
        raise GrpokitError(f"compare runs online methods ({', '.join(online)}); got "
                           f"{', '.join(unknown + offline)}.")
    config = load_config(config_path, overrides)  # validated once, before anything runs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base_config.yaml"
    save_config(config, base)
    common = [f"train.progress={str(progress).lower()}", "train.save_every=0"]

    start_model = config.model.path
    if config.warmup.steps > 0:
        print(f"compare: shared SFT warm-up ({config.warmup.steps} steps) -> {out / 'warmup'}", file=sys.stderr)
        _run([str(base), *warmup_overrides(config), *common, "--out", str(out / "warmup")], out / "warmup.log")
        start_model = str(out / "warmup" / "final")

    results = {}
    for method in methods:
        print(f"compare: {method} -> {out / method}", file=sys.stderr)
        _run([str(base), f"train.method={method}", f"model.path={start_model}", "warmup.steps=0", *common,
              "--out", str(out / method)], out / f"{method}.log")
        results[method] = method_result(out / method)
    table = format_table(results)
    (out / "table.md").write_text(table + "\n", encoding="utf-8")
    plots = plot_comparison(results, out)
    summary = {"methods": results, "table": str(out / "table.md"), "plots": [str(p) for p in plots]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def method_result(run_dir: Path) -> dict:
    """One method's row of the comparison, from its summary.json and metrics.jsonl."""
    from grpokit.jsonl import read_log

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    rows = read_log(run_dir / "metrics.jsonl")
    steps = [r for r in rows if r.get("phase") == "train"]
    evals = [r for r in rows if "eval_accuracy" in r and r.get("phase") in ("before", "eval", "after")]
    before, after = summary.get("eval_before") or {}, summary.get("eval_after") or {}
    return {
        "accuracy_before": before.get("accuracy"), "accuracy_after": after.get("accuracy"),
        "format_before": before.get("format_rate"), "format_after": after.get("format_rate"),
        "train_seconds": summary["train_seconds"],
        "tokens_generated": sum(r.get("tokens_generated", 0) for r in steps),
        "tokens_backpropagated": sum(r.get("tokens_backpropagated", 0) for r in steps),
        "peak_memory_mb": summary["peak_memory_mb"],
        "trained_state_mb": summary["trained_state_mb"],
        "zero_variance_fraction": _mean([r.get("zero_variance_fraction") for r in steps]),
        "steps_without_data": sum(1 for r in steps if r.get("no_data_reason")),
        "steps": len(steps),
        "curve": [(r["step"], r["train_seconds"], r["eval_accuracy"]) for r in evals],
    }


def _mean(values):
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def format_table(results: dict[str, dict]) -> str:
    header = ("| method | held-out accuracy | format rate | train time | tokens generated | tokens backprop | "
              "peak RSS | trained state | zero-variance groups | steps without data |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for method, r in results.items():
        lines.append(
            f"| {method} | {_pct(r['accuracy_before'])} → {_pct(r['accuracy_after'])} | "
            f"{_pct(r['format_before'])} → {_pct(r['format_after'])} | {r['train_seconds']:.0f} s | "
            f"{r['tokens_generated']:,} | {r['tokens_backpropagated']:,} | {r['peak_memory_mb']:.0f} MB | "
            f"{r['trained_state_mb']:.1f} MB | {_pct(r['zero_variance_fraction'])} | "
            f"{r['steps_without_data']}/{r['steps']} |")
    return "\n".join(lines)


def plot_comparison(results: dict[str, dict], out: Path) -> list[Path]:
    """Held-out accuracy against step and against training time, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for method, r in results.items():
        steps, seconds, accuracy = zip(*r["curve"]) if r["curve"] else ((), (), ())
        by_step.plot(steps, accuracy, "o-", label=method, markersize=3)
        by_time.plot(seconds, accuracy, "o-", label=method, markersize=3)
    by_step.set(xlabel="step", ylabel="held-out accuracy (greedy)", title="Accuracy by step", ylim=(0, 1))
    by_time.set(xlabel="training time (s, evaluation excluded)", ylabel="held-out accuracy (greedy)",
                title="Accuracy by wall-clock time", ylim=(0, 1))
    for ax in (by_step, by_time):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
