"""Per-token log-probabilities of completions under a causal LM.

One function computes them for both the sampler's check and the trainer, so the temperature
and the position ids are applied identically everywhere: a ratio pi_theta / pi_old is only
meaningful when both sides come from the same computation.

A real vocabulary makes the logits the largest tensor of a training step: 32 completions x 128
tokens x 49,152 float32 logits is 0.8 GB per copy, and the temperature division and logsumexp
make more. When a micro-batch's logits would exceed `LOGITS_BUDGET_MB`, the model runs without
its LM head (its last hidden states are caught on the way out of the decoder) and the head is
applied chunk by chunk of positions; under autograd each chunk is recomputed in backward
(activation checkpointing), so no more than about one chunk of logits is ever held. Smaller
batches (the tiny model's) take the whole-logits path, unchanged.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils.checkpoint import checkpoint

# Above this many MB of float32 logits per forward, log-probs are computed in chunks of positions.
LOGITS_BUDGET_MB = 128


def position_ids_from_mask(attention_mask_BT: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` computes them: 0 at the first real token."""
    return (attention_mask_BT.long().cumsum(-1) - 1).clamp(min=0)


def gather_logprobs(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at the given tokens. (B, T, V), (B, T) -> (B, T), in float32."""
    logits = logits_BTV.float()
    if temperature != 1.0:
        logits = logits / temperature
    # logsumexp + gather avoids materialising a second (B, T, V) tensor of log-probs.
    picked = logits.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def head_logprobs(head, hidden_BTH: torch.Tensor, tokens_BT: torch.Tensor, temperature: float,
                  chunk_positions: int) -> torch.Tensor:
    """`gather_logprobs(head(hidden), tokens, T)` computed `chunk_positions` positions at a time.

    With gradients on, each chunk's logits are recomputed in backward instead of being kept, so the
    peak is one chunk's logits (and their gradient), not the whole (B, T, V). (B, T, H) -> (B, T).
    """
    B, T, H = hidden_BTH.shape
    hidden_NH, tokens_N = hidden_BTH.reshape(B * T, H), tokens_BT.reshape(B * T)

    def chunk_logprobs(h_nH: torch.Tensor, t_n: torch.Tensor) -> torch.Tensor:
        return gather_logprobs(head(h_nH)[None], t_n[None], temperature)[0]

    recompute = torch.is_grad_enabled() and hidden_NH.requires_grad
    parts = []
    for start in range(0, B * T, chunk_positions):
        h, t = hidden_NH[start: start + chunk_positions], tokens_N[start: start + chunk_positions]
        parts.append(checkpoint(chunk_logprobs, h, t, use_reentrant=False) if recompute else chunk_logprobs(h, t))
    return torch.cat(parts).reshape(B, T)


@contextlib.contextmanager
def _last_hidden_states(model):
    """Catch the decoder's output (the final-norm hidden states the LM head reads) during a forward.

    A forward hook, so the call still goes through the whole model (a peft wrapper, the LoRA
    reference view) exactly as the plain path calls it."""
    from grpokit.decoding import transformers_model

    caught = {}

    def hook(_module, _args, output):
        caught["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = transformers_model(model).get_decoder().register_forward_hook(hook)
    try:
        yield caught
    finally:
        handle.remove()


def _chunk_positions(model, n_positions: int, max_logits_mb: float | None) -> int | None:
    """Positions per chunk when `n_positions` logits would exceed the budget; None: whole logits.

    Models whose forwards are collectives (FSDP, DeepSpeed) keep the whole-logits path: their LM
    head's weights are only gathered inside the model's own forward (`token_logprobs(lockstep=True)`
    lifts the budget). So do models whose head is not a plain projection
    (e.g. Gemma 2's final logit soft-capping), which `_head_is_projection` finds out on first use."""
    from grpokit.decoding import transformers_model

    budget = (LOGITS_BUDGET_MB if max_logits_mb is None else max_logits_mb) * 2**20
    vocab = transformers_model(model).config.vocab_size
    if n_positions * vocab * 4 <= budget:
        return None
    if getattr(transformers_model(model), "_grpokit_head_is_projection", True) is False:
        return None
    return max(1, int(budget // (vocab * 4)))


def _head_is_projection(model, hidden_B1H: torch.Tensor, logits_B1V: torch.Tensor) -> bool:
    """Whether the model's logits are its output embedding applied to the decoder's output, checked
    once per model on a position the forward projected itself, and remembered."""
    from grpokit.decoding import transformers_model

    base = transformers_model(model)
    known = getattr(base, "_grpokit_head_is_projection", None)
    if known is None:
        with torch.no_grad():
            mine = base.get_output_embeddings()(hidden_B1H).float()
        # The same module on the same input: equal up to matmul rounding. Anything applied after the
        # head (soft-capping, scaling) shows as a larger difference.
        known = bool(torch.allclose(mine, logits_B1V.float(), rtol=1e-5, atol=1e-6))
        base._grpokit_head_is_projection = known
    return known


def _chunked_forward(model, **model_kwargs):
    """Run `model` projecting only the last position; return (its output, the decoder's hidden
    states (B, T, H)), or None when the model's head turns out not to be a plain projection."""
    from grpokit.decoding import transformers_model

    with _last_hidden_states(model) as caught:
        out = model(**model_kwargs, logits_to_keep=1)
    hidden_BTH = caught["hidden"]
    # (B, 1, H), the very slice the model's head projected: same shapes, so the same kernels, even in bf16
    if not _head_is_projection(model, hidden_BTH[:, -1:].detach(), out.logits[:, -1:].detach()):
        return None
    return out, hidden_BTH, transformers_model(model).get_output_embeddings()


def completion_logprobs(
    model,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    prompt_len: int,
    temperature: float,
    max_logits_mb: float | None = None,
) -> torch.Tensor:
    """Log-probs of the tokens after position `prompt_len`, given everything before them.

    input_ids_BT holds [left-padded prompt | completion]; the result is (B, T - prompt_len),
    aligned with the completion tokens. Logits are only projected for completion positions, in
    chunks when they would exceed `max_logits_mb` (default `LOGITS_BUDGET_MB`).
    """
    B, T = input_ids_BT.shape
    completion_BT = input_ids_BT[:, prompt_len:]
    chunk = _chunk_positions(model, B * (T - prompt_len), max_logits_mb)
    if chunk is not None:
        found = _chunked_forward(model, input_ids=input_ids_BT, attention_mask=attention_mask_BT,
                                 position_ids=position_ids_from_mask(attention_mask_BT), use_cache=False)
        if found is not None:
            _, hidden_BTH, head = found
            # position t predicts token t + 1: positions prompt_len - 1 .. T - 2 predict the completion
            return head_logprobs(head, hidden_BTH[:, prompt_len - 1: -1], completion_BT, temperature, chunk)
    out = model(
        input_ids=input_ids_BT,
        attention_mask=attention_mask_BT,
        position_ids=position_ids_from_mask(attention_mask_BT),
        use_cache=False,
        logits_to_keep=input_ids_BT.shape[1] - prompt_len + 1,
    )
    logits = out.logits[:, :-1]  # position t predicts token t + 1
    return gather_logprobs(logits, completion_BT, temperature)


def token_logprobs(model, batch, temperature: float, share_prompts: bool = True,
                   max_logits_mb: float | None = None, *, lockstep: bool = False) -> torch.Tensor:
    """Log-probs of `batch`'s completion tokens (a `TokenBatch`), (B, C).

    With share_prompts, rows whose prompt is identical (a GRPO group, a DPO pair) run the prompt
    through the model once: its keys/values are indexed out to every row that shares it and the
    completions attend to them through the KV cache. The result and its gradient are those of the
    plain forward (same maths, prompt computed once; tests compare both to float precision).
    Logits above `max_logits_mb` are computed in chunks (`completion_logprobs`).
    `lockstep`: the model's forwards are collectives (FSDP, DeepSpeed: `Backend.collective`), so
    every process must make the same calls whatever its rows: whole logits, and the shared path.
    """
    prompt_len = batch.prompt_ids_BP.shape[1]
    if lockstep:
        max_logits_mb = float("inf")
    if share_prompts and batch.completion_ids_BC.shape[1] > 0 and _can_share_prompts(model):
        key_BK = torch.cat([batch.prompt_ids_BP, batch.prompt_mask_BP], dim=1)
        unique_UK, row_to_prompt_B = torch.unique(key_BK, dim=0, return_inverse=True)
        # Under FSDP or DeepSpeed every process must make the same model calls, whatever its rows: the
        # shared path (two forwards) is taken there even when no prompt repeats (it is exact either way).
        if len(unique_UK) < len(key_BK) or lockstep:
            return _shared_prompt_logprobs(model, unique_UK[:, :prompt_len], unique_UK[:, prompt_len:],
                                           row_to_prompt_B, batch, temperature, max_logits_mb)
    return completion_logprobs(model, batch.input_ids(), batch.attention_mask(), prompt_len, temperature,
                               max_logits_mb)


def _can_share_prompts(model) -> bool:
    from grpokit.decoding import supports_cached_decoding, transformers_model

    # Gradient checkpointing re-runs layers without the cache; keep the plain path there.
    base = transformers_model(model)
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.x names
    if checkpointing is None:
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    return not checkpointing and supports_cached_decoding(model)


def _shared_prompt_logprobs(model, prompt_ids_UP, prompt_mask_UP, row_to_prompt_B, batch, temperature: float,
                            max_logits_mb: float | None = None) -> torch.Tensor:
    from transformers import DynamicCache

    from grpokit.decoding import cache_argument

    cache_kw = cache_argument(model)
    prompt_cache = DynamicCache()
    out = model(input_ids=prompt_ids_UP, attention_mask=prompt_mask_UP,
                position_ids=position_ids_from_mask(prompt_mask_UP), use_cache=True, logits_to_keep=1,
                **{cache_kw: prompt_cache})
    # index_select, not [] indexing: its backward is an index_add, several times faster than index_put here
    first_logits_BV = out.logits[:, -1].index_select(0, row_to_prompt_B)  # predicts completion token 0
    row_cache = DynamicCache(ddp_cache_data=[(layer.keys.index_select(0, row_to_prompt_B),
                                              layer.values.index_select(0, row_to_prompt_B))
                                             for layer in prompt_cache.layers])
    attention_mask_BT = batch.attention_mask()
    completion_positions_BC = position_ids_from_mask(attention_mask_BT)[:, batch.prompt_ids_BP.shape[1]:]
    completion_kw = dict(input_ids=batch.completion_ids_BC, attention_mask=attention_mask_BT,
                         position_ids=completion_positions_BC, use_cache=True, **{cache_kw: row_cache})
    B, C = batch.completion_ids_BC.shape
    chunk = _chunk_positions(model, B * C, max_logits_mb)
    found = _chunked_forward(model, **completion_kw) if chunk is not None else None
    if found is not None:  # token 0 from the prompt's last logits, tokens 1.. from the head in chunks
        _, hidden_BCH, head = found
        first_B1 = gather_logprobs(first_logits_BV[:, None], batch.completion_ids_BC[:, :1], temperature)
        rest_BC = head_logprobs(head, hidden_BCH[:, :-1], batch.completion_ids_BC[:, 1:], temperature, chunk)
        return torch.cat([first_B1, rest_BC], dim=1)
    if chunk is not None:  # the head is not a plain projection: this cache was consumed, build it again
        return _shared_prompt_logprobs(model, prompt_ids_UP, prompt_mask_UP, row_to_prompt_B, batch, temperature,
                                       max_logits_mb=float("inf"))
    out = model(**completion_kw)
    logits_BCV = torch.cat([first_logits_BV[:, None], out.logits[:, :-1]], dim=1)
    return gather_logprobs(logits_BCV, batch.completion_ids_BC, temperature)
