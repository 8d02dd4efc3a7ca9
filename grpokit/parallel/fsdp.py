"""Models split across processes, for training state that does not fit one device: PyTorch FSDP2
(`fully_shard`, here) and DeepSpeed ZeRO (`grpokit.zero`). This module is what the rest of grpokit
calls; it dispatches to whichever holds the model (`in_lockstep`, `backward`, `full_weights`, saving).

FSDP: each process holds 1/N of the weights, gradients and AdamW state.

It is switched on by `accelerate launch --config_file configs/accelerate/fsdp.yaml` (accelerate's
FSDP plugin is read from the environment it sets) or by `train.fsdp: true` under `torchrun`.
grpokit applies `fully_shard` itself, with accelerate's settings, rather than through
`Accelerator.prepare`: accelerate enables FSDP only on accelerators, and this way the same code
runs (and is tested) on CPU processes with the gloo backend.

What changes under FSDP, and why:
- Every forward and backward of the sharded model is a collective: all processes must make the same
  calls in the same order. The training passes do (every process holds the same number of rows and
  micro-batches); sampling and evaluation do not (each process stops decoding when its own rows
  end), so they run on gathered weights: `full_weights` unshards once, the loop runs without
  collectives, and the shards come back afterwards.
- FSDP averages gradients across processes; grpokit's losses are normalised by the whole step, so
  `optimizer_step` multiplies them by the number of processes to get the sum (gloo has no
  pre-multiplied reduce that would do it inside the reduce-scatter).
- Saving gathers the full state dict (a collective); the main process writes the same files as a
  single-process run, so a sharded run's models load with `from_pretrained` like any other.
"""

from __future__ import annotations

import contextlib
import os

import torch

from grpokit.errors import GrpokitError

LOCKSTEP_METHODS = ("grpo", "rloo")  # methods whose every process makes the same forward/backward calls


def fsdp_from_launcher() -> bool:
    """True when `accelerate launch` was given an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_launch(config) -> None:
    """Refuse launch settings grpokit cannot honour, before any model is loaded."""
    from grpokit import zero

    deepspeed = zero.stage_from_launcher() is not None
    if deepspeed:
        zero.check_launch()
        if config.train.fsdp or fsdp_from_launcher():
            raise GrpokitError("train.fsdp and a DeepSpeed accelerate config both shard the model: choose one.")
    if not (config.train.fsdp or fsdp_from_launcher() or deepspeed):
        return
    name = "DeepSpeed ZeRO" if deepspeed else "FSDP"
    if config.train.method not in LOCKSTEP_METHODS:
        raise GrpokitError(f"{name} (train.fsdp or an accelerate FSDP or DeepSpeed config) supports train.method "
                           f"{' or '.join(LOCKSTEP_METHODS)}; {config.train.method!r} runs a different number of model "
                           "calls on each process. Run it with plain data parallel (torchrun or "
                           "configs/accelerate/multi_process.yaml).")
    if config.sampling.dynamic:
        raise GrpokitError(f"{name} with sampling.dynamic is not supported: each process may keep a different number "
                           "of groups, and under FSDP every process must make the same model calls. Run dynamic "
                           "sampling with plain data parallel, or switch it off.")
    if config.lora.enabled:
        raise GrpokitError(f"{name} with lora.enabled is not supported: LoRA already keeps the trained state small. "
                           "Run LoRA with plain data parallel (torchrun or configs/accelerate/multi_process.yaml).")
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() == "true":
        raise GrpokitError("the accelerate config sets fsdp_activation_checkpointing: grpokit's shared prompt "
                           "forward reads the prompt from the KV cache, which checkpointed layers do not keep. "
                           "Set it to false.")
    if os.environ.get("FSDP_VERSION", "2") != "2":
        raise GrpokitError(f"the accelerate config asks for fsdp_version {os.environ['FSDP_VERSION']}; grpokit "
                           "shards with FSDP2 (fully_shard): set fsdp_version: 2.")


def fsdp_plugin():
    """accelerate's FSDP settings: from the launcher's environment, or its defaults (full sharding)."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2)


def _layer_classes(model, plugin) -> set[str]:
    names = plugin.transformer_cls_names_to_wrap or getattr(model, "_no_split_modules", None) or []
    found = {type(m).__name__ for m in model.modules()} & set(names)
    if not found:
        raise GrpokitError(f"FSDP: none of the layer classes {sorted(names) or '(none given)'} is in the model "
                           f"({type(model).__name__}); set fsdp_transformer_layer_cls_to_wrap in the accelerate "
                           "config to the model's decoder layer class.")
    return found


