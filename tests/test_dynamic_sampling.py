"""DAPO dynamic sampling: the update sees only groups whose rewards differ, and the cost is logged.

Also the pieces it is built from: concatenating and selecting rollouts and scores.
"""

import json
from pathlib import Path

import pytest
import torch

from grpokit.batching import TokenBatch
from grpokit.config import load_config
from grpokit.errors import GrpokitError
from grpokit.methods import method_class
from grpokit.rewards.scoring import Scores
from grpokit.sampler import Rollout
from grpokit.trainer import train

REWARD = Path(__file__).parent / "fixtures" / "rewards" / "sample_rewards.py"


def _rollout(prompt_widths, completion_widths, group_size=2):
    """Each row: prompt of the given width (left-padded to the max), completion likewise (right-padded)."""
    P, C = max(prompt_widths), max(completion_widths)
    rows = len(prompt_widths)
    ids_p, mask_p = torch.zeros(rows, P, dtype=torch.long), torch.zeros(rows, P, dtype=torch.long)
    ids_c, mask_c = torch.zeros(rows, C, dtype=torch.long), torch.zeros(rows, C, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_widths, completion_widths)):
        ids_p[i, P - p:], mask_p[i, P - p:] = torch.arange(1, p + 1) + 10 * i, 1
        ids_c[i, :c], mask_c[i, :c] = torch.arange(1, c + 1) + 100 * i, 1
    logprobs = -mask_c.float() * (1 + torch.arange(rows))[:, None]
    return Rollout(TokenBatch(ids_p, mask_p, ids_c, mask_c), logprobs, torch.zeros(rows, dtype=torch.bool),
                   [f"text{i}" for i in range(rows)], group_size)


def _real_tokens(t: TokenBatch, i: int):
    return (t.prompt_ids_BP[i][t.prompt_mask_BP[i] == 1].tolist(), t.completion_ids_BC[i][t.completion_mask_BC[i] == 1]
            .tolist())


def test_concat_then_select_groups_keeps_every_rows_real_tokens_and_logprobs():
    a, b = _rollout([3, 2], [2, 4]), _rollout([5, 5, 1, 2], [1, 1, 3, 2])
    both = Rollout.concat([a, b])
    assert len(both.tokens) == 6 and both.completions == a.completions + b.completions
    originals = [(a, 0), (a, 1), (b, 0), (b, 1), (b, 2), (b, 3)]
    for i, (src, j) in enumerate(originals):
        assert _real_tokens(both.tokens, i) == _real_tokens(src.tokens, j)
        assert both.sampling_logprobs_BC[i].sum() == src.sampling_logprobs_BC[j].sum()
    picked = both.select_groups([2, 0])  # groups are rows (4, 5) then (0, 1)
    for i, (src, j) in enumerate([originals[4], originals[5], originals[0], originals[1]]):
        assert _real_tokens(picked.tokens, i) == _real_tokens(src.tokens, j)
        assert picked.sampling_logprobs_BC[i].sum() == src.sampling_logprobs_BC[j].sum()
    assert picked.sampling_logprobs_BC.shape == picked.tokens.completion_ids_BC.shape


def test_scores_concat_and_select_move_errors_with_their_sample():
    first = Scores({"acc": [1.0, None]}, [1.0, 0.0], [{"component": "acc", "index": 1, "kind": "exception",
                                                      "message": "x", "completion": "c"}], {"acc": {"exception": 1}})
    second = Scores({"acc": [None, 0.5]}, [0.0, 0.5], [{"component": "acc", "index": 0, "kind": "timeout",
                                                       "message": "y", "completion": "d"}], {"acc": {"timeout": 1}})
    both = Scores.concat([first, second])
    assert both.components["acc"] == [1.0, None, None, 0.5] and both.total == [1.0, 0.0, 0.0, 0.5]
    assert [e["index"] for e in both.errors] == [1, 2]
    assert both.error_counts == {"acc": {"exception": 1, "timeout": 1}}
    picked = both.select([2, 3])
    assert picked.components["acc"] == [None, 0.5] and picked.total == [0.0, 0.5]
    assert [(e["index"], e["kind"]) for e in picked.errors] == [(0, "timeout")]
    assert picked.error_counts == {"acc": {"timeout": 1}}


def _config(tiny_home, out, *extra):
    return load_config(None, [
        f"model.path={tiny_home['model']}", f"data.train={tiny_home['train']}", f"data.eval={tiny_home['eval']}",
        "data.max_eval_examples=4", "sampling.group_size=4", "sampling.max_new_tokens=8",
        "sampling.prompts_per_step=4", "train.steps=2", "train.progress=false", f"train.out_dir={out}",
        "grpo.beta=0", "verify.isolate=false",
        f"rewards=[{{name: '{REWARD}:length_parity_on_even_answers', alias: parity}}]", *extra])


@pytest.mark.parametrize("max_rounds", [1, 4])
def test_dynamic_sampling_trains_only_on_groups_with_signal(tiny_home, tmp_path, max_rounds):
    train(_config(tiny_home, tmp_path, "sampling.dynamic=true", f"sampling.max_rounds={max_rounds}"))
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("phase") == "train"]
    rollouts = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    for row in steps:
        assert 1 <= row["sampling_rounds"] <= max_rounds
        assert row["groups_sampled"] * 4 == sum(r["step"] == row["step"] for r in rollouts)
        assert row["groups_trained"] <= 4
        sampled = [r for r in rollouts if r["step"] == row["step"]]
        groups = [sampled[g: g + 4] for g in range(0, len(sampled), 4)]
        with_signal = [g for g in groups if len({r["reward"] for r in g}) > 1]
        trained = [g for g in groups if g[0]["advantage"] is not None]
        assert all(all(r["advantage"] is not None for r in g) for g in trained)
        assert len(trained) == row["groups_trained"]
        # the first prompts_per_step groups with signal; if none has any, the first round as it is
        assert trained == (with_signal[:4] if with_signal else groups[:4])
        if max_rounds == 1:
            assert row["groups_sampled"] == 4
    if max_rounds == 4:  # half the prompts carry no signal, so some step had to sample more
        assert any(row["sampling_rounds"] > 1 for row in steps)


def test_dynamic_sampling_needs_groups_and_is_refused_for_rft(tiny_home, tmp_path):
    with pytest.raises(GrpokitError, match="group_size >= 2"):
        _config(tiny_home, tmp_path, "sampling.dynamic=true", "sampling.group_size=1", "train.method=ppo")
    config = _config(tiny_home, tmp_path, "sampling.dynamic=true", "train.method=rft")
    with pytest.raises(GrpokitError, match="all-pass groups are exactly what rft trains on"):
        method_class(config)  # the method's own check, run before any model loads
