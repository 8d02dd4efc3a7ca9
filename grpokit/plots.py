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
    steps = [r for r in rows if r.get("phase") == "train"]
    evals = [r for r in rows if "eval_accuracy" in r and r.get("phase") != "initial"]  # after any warm-up
    fig, (ax_left, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    x = [r["step"] for r in steps]
    if steps and "reward" in steps[0]:  # online methods: reward per component
        ax_left.plot(x, [r["reward"] for r in steps], label="mean reward (total)")
        for key in sorted({k for r in steps for k in r if k.startswith("reward/")}):
            ax_left.plot(x, [r.get(key) for r in steps], label=key, alpha=0.7)
        ax_left.set(xlabel="step", ylabel="reward", title="Reward per step")
    else:  # offline methods: the loss is what there is to show
        ax_left.plot(x, [r.get("loss") for r in steps], label="loss")
        ax_left.set(xlabel="step", ylabel="loss", title="Loss per step")
    if steps and "accuracy" in steps[0]:
        ax_acc.plot(x, [r["accuracy"] for r in steps], label="sampled (train prompts)", alpha=0.6)
    if steps and "preference_accuracy" in steps[0]:
        ax_acc.plot(x, [r["preference_accuracy"] for r in steps], label="preference accuracy (train pairs)")
    if evals:
        ax_acc.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", label="held-out (greedy)")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    for ax in (ax_left, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / out_name
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
