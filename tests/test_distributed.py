"""Several processes (torchrun, gloo on CPU): the same update as one process, and no hang on a failure."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpokit.config import load_config
from grpokit.methods.grpo import grpo_update
from grpokit.parallel import single_process

HERE = Path(__file__).parent
SCRIPT = HERE / "fixtures" / "distributed" / "run.py"
REWARDS = HERE / "fixtures" / "rewards" / "sample_rewards.py"
sys.path.insert(0, str(SCRIPT.parent))
from shared_update import UPDATE_OVERRIDES, fixed_rollout  # noqa: E402


def _torchrun(*args, timeout=300, path=()):
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), str(HERE.parent)]),
                               "OMP_NUM_THREADS": "1"})
    return done, time.perf_counter() - started


# Unclipped, a wrong gradient scale shows (FSDP and DeepSpeed average over processes; the losses want
# the sum); clipped at 0.2 (the norm is ~0.49), a norm taken over one process's shard shows.
@pytest.mark.parametrize("mode, max_grad_norm", [
    ("update", "0"), ("update_fsdp", "0"), ("update_fsdp", "0.2"), ("update_zero2", "0"), ("update_zero2", "0.2"),
    ("update_zero3", "0"), ("update_zero3", "0.2")])
def test_two_processes_make_the_update_of_one_process_with_accumulation(tiny_home, tmp_path, mode, max_grad_norm):
    """Plain data parallel; FSDP (weights, gradients and the reference sharded); DeepSpeed ZeRO-2 and ZeRO-3."""
    if mode.startswith("update_zero"):
        pytest.importorskip("deepspeed")
    out = tmp_path / "two_processes.safetensors"
    done, _ = _torchrun(mode, tiny_home["model"], out, max_grad_norm)
    assert done.returncode == 0, done.stderr[-3000:]
    model = AutoModelForCausalLM.from_pretrained(tiny_home["model"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_home["model"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    rollout, advantages = fixed_rollout(model, tokenizer)
    # one process, the whole batch, in micro-batches of a quarter of it: gradient accumulation 4
    extra = [f"optim.max_grad_norm={max_grad_norm}"]
    config = load_config(None, UPDATE_OVERRIDES + [f"optim.micro_batch_size={len(rollout.tokens) // 4}"] + extra)
    ref = AutoModelForCausalLM.from_pretrained(tiny_home["model"]).requires_grad_(False)
    grpo_update(model, torch.optim.SGD(model.parameters(), lr=1.0), None, rollout, advantages, config, single_process(),
                ref)
    two = load_file(out)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(two[name], value, atol=1e-6, rtol=0, msg=name)
    assert max((value - start[name]).abs().max().item() for name, value in model.state_dict().items()) > 1e-3


def _overrides(tiny_home, out, *extra):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
            "data.max_eval_examples=4", "sampling.group_size=2", "sampling.max_new_tokens=6",
            "sampling.prompts_per_step=4", "train.steps=2", "warmup.steps=2", "warmup.batch_size=4",
            "train.save_every=1", "train.progress=false", f"train.out_dir={out}", "verify.isolate=false",
            "grpo.beta=0.04", *extra]


def test_a_two_process_run_writes_one_set_of_files_with_every_group(tiny_home, tmp_path):
    done = _accelerate_launch("multi_process.yaml", "train", *_overrides(tiny_home, tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "train"] == [1, 2]  # logged once, by the main process
    rollouts = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 4 * 2  # both processes' groups: steps x prompts x group size
    assert len({r["prompt"] for r in rollouts if r["step"] == 1}) == 4
    assert (tmp_path / "final" / "config.json").is_file() and (tmp_path / "checkpoints" / "step_2").is_dir()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["eval_after"]["n"] == 4


def test_a_failure_on_one_process_ends_the_job_quickly(tiny_home, tmp_path):
    reward = f"rewards=[accuracy, {{name: '{REWARDS}:exit_on_rank_one', alias: crash}}]"
    done, seconds = _torchrun("train", *_overrides(tiny_home, tmp_path, reward, "warmup.steps=0"), timeout=120)
    assert done.returncode != 0
    assert seconds < 60  # torchrun ends the other process; nobody waits for a collective's 30-minute timeout


def test_pair_and_supervised_methods_run_on_two_processes(tiny_home, tmp_path):
    """online_dpo, where one process may find no pair in its groups and must still join the step
    (in this seeded draw step 4's only pair is in process 0's groups); ppo, whose value model's
    gradients and whitening statistics also cross processes; grpo with LoRA; and sft."""
    parity = f"rewards=[{{name: '{REWARDS}:length_parity_on_even_answers', alias: parity}}]"
    for method, extra in (("online_dpo", [parity, "online.pass_reward=total", "online.pass_threshold=0.5",
                                          "sampling.group_size=4", "train.steps=4", "warmup.steps=0"]),
                          ("ppo", ["ppo.epochs=2", "ppo.kl_coef=0.05"]),
                          # fresh adapters after the warm-up must be the same on both processes, whose
                          # random streams differ (adapter dropout draws differ per micro-batch shape)
                          ("grpo", ["lora.enabled=true", "lora.r=4", "lora.dropout=0.1"]),
                          # extra prompts of dynamic sampling drawn once for the step, split between processes
                          ("grpo", [parity, "sampling.dynamic=true", "sampling.max_rounds=3", "warmup.steps=0"]),
                          ("sft", ["offline.batch_size=4", "warmup.steps=0"])):
        out = tmp_path / f"{method}_{len(extra)}"
        done, _ = _torchrun("train", *_overrides(tiny_home, out, f"train.method={method}", *extra))
        assert done.returncode == 0, (method, done.stderr[-3000:])
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if r.get("phase") == "train"]
        assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and steps, method
        assert all(r.get("loss") is not None or r.get("no_data_reason") for r in steps), method
        # the trainer checks at the end that both processes hold the same weights
        assert json.loads((out / "summary.json").read_text())["processes"] == 2, method
        if "sampling.dynamic=true" in extra:
            rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
            for step in {r["step"] for r in rollouts}:
                prompts = [r["prompt"] for r in rollouts if r["step"] == step][::2]  # one per group of 2
                assert len(prompts) == len(set(prompts)), f"step {step}: a prompt sampled twice"
            assert any(r["groups_sampled"] > 4 for r in steps)  # some step sampled more prompts
        if method == "online_dpo":
            assert any(r["pairs"] > 0 and r["loss"] is not None for r in steps)


def test_a_batch_that_does_not_split_evenly_is_refused_before_training():
    from types import SimpleNamespace

    import pytest

    from grpokit.errors import GrpokitError
    from grpokit.inputs import check_world

    config = load_config(None, ["sampling.prompts_per_step=16", "warmup.steps=0"])
    check_world(config, SimpleNamespace(size=4))  # 16 prompts over 4 processes: fine
    with pytest.raises(GrpokitError, match="sampling.prompts_per_step' is 16, which does not split evenly over 3"):
        check_world(config, SimpleNamespace(size=3))


def _accelerate_launch(config_file: str, *args, timeout=300, path=()):
    """`accelerate launch` with one of configs/accelerate/, two CPU processes (gloo)."""
    done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(HERE.parent / "configs" / "accelerate" / config_file), "--num_processes", "2",
                           "--main_process_port", "0", str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, path), str(HERE.parent)]),
                               "OMP_NUM_THREADS": "1"})
    return done


def test_fsdp_through_the_accelerate_config_trains_saves_and_resumes(tiny_home, tmp_path):
    """configs/accelerate/fsdp.yaml: weights, gradients and AdamW state sharded over two processes;
    sampling and evaluation on gathered weights; checkpoints hold the whole model and optimiser."""
    # micro-batches of 2 rows: some hold no repeated prompt, yet every process must make the same model calls
    overrides = _overrides(tiny_home, tmp_path, "train.steps=2", "optim.micro_batch_size=2")
    done = _accelerate_launch("fsdp.yaml", "train", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["fsdp"] and summary["processes"] == 2 and summary["eval_after"]["n"] == 4
    start = AutoModelForCausalLM.from_pretrained(tiny_home["model"]).state_dict()
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()  # a whole model, not a shard
    assert final.keys() == start.keys() and all(final[k].shape == start[k].shape for k in start)
    assert max((final[k] - start[k]).abs().max().item() for k in start) > 1e-4
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_home["model"]).parameters())
    saved = torch.load(tmp_path / "checkpoints" / "step_2" / "optimizer.pt", weights_only=True)
    assert all(isinstance(name, str) for name in saved["state"])  # keyed by parameter name, whole tensors
    assert sum(s["exp_avg"].numel() for s in saved["state"].values()) == params
    # per process: half of weights, gradients, AdamW moments and the reference of a one-process run
    one_process_mb = params * 4 * 5 / 2**20
    assert 0.4 * one_process_mb < summary["trained_state_mb"] < 0.6 * one_process_mb
    done = _accelerate_launch("fsdp.yaml", "train", *overrides, "train.steps=3", "train.resume=true")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "train"] == [1, 2, 3]  # resumed after step 2


@pytest.mark.parametrize("env, overrides, message", [
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": "cpu"}, [],
     "offload.*is not supported"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": "ds.json"}, [], "JSON file"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, ["lora.enabled=true"], "DeepSpeed ZeRO with lora.enabled"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, ["train.fsdp=true"], "both shard the model"),
    ({"ACCELERATE_USE_FSDP": "true"}, ["train.method=ppo"],
     "supports train.method grpo or rloo or gspo or cispo; .ppo."),
    ({}, ["train.fsdp=true", "lora.enabled=true"], "FSDP with lora.enabled is not supported"),
    ({}, ["train.fsdp=true", "sampling.dynamic=true"], "FSDP with sampling.dynamic is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, [], "set fsdp_version: 2"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, [], "Set it to false"),
])
def test_launch_settings_grpokit_cannot_honour_are_refused_before_loading(monkeypatch, env, overrides, message):
    from grpokit.errors import GrpokitError
    from grpokit.methods import shardable_methods
    from grpokit.parallel import check_launch

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(GrpokitError, match=message):
        check_launch(load_config(None, overrides), shardable_methods())


def test_no_sharding_asked_means_nothing_refused(monkeypatch):
    from grpokit.methods import shardable_methods
    from grpokit.parallel import check_launch

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    check_launch(load_config(None, ["train.method=ppo", "lora.enabled=true"]), shardable_methods())


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_through_the_accelerate_config_trains_saves_and_resumes(tiny_home, tmp_path, stage):
    """configs/accelerate/deepspeed_zero{2,3}.yaml: the warm-up as plain data parallel, then GRPO under
    DeepSpeed's engine; checkpoints hold the whole model and DeepSpeed's partitioned state."""
    pytest.importorskip("deepspeed")
    parity = f"rewards=[{{name: '{REWARDS}:length_parity_on_even_answers', alias: parity}}]"  # rewards that differ
    overrides = _overrides(tiny_home, tmp_path, "train.steps=2", "optim.micro_batch_size=2", parity,
                           "sampling.group_size=4", "sampling.max_new_tokens=16")  # some completions stop early
    done = _accelerate_launch(f"deepspeed_zero{stage}.yaml", "train", *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["zero_stage"] == stage and summary["processes"] == 2 and summary["eval_after"]["n"] == 4
    start = AutoModelForCausalLM.from_pretrained(tiny_home["model"]).state_dict()
    final = AutoModelForCausalLM.from_pretrained(tmp_path / "final").state_dict()
    assert final.keys() == start.keys() and all(final[k].shape == start[k].shape for k in start)
    assert max((final[k] - start[k]).abs().max().item() for k in start) > 1e-4
    saved = tmp_path / "checkpoints" / "step_2" / "deepspeed" / "zero"
    assert len(list(saved.glob("*optim_states.pt"))) == 2  # one partition of AdamW's state per process
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_home["model"]).parameters())
    whole_mb = params * 4 * 5 / 2**20  # weights, gradients, two AdamW moments, reference: one process
    # DeepSpeed's partitions, measured (its float32 masters are a copy of their own; this tiny model's
    # weights stay whole under ZeRO-3, all below DeepSpeed's persistence threshold)
    assert 0.5 * whole_mb < summary["trained_state_mb"] < whole_mb
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r["grad_norm"] > 0 for r in rows if r.get("phase") == "train")  # GRPO itself moved the model
    done = _accelerate_launch(f"deepspeed_zero{stage}.yaml", "train", *overrides, "train.steps=3",
                              "train.resume=true")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "train"] == [1, 2, 3]


def test_fsdp_optimizer_state_saved_whole_loads_back_into_shards_exactly(tiny_home, tmp_path):
    done, _ = _torchrun("roundtrip", tiny_home["model"], tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("state diff 0.0 param diff 0.0") == 2


@pytest.mark.parametrize("sharding", ["fsdp.yaml", "deepspeed_zero3.yaml"])
def test_sharded_training_with_vllm_pushes_whole_weights_every_step(tiny_home, tmp_path, sharding):
    """Each process's (stand-in) vLLM gets the gathered policy before each sampling: its log-probs
    then match the trainer's at every step, which stale or half (sharded) weights would not."""
    if sharding.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    out = tmp_path / "run"
    done = _accelerate_launch(sharding, "train", *_overrides(tiny_home, out, "sampling.engine=vllm", "train.steps=3",
                                                             "optim.lr=3e-3", "warmup.steps=0"),
                              path=[HERE / "fixtures" / "fake_vllm"])
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("phase") == "train"]
    assert len(steps) == 3 and all(r["sampler_logprob_gap"] < 1e-4 for r in steps)
