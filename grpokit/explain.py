"""`grpokit explain`: how one step of each update rule moves a policy's probabilities.

The smallest possible policy: one question, three one-token answers (Yes / Maybe / No), three logits.
One plain-SGD step of SFT, ORPO, DPO and GRPO from the same start, computed by the very loss
functions the trainer uses (grpokit.losses, grpokit.advantages), shows what each rule pushes:
SFT pushes every other answer down in proportion to its probability, ORPO and DPO push the
rejected answer specifically, and GRPO learns nothing from a group whose rewards are all equal.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import torch

from grpokit.advantages import group_advantages
from grpokit.errors import GrpokitError
from grpokit.losses import LossNormalizers, dpo_loss, grpo_loss, orpo_loss, sequence_logprob, sft_loss

QUESTION = "Is Paris the capital of France?"
ANSWERS = ("Yes", "Maybe", "No")
START = (0.4, 0.2, 0.4)
YES, MAYBE, NO = 0, 1, 2

Probs = tuple[float, float, float]


@dataclass(frozen=True)
class Row:
    """One update rule, one step: what it trained on and the probabilities before and after."""

    key: str  # stable id for lookups: sft, orpo, orpo_lam1, dpo, grpo, grpo_equal
    method: str  # label shown in the table
    trained_on: str  # short, fits the table
    before: Probs
    after: Probs
    loss: float
    logit_change: Probs  # z_after - z_before (every loss here is a function of log_softmax: sums to 0)
    detail: str = ""  # longer notes (a group's rewards and advantages), printed under the table
    group: tuple[str, ...] = ()  # GRPO: the group's answers, in order


def _start_logits() -> torch.nn.Parameter:
    # float64 so that the teaching numbers (and the tests' hand-derived ones) agree to many digits
    return torch.nn.Parameter(torch.tensor(START, dtype=torch.float64).log())


def _one_token_logp(z: torch.Tensor, answer_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs (B, 1) of one-token completions and their mask, as the trainer's loss functions take."""
    logp_BT = torch.log_softmax(z, dim=-1)[torch.tensor(answer_ids)].unsqueeze(-1)
    return logp_BT, torch.ones_like(logp_BT)


def _probs(z: torch.Tensor) -> Probs:
    return tuple(torch.softmax(z.detach(), dim=-1).tolist())


def _step(key: str, method: str, trained_on: str, lr: float, loss_fn, detail: str = "",
          group: tuple[str, ...] = ()) -> Row:
    """Fresh start, loss_fn(z) -> loss, one plain SGD step (no momentum): the only moving part is the loss."""
    z = _start_logits()
    z_before = z.detach().clone()
    before = _probs(z)
    optimizer = torch.optim.SGD([z], lr=lr)
    optimizer.zero_grad()
    loss = loss_fn(z)
    loss.backward()
    optimizer.step()
    logit_change = tuple((z.detach() - z_before).tolist())
    return Row(key, method, trained_on, before, _probs(z), loss.item() + 0.0, logit_change, detail, group)


def _sft(z):
    logp_BT, mask_BT = _one_token_logp(z, [YES])
    return sft_loss(logp_BT, mask_BT, LossNormalizers(num_sequences=1, num_tokens=1, max_len=1))[0]


def _orpo(lam: float):
    def loss_fn(z):
        chosen_BT, chosen_mask = _one_token_logp(z, [YES])
        rejected_BT, rejected_mask = _one_token_logp(z, [NO])
        return orpo_loss(chosen_BT, chosen_mask, rejected_BT, rejected_mask, norm_tokens=1, num_pairs=1, lam=lam)[0]

    return loss_fn


def _dpo(beta: float):
    # the reference is the starting policy, frozen: at the first step policy == reference
    ref_z = torch.tensor(START, dtype=torch.float64).log()

    def loss_fn(z):
        logp_BT, mask_BT = _one_token_logp(z, [YES, NO])
        with torch.no_grad():
            ref_BT, _ = _one_token_logp(ref_z, [YES, NO])
        policy_B, ref_B = sequence_logprob(logp_BT, mask_BT), sequence_logprob(ref_BT, mask_BT)
        return dpo_loss(policy_B[:1], policy_B[1:], ref_B[:1], ref_B[1:], beta=beta, num_pairs=1)[0]

    return loss_fn


