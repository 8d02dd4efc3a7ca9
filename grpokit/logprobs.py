"""Per-token log-probabilities of completions under a causal LM.

One function computes them for both the sampler's check and the trainer, so the temperature
and the position ids are applied identically everywhere: a ratio pi_theta / pi_old is only
meaningful when both sides come from the same computation.
"""

from __future__ import annotations

import torch


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
