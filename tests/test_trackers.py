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
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(load_config(None, _overrides(tiny_home, tmp_path, "train.report_to=tensorboard")))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/reward", "train/loss", "warmup/loss", "eval/eval_accuracy"} <= tags
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r["reward"] for r in rows if r.get("phase") == "train"]
    scalars = events.Scalars("train/reward")
    assert [e.step for e in scalars] == [1, 2] and [e.value for e in scalars] == pytest.approx(logged)


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
