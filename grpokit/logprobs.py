"""Per-token log-probabilities of completions under a causal LM.

One function computes them for both the sampler's check and the trainer, so the temperature
and the position ids are applied identically everywhere: a ratio pi_theta / pi_old is only
meaningful when both sides come from the same computation.
"""

from __future__ import annotations

import torch

from grpokit.sharding import in_lockstep


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


def completion_logprobs(
    model,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    prompt_len: int,
    temperature: float,
) -> torch.Tensor:
    """Log-probs of the tokens after position `prompt_len`, given everything before them.

    input_ids_BT holds [left-padded prompt | completion]; the result is (B, T - prompt_len),
    aligned with the completion tokens. Logits are only projected for completion positions.
    """
    out = model(
        input_ids=input_ids_BT,
        attention_mask=attention_mask_BT,
        position_ids=position_ids_from_mask(attention_mask_BT),
        use_cache=False,
        logits_to_keep=input_ids_BT.shape[1] - prompt_len + 1,
    )
    logits = out.logits[:, :-1]  # position t predicts token t + 1
    return gather_logprobs(logits, input_ids_BT[:, prompt_len:], temperature)


def token_logprobs(model, batch, temperature: float, share_prompts: bool = True) -> torch.Tensor:
    """Log-probs of `batch`'s completion tokens (a `TokenBatch`), (B, C).

    With share_prompts, rows whose prompt is identical (a GRPO group, a DPO pair) run the prompt
    through the model once: its keys/values are indexed out to every row that shares it and the
    completions attend to them through the KV cache. The result and its gradient are those of the
    plain forward (same maths, prompt computed once; tests compare both to float precision).
    """
    prompt_len = batch.prompt_ids_BP.shape[1]
    if share_prompts and batch.completion_ids_BC.shape[1] > 0 and _can_share_prompts(model):
        key_BK = torch.cat([batch.prompt_ids_BP, batch.prompt_mask_BP], dim=1)
        unique_UK, row_to_prompt_B = torch.unique(key_BK, dim=0, return_inverse=True)
        # Under FSDP or DeepSpeed every process must make the same model calls, whatever its rows: the
        # shared path (two forwards) is taken there even when no prompt repeats (it is exact either way).
        if len(unique_UK) < len(key_BK) or in_lockstep(model):
            return _shared_prompt_logprobs(model, unique_UK[:, :prompt_len], unique_UK[:, prompt_len:],
                                           row_to_prompt_B, batch, temperature)
    return completion_logprobs(model, batch.input_ids(), batch.attention_mask(), prompt_len, temperature)


def _can_share_prompts(model) -> bool:
    from grpokit.decoding import supports_cached_decoding, transformers_model

    # Gradient checkpointing re-runs layers without the cache; keep the plain path there.
    base = transformers_model(model)
    checkpointing = getattr(base, "is_activation_checkpointing", None)  # transformers >= 5.x names
    if checkpointing is None:
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    return not checkpointing and supports_cached_decoding(model)


def _shared_prompt_logprobs(model, prompt_ids_UP, prompt_mask_UP, row_to_prompt_B, batch, temperature: float
                            ) -> torch.Tensor:
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
    out = model(input_ids=batch.completion_ids_BC, attention_mask=attention_mask_BT,
                position_ids=completion_positions_BC, use_cache=True, **{cache_kw: row_cache})
    logits_BCV = torch.cat([first_logits_BV[:, None], out.logits[:, :-1]], dim=1)
    return gather_logprobs(logits_BCV, batch.completion_ids_BC, temperature)
