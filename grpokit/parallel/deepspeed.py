"""DeepSpeed ZeRO through `accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml`.

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

from grpokit.errors import GrpokitError


def stage_from_launcher() -> int | None:
    """The ZeRO stage `accelerate launch` was given, or None without a DeepSpeed config."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))


def check_launch() -> None:
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


def attach(model, optimizer, *, max_grad_norm: float, world_size: int):
    """Hand the model and its optimiser to DeepSpeed; the engine is kept on the model."""
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": 1,  # grpokit forms its own micro-batches; these only size DeepSpeed's
        "gradient_accumulation_steps": 1,     # bookkeeping, and the accumulation boundary is set per micro-batch
        "gradient_clipping": max_grad_norm,
        "zero_optimization": {"stage": stage_from_launcher()},
        "zero_allow_untested_optimizer": True,  # grpokit's torch AdamW, not DeepSpeed's fused one
        "steps_per_print": 10**9,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    # Kept in the instance dict: assigned as an attribute, nn.Module would register the engine (which
    # holds the model) as a submodule of the model, a cycle.
    model.__dict__["_grpokit_engine"] = engine
    model.__dict__["_grpokit_world_size"] = world_size
    return engine


def engine_of(model):
    return getattr(model, "_grpokit_engine", None)


def is_zero3(model) -> bool:
    engine = engine_of(model)
    return engine is not None and engine.zero_optimization_stage() == 3


@contextlib.contextmanager
def gathered(model):
    """ZeRO-3: every process holds the whole weights inside (entering and leaving are collectives)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield


def plain_copy(model):
    """Inside `gathered`: the same architecture without DeepSpeed's hooks, its parameters and buffers
    the gathered tensors themselves (built on the meta device, then assigned: no second copy)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config)
    plain.load_state_dict(model.state_dict(), assign=True)
    for name, buffer in model.named_buffers():  # non-persistent ones (rotary frequencies) are not in state_dict
        owner, _, attribute = name.rpartition(".")
        plain.get_submodule(owner)._buffers[attribute] = buffer
    plain.generation_config = model.generation_config
    return plain.eval().requires_grad_(False)


def backward(model, loss, *, last: bool) -> None:
    engine = engine_of(model)
    # What `engine.forward` does first, which grpokit's direct model calls skip: without it ZeRO-3
    # does not count micro-batches, and each one's gradients replace the previous ones'.
    if hasattr(engine.optimizer, "clear_backward_seen_flag"):
        engine.optimizer.clear_backward_seen_flag()
    engine.set_gradient_accumulation_boundary(last)  # reduce the gradients once, after the last micro-batch
    engine.backward(loss * model._grpokit_world_size)  # DeepSpeed averages over processes; the losses want a sum


def step(model) -> tuple[float, bool]:
    """(gradient norm before clipping, whether the step went through)."""
    engine = engine_of(model)
    engine.step()
    stepped = not getattr(engine.optimizer, "overflow", False)
    norm = engine.get_global_grad_norm()
    return (float(norm) if norm is not None else float("nan")), stepped


def state_bytes(model) -> dict[str, int]:
    """Bytes DeepSpeed holds for the model in this process, from its live tensors: the weights (under
    ZeRO-3 the partition plus any weights held whole: small ones stay whole by DeepSpeed's persistence
    threshold), the float32 master partitions, and gradient partitions of the same size."""
    engine = engine_of(model)
    weights = 0
    for p in model.parameters():
        partition = getattr(p, "ds_tensor", None)
        weights += (partition.numel() * partition.element_size() if partition is not None else 0)
        weights += p.data.numel() * p.data.element_size()
    masters = (getattr(engine.optimizer, "single_partition_of_fp32_groups", None)  # ZeRO-1/2
               or getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or [])  # ZeRO-3
    master_bytes = sum(t.numel() * t.element_size() for t in masters)
    return {"weights": weights, "masters": master_bytes, "gradients": master_bytes}


def full_state(model) -> dict | None:
    """ZeRO-3: the whole state dict on the main process's CPU (a collective); None when weights are whole."""
    if not is_zero3(model):
        return None
    import torch.distributed as dist

    with gathered(model):
        if dist.get_rank() != 0:
            return {}
        return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def save_state(model, folder) -> None:
    """DeepSpeed's partitioned optimiser state into `folder` (every process writes its part)."""
    engine_of(model).save_checkpoint(str(folder), tag="zero", save_latest=False)


def load_state(model, folder) -> None:
    engine_of(model).load_checkpoint(str(folder), tag="zero", load_optimizer_states=True,
                                     load_lr_scheduler_states=False, load_module_strict=False)
