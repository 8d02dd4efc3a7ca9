"""The run folder's states (issue 17): a folder never gets stuck, a resume refuses what it cannot honour,
two runs never write one folder, a full disk is one named error, and what the run depends on is checksummed.

Each test reproduces a failure that was seen; the kill is simulated in-process by raising a BaseException
at the moment of the write (nothing in grpokit catches it), which leaves the disk as a SIGKILL there would.
"""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import grpokit.checkpoint as checkpoint_module
from grpokit.checkpoint import verify_folder
from grpokit.cli import main
from grpokit.config import load_config
from grpokit.errors import GrpokitError
from grpokit.run_dir import RunDir
from grpokit.trainer import train

STEPS = 3


class _Killed(BaseException):
    """Stands in for SIGKILL in-process."""


@pytest.fixture(scope="module")
def config_file(tiny_home, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "run.yaml"
    path.write_text(f"""
model: {{path: {tiny_home['model']}}}
data: {{train: {tiny_home['train']}, max_train_examples: 8}}
sampling: {{prompts_per_step: 2, group_size: 4, max_new_tokens: 8}}
grpo: {{beta: 0.04}}
train: {{steps: {STEPS}, save_every: 1, keep_checkpoints: 2, threads: 1, progress: false}}
verify: {{isolate: false}}
""")
    return path


@pytest.fixture(scope="module")
def finished_run(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(config_file, [f"train.out_dir={out}"]))
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _train_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r.get("phase") == "train"]


def _die_at(monkeypatch, name: str):
    real = os.replace

    def dying_replace(src, dst):
        if Path(src).name == name:
            raise _Killed
        real(src, dst)

    monkeypatch.setattr(checkpoint_module.os, "replace", dying_replace)
    return real


# ---------------------------------------------------------------------------- a folder never gets stuck

@pytest.mark.parametrize("then", ["restart", "resume"])
def test_a_kill_during_the_first_checkpoint_write_leaves_a_folder_that_can_go_on(config_file, tmp_path, monkeypatch,
                                                                                 capsys, then):
    """It used to leave only checkpoints/.tmp_step_1, and both a restart and --resume were refused for good."""
    out = tmp_path / "run"
    real = _die_at(monkeypatch, ".tmp_step_1")
    with pytest.raises(_Killed):
        train(load_config(config_file, [f"train.out_dir={out}"]))
    monkeypatch.setattr(checkpoint_module.os, "replace", real)
    assert [p.name for p in (out / "checkpoints").iterdir()] == [".tmp_step_1"]
    summary = train(load_config(config_file, [f"train.out_dir={out}", f"train.resume={then == 'resume'}"]))
    assert summary["steps"] == STEPS and "resumed_at_steps" not in summary
    assert _train_steps(out) == [1, 2, 3]
    assert not (out / "checkpoints" / ".tmp_step_1").exists()
    assert "removed unfinished checkpoint writes" in capsys.readouterr().err


def test_when_no_checkpoint_verifies_the_advice_given_works(finished_run, config_file, tmp_path):
    out = _copy(finished_run, tmp_path)
    for step_dir in (out / "checkpoints").glob("step_*"):
        (step_dir / "optimizer.pt").write_bytes(b"")
    with pytest.raises(GrpokitError, match="passes verification.*--overwrite") as info:
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true"]))
    assert "without resume" not in str(info.value)  # the old advice, which was refused
    with pytest.raises(GrpokitError, match="already holds checkpoints.*--overwrite"):
        train(load_config(config_file, [f"train.out_dir={out}"]))
    summary = train(load_config(config_file, [f"train.out_dir={out}"]), overwrite=True)
    assert "resumed_at_steps" not in summary and _train_steps(out) == [1, 2, 3]


