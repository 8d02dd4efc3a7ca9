"""Multi-turn rollouts: the policy writes a turn, the environment replies, the policy goes on.

For every conversation (G per prompt) the loop below
1. continues the conversation's tokens (prompt, every earlier turn and reply) until the turn ends:
   EOS (the conversation is over), one of the environment's stop strings (a tool call's close: the
   environment replies), or the turn's token cap (`sampling.max_new_tokens`);
2. hands the turn's text to the environment's `step`, tokenises its reply and appends it as
   context: environment tokens are attended to but never trained on (`TokenBatch.policy_mask_BC`),
   and their sampling log-probs are 0;
3. stops at `env.max_turns` policy turns or `env.max_tokens` tokens after the prompt; a conversation
   cut there is truncated, and says which limit cut it.

The policy's own tokens are kept exactly as drawn (never decoded and re-encoded), so their log-probs
under a training forward over the whole conversation are the sampling ones (tested to 1e-5). Each
turn re-encodes the conversation so far (no KV cache is kept across turns): simple, and a turn's
prompt is short next to what sampling a group costs.

The engine that draws a turn's tokens is any `Sampler` with `continue_ids`: the local loop or vLLM.
"""

from __future__ import annotations

from collections import Counter

import torch

from grpokit.batching import TokenBatch, encode_prompts, pad_id
from grpokit.sampler import Rollout, Sampler, stop_token_ids


def _first_stop(tokenizer, ids: list[int], stop_ids: set[int], stop_strings: tuple[str, ...]) -> tuple[int, str]:
    """(length of the turn, how it ended): "eos", "call" (a stop string) or "open" (neither)."""
    eos_at = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    end, how = (eos_at + 1, "eos") if eos_at is not None else (len(ids), "open")
    if stop_strings:
        text = tokenizer.decode(ids[:end], skip_special_tokens=True)
        if any(s in text for s in stop_strings):
            # The shortest prefix whose text holds a stop string (a model may split it into any tokens).
            low, high = 1, end
            while low < high:
                mid = (low + high) // 2
                if any(s in tokenizer.decode(ids[:mid], skip_special_tokens=True) for s in stop_strings):
                    high = mid
                else:
                    low = mid + 1
            return low, "call"
    return end, how


