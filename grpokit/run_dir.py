"""The run folder (DESIGN.md §4): config, metrics, rollouts, checkpoints, plots, summary.

Everything a later reader needs to trust a number is written here: the resolved config, the
seed, library versions and the git commit.
"""

from __future__ import annotations

import json
import math
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

from grpokit.config import Config, save_config


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None says "not a number" honestly
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class RunDir:
    """The files of a run. With several processes only the main one writes (`writer`); the others'
    calls are no-ops, so training code logs the same way in every process."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.path / "metrics.jsonl"
        self.rollouts_path = self.path / "rollouts.jsonl"
        self.errors_path = self.path / "errors.jsonl"
        self.logs = (self.metrics_path, self.rollouts_path, self.errors_path)
        self.trackers: list = []  # TensorBoard / W&B (grpokit.trackers): a copy of every metrics row

    def start(self, config: Config) -> None:
        """Write the resolved config and environment; start fresh metrics and rollouts files."""
        if not self.writer:
            return
        save_config(config, self.path / "config.yaml")
        self.write_json("environment.json", environment(config.train.seed))
        for p in self.logs:
            p.write_text("", encoding="utf-8")

    def offsets(self) -> dict[str, int]:
        """Sizes of the append-only logs, saved in a checkpoint so a resume can cut them back."""
        return {p.name: p.stat().st_size if p.exists() else 0 for p in self.logs}

    def resume(self, config: Config, offsets: dict[str, int]) -> list[dict]:
        """Cut the logs back to where the checkpoint was taken: rows of lost steps are not kept twice.
        Returns the metrics rows cut (the trackers already received them)."""
        if not self.writer:
            return []
        save_config(config, self.path / "config.yaml")
        cut = []
        if self.metrics_path.exists():
            with self.metrics_path.open("rb") as f:
                f.seek(offsets.get(self.metrics_path.name, 0))
                for line in f.read().decode("utf-8", errors="replace").splitlines():
                    try:
                        cut.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a line the kill cut in half: it was never complete anywhere
        for p in self.logs:
            with p.open("ab") as f:
                f.truncate(offsets.get(p.name, 0))
        return cut

    def append(self, path: Path, rows: list[dict], every_process: bool = False) -> None:
        """Append JSON lines. `every_process`: also from non-main processes (each line is one write to
        a file opened for appending, so lines from several processes do not interleave)."""
        if not (self.writer or every_process):
            return
        with path.open("a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(_jsonable(row)) + "\n")
                if every_process:
                    f.flush()  # one write per line

    def log_metrics(self, row: dict) -> None:
        self.append(self.metrics_path, [row])
        for tracker in self.trackers:
            tracker.log(row)

    def close_trackers(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []

    def log_rollouts(self, rows: list[dict]) -> None:
        self.append(self.rollouts_path, rows)

    def write_json(self, name: str, data: dict) -> Path:
        path = self.path / name
        if not self.writer:
            return path
        path.write_text(json.dumps(_jsonable(data), indent=2) + "\n", encoding="utf-8")
        return path


def peak_memory_mb(device: torch.device | None = None) -> float:
    """Peak accelerator memory if on CUDA, else the process's peak resident set size."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def environment(seed: int) -> dict:
    import transformers

    return {
        "seed": seed,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": _git_commit(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
