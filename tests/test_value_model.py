"""The PPO critic: trained backbone weights, values aligned with the log-prob positions, save/load, training."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from grpokit.batching import encode_pairs
from grpokit.errors import GrpokitError
from grpokit.logprobs import position_ids_from_mask
from grpokit.value_model import HEAD_FILE, ValueModel, parameter_bytes

# Row 0 has the shorter prompt and the shorter completion, so in a batch it is padded on both sides.
PROMPTS = ["What is 1 + 2?", "What is 37 + 48? Think first."]
COMPLETIONS = ["<think>1+2=3</think>", "<think>7+8=15 3+4+1=8</think><answer>85</answer>"]


@pytest.fixture(scope="module")
def value_model(tiny_model_and_tokenizer):
    lm, _ = tiny_model_and_tokenizer
    return ValueModel.from_backbone(lm)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def batch(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    return encode_pairs(tokenizer, PROMPTS, COMPLETIONS)


def _values(vm, batch):
    with torch.no_grad():
        return vm.values(batch.input_ids(), batch.attention_mask(), batch.prompt_ids_BP.shape[1])


def _with_head(vm, weight_H, bias=0.0):
    """A copy of the critic with a chosen head (values of size ~1, so 1e-5 comparisons mean something)."""
    other = ValueModel(vm.backbone, torch.nn.Linear(vm.head.in_features, 1))
    with torch.no_grad():
        other.head.weight.copy_(weight_H.view(1, -1))
        other.head.bias.fill_(bias)
    return other.eval()


def test_from_backbone_copies_the_trained_backbone(value_model, tiny_model_and_tokenizer):
    lm, _ = tiny_model_and_tokenizer
    assert type(value_model.backbone).__name__ == "LlamaModel"  # no LM head
    assert torch.equal(value_model.backbone.embed_tokens.weight, lm.model.embed_tokens.weight)
    assert torch.equal(value_model.backbone.layers[-1].mlp.down_proj.weight, lm.model.layers[-1].mlp.down_proj.weight)
    assert all(p.dtype == torch.float32 for p in value_model.parameters())
    # The head starts small and nonzero, with zero bias: values ~0, yet the backbone gets gradients.
    assert value_model.head.bias.item() == 0.0 and value_model.head.weight.abs().sum() > 0
    assert value_model.head.weight.std() < 0.01
    hidden = value_model.head.in_features
    assert _count(value_model) == _count(lm.model) + hidden + 1
    assert parameter_bytes(value_model) == 4 * _count(value_model)


def test_from_backbone_copies_the_policy_in_memory(tiny_home, value_model, batch):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(tiny_home["model"])
    vm = ValueModel.from_backbone(policy)
    assert type(vm.backbone).__name__ == "LlamaModel" and not vm.training
    assert torch.equal(_values(vm, batch), _values(value_model, batch))  # same weights, same seeded head
    with torch.no_grad():
        policy.model.embed_tokens.weight.add_(1.0)  # the critic is a copy: training the policy leaves it alone
    assert torch.equal(vm.backbone.embed_tokens.weight, value_model.backbone.embed_tokens.weight)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in vm.parameters())


def test_initial_values_are_near_zero(value_model, batch):
    values = _values(value_model, batch)
    assert values.shape == batch.completion_ids_BC.shape and values.dtype == torch.float32
    assert values.abs().max() < 0.1


def test_a_saved_critic_without_its_backbone_weights_is_refused(value_model, tmp_path):
    # Keys that do not match the backbone would otherwise load "fine", leaving a random trunk behind a log line.
    folder = tmp_path / "renamed"
    value_model.save(folder)
    weights = load_file(str(folder / "model.safetensors"))
    save_file({"other." + k: v for k, v in weights.items()}, str(folder / "model.safetensors"), {"format": "pt"})
    with pytest.raises(GrpokitError, match="renamed.*missing"):
        ValueModel.load(folder, device="cpu")


def test_padded_row_matches_the_row_alone(value_model, batch):
    vm = _with_head(value_model, torch.randn(value_model.head.in_features, generator=torch.Generator().manual_seed(1)))
    assert batch.prompt_mask_BP[0, 0] == 0 and batch.completion_mask_BC[0, -1] == 0  # really padded
    together = _values(vm, batch)
    alone_batch = batch.select([0])
    assert alone_batch.attention_mask().all()  # no padding at all
    alone = _values(vm, alone_batch)
    n = int(batch.completion_mask_BC[0].sum())
    assert alone.shape == (1, n)
    assert together[0, :n].abs().min() > 1e-3  # values of size ~1, so the tolerance is tight
    torch.testing.assert_close(together[0, :n], alone[0], atol=1e-5, rtol=0)


def test_value_of_token_j_does_not_see_token_j_or_later(value_model, batch):
    vm = _with_head(value_model, torch.randn(value_model.head.in_features, generator=torch.Generator().manual_seed(2)))
    ids, mask, P = batch.input_ids(), batch.attention_mask(), batch.prompt_ids_BP.shape[1]
    before = _values(vm, batch)
    j = 3
    changed = ids.clone()
    changed[:, P + j:] = (changed[:, P + j:] + 7) % vm.backbone.config.vocab_size
    with torch.no_grad():
        after = vm.values(changed, mask, P)
    torch.testing.assert_close(after[:, : j + 1], before[:, : j + 1], atol=0, rtol=0)  # states before token j
    assert (after[:, j + 1] - before[:, j + 1]).abs().min() > 1e-4  # the state after token j sees it


def test_values_use_the_positions_whose_logits_pick_each_token(value_model, batch, tiny_model_and_tokenizer):
    # With the head set to token k's row of the (tied) LM head, V for completion token j must equal the
    # logit for k at the position completion_logprobs uses for token j: prompt_len - 1 + j. This pins the
    # forward exactly, padded columns included. The padded-row test alone cannot: RoPE is shift-invariant
    # (dropping the position ids changes nothing while the mask is there), and transformers 5 derives a
    # packed-sequence mask from position ids when no attention mask is given (so dropping the mask alone
    # changes only the padded completion columns).
    lm, _ = tiny_model_and_tokenizer
    k = 11
    vm = _with_head(value_model, lm.lm_head.weight[k].detach())
    ids, mask, P = batch.input_ids(), batch.attention_mask(), batch.prompt_ids_BP.shape[1]
    with torch.no_grad():
        out = lm(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    logits = out.logits
    torch.testing.assert_close(_values(vm, batch), logits[:, P - 1: -1, k], atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(value_model, batch, tmp_path):
    folder = tmp_path / "critic"
    value_model.save(folder)
    loaded = ValueModel.load(folder, device="cpu")
    assert torch.equal(_values(loaded, batch), _values(value_model, batch))
    assert torch.equal(loaded.head.weight, value_model.head.weight)


def test_load_reports_a_missing_or_broken_folder(value_model, tmp_path):
    folder = tmp_path / "critic"
    value_model.save(folder)
    (folder / HEAD_FILE).unlink()
    with pytest.raises(GrpokitError, match=f"{folder}.*{HEAD_FILE}"):
        ValueModel.load(folder, device="cpu")
    with pytest.raises(GrpokitError, match="no-such-folder.*not a folder"):
        ValueModel.load(tmp_path / "no-such-folder", device="cpu")
    (folder / HEAD_FILE).write_bytes(b"not safetensors")
    with pytest.raises(GrpokitError, match=HEAD_FILE):
        ValueModel.load(folder, device="cpu")
    save_file({"weight": torch.zeros(1, 5), "bias": torch.zeros(1)}, str(folder / HEAD_FILE))
    with pytest.raises(GrpokitError, match="hidden size"):
        ValueModel.load(folder, device="cpu")


def test_a_gradient_step_trains_head_and_backbone(tiny_home, batch):
    from transformers import AutoModelForCausalLM

    vm = ValueModel.from_backbone(AutoModelForCausalLM.from_pretrained(tiny_home["model"])).train()
    assert vm.backbone.training
    head_before = vm.head.weight.detach().clone()
    layer = vm.backbone.layers[0].self_attn.q_proj.weight
    layer_before = layer.detach().clone()
    optimizer = torch.optim.AdamW(vm.parameters(), lr=1e-2)
    mask = batch.completion_mask_BC.float()
    target = torch.full_like(mask, 0.7)

    def loss_fn():
        values = vm.values(batch.input_ids(), batch.attention_mask(), batch.prompt_ids_BP.shape[1])
        return ((values - target) ** 2 * mask).sum() / mask.sum()

    first = loss_fn()
    first.backward()
    assert vm.head.weight.grad.abs().sum() > 0 and vm.head.bias.grad.abs().sum() > 0
    assert layer.grad is not None and layer.grad.abs().sum() > 0  # nonzero head init: the trunk learns at once
    optimizer.step()
    assert not torch.equal(vm.head.weight, head_before) and not torch.equal(layer, layer_before)
    for _ in range(4):
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()
    assert loss_fn().item() < first.item() / 2
    vm.eval()
    assert not vm.backbone.training and not vm.head.training
