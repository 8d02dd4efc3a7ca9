"""configs/gsm8k_grpo.yaml runs end to end: GSM8K rows, system prompt through the chat template, GRPO.

A smoke test on the tiny model (its answers are noise); real GSM8K files from ../shared when
present, else eight rows of them shipped in tests/fixtures/gsm8k.
"""

import json
import shutil
from pathlib import Path

import pytest

from grpokit.config import load_config
from grpokit.inputs import prepare_inputs
from grpokit.trainer import train

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "gsm8k_grpo.yaml"
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"
DATA = GSM8K_DIR if (GSM8K_DIR / "train.jsonl").is_file() else Path(__file__).parent / "fixtures" / "gsm8k"


@pytest.fixture(scope="module")
def long_tiny_model(tiny_home, tmp_path_factory):
    """The tiny model with 2,048 positions (rotary: no weight depends on it), so GSM8K's prompts of up to
    ~530 characters fit; with its own 256, grpokit refuses them (tests/test_validate.py)."""
    folder = tmp_path_factory.mktemp("long_tiny") / "model"
    shutil.copytree(tiny_home["model"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return folder


def _config(model, out):
    return load_config(CONFIG, [
        f"model.path={model}", "model.dtype=float32", f"data.train={DATA / 'train.jsonl'}",
        f"data.eval={DATA / 'test.jsonl'}", "data.max_train_examples=8", "data.max_eval_examples=4",
        "sampling.prompts_per_step=2", "sampling.group_size=2", "sampling.max_new_tokens=16",
        "optim.micro_batch_size=4", "train.steps=1", "train.save_every=0", "eval.every=0", "train.progress=false",
        f"train.out_dir={out}"])


def test_gsm8k_prompts_carry_the_system_prompt_through_the_chat_template(long_tiny_model, tmp_path):
    inputs = prepare_inputs(_config(long_tiny_model, tmp_path))
    first = inputs.train_prompts[0]
    assert first.startswith("Think step by step inside <think> </think>")  # the tiny template puts system first
    assert inputs.train[0].prompt in first and first.endswith("A: ")  # the question, then the assistant's turn
    assert inputs.train[0].answer.replace(",", "").lstrip("-").isdigit()  # "#### 72" reduced to the number


def test_gsm8k_config_trains_one_step_end_to_end(long_tiny_model, tmp_path):
    summary = train(_config(long_tiny_model, tmp_path))
    assert summary["eval_after"]["n"] == 4 and (tmp_path / "final" / "config.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("phase") == "train"] == [1]
