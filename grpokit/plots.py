"""Plots of a run: reward and accuracy per step (PNG), from metrics.jsonl alone."""

from __future__ import annotations

from pathlib import Path

from grpokit.run_dir import read_jsonl_rows


def plot_training(run_dir: str | Path, out_name: str = "training.png") -> Path:
    """Mean reward and sampled accuracy per step, with held-out accuracy where it was measured."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_jsonl_rows(run_dir / "metrics.jsonl")
    steps = [r for r in rows if "reward" in r]
    evals = [r for r in rows if "eval_accuracy" in r and r.get("phase") != "initial"]  # after any warm-up
    fig, (ax_reward, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    ax_reward.plot([r["step"] for r in steps], [r["reward"] for r in steps], label="mean reward (total)")
    for key in sorted({k for r in steps for k in r if k.startswith("reward/")}):
        ax_reward.plot([r["step"] for r in steps], [r.get(key) for r in steps], label=key, alpha=0.7)
    ax_reward.set(xlabel="step", ylabel="reward", title="Reward per step")
    ax_reward.legend(fontsize=8)
    if steps and "accuracy" in steps[0]:
        ax_acc.plot([r["step"] for r in steps], [r["accuracy"] for r in steps], label="sampled (train prompts)",
                    alpha=0.6)
    if evals:
        ax_acc.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-",
                    label="held-out (greedy)")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    ax_acc.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / out_name
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