def _grpo(group: list[int]):
    """GRPO on one group, verified by reward 1 for Yes; one update per rollout (ratio 1, with gradient), beta = 0."""
    rewards_G = torch.tensor([1.0 if a == YES else 0.0 for a in group], dtype=torch.float64)
    advantages_G = group_advantages(rewards_G[None, :])[0]

    def loss_fn(z):
        logp_BT, mask_BT = _one_token_logp(z, group)
        norm = LossNormalizers(num_sequences=len(group), num_tokens=len(group), max_len=1)
        return grpo_loss(logp_BT, logp_BT.detach(), advantages_G, mask_BT, norm, aggregation="token")[0]

    detail = "rewards " + ",".join(f"{r:g}" for r in rewards_G.tolist())
    detail += "; advantages " + ",".join(f"{a:+.2f}" for a in advantages_G.tolist())
    return loss_fn, detail


def _group_label(group: list[int]) -> str:
    return ",".join(ANSWERS[a][0] for a in group)


def explain(
    lr: float = 1.0, *, beta: float = 0.1, orpo_lambda: float = 0.1, group_size: int = 8, seed: int = 0
) -> list[Row]:
    """One SGD step of each rule from the same start. beta is DPO's; GRPO runs with beta = 0 (no KL term)."""
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2 (group advantages need a group), got {group_size}")
    pair = "chosen Yes, rejected No"
    rows = [
        _step("sft", "SFT", "target Yes", lr, _sft),
        _step("orpo", f"ORPO (lam={orpo_lambda:g})", pair, lr, _orpo(orpo_lambda)),
    ]
    if orpo_lambda != 1.0:  # a stronger odds-ratio term makes its push on the rejected answer plain to see
        rows.append(_step("orpo_lam1", "ORPO (lam=1)", pair, lr, _orpo(1.0)))
    rows.append(_step("dpo", f"DPO (beta={beta:g})", pair, lr, _dpo(beta), "reference = the start policy, frozen"))

    generator = torch.Generator().manual_seed(seed)
    sampled = torch.multinomial(torch.tensor(START), group_size, replacement=True, generator=generator).tolist()
    loss_fn, detail = _grpo(sampled)
    rows.append(_step("grpo", "GRPO (sampled)", f"group {_group_label(sampled)}", lr, loss_fn,
                      f"sampled from the start policy, seed {seed}; {detail}", tuple(ANSWERS[a] for a in sampled)))

    # constructed, not sampled: every answer wrong (Maybe and No), so every reward is 0
    all_wrong = [MAYBE if i % 3 == 0 else NO for i in range(group_size)]
    loss_fn, detail = _grpo(all_wrong)
    rows.append(_step("grpo_equal", "GRPO (all wrong)", f"group {_group_label(all_wrong)}", lr, loss_fn,
                      f"constructed, not sampled; {detail}", tuple(ANSWERS[a] for a in all_wrong)))
    return rows


def _pct_change(before: float, after: float) -> str:
    return f"{100 * before:.2f} -> {100 * after:.2f}"


