"""Sampling G completions per prompt: grpokit's KV-cached loop (`grpokit.decoding`), or
Hugging Face `generate` for models that loop cannot serve (sampling.engine).

`Sampler` is the one interface the trainer's rollout collector calls (`sample`, `after_update`,
`close`); `LocalSampler` implements it here, `grpokit.vllm_engine.VLLMSampler` with vLLM.

Returns everything the update needs: token ids, the completion mask (EOS included, so the
model learns to stop), whether each completion was truncated, and the per-token log-probs of
the distribution the tokens were actually drawn from (after temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from grpokit.batching import TokenBatch, encode_prompts, pad_id
from grpokit.decoding import decode, supports_cached_decoding


@dataclass
class Rollout:
    """A batch of sampled completions. B = number of prompts x group size, rows grouped by prompt
    (rows g*G .. g*G+G-1 share prompt g). Completion mask: 1 up to and including the first EOS."""

    tokens: TokenBatch  # [left-padded prompt | completion, pad after EOS]
    sampling_logprobs_BC: torch.Tensor  # log-prob of each sampled token (0 where masked)
    truncated_B: torch.Tensor  # True where no EOS came within max_new_tokens
    completions: list[str]  # decoded completion text (special tokens dropped)
    group_size: int
    # True when another engine (vLLM) drew the tokens: its log-probs are not the trainer's, and the
    # update corrects for the difference (vllm.importance_correction).
    external_sampler: bool = False
    # Multi-turn rollouts (`grpokit.multiturn`): per row, what the conversation did (turns, tool calls and
    # errors, environment tokens, why it was cut) and the environment's own reward (None: none).
    env_stats: list[dict] | None = None
    env_rewards: list[float | None] | None = None

    def _rows(self, rows: list[int], tokens: TokenBatch) -> Rollout:
        return Rollout(tokens, self.sampling_logprobs_BC[rows, : tokens.completion_ids_BC.shape[1]],
                       self.truncated_B[rows], [self.completions[r] for r in rows], self.group_size,
                       self.external_sampler, None if self.env_stats is None else [self.env_stats[r] for r in rows],
                       None if self.env_rewards is None else [self.env_rewards[r] for r in rows])

    @property
    def completion_lengths_B(self) -> torch.Tensor:
        return self.tokens.completion_mask_BC.sum(-1)

    def select_groups(self, groups: list[int]) -> Rollout:
        """Those groups (by index), in that order."""
        rows = [g * self.group_size + j for g in groups for j in range(self.group_size)]
        return self._rows(rows, self.tokens.select(rows))  # select trims padding columns: so are the log-probs

    @staticmethod
    def concat(parts: list[Rollout]) -> Rollout:
        tokens = TokenBatch.concat([p.tokens for p in parts])
        C = tokens.completion_ids_BC.shape[1]
        logprobs = torch.cat([torch.nn.functional.pad(p.sampling_logprobs_BC, (0, C - p.sampling_logprobs_BC.shape[1]))
                              for p in parts])
        multi_turn = parts[0].env_stats is not None
        return Rollout(tokens, logprobs, torch.cat([p.truncated_B for p in parts]),
                       [c for p in parts for c in p.completions], parts[0].group_size,
                       any(p.external_sampler for p in parts),
                       [x for p in parts for x in p.env_stats] if multi_turn else None,
                       [x for p in parts for x in p.env_rewards] if multi_turn else None)


class _LogprobRecorder(LogitsProcessor):
    """Records log p(sampled token) step by step, keeping one (B, V) tensor alive at a time.

    `generate` runs custom processors before its sampling warpers, so the recorder applies the
    temperature itself; grpokit samples with temperature only (top-k and top-p are switched off),
    so softmax(scores / T) is exactly the distribution tokens are drawn from. The token drawn
    at step t shows up as the last input id at step t + 1; `finish` handles the last step.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self.previous_logprobs_BV: torch.Tensor | None = None
        self.picked: list[torch.Tensor] = []

    def _collect(self, tokens_B: torch.Tensor) -> None:
        if self.previous_logprobs_BV is not None:
            self.picked.append(self.previous_logprobs_BV.gather(-1, tokens_B[:, None]).squeeze(-1))

    def __call__(self, input_ids, scores):
        if self.previous_logprobs_BV is not None:
            self._collect(input_ids[:, -1])
        self.previous_logprobs_BV = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, last_tokens_B: torch.Tensor) -> torch.Tensor:
        self._collect(last_tokens_B)
        return torch.stack(self.picked, dim=1)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS of the tokenizer, plus the model's generation EOS ids (e.g. a chat end-of-turn)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(ids)


