"""The run folder (DESIGN.md §4): config, metrics, rollouts, checkpoints, plots, summary.

Everything a later reader needs to trust a number is written here: the resolved config, the
seed, library versions and the git commit.

The folder's states (docs/run-folder.md): new or unfinished (no complete checkpoint: a run starts
it over), resumable (a complete `checkpoints/step_N`: only --resume continues it), finished
(`summary.json`, or `final/` with its manifest). A run holds `run.lock` while it works, so a
second run cannot write the same folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from grpokit.checkpoint import MANIFEST, complete_steps
from grpokit.config import Config, all_keys, save_config, to_dict
from grpokit.errors import GrpokitError
from grpokit.jsonl import read_log

try:
    import fcntl
except ImportError:  # Windows: no flock; the folder is then not locked
    fcntl = None

LOCK = "run.lock"
# What a run writes besides its logs and config; a fresh start removes an earlier attempt's copies.
ARTIFACTS = ("checkpoints", "final", "reference", "lora_base", "tensorboard", "summary.json", "training.png",
             "dashboard.png", "wandb_id.txt", "config_changes.jsonl")


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
        self._lock_file = None

    # ------------------------------------------------------------------ who writes, and in what state
    def lock(self) -> str | None:
        """Hold `run.lock` (an exclusive `flock`) until `unlock`; None, or why another run holds it.
        The kernel releases a flock when its process dies, so a lock left by a killed run never blocks:
        the file's content (pid, host) only names the holder."""
        if fcntl is None or self._lock_file is not None:
            return None
        f = open(self.path / LOCK, "a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            return (f"run folder {self.path} is in use by another grpokit run ({holder}). Wait for it to finish, or "
                    "choose another folder with --out (train.out_dir).")
        except OSError as e:  # a file system without locks (some network mounts)
            f.close()
            print(f"grpokit: cannot lock {self.path / LOCK} ({e.strerror}); two runs into this folder would not be "
                  "refused.", file=sys.stderr)
            return None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}, since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._lock_file = f
        return None

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def finished(self) -> bool:
        """Whether a run completed here: summary.json, or a final model whose manifest was written."""
        return (self.path / "summary.json").is_file() or (self.path / "final" / MANIFEST).is_file()

    def fresh_start_problem(self, resume: bool) -> str | None:
        """Why a run may not start from the beginning in this folder (None: it may). Unfinished
        checkpoint writes are not counted: they were discarded before."""
        checkpoints = self.path / "checkpoints"
        if complete_steps(checkpoints):
            return (f"run folder {self.path} already holds checkpoints of an earlier run ({checkpoints}). Continue "
                    "it with --resume (train.resume=true), start it over with --overwrite (its checkpoints, logs and "
                    "final model are deleted first), or choose another folder with --out (train.out_dir).")
        if self.finished():
            if resume:
                return (f"run folder {self.path} holds a finished run with no checkpoint to continue from (it ran "
                        "with train.save_every=0). Start it over with --overwrite (its logs and final model are "
                        "deleted first), or choose another folder with --out (train.out_dir).")
            return (f"run folder {self.path} holds a finished run (summary.json, final/). Start it over with "
                    "--overwrite (its logs and final model are deleted first), continue it with --resume where it "
                    "has checkpoints, or choose another folder with --out (train.out_dir).")
        return None

    def clear_earlier_attempt(self) -> list[str]:
        """Remove what an earlier run wrote here (only where its config.yaml shows one ran: a folder
        grpokit did not write is left alone). Returns the names removed."""
        if not self.writer or not (self.path / "config.yaml").is_file():
            return []
        removed = []
        for name in ARTIFACTS:
            path = self.path / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(name)
        return removed

    def start(self, config: Config) -> None:
        """Write the resolved config and environment; start fresh metrics and rollouts files. What an
        earlier attempt left (an unfinished run, or one --overwrite discards) is removed first."""
        if not self.writer:
            return
        self.clear_earlier_attempt()
        save_config(config, self.path / "config.yaml")
        self.write_json("environment.json", environment(config.train.seed))
        for p in self.logs:
            p.write_text("", encoding="utf-8")

    def offsets(self) -> dict[str, int]:
        """Sizes of the append-only logs, saved in a checkpoint so a resume can cut them back."""
        return {p.name: p.stat().st_size if p.exists() else 0 for p in self.logs}

    def check_logs(self, offsets: dict[str, int], checkpoint: Path) -> None:
        """Refuse a resume whose logs are shorter than when the checkpoint was taken (deleted or cut):
        cutting them back would fill the gap with zero bytes."""
        for p in self.logs:
            size, expected = (p.stat().st_size if p.exists() else 0), offsets.get(p.name, 0)
            if size < expected:
                raise GrpokitError(
                    f"{p} has {size} bytes, but when {checkpoint} was written it had {expected}: the log was deleted "
                    "or cut since, and the run's record would have a hole. Restore it from a backup, or start the "
                    "run over with --overwrite.")

    def resume(self, offsets: dict[str, int]) -> list[dict]:
        """Cut the logs back to where the checkpoint was taken: rows of lost steps are not kept twice.
        Returns the metrics rows cut (the trackers already received them). Call `check_logs` first."""
        if not self.writer:
            return []
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
                f.truncate(min(offsets.get(p.name, 0), f.seek(0, os.SEEK_END)))  # never longer: no zero fill
        return cut

    # ------------------------------------------------------------------ the config on resume
    def config_on_resume(self, config: Config, step: int, allow_changes: bool) -> dict[str, tuple]:
        """Compare `config` with the one the run used (config.yaml and the changes recorded since) and
        return the accepted changes {key: (old, new)}; refuse (GrpokitError) a change of a key that
        defines the run unless `allow_changes`, and always one the checkpoint would silently override."""
        used = self.used_config()
        now = _flatten(to_dict(config))
        changed = {k: (used[k], now[k]) for k in now if k not in RESUME_IGNORES and used.get(k) != now[k]}
        never, refused, accepted = [], [], {}
        for key, (old, new) in changed.items():
            if key in RESUME_NEVER or key.startswith("warmup."):
                never.append(key)
            elif key == "train.steps" and new < step:
                never.append(key)
            elif key in RESUME_MAY_CHANGE or (key == "train.steps" and config.optim.schedule == "constant"
                                              and "optim.schedule" not in changed):
                accepted[key] = (old, new)
            elif allow_changes:
                accepted[key] = (old, new)
            else:
                refused.append(key)
        if never or refused:
            lines = []
            for key in [*never, *refused]:
                old, new = changed[key]
                why = ""
                if key in never:
                    why = "fixed: " + RESUME_NEVER.get(key, "the SFT warm-up is over")
                    if key == "train.steps":
                        why = f"fixed: the checkpoint is at step {step}"
                elif key == "train.steps":
                    why = f"the {config.optim.schedule} learning-rate schedule is spread over train.steps"
                lines.append(f"  {key}: {old!r} -> {new!r}" + (f" ({why})" if why else ""))
            advice = "Resume with the values the run used, or start a new run in another folder (--out)"
            if refused:
                advice += (", or pass --allow-config-change to continue with the new values"
                           + (" of the keys not marked fixed" if never else "")
                           + " (each change is recorded in config_changes.jsonl)")
            changes_file = ", config_changes.jsonl" if self._changes_path.is_file() else ""
            raise GrpokitError(f"cannot resume the run in {self.path}: the config differs from the one the run used "
                               f"(config.yaml{changes_file}) in keys that define it:\n" + "\n".join(lines) + "\n"
                               + advice + ".")
        return accepted

    @property
    def _changes_path(self) -> Path:
        return self.path / "config_changes.jsonl"

    def used_config(self) -> dict:
        """The config the run uses now, flat: config.yaml as it started, with the changes recorded since."""
        path = self.path / "config.yaml"
        if not path.is_file():
            raise GrpokitError(f"{path} is missing, so the config of the run to resume is unknown. Restore it (the "
                               "config the run was started with), or start the run over with --overwrite.")
        try:
            saved = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise GrpokitError(f"{path} is not readable YAML ({e}); restore it, or start the run over with "
                               "--overwrite.") from None
        if not isinstance(saved, dict):
            raise GrpokitError(f"{path} is not a mapping of config sections; restore it, or start the run over with "
                               "--overwrite.")
        used = {**_flatten(to_dict(Config())), **{k: v for k, v in _flatten(saved).items() if k in all_keys()}}
        if self._changes_path.is_file():
            for record in read_log(self._changes_path):
                used.update({k: change["new"] for k, change in record.get("changes", {}).items()})
        return used

    def record_config_changes(self, changes: dict[str, tuple], step: int, allowed: bool) -> None:
        """Append one line to config_changes.jsonl: the changes a resume at `step` made (config.yaml stays
        the config the run started with)."""
        if not changes:
            return
        forced = sorted(k for k in changes if k not in RESUME_MAY_CHANGE and k != "train.steps") if allowed else []
        self.append(self._changes_path, [{"resumed_at_step": step, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()},
                                          "forced": forced}])

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