def shard_model(model, world_size: int):
    """Shard the model in place: each decoder layer is one FSDP unit, the rest (embeddings, head) the root."""
    if world_size == 1:
        return model  # nothing to shard across
    from torch.distributed.fsdp import fully_shard

    plugin = fsdp_plugin()
    kwargs = {"reshard_after_forward": plugin.reshard_after_forward}
    if plugin.cpu_offload is not None and type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy":
        kwargs["offload_policy"] = plugin.cpu_offload
    if plugin.mixed_precision_policy is not None:
        kwargs["mp_policy"] = plugin.mixed_precision_policy
    classes = _layer_classes(model, plugin)
    for module in list(model.modules()):
        if type(module).__name__ in classes:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    model._grpokit_reshard_after_forward = plugin.reshard_after_forward  # restored after `full_weights`
    return model


def is_sharded(model) -> bool:
    """Sharded by FSDP (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def in_lockstep(model) -> bool:
    """FSDP or a DeepSpeed engine: every process must make the same forward and backward calls."""
    from grpokit import zero

    return is_sharded(model) or zero.engine_of(model) is not None


def backward(model, loss, *, last: bool) -> None:
    """loss.backward(), through DeepSpeed's engine where it holds the model (`last`: the optimiser
    step's last micro-batch, where gradients are reduced)."""
    from grpokit import zero

    if zero.engine_of(model) is not None:
        zero.backward(model, loss, last=last)
    else:
        loss.backward()


def _units(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def full_weights(model):
    """Yields a model holding the whole weights whose forwards make no collectives, for sampling and
    evaluation; entering and leaving are collectives. FSDP: the model itself, unsharded. DeepSpeed
    ZeRO-3: a plain copy that shares the gathered tensors (its engine's forward hooks would still
    synchronise processes). Re-entrant; a no-op for unsharded models."""
    from grpokit import zero

    if "_grpokit_gathered" in model.__dict__:  # inside already
        yield model.__dict__["_grpokit_gathered"]
        return
    if not (is_sharded(model) or zero.is_zero3(model)):
        yield model
        return
    if zero.is_zero3(model):
        with zero.gathered(model):
            model.__dict__["_grpokit_gathered"] = plain = zero.plain_copy(model)
            try:
                yield plain
            finally:
                del model.__dict__["_grpokit_gathered"]
        return
    units = _units(model)
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    model.__dict__["_grpokit_gathered"] = model
    try:
        yield model
    finally:
        del model.__dict__["_grpokit_gathered"]
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(model._grpokit_reshard_after_forward, recurse=False)


def sum_sharded_gradients(model, world_size: int) -> None:
    """FSDP's reduce-scatter averaged the gradients over processes; grpokit's losses want their sum."""
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(world_size)


def local_numel(p: torch.Tensor) -> int:
    """Elements this process stores: a shard for FSDP parameters, the whole tensor otherwise."""
    if hasattr(p, "to_local"):  # FSDP
        return p.to_local().numel()
    if getattr(p, "ds_tensor", None) is not None:  # DeepSpeed ZeRO-3
        return p.ds_tensor.numel()
    return p.numel()


def full_model_state(model) -> dict | None:
    """The full state dict on the CPU of the main process (None elsewhere); a collective when sharded.
    None where every process holds whole weights (`model.state_dict()` then is the full one)."""
    from grpokit import zero

    if zero.is_zero3(model):
        return zero.full_state(model)
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(model, optimizer) -> dict:
    """What checkpoints store of the optimiser: its state dict, gathered whole when the model is sharded
    (keyed by parameter name then, so it loads back into any number of processes). Under DeepSpeed the
    optimiser state is DeepSpeed's own checkpoint (`zero.save_state`), not this."""
    from grpokit import zero

    if zero.engine_of(model) is not None:
        return {}
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                               cpu_offload=True))


def load_optimizer_state(model, optimizer, read, source: str) -> None:
    """Load what `optimizer_state` saved; `read()` returns it. Sharded: only the main process reads the
    file, and each process receives its shards from it (the whole AdamW state in every process's
    memory at once would be twice the model's size per process)."""
    from torch.distributed import get_rank

    from grpokit import zero

    if zero.engine_of(model) is not None:
        return  # loaded from DeepSpeed's own checkpoint (`zero.load_state`)
    sharded = is_sharded(model)
    reads = not sharded or get_rank() == 0
    state = read() if reads else {}
    if reads:
        by_name = bool(state.get("state")) and isinstance(next(iter(state["state"])), str)
        if by_name != sharded and state.get("state"):
            saved, now = ("a sharded (FSDP)", "without FSDP") if by_name else ("an unsharded", "with FSDP")
            raise GrpokitError(f"{source} was written by {saved} run; this run is {now}. Resume with the same "
                               "launch settings as the run that wrote it.")
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def save_model(model, path, *, is_main: bool) -> None:
    """`save_pretrained` of the whole model by the main process; every process must call it."""
    state = full_model_state(model)
    if is_main:
        model.save_pretrained(path, state_dict=state)  # None: the model's own
