"""The embedded default: the task's scratchpads, its deliberate slips, the splits, the builder."""

import torch

from grpokit.tiny import TASK_VERSION, build_tokenizer, make_splits
from grpokit.tiny.model import build_model
from grpokit.tiny.task import needs_carry, scratchpad


def test_scratchpad_by_hand():
    assert scratchpad(37, 48) == ("7+8=15 3+4+1=8", 85)
    assert scratchpad(67, 58) == ("7+8=15 6+5+1=12", 125)
    assert scratchpad(5, 7) == ("5+7=12", 12)
    assert scratchpad(37, 48, forget_carry=True) == ("7+8=15 3+4=7", 75)


def test_correct_scratchpad_always_adds_up_and_a_slip_is_wrong_exactly_when_a_carry_is_needed():
    for a in range(100):
        for b in range(100):
            assert scratchpad(a, b)[1] == a + b
            # a one-column sum writes its whole total, so only two-column sums can drop a carry
            assert (scratchpad(a, b, forget_carry=True)[1] != a + b) == (needs_carry(a, b) and max(a, b) >= 10)


def test_splits_are_disjoint_and_answers_always_right():
    splits = make_splits(seed=0)
    train, held_out = splits["train"], splits["eval"]
    assert len(held_out) == 200 and len(splits["test"]) == 1000 and len(splits["valid"]) == 500
    assert len(train) == 100 * 100 - 1700
    prompts = [{r["prompt"] for r in splits[s]} for s in ("train", "eval", "test", "valid")]
    assert sum(map(len, prompts)) == len(set().union(*prompts)) == 100 * 100  # disjoint, all pairs
    # the demo's 200 held-out prompts do not depend on the sizes of the other splits
    assert held_out == make_splits(seed=0, test_size=0, valid_size=0)["eval"]
    for r in train[:500]:
        assert r["answer"] == str(sum(_operands(r)))


def _operands(row):
    return tuple(int(x) for x in row["prompt"].removeprefix("What is ").removesuffix("?").split(" + "))


def test_slip_rate_among_demonstrations_that_need_a_carry():
    train = make_splits(seed=0, carry_slip=0.6)["train"]
    can_slip = [r for r in train if needs_carry(*_operands(r)) and max(_operands(r)) >= 10]
    wrong = [r for r in train if f"<answer>{r['answer']}</answer>" not in r["completion"]]
    assert all(needs_carry(*_operands(r)) for r in wrong)
    assert 0.57 < len(wrong) / len(can_slip) < 0.63
    assert not [r for r in make_splits(seed=0, carry_slip=0.0)["train"]
                if f"<answer>{r['answer']}</answer>" not in r["completion"]]


def test_tokenizer_round_trips_and_tags_are_single_tokens():
    tok = build_tokenizer()
    text = "<think>7+8=15 3+4+1=8</think><answer>85</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) == len("7+8=15 3+4+1=8") + len("85") + 4


def test_builder_is_deterministic():
    tok = build_tokenizer()
    a, b = build_model(tok, size="test", seed=0), build_model(tok, size="test", seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert sum(p.numel() for p in a.parameters()) < 100_000


def test_ensure_tiny_rebuilds_data_of_another_version_or_setting(tmp_path):
    from grpokit.tiny import ensure_tiny

    paths = ensure_tiny(tmp_path, size="test", carry_slip=0.0)
    clean = paths["train"].read_text()
    assert clean == ensure_tiny(tmp_path, size="test", carry_slip=0.0)["train"].read_text()
    assert ensure_tiny(tmp_path, size="test", carry_slip=0.6)["train"].read_text() != clean
    (tmp_path / "data" / "task.json").write_text('{"task_version": 1, "carry_slip": 0.6}')  # an older build
    assert ensure_tiny(tmp_path, size="test", carry_slip=0.6)["train"].read_text() != clean
    assert f'"task_version": {TASK_VERSION}' in (tmp_path / "data" / "task.json").read_text()


def test_preference_pairs_choose_the_carried_scratchpad():
    splits = make_splits(seed=0)
    train = {r["prompt"]: r for r in splits["train"]}
    assert len(splits["pairs"]) > 1000
    for row in splits["pairs"][:50]:
        answer = f"<answer>{row['answer']}</answer>"
        assert row["chosen"].endswith(answer) and not row["rejected"].endswith(answer)
        assert row["completion"] == train[row["prompt"]]["completion"]  # the same warm-up demonstration
