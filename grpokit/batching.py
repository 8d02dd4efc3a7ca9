"""Laying out token batches as [left-padded prompt | completion] and cutting micro-batches.

Both the sampler and the supervised methods produce this layout, so one log-prob function
(`grpokit.logprobs.completion_logprobs`) serves every method.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    prompt_ids_BP: torch.Tensor
    prompt_mask_BP: torch.Tensor
    completion_ids_BC: torch.Tensor
    completion_mask_BC: torch.Tensor  # the completion's real tokens (attention), right-padded
    # Multi-turn rollouts: 1 on the policy's own tokens, 0 on the environment's (tool results), which are
    # context but never trained on. None: every completion token is the policy's.
    policy_mask_BC: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_ids_BP.shape[0]

    @property
    def trained_mask_BC(self) -> torch.Tensor:
        """The tokens losses, ratios, KL and token counts use: the policy's own completion tokens."""
        return self.completion_mask_BC if self.policy_mask_BC is None else self.policy_mask_BC

    def select(self, rows: torch.Tensor | list[int]) -> TokenBatch:
        """Rows of the batch, with columns that are padding in every selected row cut away."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_ids_BP.device)
        policy = self.policy_mask_BC
        if len(rows) == 0:  # e.g. a process with nothing to train on this step, which still joins the all-reduce
            return TokenBatch(self.prompt_ids_BP[:0], self.prompt_mask_BP[:0], self.completion_ids_BC[:0, :0],
                              self.completion_mask_BC[:0, :0], None if policy is None else policy[:0, :0])
        p_mask, c_mask = self.prompt_mask_BP[rows], self.completion_mask_BC[rows]
        first = int(p_mask.any(0).long().argmax())  # left padding shared by all rows
        width = int(c_mask.sum(-1).max())  # longest completion among the rows
        return TokenBatch(
            self.prompt_ids_BP[rows, first:], p_mask[:, first:],
            self.completion_ids_BC[rows, :width], c_mask[:, :width],
            None if policy is None else policy[rows, :width],
        )

    @staticmethod
    def concat(batches: list[TokenBatch]) -> TokenBatch:
        """Rows of several batches as one: prompts re-padded on the left, completions on the right.
        Padding ids are 0; every consumer reads the masks, never the padding ids."""
        P = max(b.prompt_ids_BP.shape[1] for b in batches)
        C = max(b.completion_ids_BC.shape[1] for b in batches)

        def pad(t: torch.Tensor, width: int, left: bool) -> torch.Tensor:
            extra = width - t.shape[1]
            return torch.nn.functional.pad(t, (extra, 0) if left else (0, extra), value=0)

        policy = None
        if any(b.policy_mask_BC is not None for b in batches):
            policy = torch.cat([pad(b.trained_mask_BC, C, False) for b in batches])
        return TokenBatch(torch.cat([pad(b.prompt_ids_BP, P, True) for b in batches]),
                          torch.cat([pad(b.prompt_mask_BP, P, True) for b in batches]),
                          torch.cat([pad(b.completion_ids_BC, C, False) for b in batches]),
                          torch.cat([pad(b.completion_mask_BC, C, False) for b in batches]), policy)

    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids_BP, self.completion_ids_BC], dim=1)

    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask_BP, self.completion_mask_BC], dim=1)

    def to(self, device) -> TokenBatch:
        return TokenBatch(*(None if t is None else t.to(device)
                            for t in (self.prompt_ids_BP, self.prompt_mask_BP, self.completion_ids_BC,
                                      self.completion_mask_BC, self.policy_mask_BC)))


def pad_id(tokenizer) -> int:
    """The id that fills padding; EOS when the tokenizer has no pad (masks are positional, so this is safe)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompts(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts (generation appends on the right, so real tokens must end aligned)."""
    # Chat templates already contain any BOS they need; adding special tokens again would double it.
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    pad = pad_id(tokenizer)
    ids_BP = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask_BP = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        if ids:
            ids_BP[i, width - len(ids):] = torch.tensor(ids)
            mask_BP[i, width - len(ids):] = 1
    return ids_BP, mask_BP


def encode_pairs(tokenizer, prompts: list[str], completions: list[str], context_spans=None) -> TokenBatch:
    """Tokenise (prompt, target completion) pairs for supervised losses; EOS ends each target.

    `context_spans(text)` -> [(start, end), ...] marks character spans of a target that are context,
    not target (a multi-turn demonstration's tool results): their tokens get policy mask 0.
    """
    prompt_ids_BP, prompt_mask_BP = encode_prompts(tokenizer, prompts)
    encoded = [tokenizer(c, add_special_tokens=False, return_offsets_mapping=context_spans is not None)
               for c in completions]
    targets = [e["input_ids"] + [tokenizer.eos_token_id] for e in encoded]
    width = max(len(t) for t in targets)
    completion_ids_BC = torch.full((len(targets), width), tokenizer.pad_token_id, dtype=torch.long)
    completion_mask_BC = torch.zeros((len(targets), width), dtype=torch.long)
    for i, t in enumerate(targets):
        completion_ids_BC[i, : len(t)] = torch.tensor(t)
        completion_mask_BC[i, : len(t)] = 1
    if context_spans is None:
        return TokenBatch(prompt_ids_BP, prompt_mask_BP, completion_ids_BC, completion_mask_BC)
    policy_mask_BC = completion_mask_BC.clone()
    for i, (e, text) in enumerate(zip(encoded, completions)):
        spans = context_spans(text)
        for j, (start, end) in enumerate(e["offset_mapping"]):
            if any(s <= start and end <= t for s, t in spans):
                policy_mask_BC[i, j] = 0
    return TokenBatch(prompt_ids_BP, prompt_mask_BP, completion_ids_BC, completion_mask_BC, policy_mask_BC)


def micro_batches(num_rows: int, size: int, lengths_B: torch.Tensor | None = None) -> list[list[int]]:
    """Split row indices into chunks of at most `size`. With lengths, rows of similar length
    go together, so little compute is spent on padding."""
    order = list(range(num_rows)) if lengths_B is None else torch.argsort(lengths_B, stable=True).tolist()
    return [order[i: i + size] for i in range(0, num_rows, size)]


def batch_indices(num_rows: int, batch_size: int, steps: int, rng: random.Random) -> list[list[int]]:
    """`steps` batches drawn epoch by epoch from a seeded shuffle (no row repeats within an epoch)."""
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            fresh = list(range(num_rows))
            rng.shuffle(fresh)
            order += fresh
        batches.append(order[:batch_size])
        order = order[batch_size:]
    return batches
