"""The DeepSpeed ZeRO backend, through `accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml`.

ZeRO-2 shards gradients and AdamW state (each process keeps whole weights); ZeRO-3 shards the
weights too. grpokit hands its model and AdamW to `deepspeed.initialize` once the method starts
(the SFT warm-up before it runs as plain data parallel), and keeps its own loop:
- every micro-batch's loss goes through `engine.backward`, with the accumulation boundary set by
  grpokit on the step's last micro-batch, so gradients are reduced once per optimiser step;
- DeepSpeed averages gradients over processes; grpokit's losses are normalised by the whole step,
  so each loss is multiplied by the number of processes first (their sum is what one process
  would compute);
- `engine.step()` clips (gradient_clipping = optim.max_grad_norm) and skips a step whose gradients
  are not finite, clearing them, so a NaN never reaches AdamW; grpokit's schedule moves only after
  a step that went through;
- under ZeRO-3 every forward gathers weights (a collective), so sampling and evaluation run
  inside `GatheredParameters`, as FSDP's do on gathered weights;
- checkpoints keep grpokit's files (the whole model, written by the main process) plus
  DeepSpeed's own partitioned optimiser state in `deepspeed/`, which a resumed run loads back.
The KL reference stays a plain, unsharded model in every process.
"""

from __future__ import annotations

import contextlib
import os
import shutil

import torch

from grpokit.errors import GrpokitError
from grpokit.parallel.backend import DataParallel


def stage_from_launcher() -> int | None:
    """The ZeRO stage `accelerate launch` was given, or None without a DeepSpeed config."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))


def check_deepspeed_settings() -> None:
    """Refuse DeepSpeed settings grpokit cannot honour."""
    stage = stage_from_launcher()
    if os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE"):
        raise GrpokitError("the accelerate config points to a DeepSpeed JSON file (deepspeed_config_file); grpokit "
                           "builds DeepSpeed's config from zero_stage and optim.max_grad_norm. Use "
                           "configs/accelerate/deepspeed_zero2.yaml or deepspeed_zero3.yaml.")
    offload = [os.environ.get(f"ACCELERATE_DEEPSPEED_OFFLOAD_{k}_DEVICE", "none") for k in ("OPTIMIZER", "PARAM")]
    if any(device not in ("none", "") for device in offload):
        raise GrpokitError("DeepSpeed offload (offload_optimizer_device / offload_param_device) is not supported by "
                           "grpokit; set both to none.")
    if stage not in (1, 2, 3):
        raise GrpokitError(f"the accelerate config asks for ZeRO stage {stage}; grpokit runs stages 1, 2 and 3.")


def plain_copy(model):
    """Inside `GatheredParameters`: the same architecture without DeepSpeed's hooks, its parameters and
    buffers the gathered tensors themselves (built on the meta device, then assigned: no second copy)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config)
    plain.load_state_dict(model.state_dict(), assign=True)
    for name, buffer in model.named_buffers():  # non-persistent ones (rotary frequencies) are not in state_dict
        owner, _, attribute = name.rpartition(".")
        plain.get_submodule(owner)._buffers[attribute] = buffer
    plain.generation_config = model.generation_config
    return plain.eval().requires_grad_(False)


