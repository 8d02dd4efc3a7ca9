"""Exact resume: a run killed with SIGKILL and resumed ends bitwise identical to an uninterrupted one.

Both runs use one CPU thread and the same seed; on CPU every operation here is deterministic,
so the comparison is exact (torch.equal), not within a tolerance.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import grpokit.checkpoint as checkpoint_module
from grpokit.checkpoint import find_resumable
from grpokit.config import load_config
from grpokit.errors import GrpokitError
from grpokit.trainer import train

FIXTURES = Path(__file__).parent / "fixtures" / "resume"
GROUP, PROMPTS, STEPS = 4, 2, 6  # 8 training rows / 2 prompts per step: an epoch is 4 steps


def _config_text(tiny_home) -> str:
    return f"""
model: {{path: {tiny_home['model']}}}
data: {{train: {tiny_home['train']}, eval: {tiny_home['eval']}, max_train_examples: 8, max_eval_examples: 4}}
rewards:
  - {{name: accuracy, extract: answer_tag}}
  - {{name: format, weight: 0.1}}
  - {{name: "{FIXTURES / 'kill_reward.py'}:kill_at_call", weight: 0.0, alias: crash}}
sampling: {{prompts_per_step: {PROMPTS}, group_size: {GROUP}, max_new_tokens: 10}}
grpo: {{beta: 0.04}}
optim: {{lr: 0.01, warmup_steps: 2, schedule: cosine}}
warmup: {{steps: 2, batch_size: 4}}
train: {{steps: {STEPS}, save_every: 1, keep_checkpoints: 2, threads: 1, progress: false}}
verify: {{isolate: false}}
"""


@pytest.fixture(scope="module")
def config_file(tiny_home, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "resume.yaml"
    path.write_text(_config_text(tiny_home))
    return path


@pytest.fixture(scope="module")
def reference_run(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    train(load_config(config_file, [f"train.out_dir={out}"]))
    return out


def _weights(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def _train_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == "train"]


def _assert_same_run(resumed: Path, reference: Path):
    a, b = _weights(resumed), _weights(reference)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    got, want = _train_rows(resumed), _train_rows(reference)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))  # every step logged exactly once
    for r, w in zip(got, want):
        assert (r["loss"], r["reward"], r["grad_norm"], r["tokens_generated"]) == \
               (w["loss"], w["reward"], w["grad_norm"], w["tokens_generated"]), r["step"]
    rollouts = (resumed / "rollouts.jsonl").read_text().splitlines()
    assert len(rollouts) == STEPS * PROMPTS * GROUP
    assert rollouts == (reference / "rollouts.jsonl").read_text().splitlines()


def _cli(config_file, out, *extra, env=None):
    return subprocess.run([sys.executable, "-m", "grpokit", "train", str(config_file), f"train.out_dir={out}", *extra],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
                          start_new_session=True)  # its own process group, which the kill reward ends


@pytest.mark.parametrize("kill_after_step", [3, 4], ids=["mid-epoch", "epoch-boundary"])
def test_sigkill_then_resume_is_bitwise_identical(config_file, reference_run, tmp_path, kill_after_step):
    out = tmp_path / "run"
    env = {"GRPOKIT_TEST_KILL_COUNTER": str(tmp_path / "calls"),
           # the kill reward is called once per completion: die at the first call of the next step
           "GRPOKIT_TEST_KILL_AT_CALL": str(kill_after_step * PROMPTS * GROUP + 1)}
    killed = _cli(config_file, out, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoints" / "latest").read_text() == f"step_{kill_after_step}"
    assert not (out / "summary.json").exists()
    resumed = _cli(config_file, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {out / 'checkpoints' / f'step_{kill_after_step}'}" in resumed.stderr
    _assert_same_run(out, reference_run)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_at_steps"] == [kill_after_step]
    before = json.loads((reference_run / "summary.json").read_text())["eval_before"]
    assert {k: v for k, v in summary["eval_before"].items() if k != "seconds"} == \
           {k: v for k, v in before.items() if k != "seconds"}


class _Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing in grpokit catches a BaseException like this."""


def test_kill_during_checkpoint_write_resumes_from_previous(config_file, reference_run, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace

    def dying_replace(src, dst):
        if Path(src).name == ".tmp_step_3":  # files of step 3 written, not yet renamed into place
            raise _Killed
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", dying_replace)
    with pytest.raises(_Killed):
        train(load_config(config_file, [f"train.out_dir={out}"]))
    monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)
    assert (out / "checkpoints" / ".tmp_step_3").is_dir()
    assert (out / "checkpoints" / "latest").read_text() == "step_2"
    summary = train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true"]))
    assert summary["resumed_at_steps"] == [2]
    _assert_same_run(out, reference_run)


def _copy_run(reference_run, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    return out


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "no_manifest"])
def test_damaged_latest_checkpoint_is_refused_and_previous_used(reference_run, tmp_path, capsys, damage):
    out = _copy_run(reference_run, tmp_path)
    latest = out / "checkpoints" / f"step_{STEPS}"
    weights = latest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip_byte":
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(data)
    else:
        (latest / "manifest.json").unlink()
    assert find_resumable(out / "checkpoints") == out / "checkpoints" / f"step_{STEPS - 1}"
    err = capsys.readouterr().err
    assert f"refusing checkpoint {latest}" in err
    assert {"truncate": "truncated", "flip_byte": "checksum", "no_manifest": "manifest"}[damage] in err


def test_all_checkpoints_damaged_is_a_clear_error(reference_run, tmp_path):
    out = _copy_run(reference_run, tmp_path)
    for step_dir in (out / "checkpoints").glob("step_*"):
        (step_dir / "optimizer.pt").write_bytes(b"")
    with pytest.raises(GrpokitError, match="no checkpoint .* passes verification"):
        find_resumable(out / "checkpoints")


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(config_file, reference_run, tmp_path):
    out = _copy_run(reference_run, tmp_path)
    with pytest.raises(GrpokitError, match="already holds checkpoints .* --resume"):
        train(load_config(config_file, [f"train.out_dir={out}"]))


def test_old_checkpoints_are_rotated(reference_run):
    kept = sorted(p.name for p in (reference_run / "checkpoints").iterdir())
    assert kept == ["latest", f"step_{STEPS - 1}", f"step_{STEPS}"]


def test_resume_from_a_finished_run_redoes_nothing(config_file, reference_run, tmp_path):
    out = _copy_run(reference_run, tmp_path)
    summary = train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true"]))
    assert summary["resumed_at_steps"] == [STEPS]
    _assert_same_run(out, reference_run)


def test_lora_run_killed_then_resumed_is_bitwise_identical(tiny_home, tmp_path):
    """Checkpoints of a LoRA run hold only the adapters; a resume rebuilds the base (the warm-up merged
    into the model, saved in lora_base/) and puts the adapters back on it."""
    pytest.importorskip("peft")
    config_file = tmp_path / "resume_lora.yaml"
    config_file.write_text(_config_text(tiny_home) + "lora: {enabled: true, r: 4}\n")
    reference = tmp_path / "uninterrupted"
    train(load_config(config_file, [f"train.out_dir={reference}"]))
    out = tmp_path / "run"
    env = {"GRPOKIT_TEST_KILL_COUNTER": str(tmp_path / "calls"),
           "GRPOKIT_TEST_KILL_AT_CALL": str(3 * PROMPTS * GROUP + 1)}
    killed = _cli(config_file, out, env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoints" / "step_3" / "adapter_model.safetensors").is_file()
    resumed = _cli(config_file, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_run(out, reference)