def completion_mask(completion_ids_BC: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first stop token; (mask_BC, truncated_B).

    Decided by position, never by comparing with the pad id: models whose pad equals EOS must
    still train on their EOS.
    """
    is_stop_BC = torch.isin(completion_ids_BC, torch.tensor(stop_ids, device=completion_ids_BC.device))
    # Number of stop tokens strictly before each position; 0 means "still inside the completion".
    stops_before_BC = is_stop_BC.long().cumsum(-1) - is_stop_BC.long()
    mask_BC = (stops_before_BC == 0).long()
    truncated_B = ~is_stop_BC.any(-1)
    return mask_BC, truncated_B


@torch.no_grad()  # not inference_mode: the returned tensors feed autograd later
def sample(
    model,
    tokenizer,
    prompts: list[str],
    *,
    group_size: int,
    max_new_tokens: int,
    temperature: float,
    engine: str = "grpokit",
) -> Rollout:
    """Draw `group_size` completions for each prompt. temperature 0 means greedy decoding.
    `model` holds whole weights (a sharded policy is sampled through `LocalSampler`).

    engine "grpokit" uses the cached loop where the model supports it and `generate` otherwise;
    "transformers" always uses `generate`. "vllm" is driven by the trainer (`grpokit.vllm_engine`,
    which holds the engine); one-off sampling here (evaluation, the doctor) uses the cached loop.
    """
    device = next(model.parameters()).device
    prompt_ids_NP, prompt_mask_NP = encode_prompts(tokenizer, prompts)
    prompt_ids_NP, prompt_mask_NP = prompt_ids_NP.to(device), prompt_mask_NP.to(device)
    prompt_ids_BP = prompt_ids_NP.repeat_interleave(group_size, dim=0)
    prompt_mask_BP = prompt_mask_NP.repeat_interleave(group_size, dim=0)
    stop_ids = stop_token_ids(tokenizer, model)
    was_training = model.training
    model.eval()
    try:
        if engine in ("grpokit", "vllm") and supports_cached_decoding(model):
            completion_ids_BC, logprobs_BC = decode(
                model, prompt_ids_NP, prompt_mask_NP, group_size=group_size, max_new_tokens=max_new_tokens,
                temperature=temperature, stop_ids=stop_ids, pad_id=pad_id(tokenizer))
        else:
            completion_ids_BC, logprobs_BC = _generate(model, tokenizer, prompt_ids_BP, prompt_mask_BP,
                                                       max_new_tokens, temperature, stop_ids)
    finally:
        model.train(was_training)
    return finish_rollout(tokenizer, prompt_ids_BP, prompt_mask_BP, completion_ids_BC, logprobs_BC, stop_ids,
                          group_size)


class Sampler:
    """What the rollout collector calls, whatever draws the tokens."""

    sync_seconds = 0.0  # time spent pushing the policy's weights to another engine (part of sampling)
    external = False  # another engine draws the tokens: its log-probs are not the trainer's (vLLM)

    def sample(self, prompts: list[str], group_size: int, rows: list[dict] | None = None) -> Rollout:
        """`group_size` completions for each prompt; `rows` (the prompts' training rows) start each
        conversation's environment in a multi-turn sampler."""
        raise NotImplementedError

    def after_update(self) -> None:
        """The policy changed (an optimiser step)."""

    def close(self) -> None:
        """Release what the sampler holds."""


class LocalSampler(Sampler):
    """The policy itself samples, in this process: the cached loop or `generate` (sampling.engine).
    A sharded policy decodes on gathered weights, so no collective runs per token."""

    def __init__(self, model, tokenizer, config, backend):
        self.model, self.tokenizer, self.config, self.backend = model, tokenizer, config, backend

    def sample(self, prompts: list[str], group_size: int, rows: list[dict] | None = None) -> Rollout:
        s = self.config.sampling
        with self.backend.full_weights(self.model) as whole:
            return sample(whole, self.tokenizer, prompts, group_size=group_size, max_new_tokens=s.max_new_tokens,
                          temperature=s.temperature, engine=s.engine)


    @torch.no_grad()
    def continue_ids(self, contexts: list[list[int]], *, max_new_tokens: int,
                     stop_sequences: list[list[int]] | None = None, temperature: float | None = None
                     ) -> list[tuple[list[int], list[float]]]:
        """One continuation of each token context (a multi-turn conversation so far): its drawn ids and
        their sampling log-probs (sampling.temperature unless given; 0: greedy). The caller cuts each
        where its turn ends (`grpokit.multiturn`)."""
        s, tokenizer = self.config.sampling, self.tokenizer
        temperature = s.temperature if temperature is None else temperature
        width = max(len(ids) for ids in contexts)
        pad = pad_id(tokenizer)
        ids_BP = torch.tensor([[pad] * (width - len(ids)) + ids for ids in contexts], dtype=torch.long)
        mask_BP = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in contexts], dtype=torch.long)
        with self.backend.full_weights(self.model) as whole:
            device = next(whole.parameters()).device
            ids_BP, mask_BP = ids_BP.to(device), mask_BP.to(device)
            stop_ids = stop_token_ids(tokenizer, whole)
            was_training = whole.training
            whole.eval()
            try:
                if s.engine == "grpokit" and supports_cached_decoding(whole):
                    drawn_BC, logprobs_BC = decode(whole, ids_BP, mask_BP, group_size=1, max_new_tokens=max_new_tokens,
                                                   temperature=temperature, stop_ids=stop_ids, pad_id=pad,
                                                   stop_sequences=stop_sequences)
                else:
                    drawn_BC, logprobs_BC = _generate(whole, tokenizer, ids_BP, mask_BP, max_new_tokens,
                                                      temperature, stop_ids)
            finally:
                whole.train(was_training)
        return list(zip(drawn_BC.tolist(), logprobs_BC.tolist()))


