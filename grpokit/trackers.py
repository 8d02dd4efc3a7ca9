"""Optional experiment trackers (train.report_to): TensorBoard and Weights & Biases.

metrics.jsonl is always written and stays the record; a tracker receives a copy of every
numeric metric as it is logged. Tags are "<phase>/<metric>" (train/reward, warmup/loss,
eval/eval_accuracy), each phase with its own step axis, because the warm-up and the method
both count steps from 1.
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


class TensorBoardTracker:
    def __init__(self, run_path: Path, config: Config):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise GrpokitError("train.report_to=tensorboard needs the tensorboard package: "
                               "pip install 'grpokit[trackers]' (or pip install tensorboard).") from None
        self.writer = SummaryWriter(log_dir=str(run_path / "tensorboard"))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(to_dict(config), sort_keys=False) + "```")

    def log(self, row: dict) -> None:
        phase, step, values = _scalars(row)
        for key, value in values.items():
            self.writer.add_scalar(f"{phase}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """One W&B run per run folder; its id is kept in the folder so a resumed run continues it.
    Offline use (no network): set WANDB_MODE=offline; `wandb sync` uploads later."""

    def __init__(self, run_path: Path, config: Config):
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

    def log(self, row: dict) -> None:
        phase, step, values = _scalars(row)
        if phase not in self.defined:  # each phase has its own step axis
            self.run.define_metric(f"{phase}/step")
            self.run.define_metric(f"{phase}/*", step_metric=f"{phase}/step")
            self.defined.add(phase)
        self.run.log({f"{phase}/step": step, **{f"{phase}/{k}": v for k, v in values.items()}})

    def close(self) -> None:
        self.run.finish()


def open_trackers(run_path: Path, config: Config) -> list:
    classes = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
    assert set(classes) == set(TRACKERS)
    return [classes[name](run_path, config) for name in trackers_requested(config.train.report_to)]
