"""The dashboard: the time split it draws, and runs whose method logs few metrics."""

import json

from grpokit.plots import plot_dashboard, time_split


def test_time_split_takes_the_reference_pass_out_of_training_time():
    row = {"time_sampling": 0.10, "time_scoring": 0.01, "time_training": 0.30, "time_reference": 0.05}
    assert time_split(row) == {"sampling": 0.10, "scoring": 0.01, "reference pass": 0.05, "update": 0.25}
    assert time_split({"time_training": 0.2}) == {"sampling": 0.0, "scoring": 0.0, "reference pass": 0.0,
                                                  "update": 0.2}


def test_dashboard_of_an_offline_run_with_only_a_loss(tmp_path):
    rows = [{"step": i, "phase": "train", "loss": 1.0 / i, "time_training": 0.1} for i in range(1, 6)]
    rows.append({"step": 5, "phase": "after", "eval_accuracy": 0.5})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = plot_dashboard(tmp_path)
    assert out == tmp_path / "dashboard.png" and out.stat().st_size > 1000


def test_training_plot_of_a_run_where_some_steps_lack_a_metric(tmp_path):
    """online_dpo logs preference accuracy only on steps that found a pair; the plot leaves a gap there
    (it raised KeyError at the end of such a run when the first step had a pair and a later one none)."""
    from grpokit.plots import plot_training

    rows = [{"step": 1, "phase": "train", "reward": 0.5, "accuracy": 0.5, "preference_accuracy": 1.0},
            {"step": 2, "phase": "train", "reward": 0.4, "accuracy": 0.25},
            {"step": 3, "phase": "train", "reward": 0.6, "preference_accuracy": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = plot_training(tmp_path)
    assert out.stat().st_size > 1000


def test_plots_of_a_run_killed_while_writing_a_metrics_line(tmp_path):
    """A crash mid-write leaves a half-written last line; `grpokit plot` still draws the steps before it."""
    from grpokit.plots import plot_training

    rows = [{"step": i, "phase": "train", "reward": 0.1 * i, "accuracy": 0.1 * i} for i in range(1, 4)]
    text = "\n".join(json.dumps(r) for r in rows) + "\n" + '{"step": 4, "phase": "tra'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert plot_training(tmp_path).stat().st_size > 1000
    assert plot_dashboard(tmp_path).stat().st_size > 1000
