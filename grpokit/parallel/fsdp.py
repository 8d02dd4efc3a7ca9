"""The FSDP2 backend: each process holds 1/N of the weights, gradients and AdamW state, for
training state that does not fit one device.

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
  `reduce_gradients` multiplies them by the number of processes to get the sum (gloo has no
  pre-multiplied reduce that would do it inside the reduce-scatter).
- Saving gathers the full state dict (a collective); the main process writes the same files as a
  single-process run, so a sharded run's models load with `from_pretrained` like any other.
"""

from __future__ import annotations

import contextlib
import os

import torch

from grpokit.errors import GrpokitError
from grpokit.parallel.backend import Backend


def fsdp_from_launcher() -> bool:
    """True when `accelerate launch` was given an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_fsdp_settings() -> None:
    """Refuse accelerate FSDP settings grpokit cannot honour."""
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


def _units(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class FSDP(Backend):
    """Policy and reference sharded with `fully_shard`; see the module docstring for what changes."""

    name = "fsdp"
    lockstep = True
    shards_weights = True

    def prepare_model(self, model):
        return shard_model(model, self.world.size)

    def prepare_reference(self, model):
        # sharded too: the training passes call it the same number of times on every process
        return shard_model(model, self.world.size)

    def collective(self, model) -> bool:
        return is_sharded(model)

    def reduce_gradients(self, model) -> None:
        """FSDP's reduce-scatter averaged the gradients over processes; grpokit's losses want their sum."""
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(self.world.size)

    @contextlib.contextmanager
    def full_weights(self, model):
        """The model itself, unsharded once, so the loop inside runs without collectives; the shards
        come back afterwards. Re-entrant."""
        if "_grpokit_gathered" in model.__dict__ or not is_sharded(model):  # inside already, or whole
            yield model
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

    def full_model_state(self, model) -> dict | None:
        if not is_sharded(model):
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def optimizer_state(self, model, optimizer) -> dict:
        """Gathered whole and keyed by parameter name, so it loads back into any number of processes."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                   cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, read, source: str) -> None:
        """Only the main process reads the file, and each process receives its shards from it (the
        whole AdamW state in every process's memory at once would be twice the model's size)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        state = read() if self.world.is_main else {}
        if self.world.is_main and state.get("state") and not isinstance(next(iter(state["state"])), str):
            raise GrpokitError(f"{source} was written by an unsharded run; this run is with FSDP. Resume with the "
                               "same launch settings as the run that wrote it.")
        set_optimizer_state_dict(model, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))

    def local_numel(self, tensor: torch.Tensor) -> int:
        return tensor.to_local().numel() if hasattr(tensor, "to_local") else tensor.numel()

    def describe(self) -> dict:
        return {"processes": self.world.size, "fsdp": True}