def test_a_finished_run_without_checkpoints_is_not_overwritten(config_file, tmp_path, capsys):
    """With train.save_every=0 a second run into the folder silently replaced the finished one."""
    out = tmp_path / "run"
    overrides = [f"train.out_dir={out}", "train.save_every=0"]
    train(load_config(config_file, overrides))
    weights = (out / "final" / "model.safetensors").read_bytes()
    with pytest.raises(GrpokitError, match="holds a finished run.*--overwrite"):
        train(load_config(config_file, overrides))
    with pytest.raises(GrpokitError, match="no checkpoint to continue from.*--overwrite"):
        train(load_config(config_file, [*overrides, "train.resume=true"]))
    assert (out / "final" / "model.safetensors").read_bytes() == weights
    assert main(["train", str(config_file), *overrides, "--overwrite", "train.seed=1"]) == 0
    assert (out / "final" / "model.safetensors").read_bytes() != weights
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 1
    assert main(["train", str(config_file), *overrides, "--overwrite", "--resume"]) == 2
    assert "use one" in capsys.readouterr().err


def test_final_and_reference_are_checksummed(finished_run):
    for folder in ("final", "reference", f"checkpoints/step_{STEPS}"):
        assert verify_folder(finished_run / folder) is None, folder


# ---------------------------------------------------------------------------- resume checks the config

def test_resume_refuses_a_changed_config_listing_each_key(finished_run, config_file, tmp_path):
    """optim.lr=0.01 used to run at the saved rate while config.yaml was rewritten to say 0.01."""
    out = _copy(finished_run, tmp_path)
    saved = (out / "config.yaml").read_text()
    with pytest.raises(GrpokitError) as info:
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "sampling.group_size=2",
                                        "train.seed=5", "grpo.beta=0.1"]))
    message = str(info.value)
    for line in ("sampling.group_size: 4 -> 2", "train.seed: 0 -> 5", "grpo.beta: 0.04 -> 0.1",
                 "--allow-config-change"):
        assert line in message
    with pytest.raises(GrpokitError, match=r"optim.lr: 1e-05 -> 0.01 \(fixed: the checkpoint's optimiser"):
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "optim.lr=0.01"]),
              allow_config_change=True)  # never honoured: the optimiser state would win
    with pytest.raises(GrpokitError, match="train.method: 'grpo' -> 'rloo'"):
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "train.method=rloo"]))
    assert (out / "config.yaml").read_text() == saved and not (out / "config_changes.jsonl").exists()


def test_an_allowed_change_is_recorded_and_config_yaml_is_kept(finished_run, config_file, tmp_path):
    out = _copy(finished_run, tmp_path)
    saved = (out / "config.yaml").read_text()
    summary = train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "grpo.beta=0.1",
                                              "eval.every=2"]), allow_config_change=True)
    assert summary["resumed_at_steps"] == [STEPS]
    (record,) = [json.loads(line) for line in (out / "config_changes.jsonl").read_text().splitlines()]
    assert record["resumed_at_step"] == STEPS and record["forced"] == ["grpo.beta"]
    assert record["changes"] == {"grpo.beta": {"old": 0.04, "new": 0.1}, "eval.every": {"old": 0, "new": 2}}
    assert (out / "config.yaml").read_text() == saved  # what the run started with
    # the next resume compares with what the run now uses: the same values are no change
    train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "grpo.beta=0.1", "eval.every=2"]))
    assert len((out / "config_changes.jsonl").read_text().splitlines()) == 1


def test_train_steps_may_be_extended_with_a_constant_schedule(finished_run, config_file, tmp_path):
    out = _copy(finished_run, tmp_path)
    with pytest.raises(GrpokitError, match="train.steps: 3 -> 5 .*cosine learning-rate schedule"):
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "train.steps=5",
                                        "optim.schedule=cosine"]))
    with pytest.raises(GrpokitError, match="train.steps: 3 -> 2 .*checkpoint is at step 3"):
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "train.steps=2"]),
              allow_config_change=True)
    summary = train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true", "train.steps=4"]))
    assert summary["steps"] == 4 and _train_steps(out) == [1, 2, 3, 4]
    record = json.loads((out / "config_changes.jsonl").read_text())
    assert record["changes"] == {"train.steps": {"old": 3, "new": 4}} and record["forced"] == []