class MultiTurnSampler(Sampler):
    """Wraps a sampler that can continue token ids (`continue_ids`) with an environment per conversation."""

    def __init__(self, engine: Sampler, tokenizer, envs, config):
        self.engine, self.tokenizer, self.envs, self.config = engine, tokenizer, envs, config
        self.stop_ids = set(stop_token_ids(tokenizer, getattr(engine, "model", None)))
        self.stop_sequences = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in envs.stop_strings]

    @property
    def sync_seconds(self) -> float:
        return self.engine.sync_seconds

    def after_update(self) -> None:
        self.engine.after_update()

    def close(self) -> None:
        self.engine.close()
        self.envs.close()

    def sample(self, prompts: list[str], group_size: int, rows: list[dict] | None = None, *,
               temperature: float | None = None) -> Rollout:
        """G conversations per prompt; `rows` reset their environments; `temperature` (default
        sampling.temperature; 0 is greedy, as evaluation uses) draws the policy's turns."""
        if rows is None or len(rows) != len(prompts):
            raise ValueError("a multi-turn sampler needs each prompt's training row (to reset its environment)")
        c, e, tok = self.config, self.config.env, self.tokenizer
        prompt_ids_NP, prompt_mask_NP = encode_prompts(tok, prompts)
        prompt_lists = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids_NP, prompt_mask_NP)]
        B = len(prompts) * group_size
        envs = []
        for i in range(B):
            env = self.envs.new()
            env.reset({"prompt": prompts[i // group_size], **rows[i // group_size]})
            envs.append(env)
        ids: list[list[int]] = [[] for _ in range(B)]  # everything after the prompt
        policy: list[list[int]] = [[] for _ in range(B)]  # 1: the policy drew it; 0: the environment's reply
        logprobs: list[list[float]] = [[] for _ in range(B)]
        turns, cut_by, live = [0] * B, [None] * B, list(range(B))
        while live:
            budget = {b: e.max_tokens - len(ids[b]) for b in live}
            drawn = self.engine.continue_ids([prompt_lists[b // group_size] + ids[b] for b in live],
                                             max_new_tokens=min(c.sampling.max_new_tokens, max(budget.values())),
                                             stop_sequences=self.stop_sequences, temperature=temperature)
            still = []
            for b, (turn_ids, turn_logprobs) in zip(live, drawn):
                end, how = _first_stop(tok, turn_ids, self.stop_ids, self.envs.stop_strings)
                if end > budget[b]:  # this conversation's budget ends inside the turn
                    end, how = budget[b], "open"
                ids[b] += turn_ids[:end]
                logprobs[b] += turn_logprobs[:end]
                policy[b] += [1] * end
                turns[b] += 1
                if how == "eos":
                    continue
                if how == "open":  # the turn's cap or the rollout's budget came first
                    cut_by[b] = "tokens"
                    continue
                if turns[b] >= e.max_turns:  # a call, but no turn left to read its result
                    cut_by[b] = "turns"
                    continue
                reply = envs[b].step(tok.decode(turn_ids[:end], skip_special_tokens=True))
                if reply is None:  # the environment ended the conversation
                    continue
                reply_ids = tok(reply, add_special_tokens=False)["input_ids"]
                room = e.max_tokens - len(ids[b])
                ids[b] += reply_ids[:room]
                logprobs[b] += [0.0] * min(room, len(reply_ids))
                policy[b] += [0] * min(room, len(reply_ids))
                if len(reply_ids) >= room:  # no room left for another turn
                    cut_by[b] = "tokens"
                    continue
                still.append(b)
            live = still
        return self._rollout(prompt_ids_NP, prompt_mask_NP, group_size, ids, policy, logprobs, turns, cut_by, envs)

    def _rollout(self, prompt_ids_NP, prompt_mask_NP, group_size, ids, policy, logprobs, turns, cut_by, envs):
        tok, B = self.tokenizer, len(ids)
        width = max(1, max(len(x) for x in ids))
        completion_ids_BC = torch.full((B, width), pad_id(tok), dtype=torch.long)
        completion_mask_BC = torch.zeros((B, width), dtype=torch.long)
        policy_mask_BC = torch.zeros((B, width), dtype=torch.long)
        logprobs_BC = torch.zeros((B, width), dtype=torch.float32)
        for b in range(B):
            n = len(ids[b])
            completion_ids_BC[b, :n] = torch.tensor(ids[b], dtype=torch.long)
            completion_mask_BC[b, :n] = 1
            policy_mask_BC[b, :n] = torch.tensor(policy[b], dtype=torch.long)
            logprobs_BC[b, :n] = torch.tensor(logprobs[b], dtype=torch.float32)
        stats = []
        for b in range(B):
            row = Counter(getattr(envs[b], "stats", dict)())  # a user environment need not count anything
            row.update({"turns": turns[b], "env_tokens": len(policy[b]) - sum(policy[b]),
                        "policy_tokens": sum(policy[b])})
            stats.append({**row, "cut_by": cut_by[b]})
        device = prompt_ids_NP.device
        tokens = TokenBatch(prompt_ids_NP.repeat_interleave(group_size, dim=0),
                            prompt_mask_NP.repeat_interleave(group_size, dim=0), completion_ids_BC.to(device),
                            completion_mask_BC.to(device), policy_mask_BC.to(device))
        return Rollout(tokens, logprobs_BC.to(device), torch.tensor([x is not None for x in cut_by]),
                       tok.batch_decode(ids, skip_special_tokens=True), group_size,
                       external_sampler=self.engine.external, env_stats=stats,
                       env_rewards=[getattr(env, "reward", lambda: None)() for env in envs])