def _markdown(header: list[str], body: list[list[str]]) -> list[str]:
    """A Markdown table padded to column width, so it also reads as plain text in a terminal."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    right = [False, False] + [True] * (len(header) - 2)

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if r else ":" + "-" * (w + 1) for w, r in zip(widths, right)) + "|"
    return [line(header), rule, *(line(r) for r in body)]


def _interpretation(rows: list[Row], lr: float) -> list[str]:
    """Short readings of the numbers; each claim is checked against them before it is made."""
    by_key = {r.key: r for r in rows}
    lines = []

    def moved(r: Row, i: int) -> str:
        return f"{r.logit_change[i]:+.3f}"

    def same(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)

    sft = by_key.get("sft")
    if sft:
        proportional = all(same(sft.logit_change[i], -lr * sft.before[i]) for i in (MAYBE, NO))
        how = "each -lr x its own probability" if proportional else "not in proportion to their probabilities"
        lines.append(f"SFT: only Yes is in the loss, yet Maybe and No fell through the softmax: their logits moved "
                     f"{moved(sft, MAYBE)} and {moved(sft, NO)}, {how}, however wrong they are.")
    orpos = [by_key[k] for k in ("orpo", "orpo_lam1") if k in by_key]
    if orpos and sft:
        as_sft = all(same(r.logit_change[MAYBE], sft.logit_change[MAYBE]) for r in orpos)
        maybe = f"as in SFT ({moved(sft, MAYBE)})" if as_sft else "/".join(moved(r, MAYBE) for r in orpos)
        nos = " and ".join(f"{moved(r, NO)} at {r.method.removeprefix('ORPO (').rstrip(')')}" for r in orpos)
        pushed = all(r.logit_change[NO] < sft.logit_change[NO] for r in orpos)
        verdict = ("the odds-ratio term adds an explicit push on the rejected answer to SFT's" if pushed
                   else "the odds-ratio term did not push the rejected answer below SFT's")
        lines.append(f"ORPO: Maybe's logit moved {maybe}, No's {nos} (SFT: {moved(sft, NO)}): {verdict}.")
    dpo = by_key.get("dpo")
    if dpo:
        if dpo.logit_change[MAYBE] == 0.0:
            maybe = (f"Maybe's logit did not move at all: its probability went {100 * dpo.before[MAYBE]:.3f}% -> "
                     f"{100 * dpo.after[MAYBE]:.3f}% only through the softmax's normaliser")
        else:
            maybe = f"Maybe's logit moved {moved(dpo, MAYBE)}"
        lines.append(f"DPO: only the pair's logits moved (Yes {moved(dpo, YES)}, No {moved(dpo, NO)}); {maybe}.")
    grpo = by_key.get("grpo")
    if grpo:
        counts = ", ".join(f"{a} {moved(grpo, i)} ({grpo.group.count(a)} sampled)" for i, a in enumerate(ANSWERS))
        zero_loss = abs(grpo.loss) < 1e-12 and any(d != 0.0 for d in grpo.logit_change)
        note = " Its loss is 0 (the advantages sum to 0), its gradient is not." if zero_loss else ""
        lines.append(f"GRPO: each logit moved by lr/G x the sum of its samples' advantages: {counts}.{note}")
    equal = by_key.get("grpo_equal")
    if equal:
        rewards_equal = "all rewards equal, so every advantage is exactly 0"
        if equal.after == equal.before:
            lines.append(f"GRPO, all-equal group: {rewards_equal}; the gradient is 0 and, with beta = 0, "
                         "not a single bit of the policy moved. Such a group teaches nothing.")
        else:
            change = max(abs(a - b) for a, b in zip(equal.after, equal.before))
            lines.append(f"GRPO, all-equal group: the probabilities still moved (by up to {change:.3g}).")
    return [textwrap.fill(line, width=118, subsequent_indent="  ") for line in lines]


def format_table(rows: list[Row], lr: float) -> str:
    """A Markdown table (padded: it reads in a terminal too), the groups' details and a reading of the numbers."""
    start = " / ".join(f"{100 * p:.0f}%" for p in rows[0].before) if rows else ""
    out = [f'Question: "{QUESTION}"  Answers: {" / ".join(ANSWERS)}, starting at {start}.',
           f"One plain SGD step (lr={lr:g}) of each rule, each from the same start. Probabilities in %.", ""]
    header = ["Method", "Trained on", *(f"P({a})" for a in ANSWERS), "Logit change Y M N"]
    body = [[r.method, r.trained_on, *(_pct_change(b, a) for b, a in zip(r.before, r.after)),
             " ".join(f"{d:+.3f}" for d in r.logit_change)] for r in rows]
    out += _markdown(header, body)
    details = [textwrap.fill(f"- {r.method}: {r.detail}", width=118, subsequent_indent="  ") for r in rows if r.detail]
    if details:
        out += ["", *details]
    out += ["", *_interpretation(rows, lr)]
    return "\n".join(out)


def plot(rows: list[Row], path: str | Path) -> Path:
    """One panel per rule: each answer's probability before and after the step."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.4), sharey=True, squeeze=False)
    x = range(len(ANSWERS))
    for ax, row in zip(axes[0], rows):
        ax.bar([i - 0.2 for i in x], row.before, width=0.4, color="lightgray", edgecolor="gray", label="before")
        ax.bar([i + 0.2 for i in x], row.after, width=0.4, color="tab:blue", label="after")
        ax.set_xticks(list(x), ANSWERS)
        ax.set_title(row.method, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("probability")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(QUESTION, fontsize=10)
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise GrpokitError(f"could not write the plot to {path}: {e.strerror or e}. Give --plot a writable path.") \
            from None
    finally:
        plt.close(fig)
    return path


def run(lr: float = 1.0, plot_path: str | Path | None = None) -> str:
    """What `grpokit explain` prints (and, given plot_path, the chart it writes)."""
    rows = explain(lr)
    text = format_table(rows, lr)
    if plot_path is not None:
        text += f"\n\nPlot written to {plot(rows, plot_path)}"
    return text
