"""Plots of a run: reward and accuracy per step (PNG), from metrics.jsonl alone."""

from __future__ import annotations

from pathlib import Path

from grpokit.jsonl import read_log

# Axes of rates and fractions run a little past [0, 1], so that a value of exactly 0 or 1 (every group
# all-equal, every answer right) is drawn inside the frame, not hidden under it.
RATE_LIMITS = (-0.03, 1.03)


def plot_training(run_dir: str | Path, out_name: str = "training.png") -> Path:
    """Mean reward and sampled accuracy per step, with held-out accuracy where it was measured."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_log(run_dir / "metrics.jsonl")
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
    # A step can lack a metric (an online_dpo step that found no pair has no preference accuracy): a gap
    for key, label, alpha in (("accuracy", "sampled (train prompts)", 0.6),
                              ("preference_accuracy", "preference accuracy (train pairs)", 1.0)):
        if any(key in r for r in steps):
            ax_acc.plot(x, [r.get(key, float("nan")) for r in steps], label=label, alpha=alpha)
    if evals:
        ax_acc.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", label="held-out (greedy)")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=RATE_LIMITS)
    for ax in (ax_left, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    out = run_dir / out_name
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# The dashboard: one panel per question a user asks of a run, each from metrics.jsonl.
TIME_PARTS = (("sampling", "time_sampling"), ("scoring", "time_scoring"), ("reference pass", "time_reference"))


def time_split(row: dict) -> dict[str, float]:
    """Seconds of one step by phase; "update" is the training time left after the reference pass."""
    parts = {label: row.get(key) or 0.0 for label, key in TIME_PARTS}
    parts["update"] = max(0.0, (row.get("time_training") or 0.0) - parts["reference pass"])
    return parts


def plot_dashboard(run_dir: str | Path, out_name: str = "dashboard.png") -> Path:
    """Rewards per component, accuracy, KL and clipping, lengths and truncation, all-equal groups and
    pass rate, and where each step's time went. Panels whose metrics the method does not log say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_log(run_dir / "metrics.jsonl")
    steps = [r for r in rows if r.get("phase") == "train"]
    evals = [r for r in rows if "eval_accuracy" in r and r.get("phase") != "initial"]
    x = [r["step"] for r in steps]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))

    def lines(ax, keys: list[tuple[str, str]], title: str, ylabel: str, **limits):
        drawn = False
        for label, key in keys:
            values = [r.get(key) for r in steps]
            if any(v is not None for v in values):
                ax.plot(x, [float("nan") if v is None else v for v in values], label=label, alpha=0.8)
                drawn = True
        ax.set(title=title, xlabel="step", ylabel=ylabel, **limits)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged by this method", ha="center", va="center", transform=ax.transAxes)
        return ax

    components = sorted({k for r in steps for k in r if k.startswith("reward/")})
    reward_keys = [("total", "reward")] + [(k, k) for k in components]
    lines(axes[0, 0], reward_keys, "Reward per component", "reward")
    ax = lines(axes[0, 1], [("sampled (train prompts)", "accuracy"), ("format rate", "format_rate")],
               "Accuracy", "rate", ylim=RATE_LIMITS)
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", label="held-out (greedy)")
        ax.legend(fontsize=8)
    lines(axes[0, 2], [("KL to reference", "kl"), ("clip fraction", "clip_fraction")], "KL and clipping", "value")
    ax = lines(axes[1, 0], [("mean completion length", "mean_length")], "Completion length", "tokens")
    if any(r.get("truncation_rate") is not None for r in steps):
        twin = ax.twinx()
        twin.plot(x, [r.get("truncation_rate") for r in steps], color="tab:red", alpha=0.6, label="truncated")
        twin.set(ylabel="truncation rate", ylim=RATE_LIMITS)
        twin.legend(fontsize=8, loc="lower right")
    lines(axes[1, 1], [("groups with all-equal rewards", "zero_variance_fraction"), ("pass rate", "pass_rate")],
          "Signal in the groups", "fraction", ylim=RATE_LIMITS)
    ax = axes[1, 2]
    if steps and any(r.get("time_training") is not None for r in steps):
        split = [time_split(r) for r in steps]
        ax.stackplot(x, *[[s[label] for s in split] for label in split[0]], labels=list(split[0]), alpha=0.8)
        ax.legend(fontsize=8, loc="upper left")
    else:
        ax.text(0.5, 0.5, "not logged by this method", ha="center", va="center", transform=ax.transAxes)
    ax.set(title="Where each step's time went", xlabel="step", ylabel="seconds")
    fig.tight_layout()
    out = run_dir / out_name
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def plot_compare(results: dict[str, dict], path: str | Path, split: str = "held-out") -> Path:
    """`grpokit compare`: each method's mean accuracy curve over seeds, with its 95% t-interval as a band.

    Left against step; right against mean training time at that step (evaluation excluded).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpokit.stats import mean_interval

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for method, r in results.items():
        curves = list(r["curves"].values())
        steps = sorted(set.intersection(*({s for s, _, _ in c} for c in curves)))  # evaluated at every seed
        points = [[next(p for p in c if p[0] == s) for c in curves] for s in steps]
        seconds = [sum(p[1] for p in at) / len(at) for at in points]
        bands = [mean_interval([p[2] for p in at]) for at in points]
        mean = [b["mean"] for b in bands]
        for ax, x in ((by_step, steps), (by_time, seconds)):
            (line,) = ax.plot(x, mean, "o-", label=method, markersize=3)
            if len(curves) > 1:
                ax.fill_between(x, [b["low"] for b in bands], [b["high"] for b in bands], color=line.get_color(),
                                alpha=0.15, linewidth=0)
    seeds = len(next(iter(results.values()))["curves"]) if results else 0
    band = f"mean of {seeds} seeds, band: 95% t-interval" if seeds > 1 else "one seed"
    by_step.set(xlabel="step", ylabel=f"{split} accuracy (greedy)", title=f"Accuracy by step ({band})",
                ylim=RATE_LIMITS)
    by_time.set(xlabel="training time (s, evaluation excluded)", ylabel=f"{split} accuracy (greedy)",
                title="Accuracy by training time", ylim=RATE_LIMITS)
    for ax in (by_step, by_time):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
