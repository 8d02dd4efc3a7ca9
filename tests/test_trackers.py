"""TensorBoard and W&B (offline) receive the metrics that metrics.jsonl holds."""

import json

import pytest

from grpokit.config import load_config
from grpokit.errors import GrpokitError
from grpokit.trainer import train


def _overrides(tiny_home, out, *extra):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
            "data.max_eval_examples=4", "sampling.group_size=2", "sampling.max_new_tokens=4",
            "sampling.prompts_per_step=2", "train.steps=2", "warmup.steps=1", "warmup.batch_size=2",
            "train.progress=false", f"train.out_dir={out}", "verify.isolate=false", *extra]


def test_tensorboard_gets_every_phase_on_its_own_axis(tiny_home, tmp_path):
    pytest.importorskip("tensorboard")
    train(load_config(None, _overrides(tiny_home, tmp_path, "train.report_to=tensorboard")))
    tags = set()
    for phase in ("train", "warmup", "eval"):
        tags |= set(_events(tmp_path, phase).Tags()["scalars"])
    assert {"train/reward", "train/loss", "warmup/loss", "eval/eval_accuracy"} <= tags
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["reward"] for r in rows if r.get("phase") == "train"]
    scalars = _events(tmp_path, "train").Scalars("train/reward")
    assert [e.step for e in scalars] == [1, 2] and [e.value for e in scalars] == pytest.approx(logged)


def _events(run_dir, phase):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / phase))
    events.Reload()
    return events


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tiny_home, tmp_path):
    """A run killed after step 3 was logged, resumed from its step-2 checkpoint: step 3 runs again.
    (Resuming the finished run from step 2 is that situation: step 3 and the final rows are redone.)"""
    pytest.importorskip("tensorboard")
    overrides = _overrides(tiny_home, tmp_path, "train.report_to=tensorboard", "train.steps=3", "train.save_every=2",
                           "eval.every=1", "optim.lr=1e-2")
    train(load_config(None, overrides))
    train(load_config(None, overrides + ["train.resume=true"]))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for phase, tag, key in (("train", "train/loss", "loss"), ("eval", "eval/eval_accuracy", "eval_accuracy")):
        scalars = _events(tmp_path, phase).Scalars(tag)
        logged = {r["step"]: r[key] for r in rows if r.get("phase") in (phase, "before", "after") and key in r}
        assert [e.step for e in scalars] == sorted(logged), tag  # once each, not twice for the re-run steps
        assert [e.value for e in scalars] == pytest.approx([logged[s] for s in sorted(logged)]), tag
    assert [e.step for e in _events(tmp_path, "warmup").Scalars("warmup/loss")] == [1]  # not purged


def test_wandb_offline_run_is_written_into_the_run_folder(tiny_home, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(load_config(None, _overrides(tiny_home, tmp_path, "train.report_to=wandb")))
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    offline = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))


def test_unknown_tracker_is_a_config_error(tiny_home, tmp_path):
    with pytest.raises(GrpokitError, match="train.report_to.*tensorboard, wandb"):
        load_config(None, _overrides(tiny_home, tmp_path, "train.report_to=tensorboard,mlflow"))


def test_wandb_is_not_sent_the_rows_it_received_before_a_resume(tmp_path, monkeypatch):
    """W&B cannot rewind a run: the rows a resume cut from metrics.jsonl were sent already."""
    import sys
    from types import SimpleNamespace

    from grpokit.trackers import WandbTracker

    logged = []
    run = SimpleNamespace(define_metric=lambda *a, **k: None, log=logged.append, finish=lambda: None)
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=lambda **kwargs: run))
    cut = [{"step": 3, "phase": "train", "loss": 0.5}, {"step": 3, "phase": "after", "eval_accuracy": 0.25}]
    tracker = WandbTracker(tmp_path, load_config(None, []), resumed_at=2, already_logged=cut)
    for row in [{"step": 3, "phase": "train", "loss": 0.5}, {"step": 3, "phase": "after", "eval_accuracy": 0.25},
                {"step": 4, "phase": "train", "loss": 0.4}]:
        tracker.log(row)
    assert logged == [{"train/step": 4, "train/loss": 0.4}]