# ---------------------------------------------------------------------------- one writer at a time

def test_a_second_run_into_a_held_folder_is_refused_naming_the_holder(config_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = RunDir(out)
    assert holder.lock() is None
    try:
        with pytest.raises(GrpokitError, match=f"in use by another grpokit run \\(pid {os.getpid()} on host"):
            train(load_config(config_file, [f"train.out_dir={out}"]))
    finally:
        holder.unlock()
    assert not (out / "config.yaml").exists()  # refused before writing anything


def test_a_lock_left_by_a_killed_run_does_not_block(config_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.lock").write_text("pid 999999 on host elsewhere, since 2020-01-01 00:00:00\n")  # no flock held
    train(load_config(config_file, [f"train.out_dir={out}", "train.steps=1", "grpo.beta=0"]))
    assert f"pid {os.getpid()}" in (out / "run.lock").read_text()
    again = RunDir(out)
    assert again.lock() is None  # released when the run ended
    again.unlock()


# ---------------------------------------------------------------------------- a full disk

def _disk_full_at(monkeypatch, step: int, error: BaseException):
    real_save = checkpoint_module.torch.save

    def save(obj, path, *args, **kwargs):
        if Path(path).parent.name == f".tmp_step_{step}" and Path(path).name == "optimizer.pt":
            raise error
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    return real_save


TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")


def test_a_full_disk_during_a_checkpoint_is_one_message_and_the_run_continues(config_file, tmp_path, monkeypatch,
                                                                              capsys):
    out = tmp_path / "run"
    real = _disk_full_at(monkeypatch, 2, TORCH_FULL_DISK)
    assert main(["train", str(config_file), f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "writing checkpoint step_2 failed" in err and "MiB free" in err
    assert "Kept: checkpoints/step_1, intact" in err and "--resume" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_1"]  # no .tmp_step_2 left
    monkeypatch.setattr(checkpoint_module.torch, "save", real)
    summary = train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true"]))
    assert summary["resumed_at_steps"] == [1] and _train_steps(out) == [1, 2, 3]


def test_a_full_disk_during_the_first_checkpoint_says_a_restart_works(config_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real = _disk_full_at(monkeypatch, 1, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert main(["train", str(config_file), f"train.out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "No checkpoint was completed" in err and "Traceback" not in err
    monkeypatch.setattr(checkpoint_module.torch, "save", real)
    assert main(["train", str(config_file), f"train.out_dir={out}"]) == 0


def test_a_full_disk_outside_a_checkpoint_is_named_too(config_file, tmp_path, monkeypatch, capsys):
    import grpokit.trainer as trainer_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "run" / "final" / "model.safetensors"))

    monkeypatch.setattr(trainer_module.Trainer, "save", full)
    assert main(["train", str(config_file), f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "final/model.safetensors: No space left on device" in err and "Kept: checkpoints/step_3" in err


# ---------------------------------------------------------------------------- damaged files

def test_a_deleted_metrics_log_is_not_refilled_with_zero_bytes(finished_run, config_file, tmp_path):
    out = _copy(finished_run, tmp_path)
    (out / "metrics.jsonl").unlink()
    with pytest.raises(GrpokitError, match=r"metrics.jsonl has 0 bytes, but when .*step_3 was written it had \d+"):
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true"]))
    assert not (out / "metrics.jsonl").exists()


def test_a_damaged_reference_is_refused_naming_the_file(finished_run, config_file, tmp_path):
    """16 flipped exponent bits in reference/ used to give a run that finished with rc 0 and other weights."""
    out = _copy(finished_run, tmp_path)
    weights = out / "reference" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(GrpokitError, match="reference model of this run is damaged: .*model.safetensors does not "
                                           "match its checksum"):
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true"]))
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(GrpokitError, match="model.safetensors has .* bytes, the manifest says"):
        train(load_config(config_file, [f"train.out_dir={out}", "train.resume=true"]))


@pytest.mark.parametrize("manifest", ["[]", "{}", '{"state.json": {"size": 1}}', "not json"])
def test_a_malformed_manifest_is_named_with_the_expected_form(finished_run, tmp_path, manifest):
    out = _copy(finished_run, tmp_path)
    step = out / "checkpoints" / f"step_{STEPS}"
    (step / "manifest.json").write_text(manifest)
    problem = verify_folder(step)
    assert str(step / "manifest.json") in problem and '"bytes": <int>, "sha256"' in problem


def test_a_file_missing_from_the_manifest_is_refused(finished_run, tmp_path):
    out = _copy(finished_run, tmp_path)
    step = out / "checkpoints" / f"step_{STEPS}"
    manifest = json.loads((step / "manifest.json").read_text())
    del manifest["optimizer.pt"]
    (step / "manifest.json").write_text(json.dumps(manifest))
    assert "optimizer.pt is not in manifest.json" in verify_folder(step)


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_a_damaged_model_file_is_a_named_error(tiny_home, tmp_path, capsys, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_home["model"], model)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[3] ^= 0xFF  # the header's length
    weights.write_bytes(bytes(data))
    config = tmp_path / "c.yaml"
    config.write_text("{}\n")
    code = main(["train", str(config), f"model.path={model}", f"data.train={tiny_home['train']}",
                 "data.max_train_examples=4", "train.steps=1", f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and f"{weights} is damaged" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- every value checked at load

@pytest.mark.parametrize("override, key", [
    ("optim.lr=-1", "optim.lr"), ("optim.lr=.nan", "optim.lr"), ("optim.lr=0", "optim.lr"),
    ("warmup.lr=-1", "warmup.lr"), ("optim.weight_decay=-1", "optim.weight_decay"),
    ("optim.adam_beta1=1.5", "optim.adam_beta1"), ("optim.adam_beta2=1", "optim.adam_beta2"),
    ("train.seed=-1", "train.seed"), ("train.threads=-1", "train.threads"), ("train.steps=0", "train.steps"),
    ("train.steps=-3", "train.steps"), ("eval.every=-1", "eval.every"), ("train.save_every=-1", "train.save_every"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm"), ("verify.timeout=0", "verify.timeout"),
    ("data.max_train_examples=0", "data.max_train_examples"), ("grpo.beta=.inf", "grpo.beta"),
])
def test_a_value_out_of_range_is_named_before_anything_runs(tmp_path, capsys, override, key):
    config = tmp_path / "c.yaml"
    config.write_text("model: {path: ./no-such-model}\n")
    out = tmp_path / "run"
    code = main(["train", str(config), "--out", str(out), override])  # an override after --out is accepted
    err = capsys.readouterr().err
    assert code == 2 and f"config key '{key}'" in err and "expected" in err and "Traceback" not in err
    assert not out.exists()  # knowable before loading: no run folder


def test_warmup_lr_zero_is_refused_only_when_there_is_a_warm_up():
    load_config(None, ["warmup.lr=0"])
    with pytest.raises(GrpokitError, match="warmup.lr' is 0.0; expected a positive number"):
        load_config(None, ["warmup.lr=0", "warmup.steps=2"])


# ---------------------------------------------------------------------------- plots

def test_plot_command_draws_a_run_killed_mid_line(tmp_path, capsys):
    rows = [{"step": i, "phase": "train", "reward": 0.1 * i, "zero_variance_fraction": 1.0} for i in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "rew')
    assert main(["plot", str(tmp_path)]) == 0
    assert (tmp_path / "dashboard.png").is_file()


def test_a_fraction_of_exactly_one_is_drawn_inside_the_frame(tmp_path, monkeypatch):
    import matplotlib.figure

    from grpokit.plots import plot_dashboard

    figures = []
    real = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (figures.append(fig), real(fig, *a, **k)))
    rows = [{"step": i, "phase": "train", "zero_variance_fraction": 1.0, "pass_rate": 0.0} for i in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    plot_dashboard(tmp_path)
    signal = next(ax for ax in figures[0].axes if ax.get_title() == "Signal in the groups")
    low, high = signal.get_ylim()
    assert low < 0.0 and high > 1.0
