"""What would skipping zero-advantage completions change when beta > 0?

    python benchmarks/zero_advantage.py [--steps 60] [--every 10] [--out runs/bench_zero_advantage]

A completion in an all-equal group has advantage exactly 0: its policy-gradient term vanishes.
With beta = 0 grpokit leaves such completions out of the forward and backward passes (the
update is unchanged; tests/test_invariants.py checks it). With beta > 0 their KL term still has
a gradient, so skipping them is an approximation. This script trains GRPO on the embedded task
with the benchmark's settings (beta 0.04) and, every `--every` steps, computes on that step's
rollout the gradient with and without those completions (same normalisers, so only their
terms differ) and the time each takes. It prints one row per measured step.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from settings import DEMO_CONFIG, grpokit_overrides  # noqa: E402
from vs_trl import prepare  # noqa: E402


def gradient(model, ref_model, tokens, advantages_B, rows, norm, config) -> tuple[torch.Tensor, float]:
    """Flattened gradient of the GRPO loss restricted to `rows` (normalised over the whole batch), and its time."""
    from grpokit.logprobs import token_logprobs
    from grpokit.losses import grpo_loss

    started = time.perf_counter()
    model.zero_grad(set_to_none=True)
    batch = tokens.select(rows)
    T = config.sampling.temperature
    with torch.no_grad():
        ref = token_logprobs(ref_model, batch, T)
    logp = token_logprobs(model, batch, T)
    g = config.grpo
    loss, _ = grpo_loss(logp, logp.detach(), advantages_B[rows], batch.completion_mask_BC, norm, clip_low=g.clip_low,
                        clip_high=g.clip_high, beta=g.beta, ref_logp_BT=ref, aggregation=g.aggregation)
    loss.backward()
    seconds = time.perf_counter() - started
    flat = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()
    model.zero_grad(set_to_none=True)
    return flat, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_zero_advantage")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import random

    from grpokit.config import load_config
    from grpokit.inputs import prepare_inputs
    from grpokit.losses import LossNormalizers
    from grpokit.methods.grpo import compute_advantages, grpo_update
    from grpokit.modeling import load_model
    from grpokit.optim import build_optimizer, build_scheduler
    from grpokit.parallel import single_process
    from grpokit.rewards import make_scorer
    from grpokit.sampler import sample
    from grpokit.trainer import set_seed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    home, warm = prepare(out)
    config = load_config(DEMO_CONFIG, grpokit_overrides(str(warm), home, args.steps, 0, 0, str(out / "run")))
    inputs = prepare_inputs(config)
    set_seed(0)
    model = load_model(config.model, trainable=True)
    ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, args.steps, warmup_steps=0, schedule="constant")
    scorer = make_scorer(config.rewards, timeout=None, isolate=False)
    s, G = config.sampling, config.sampling.group_size
    rng = random.Random(1)
    lines = ["| step | zero-variance groups | tokens skipped | KL | cosine(full, skipped) | "
             "‖full − skipped‖ / ‖full‖ | fwd+bwd s, full → skipped |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for step in range(1, args.steps + 1):
        rows = rng.sample(range(len(inputs.train_prompts)), s.prompts_per_step)
        prompts = [inputs.train_prompts[r] for r in rows]
        rollout = sample(model, inputs.tokenizer, prompts, group_size=G, max_new_tokens=s.max_new_tokens,
                         temperature=s.temperature)
        scores = scorer.score([p for p in prompts for _ in range(G)], rollout.completions,
                              [inputs.train[r].reward_fields() for r in rows for _ in range(G)])
        rewards_B = torch.tensor(scores.total)
        advantages_B, zero_variance = compute_advantages(rewards_B, G, config.grpo)
        if step == 1 or step % args.every == 0:
            tokens, mask = rollout.tokens, rollout.tokens.completion_mask_BC
            norm = LossNormalizers(len(tokens), int(mask.sum()), s.max_new_tokens)
            everything = list(range(len(tokens)))
            kept = [i for i in everything if advantages_B[i] != 0]
            model.train()
            full, t_full = gradient(model, ref_model, tokens, advantages_B, everything, norm, config)
            skipped, t_skip = (gradient(model, ref_model, tokens, advantages_B, kept, norm, config) if kept
                               else (torch.zeros_like(full), 0.0))
            with torch.no_grad():
                from grpokit.logprobs import token_logprobs

                logp = token_logprobs(model, tokens, s.temperature)
                ref = token_logprobs(ref_model, tokens, s.temperature)
                kl = (((ref - logp).exp() - (ref - logp) - 1) * mask).sum() / mask.sum()
            cosine = torch.nn.functional.cosine_similarity(full, skipped, dim=0).item()
            relative = ((full - skipped).norm() / full.norm()).item()
            share = 1 - int(mask[kept].sum()) / int(mask.sum())
            lines.append(f"| {step} | {zero_variance:.0%} | {share:.0%} | {kl.item():.4f} | {cosine:.4f} | "
                         f"{relative:.4f} | {t_full:.3f} → {t_skip:.3f} |")
            print(lines[-1], file=sys.stderr)
        model.train()
        grpo_update(model, optimizer, scheduler, rollout, advantages_B, config, single_process(), ref_model)
    scorer.close()
    text = "\n".join(lines)
    (out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
