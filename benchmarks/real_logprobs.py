"""Memory and speed of the training forward + backward on a real vocabulary (SmolLM2-135M-Instruct).

    python benchmarks/real_logprobs.py [--model .grpokit/smollm2/model] [--rows 32] [--tokens 128]

One GRPO micro-batch's log-prob pass: `rows` completions of `tokens` tokens (groups of 8 sharing
a chat-templated prompt), forward then backward of sum(log-probs). Each variant runs in its own
process, alternating over `--rounds`, so its peak memory is its own:

- whole logits (the LM head over every position at once, the path before chunking) vs chunked
  (grpokit.logprobs.LOGITS_BUDGET_MB per chunk, recomputed in backward);
- float32 vs bfloat16 autocast (float32 parameters, as grpokit trains);
- the shared prompt forward (each group's prompt once, read from the KV cache) vs every row its own.

Peak memory is the process's peak RSS above what it held after loading the model (ru_maxrss), so it
counts the activations, logits and gradients of the pass. It also reports how many prompt tokens are
a prefix shared by every prompt (the chat template's system message), which a cache across groups
could save.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "whole logits, fp32, shared prompt": dict(budget=float("inf"), dtype="float32", share=True),
    "chunked, fp32, shared prompt": dict(budget=None, dtype="float32", share=True),
    "chunked, fp32, no shared prompt": dict(budget=None, dtype="float32", share=False),
    "chunked, bf16 autocast, shared prompt": dict(budget=None, dtype="bfloat16", share=True),
}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def one(args, variant: dict) -> dict:
    import torch

    from grpokit.batching import TokenBatch, encode_prompts
    from grpokit.config import ModelConfig
    from grpokit.data import render_prompt
    from grpokit.logprobs import token_logprobs
    from grpokit.modeling import autocast, load_model, load_tokenizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig(path=args.model, dtype=variant["dtype"], device="cpu")
    model, tokenizer = load_model(cfg, trainable=True), load_tokenizer(args.model)
    groups = args.rows // 8
    prompts = [render_prompt(f"What is {7 + g} * {3 + g}? Answer with just the number.", tokenizer)
               for g in range(groups)]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    unpadded = [ids[mask.bool()].tolist() for ids, mask in zip(prompt_ids, prompt_mask)]
    common = 0
    while all(len(ids) > common and ids[common] == unpadded[0][common] for ids in unpadded):
        common += 1
    completion = torch.randint(100, 40000, (args.rows, args.tokens))
    batch = TokenBatch(prompt_ids.repeat_interleave(8, 0), prompt_mask.repeat_interleave(8, 0), completion,
                       torch.ones_like(completion))
    base_mb = rss_mb()
    seconds = []
    for _ in range(args.repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with autocast(cfg, torch.device("cpu")):
            logp = token_logprobs(model, batch, 1.0, share_prompts=variant["share"], max_logits_mb=variant["budget"])
        logp.sum().backward()
        seconds.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": statistics.median(seconds[1:] or seconds), "peak_above_model_mb": peak_mb - base_mb,
            "prompt_tokens": max(len(ids) for ids in unpadded), "common_prefix_tokens": common}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=".grpokit/smollm2/model")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args, VARIANTS[args.one])))
        return
    results = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        order = list(VARIANTS) if r % 2 == 0 else list(reversed(VARIANTS))
        for name in order:
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", name], check=True,
                                 capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    first = next(iter(VARIANTS))
    base_s = statistics.median(r["seconds"] for r in results[first])
    print(f"\n{args.rows} completions x {args.tokens} tokens, forward + backward of the log-probs, "
          f"{args.threads} threads, median of {args.rounds} processes x {args.repeats} passes\n")
    print("| variant | s / pass | vs whole logits | peak memory above the model, MB |")
    print("|---|---:|---:|---:|")
    for name, runs in results.items():
        s = statistics.median(r["seconds"] for r in runs)
        mb = statistics.median(r["peak_above_model_mb"] for r in runs)
        print(f"| {name} | {s:.2f} | {s / base_s:.2f}x | {mb:.0f} |")
    r = results[first][0]
    print(f"\nprompt: {r['prompt_tokens']} tokens, of which {r['common_prefix_tokens']} are a prefix shared by "
          f"every prompt (the chat template's system message and turn markers)")


if __name__ == "__main__":
    main()
