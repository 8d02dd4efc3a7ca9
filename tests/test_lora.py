"""LoRA through peft: only adapters train, the KL reference is the base with adapters off, both save formats load."""

import copy
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from grpokit.config import LoRAConfig, load_config
from grpokit.logprobs import token_logprobs
from grpokit.modeling import AdapterDisabledReference, apply_lora
from grpokit.sampler import sample
from grpokit.trainer import train

pytest.importorskip("peft")
REWARD = Path(__file__).parent / "fixtures" / "rewards" / "sample_rewards.py"


def _randomise_adapters(model):
    """LoRA's B starts at zero (adapters do nothing); give them weights so 'adapters on' differs from 'off'."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)


@pytest.fixture(scope="module")
def base_and_batch(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in ("What is 1 + 2?", "What is 9 + 9?")]
    torch.manual_seed(0)
    return model, tokenizer, sample(model, tokenizer, prompts, group_size=3, max_new_tokens=8, temperature=1.0).tokens


def test_reference_view_is_the_base_model_and_adapters_change_the_policy(base_and_batch):
    base, _, batch = base_and_batch
    plain = token_logprobs(base, batch, 1.0)
    policy = apply_lora(copy.deepcopy(base), LoRAConfig(r=4))
    _randomise_adapters(policy)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # only adapters train
    reference = AdapterDisabledReference(policy)
    mask = batch.completion_mask_BC
    torch.testing.assert_close(token_logprobs(reference, batch, 1.0) * mask, plain * mask, atol=1e-6, rtol=0)
    with torch.no_grad():
        assert ((token_logprobs(policy, batch, 1.0) - plain) * mask).abs().max() > 1e-3
    assert list(reference.parameters()) == []  # no second copy of the weights
    assert policy.training  # the view's eval() switch is undone


def test_merged_save_loads_as_a_plain_model_with_the_same_outputs(base_and_batch, tmp_path):
    base, _, batch = base_and_batch
    policy = apply_lora(copy.deepcopy(base), LoRAConfig(r=4))
    _randomise_adapters(policy)
    with torch.no_grad():
        want = token_logprobs(policy, batch, 1.0)
    policy.merge_and_unload().save_pretrained(tmp_path)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        got = token_logprobs(merged, batch, 1.0)
    mask = batch.completion_mask_BC
    torch.testing.assert_close(got * mask, want * mask, atol=1e-5, rtol=0)


def _overrides(tiny_home, out, *extra):
    return [f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
            "data.max_eval_examples=4", "sampling.group_size=4", "sampling.max_new_tokens=8",
            "sampling.prompts_per_step=2", "train.steps=3", "warmup.steps=2", "warmup.batch_size=4",
            "train.progress=false", f"train.out_dir={out}", "grpo.beta=0.04", "optim.lr=0.01", "verify.isolate=false",
            "lora.enabled=true", "lora.r=4",
            f"rewards=[accuracy, {{name: '{REWARD}:length_bonus', max_chars: 4, alias: length_bonus}}]", *extra]


def test_a_lora_run_keeps_the_base_as_reference_and_saves_the_adapter(tiny_home, tmp_path):
    from peft import PeftModel

    summary = train(load_config(None, _overrides(tiny_home, tmp_path, "lora.save=adapter")))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    kl = [r["kl"] for r in rows if r.get("phase") == "train"]
    assert abs(kl[0]) < 1e-9 and kl[-1] > 1e-6  # reference = the policy as GRPO starts (after the warm-up)
    assert not (tmp_path / "reference").exists()  # adapters off is the reference: nothing saved or loaded
    final = tmp_path / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "lora_base")  # warm-up merged into the base
    weights = sum(p.numel() * 4 for p in base.parameters())
    # weights + the adapters' gradients and AdamW moments; a full fine-tune holds 5x the weights
    # (weights, gradients, two moments, the reference)
    assert summary["trained_state_mb"] * 2**20 < 0.5 * 5 * weights
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((tmp_path / "lora_base").resolve())  # its real base
    PeftModel.from_pretrained(base, final)  # loads with peft


def test_ppo_with_lora_trains_adapters_and_a_full_critic(tiny_home, tmp_path):
    summary = train(load_config(None, _overrides(tiny_home, tmp_path, "train.method=ppo", "ppo.kl_coef=0.05",
                                                 "train.steps=2")))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r.get("phase") == "train"]
    assert [r["step"] for r in steps] == [1, 2] and all(r["value_loss"] is not None for r in steps)
    assert abs(steps[0]["kl"]) < 1e-9  # the adapters-off reference is the policy as PPO starts
    assert summary["eval_after"]["n"] == 4
