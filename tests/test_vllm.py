"""sampling.engine: vllm. On CPU the engine is driven through a stand-in `vllm` package
(tests/fixtures/fake_vllm) that samples with a Hugging Face copy of the model and only learns the
policy's weights through `load_weights`; the last test runs the real vLLM where a GPU has it."""

import copy
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from grpokit.config import LoRAConfig, load_config
from grpokit.logprobs import token_logprobs
from grpokit.parallel import single_process
from grpokit.sampler import stop_token_ids
from grpokit.trainer import train

HERE = Path(__file__).parent
FAKE = HERE / "fixtures" / "fake_vllm"
REWARD = HERE / "fixtures" / "rewards" / "sample_rewards.py"
REAL_VLLM = (importlib.util.find_spec("vllm") is not None and torch.cuda.is_available())


@pytest.fixture
def fake_vllm(monkeypatch):
    """The stand-in `vllm` package, imported fresh; its CALLS record what the engine was asked."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    import vllm

    assert vllm.__file__.startswith(str(FAKE))
    vllm.CALLS.clear()
    yield vllm
    sys.modules.pop("vllm", None)


def _prompts(tokenizer, questions=("What is 1 + 2?", "What is 30 + 45?")):
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in questions]


def _sampler(tiny_home, model, tokenizer, *overrides):
    from grpokit.vllm_engine import VLLMSampler

    config = load_config(None, [f"model.path={tiny_home['model']}", "sampling.engine=vllm", *overrides])
    return VLLMSampler(config, str(tiny_home["model"]), single_process(), seed=0, model=model, tokenizer=tokenizer)


def test_a_vllm_rollout_has_the_trainers_layout_and_log_probs(tiny_home, tiny_model_and_tokenizer, fake_vllm):
    model, tokenizer = tiny_model_and_tokenizer
    sampler = _sampler(tiny_home, model, tokenizer)
    started = fake_vllm.CALLS[0]
    assert started[0] == "LLM" and started[2]["logprobs_mode"] == "processed_logprobs"  # after temperature
    torch.manual_seed(0)
    rollout = sampler.sample(_prompts(tokenizer), 3, max_new_tokens=40, temperature=0.7)
    assert [c[0] for c in fake_vllm.CALLS[1:]] == ["load_weights", "reset_prefix_cache", "generate"]  # synced first
    assert rollout.external_sampler and len(rollout.tokens) == 6 and rollout.group_size == 3
    mask = rollout.tokens.completion_mask_BC
    ended = ~rollout.truncated_B
    assert ended.any()  # some completions stop within 40 tokens: their last masked token is the EOS
    for i in ended.nonzero().flatten().tolist():
        n = int(mask[i].sum())
        assert rollout.tokens.completion_ids_BC[i, n - 1].item() in stop_token_ids(tokenizer, model)
    # the same model in float32 inside the stand-in: its sampling log-probs are the trainer's at T = 0.7
    with torch.no_grad():
        trainer_logp = token_logprobs(model, rollout.tokens, 0.7)
    torch.testing.assert_close(rollout.sampling_logprobs_BC * mask, trainer_logp * mask, atol=1e-4, rtol=0)
    assert rollout.completions[0] == tokenizer.decode(
        rollout.tokens.completion_ids_BC[0, : int(mask[0].sum())], skip_special_tokens=True)


def test_a_stop_token_left_out_by_the_engine_is_put_back(tiny_home, tiny_model_and_tokenizer, fake_vllm,
                                                         monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DROP_STOP", "1")
    model, tokenizer = tiny_model_and_tokenizer
    torch.manual_seed(0)
    rollout = _sampler(tiny_home, model, tokenizer).sample(_prompts(tokenizer), 3, max_new_tokens=40, temperature=0.7)
    ended = (~rollout.truncated_B).nonzero().flatten().tolist()
    assert ended  # without the fix they would all look truncated, and the model would never learn to stop
    for i in ended:
        n = int(rollout.tokens.completion_mask_BC[i].sum())
        assert rollout.tokens.completion_ids_BC[i, n - 1].item() == tokenizer.eos_token_id
        assert math.isnan(rollout.sampling_logprobs_BC[i, n - 1].item())  # unknown: importance factor 1


def test_weights_pushed_to_vllm_are_named_like_a_checkpoint_with_adapters_merged(tiny_model_and_tokenizer):
    pytest.importorskip("peft")
    from grpokit.modeling import apply_lora
    from grpokit.vllm_engine import inference_weights

    base, _ = tiny_model_and_tokenizer
    plain = dict(inference_weights(base))
    assert plain.keys() == base.state_dict().keys()
    policy = apply_lora(copy.deepcopy(base), LoRAConfig(r=4))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    pushed = {name: t.clone() for name, t in inference_weights(policy)}
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert pushed.keys() == merged.keys() == base.state_dict().keys()
    for name in merged:
        torch.testing.assert_close(pushed[name], merged[name], atol=1e-6, rtol=0, msg=name)
    assert any((pushed[n] - base.state_dict()[n]).abs().max() > 1e-3 for n in pushed)  # the adapters are in
    for name, value in policy.state_dict().items():  # and merged out again afterwards
        torch.testing.assert_close(value, before[name], atol=1e-6, rtol=0, msg=name)


def _train_config(tiny_home, out, *extra):
    return load_config(None, [
        f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
        "data.max_eval_examples=4", "sampling.group_size=4", "sampling.max_new_tokens=8",
        "sampling.prompts_per_step=4", "train.steps=3", "train.progress=false", f"train.out_dir={out}",
        "grpo.beta=0", "verify.isolate=false", "optim.lr=3e-3", "sampling.engine=vllm",
        "grpo.skip_zero_advantage=false",  # every completion forwarded: the sampler metrics are measured every step
        f"rewards=[{{name: '{REWARD}:length_parity_on_even_answers', alias: parity}}]", *extra])


def _train_rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("phase") == "train"]


def test_training_pushes_the_policy_to_vllm_before_every_sampling(tiny_home, tmp_path, fake_vllm, monkeypatch):
    train(_train_config(tiny_home, tmp_path / "synced"))
    steps = _train_rows(tmp_path / "synced")
    loads = [c for c in fake_vllm.CALLS if c[0] == "load_weights"]
    assert len(loads) == 3  # before each step's sampling: the first one because vLLM starts from disk
    # vLLM samples from the current policy: its log-probs are the trainer's, the weights all 1
    assert all(r["sampler_logprob_gap"] < 1e-4 and abs(r["is_weight_mean"] - 1) < 1e-4 for r in steps)
    assert all(r["time_weight_sync"] >= 0 for r in steps)

    # the control: without the push after each update, vLLM samples from stale weights, and it shows
    from grpokit.vllm_engine import VLLMSampler

    monkeypatch.setattr(VLLMSampler, "after_update", lambda self: None)
    train(_train_config(tiny_home, tmp_path / "stale"))
    stale = _train_rows(tmp_path / "stale")
    assert stale[0]["sampler_logprob_gap"] < 1e-4 and stale[-1]["sampler_logprob_gap"] > 1e-3


def test_a_lower_precision_sampler_is_corrected_by_capped_weights(tiny_home, tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setenv("FAKE_VLLM_DTYPE", "bfloat16")
    train(_train_config(tiny_home, tmp_path, "train.steps=2", "vllm.importance_cap=1.0002"))
    steps = _train_rows(tmp_path)
    assert all(r["sampler_logprob_gap"] > 1e-4 for r in steps)  # bfloat16 log-probs differ from float32 ones
    assert all(abs(r["is_weight_mean"] - 1) > 1e-5 and r["is_weight_mean"] <= 1.0002 for r in steps)
    assert all(r["is_over_cap_fraction"] > 0 for r in steps)  # the largest ratios were truncated


def test_sleep_mode_wakes_vllm_for_every_sampling_also_without_an_update(tiny_home, tmp_path, fake_vllm):
    """Dynamic sampling's extra rounds sample again with no update (no push) in between: vLLM,
    put to sleep after each generation, must be woken for them too (the stand-in refuses otherwise)."""
    train(_train_config(tiny_home, tmp_path, "train.steps=2", "vllm.enable_sleep_mode=true",
                        "sampling.dynamic=true", "sampling.max_rounds=3"))
    kinds = [c[0] for c in fake_vllm.CALLS]
    assert kinds.count("generate") > 2  # some step sampled more than once
    assert kinds.count("sleep") == kinds.count("generate") + 1  # asleep from the start and after each sampling


def test_a_stop_token_vllm_names_in_stop_reason_is_put_back_by_hand():
    from grpokit.vllm_engine import _with_stop_token

    # ended by a stop id that is not EOS (e.g. a chat end-of-turn), which this engine left out
    ids, logprobs = _with_stop_token([5, 6], [-1.0, -2.0], "stop", 9, [2, 9], eos_id=2)
    assert ids == [5, 6, 9] and logprobs[:2] == [-1.0, -2.0] and math.isnan(logprobs[2])
    # already there, or cut by length: unchanged
    assert _with_stop_token([5, 9], [-1.0, -2.0], "stop", 9, [2, 9], eos_id=2) == ([5, 9], [-1.0, -2.0])
    assert _with_stop_token([5, 6], [-1.0, -2.0], "length", None, [2, 9], eos_id=2) == ([5, 6], [-1.0, -2.0])
    # ended by EOS (stop_reason None) without it in token_ids
    assert _with_stop_token([5], [-1.0], "stop", None, [2, 9], eos_id=2)[0] == [5, 2]


def test_pushing_lora_weights_leaves_a_bfloat16_base_exactly_as_it_was(tiny_model_and_tokenizer):
    """Merging adapters into bfloat16 weights and unmerging them again does not round back: the
    push adds them out of place, so the frozen base (the KL reference) never moves."""
    pytest.importorskip("peft")
    from grpokit.modeling import apply_lora
    from grpokit.vllm_engine import inference_weights

    base, _ = tiny_model_and_tokenizer
    policy = apply_lora(copy.deepcopy(base).to(torch.bfloat16), LoRAConfig(r=4))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    for _ in range(5):
        pushed = dict(inference_weights(policy))
    for name, value in policy.state_dict().items():
        assert torch.equal(value, before[name]), name
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    for name in merged:  # bfloat16 rounding of the sum: one unit in the last place
        torch.testing.assert_close(pushed[name].float(), merged[name].float(), atol=2e-2, rtol=1e-2, msg=name)


def test_without_vllm_installed_the_error_says_how_to_get_it(tiny_home, monkeypatch):
    from grpokit.errors import GrpokitError

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    with pytest.raises(GrpokitError, match=r"pip install 'grpokit\[vllm\]'"):
        _sampler(tiny_home, None, None)


@pytest.mark.skipif(not REAL_VLLM, reason="needs vLLM and a CUDA GPU (pip install 'grpokit[vllm]')")
def test_real_vllm_samples_the_policy_after_a_weight_push(tmp_path):
    """On a GPU machine: colocated vLLM, the tiny model; a weight push changes what vLLM samples to
    what the pushed weights would give, and its log-probs agree with the trainer's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpokit.tiny import ensure_tiny
    from grpokit.vllm_engine import VLLMSampler

    home = ensure_tiny(tmp_path / "tiny", size="test")
    model = AutoModelForCausalLM.from_pretrained(home["model"]).cuda()
    tokenizer = AutoTokenizer.from_pretrained(home["model"])
    config = load_config(None, [f"model.path={home['model']}", "sampling.engine=vllm",
                                "vllm.gpu_memory_utilization=0.2"])
    sampler = VLLMSampler(config, str(home["model"]), single_process(), seed=0, model=model, tokenizer=tokenizer)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    rollout = sampler.sample(_prompts(tokenizer), 4, max_new_tokens=16, temperature=1.0)
    with torch.no_grad():
        trainer_logp = token_logprobs(model, rollout.tokens.to("cuda"), 1.0).cpu()
    mask = rollout.tokens.completion_mask_BC.bool()
    gap = (rollout.sampling_logprobs_BC - trainer_logp)[mask].abs().mean().item()
    assert gap < 0.02, gap  # float32 policy against vLLM's kernels; stale weights give gaps of ~0.5


