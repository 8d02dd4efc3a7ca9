"""Optional experiment trackers (train.report_to): TensorBoard and Weights & Biases.

metrics.jsonl is always written and stays the record; a tracker receives a copy of every
numeric metric as it is logged. Tags are "<phase>/<metric>" (train/reward, warmup/loss,
eval/eval_accuracy), each phase with its own step axis, because the warm-up and the method
both count steps from 1.

A resumed run re-runs the steps between its checkpoint and the kill, and logs them again:
- TensorBoard writes each phase into its own folder (tensorboard/train, .../warmup, .../eval), and
  on resume opens the method's folders with purge_step = checkpoint step + 1. TensorBoard then hides
  what the killed run wrote for those steps, and each step shows once, with the values of the
  run that continued.
- W&B cannot rewind a run's history (a private preview). Rows it already received (the rows that
  the resume cut from metrics.jsonl) are not sent again. A one-process resume is bitwise identical,
  so they are the same values; after a multi-process resume they may differ slightly from
  metrics.jsonl, which stays the record.
"""

from __future__ import annotations

import numbers
import uuid
from pathlib import Path

import yaml

from grpokit.config import TRACKERS, Config, to_dict, trackers_requested
from grpokit.errors import GrpokitError

# evaluations after the warm-up share one axis; the one before any warm-up ("initial") has its own
_PHASE_OF = {"before": "eval", "after": "eval"}


def _scalars(row: dict) -> tuple[str, int, dict[str, float]]:
    phase = row.get("phase", "train")
    phase = _PHASE_OF.get(phase, phase)
    values = {k: float(v) for k, v in row.items()
              if k not in ("step", "phase") and isinstance(v, numbers.Real) and not isinstance(v, bool)}
    return phase, int(row.get("step", 0)), values


_RERUN_ON_RESUME = ("train", "eval")  # the method's axes; the warm-up and "initial" come before any checkpoint


class TensorBoardTracker:
    def __init__(self, run_path: Path, config: Config, resumed_at: int | None = None, already_logged=()):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GrpokitError("train.report_to=tensorboard needs the tensorboard package: "
                               "pip install 'grpokit[trackers]' (or pip install tensorboard).") from None
        self.SummaryWriter, self.root, self.resumed_at = SummaryWriter, run_path / "tensorboard", resumed_at
        self.writers: dict = {}
        self.config_text = "```\n" + yaml.safe_dump(to_dict(config), sort_keys=False) + "```"

    def _writer(self, phase: str):
        if phase not in self.writers:
            purge = self.resumed_at + 1 if self.resumed_at is not None and phase in _RERUN_ON_RESUME else None
            self.writers[phase] = self.SummaryWriter(log_dir=str(self.root / phase), purge_step=purge)
            if phase == "train":
                self.writers[phase].add_text("config", self.config_text)
        return self.writers[phase]

    def log(self, row: dict) -> None:
        phase, step, values = _scalars(row)
        writer = self._writer(phase)
        for key, value in values.items():
            writer.add_scalar(f"{phase}/{key}", value, step)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class WandbTracker:
    """One W&B run per run folder; its id is kept in the folder so a resumed run continues it.
    Offline use (no network): set WANDB_MODE=offline; `wandb sync` uploads later."""

    def __init__(self, run_path: Path, config: Config, resumed_at: int | None = None, already_logged=()):
        try:
            import wandb
        except ImportError:
            raise GrpokitError("train.report_to=wandb needs the wandb package: pip install 'grpokit[trackers]' "
                               "(or pip install wandb).") from None
        id_file = run_path / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        self.run = wandb.init(project=config.train.wandb_project, name=run_path.name, id=run_id, resume="allow",
                              dir=str(run_path), config=to_dict(config))
        self.defined: set[str] = set()
        self.already_logged = {(_scalars(r)[0], _scalars(r)[1]) for r in already_logged}

    def log(self, row: dict) -> None:
        phase, step, values = _scalars(row)
        if (phase, step) in self.already_logged:  # re-run after a resume: W&B has this step already
            self.already_logged.discard((phase, step))
            return
        if phase not in self.defined:  # each phase has its own step axis
            self.run.define_metric(f"{phase}/step")
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self.defined.add(phase)
        self.run.log({f"{phase}/step": step, **{f"{phase}/{k}": v for k, v in values.items()}})

    def close(self) -> None:
        self.run.finish()


def open_trackers(run_path: Path, config: Config, resumed_at: int | None = None, already_logged=()) -> list:
    """The requested trackers; a resumed run passes its checkpoint step and the metrics rows it cut."""
    classes = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    assert set(classes) == set(TRACKERS)
    return [classes[name](run_path, config, resumed_at, already_logged)
            for name in trackers_requested(config.train.report_to)]
