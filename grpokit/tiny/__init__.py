"""The embedded default: a tiny model and an arithmetic task, built locally with no network."""

from grpokit.tiny.model import build_tiny, build_tokenizer
from grpokit.tiny.task import make_splits, write_task

__all__ = ["build_tiny", "build_tokenizer", "make_splits", "write_task"]