def test_vllm_draws_multi_turn_conversations_through_the_same_interface(tiny_home, tiny_model_and_tokenizer,
                                                                        fake_vllm):
    """The multi-turn loop continues token ids with vLLM as with the local loop: the policy's tokens carry
    vLLM's log-probs (the trainer's, in the stand-in), the environment's carry none."""
    from grpokit.envs import EnvironmentFactory
    from grpokit.multiturn import MultiTurnSampler

    model, tokenizer = tiny_model_and_tokenizer
    tools = HERE / "fixtures" / "tools" / "sample_tools.py"
    extra = [f"env.name={tools}:ChattyVowelEnvironment", "env.max_turns=4", "env.max_tokens=60",
             "sampling.max_new_tokens=10", "sampling.temperature=0.7"]
    sampler = _sampler(tiny_home, model, tokenizer, *extra)
    config = load_config(None, [f"model.path={tiny_home['model']}", "sampling.engine=vllm", *extra])
    conversations = MultiTurnSampler(sampler, tokenizer, EnvironmentFactory(config, tokenizer), config)
    torch.manual_seed(0)
    rollout = conversations.sample(_prompts(tokenizer), 2, rows=[{"answer": "3"}, {"answer": "75"}])
    assert rollout.external_sampler and max(s["turns"] for s in rollout.env_stats) >= 2
    assert [c[0] for c in fake_vllm.CALLS].count("generate") == max(s["turns"] for s in rollout.env_stats)
    policy = rollout.tokens.policy_mask_BC.bool()
    assert (~policy & rollout.tokens.completion_mask_BC.bool()).any()  # environment tokens are in there
    with torch.no_grad():
        trainer_logp = token_logprobs(model, rollout.tokens, 0.7)
    torch.testing.assert_close(rollout.sampling_logprobs_BC[policy], trainer_logp[policy], atol=1e-4, rtol=0)
    assert (rollout.sampling_logprobs_BC[~policy] == 0).all()