def finish_rollout(tokenizer, prompt_ids_BP, prompt_mask_BP, completion_ids_BC, logprobs_BC, stop_ids: list[int],
                   group_size: int, external_sampler: bool = False) -> Rollout:
    """Masks, truncation flags and texts for sampled completion ids (any engine)."""
    mask_BC, truncated_B = completion_mask(completion_ids_BC, stop_ids)
    # Decode each row up to its own length: filling the tail with some id would decode as text
    # in tokenizers whose id 0 is an ordinary character ("!" in Qwen and GPT-2).
    lengths = mask_BC.sum(-1).tolist()
    texts = tokenizer.batch_decode([ids[:n] for ids, n in zip(completion_ids_BC.tolist(), lengths)],
                                   skip_special_tokens=True)
    return Rollout(
        tokens=TokenBatch(prompt_ids_BP, prompt_mask_BP, completion_ids_BC, mask_BC),
        sampling_logprobs_BC=torch.where(mask_BC.bool(), logprobs_BC, torch.zeros_like(logprobs_BC)),
        truncated_B=truncated_B,
        completions=texts,
        group_size=group_size,
        external_sampler=external_sampler,
    )


def _generate(model, tokenizer, prompt_ids_BP, prompt_mask_BP, max_new_tokens: int, temperature: float,
              stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """`model.generate` with the sampling log-probs recorded: (completion ids, log-probs)."""
    greedy = temperature == 0
    config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_k=None if greedy else 0,
        top_p=None if greedy else 1.0,
        repetition_penalty=1.0,  # explicit, so a model's own generation_config cannot add one
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids,
        pad_token_id=pad_id(tokenizer),
        use_cache=True,
    )
    recorder = _LogprobRecorder(temperature=1.0 if greedy else temperature)
    sequences = model.generate(
        input_ids=prompt_ids_BP,
        attention_mask=prompt_mask_BP,
        generation_config=config,
        logits_processor=LogitsProcessorList([recorder]),
    )
    completion_ids_BC = sequences[:, prompt_ids_BP.shape[1]:]
    return completion_ids_BC, recorder.finish(completion_ids_BC[:, -1])
