"""How the policy is spread over processes: one `Backend`, chosen once when the trainer starts.

    SingleProcess   one process
    DataParallel    torchrun / `accelerate launch` with several processes, whole weights on each
    FSDP            train.fsdp, or an accelerate FSDP config: weights, gradients, AdamW state sharded
    DeepSpeedZero   an accelerate DeepSpeed config (ZeRO 1/2/3)

Methods receive the backend and call `backward` and `step`; none imports from here.
"""

from __future__ import annotations

from grpokit.errors import GrpokitError
from grpokit.parallel.backend import Backend, DataParallel, SingleProcess
from grpokit.parallel.deepspeed import DeepSpeedZero, check_deepspeed_settings, stage_from_launcher
from grpokit.parallel.fsdp import FSDP, check_fsdp_settings, fsdp_from_launcher
from grpokit.parallel.world import World, world


def check_launch(config, shardable_methods: tuple[str, ...]) -> None:
    """Refuse launch settings grpokit cannot honour, before any model is loaded. `shardable_methods`:
    the methods that make the same model calls on every process (a trait of each method)."""
    deepspeed = stage_from_launcher() is not None
    fsdp = config.train.fsdp or fsdp_from_launcher()
    if deepspeed:
        check_deepspeed_settings()
        if fsdp:
            raise GrpokitError("train.fsdp and a DeepSpeed accelerate config both shard the model: choose one.")
    if not (fsdp or deepspeed):
        return
    name = "DeepSpeed ZeRO" if deepspeed else "FSDP"
    if config.train.method not in shardable_methods:
        raise GrpokitError(f"{name} (train.fsdp or an accelerate FSDP or DeepSpeed config) supports train.method "
                           f"{' or '.join(shardable_methods)}; {config.train.method!r} runs a different number of "
                           "model calls on each process. Run it with plain data parallel (torchrun or "
                           "configs/accelerate/multi_process.yaml).")
    if config.sampling.dynamic:
        raise GrpokitError(f"{name} with sampling.dynamic is not supported: each process may keep a different number "
                           "of groups, and under FSDP every process must make the same model calls. Run dynamic "
                           "sampling with plain data parallel, or switch it off.")
    if config.lora.enabled:
        raise GrpokitError(f"{name} with lora.enabled is not supported: LoRA already keeps the trained state small. "
                           "Run LoRA with plain data parallel (torchrun or configs/accelerate/multi_process.yaml).")
    if fsdp:
        check_fsdp_settings()


def choose_backend(config, w: World, shardable_methods: tuple[str, ...]) -> Backend:
    """The backend for this launch (checked first by `check_launch`)."""
    check_launch(config, shardable_methods)
    if w.size == 1:
        return SingleProcess(w)
    stage = stage_from_launcher()
    if stage is not None:
        return DeepSpeedZero(w, stage)
    if config.train.fsdp or fsdp_from_launcher():
        return FSDP(w)
    return DataParallel(w)


def single_process() -> SingleProcess:
    """The backend of a plain one-process call (tests, benchmarks, library use outside `train`)."""
    return SingleProcess(world())


__all__ = ["Backend", "DataParallel", "DeepSpeedZero", "FSDP", "SingleProcess", "World", "check_launch",
           "choose_backend", "single_process", "world"]
