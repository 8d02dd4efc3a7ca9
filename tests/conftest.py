"""Shared fixtures: a tiny model folder built once per test session (no network needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO.parent / "shared" / "data" / "gsm8k"


@pytest.fixture(autouse=True, scope="session")
def _quiet_and_single_threaded():
    # One thread: tests use models of a few thousand parameters, where threads only add overhead
    # and make runs on a loaded 2-core machine slow and noisy.
    torch.set_num_threads(1)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory) -> dict[str, Path]:
    """The tiny model ("test" size) and the arithmetic task, built by the project's own builder."""
    from grpokit.tiny import ensure_tiny

    return ensure_tiny(tmp_path_factory.mktemp("tiny"), size="test")


@pytest.fixture(scope="session")
def tiny_model_and_tokenizer(tiny_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_home["model"])
    model = AutoModelForCausalLM.from_pretrained(tiny_home["model"])
    return model, tokenizer