# On resume the config is compared with the one the run used (RunDir.config_on_resume):
# - these keys are not compared (where the folder is, and the flag that says to resume);
RESUME_IGNORES = frozenset({"train.resume", "train.out_dir"})
# - these may change, and each change is recorded in config_changes.jsonl: they say how the run is
#   watched, saved or stopped, not what it computes (train.threads and model.device can change the
#   last bits of the numbers; a resume is bitwise only with the same ones). train.steps may change
#   too when optim.schedule is constant (the learning rate of a step does not depend on the total;
#   the order of the training prompts is the same prefix for any number of steps);
RESUME_MAY_CHANGE = frozenset({
    "train.save_every", "train.keep_checkpoints", "train.progress", "train.report_to", "train.wandb_project",
    "train.threads", "train.max_consecutive_skips", "train.log_rollouts", "eval.every", "eval.batch_size",
    "verify.timeout", "verify.isolate", "verify.max_error_rate", "model.device", "vllm.server_url",
    "vllm.server_timeout"})
# - these never change on resume, not even with --allow-config-change, because the new value would not
#   be used (with warmup.*: the SFT warm-up is over);
RESUME_NEVER = {
    "train.method": "the checkpoint holds this method's state",
    "model.path": "the checkpoint holds the weights; a LoRA run rebuilds its base from model.path",
    "optim.lr": "the checkpoint's optimiser and schedule state hold it",
    "optim.weight_decay": "the checkpoint's optimiser state holds it",
    "optim.adam_beta1": "the checkpoint's optimiser state holds it",
    "optim.adam_beta2": "the checkpoint's optimiser state holds it",
    "lora.enabled": "the checkpoint holds the full model or the adapters, not both",
    "lora.r": "the checkpoint's adapters have their shape",
    "lora.alpha": "the checkpoint's adapters were trained with it",
    "lora.target_modules": "the checkpoint's adapters sit on these modules",
}
# - every other key defines the run: a change is refused, unless --allow-config-change (then recorded).


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and prefix + str(key) not in all_keys():
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + str(key)] = value
    return flat


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