class DeepSpeedZero(DataParallel):
    """The policy and its AdamW inside DeepSpeed's engine once the method starts (`attach_optimizer`);
    the SFT warm-up before it runs as plain data parallel (the parent class), and the KL reference stays a plain,
    unsharded model in every process."""

    name = "deepspeed"
    lockstep = True

    def __init__(self, world, stage: int):
        super().__init__(world)
        self.stage = stage
        self.shards_weights = stage == 3
        self.engine = None
        self.model = None  # the policy the engine holds

    def attach_optimizer(self, model, optimizer, *, max_grad_norm: float) -> None:
        import deepspeed

        config = {
            "train_micro_batch_size_per_gpu": 1,  # grpokit forms its own micro-batches; these only size DeepSpeed's
            "gradient_accumulation_steps": 1,     # bookkeeping, and the accumulation boundary is set per micro-batch
            "gradient_clipping": max_grad_norm,
            "zero_optimization": {"stage": self.stage},
            "zero_allow_untested_optimizer": True,  # grpokit's torch AdamW, not DeepSpeed's fused one
            "steps_per_print": 10**9,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
        self.model = model

    def _holds(self, model) -> bool:
        return self.engine is not None and model is self.model

    def collective(self, model) -> bool:
        return self._holds(model)

    def backward(self, model, loss, *, last: bool) -> None:
        if not self._holds(model):  # the warm-up, before the engine: plain data parallel
            return super().backward(model, loss, last=last)
        engine = self.engine
        # What `engine.forward` does first, which grpokit's direct model calls skip: without it ZeRO-3
        # does not count micro-batches, and each one's gradients replace the previous ones'.
        if hasattr(engine.optimizer, "clear_backward_seen_flag"):
            engine.optimizer.clear_backward_seen_flag()
        engine.set_gradient_accumulation_boundary(last)  # reduce the gradients once, after the last micro-batch
        engine.backward(loss * self.world.size)  # DeepSpeed averages over processes; the losses want a sum

    def step(self, model, optimizer, scheduler, max_grad_norm: float, loss_is_finite: bool = True
             ) -> tuple[float, bool]:
        """The engine clips, skips a step whose gradients are not finite and clears the gradients;
        grpokit's schedule moves only after a step that went through."""
        if not self._holds(model):
            return super().step(model, optimizer, scheduler, max_grad_norm, loss_is_finite)
        self.engine.step()
        stepped = not getattr(self.engine.optimizer, "overflow", False)
        norm = self.engine.get_global_grad_norm()
        if stepped and scheduler is not None:
            scheduler.step()
        return (float(norm) if norm is not None else float("nan")), stepped

    @contextlib.contextmanager
    def _gathered(self, model):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield

    @contextlib.contextmanager
    def full_weights(self, model):
        """ZeRO-3: a plain copy that shares the gathered tensors (the engine's forward hooks would
        still synchronise processes). Re-entrant; the model itself under ZeRO-1/2."""
        if "_grpokit_gathered" in model.__dict__:  # inside already
            yield model.__dict__["_grpokit_gathered"]
            return
        if not (self.stage == 3 and self._holds(model)):
            yield model
            return
        with self._gathered(model):
            model.__dict__["_grpokit_gathered"] = plain = plain_copy(model)
            try:
                yield plain
            finally:
                del model.__dict__["_grpokit_gathered"]

    exported = full_weights  # a weight push reads the gathered copy's state dict

    def full_model_state(self, model) -> dict | None:
        if not (self.stage == 3 and self._holds(model)):
            return None
        with self._gathered(model):
            if not self.world.is_main:
                return {}
            return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}

    def optimizer_state(self, model, optimizer) -> dict:
        return {}  # DeepSpeed's own partitioned checkpoint holds it (`save_state`)

    def load_optimizer_state(self, model, optimizer, read, source: str) -> None:
        pass  # loaded from DeepSpeed's own checkpoint (`load_state`)

    @property
    def has_own_state(self) -> bool:
        return True

    def save_state(self, model, folder) -> None:
        """DeepSpeed's partitioned optimiser state into `folder` (every process writes its part)."""
        self.engine.save_checkpoint(str(folder), tag="zero", save_latest=False)

    def load_state(self, model, folder) -> None:
        self.engine.load_checkpoint(str(folder), tag="zero", load_optimizer_states=True,
                                    load_lr_scheduler_states=False, load_module_strict=False)

    def local_numel(self, tensor: torch.Tensor) -> int:
        partition = getattr(tensor, "ds_tensor", None)
        return partition.numel() if partition is not None else tensor.numel()

    def trained_state_bytes(self, model, optimizer) -> int:
        """From DeepSpeed's live tensors: the weights (under ZeRO-3 the partition plus any weights held
        whole: small ones stay whole by DeepSpeed's persistence threshold), the float32 master
        partitions, gradient partitions of the same size, and the AdamW moments."""
        weights = 0
        for p in model.parameters():
            partition = getattr(p, "ds_tensor", None)
            weights += (partition.numel() * partition.element_size() if partition is not None else 0)
            weights += p.data.numel() * p.data.element_size()
        masters = (getattr(self.engine.optimizer, "single_partition_of_fp32_groups", None)  # ZeRO-1/2
                   or getattr(self.engine.optimizer, "fp32_partitioned_groups_flat", None) or [])  # ZeRO-3
        master_bytes = sum(t.numel() * t.element_size() for t in masters)
        return weights + 2 * master_bytes + self.optimizer_bytes(optimizer)

    def describe(self) -> dict:
        return {"processes": self.world.size, "fsdp": False, "zero_stage": self.stage}

    def check_in_sync(self, model) -> None:
        if self.stage != 3:
            super().check_in_sync(model)


def clear_stale_staging(folder) -> None:
    """Remove what a crash between writing DeepSpeed's state and moving it left behind."""
    for stale in folder.glob(".deepspeed_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
