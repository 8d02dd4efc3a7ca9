"""How the policy is held across processes, chosen once when the trainer starts (`choose_backend`).

The rest of grpokit asks the backend, never the model: methods call `backward` and `step`, the
sampler asks for `full_weights`, checkpoints ask for the states to write. Two backends live here,
for whole weights on every process; FSDP2 and DeepSpeed ZeRO, which split them, in `fsdp.py` and
`deepspeed.py`.

- `SingleProcess`: one process; every collective is a no-op.
- `DataParallel`: several processes, each with the whole model and its own share of a step's
  groups. Losses are normalised by the whole step, so gradients are *summed* across processes
  (one flattened all-reduce) before the optimiser step; every process then applies the same update
  and ends with the same weights, which `check_in_sync` verifies at the end of the run.
"""

from __future__ import annotations

import contextlib
import math

import torch

from grpokit.errors import GrpokitError
from grpokit.parallel.world import World


class Backend:
    """Whole weights on every process. Subclasses that split the model override what changes."""

    name = "single process"
    lockstep = False  # every process must make the same forward/backward calls (sharded weights)
    shards_weights = False  # each process holds different weights by design

    def __init__(self, world: World):
        self.world = world

    # ------------------------------------------------------------------ preparing
    def prepare_model(self, model):
        """The policy as this backend trains it (FSDP shards it in place)."""
        return model

    def prepare_reference(self, model):
        """The frozen KL reference, held so the training passes can call it."""
        return model

    def attach_optimizer(self, model, optimizer, *, max_grad_norm: float) -> None:
        """Hand model and optimiser to an engine that steps them itself (DeepSpeed)."""

    def collective(self, model) -> bool:
        """Whether a forward of `model` is a collective, so every process must make the same calls."""
        return False

    # ------------------------------------------------------------------ one update
    def backward(self, model, loss: torch.Tensor, *, last: bool) -> None:
        """`last`: the optimiser step's last micro-batch (where an engine reduces gradients)."""
        loss.backward()

    def reduce_gradients(self, model) -> None:
        """Make every process hold the step's summed gradients."""

    def step(self, model, optimizer, scheduler, max_grad_norm: float, loss_is_finite: bool = True
             ) -> tuple[float, bool]:
        """Reduce, clip, step, advance the schedule, clear gradients; returns (pre-clip gradient
        norm, stepped). A non-finite loss or gradient norm on any process skips the step on all:
        parameters, optimiser state and schedule stay exactly as they were (a NaN must never
        reach Adam's moment estimates)."""
        self.reduce_gradients(model)
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params]) if params else torch.tensor(0.0)
        if hasattr(grad_norm, "full_tensor"):  # a sharded model's norm is a DTensor, reduced over every shard
            grad_norm = grad_norm.full_tensor()
        if not (self.world.all_finite(0.0 if loss_is_finite else math.nan) and torch.isfinite(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            return grad_norm.item(), False
        if max_grad_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_grad_norm, grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm.item(), True

    # ------------------------------------------------------------------ whole weights
    @contextlib.contextmanager
    def full_weights(self, model):
        """A model with the whole weights whose forwards make no collectives (sampling, evaluation).
        Entering and leaving are collectives where the weights are split."""
        yield model

    @contextlib.contextmanager
    def exported(self, model):
        """A model whose `state_dict()` yields whole tensors, one at a time (for a weight push)."""
        yield model

    def full_model_state(self, model) -> dict | None:
        """The whole state dict on the main process (a collective where split); None: the model's own."""
        return None

    def save_model(self, model, path) -> None:
        """`save_pretrained` of the whole model by the main process; every process must call it."""
        state = self.full_model_state(model)
        if self.world.is_main:
            model.save_pretrained(path, state_dict=state)  # None: the model's own

    # ------------------------------------------------------------------ checkpoints
    def optimizer_state(self, model, optimizer) -> dict:
        """What a checkpoint stores of the optimiser."""
        return optimizer.state_dict()

    def load_optimizer_state(self, model, optimizer, read, source: str) -> None:
        """Load what `optimizer_state` saved; `read()` returns it."""
        state = read()
        if state.get("state") and isinstance(next(iter(state["state"])), str):  # keyed by name: FSDP wrote it
            raise GrpokitError(f"{source} was written by a sharded (FSDP) run; this run is without FSDP. Resume "
                               "with the same launch settings as the run that wrote it.")
        optimizer.load_state_dict(state)

    def save_state(self, model, folder) -> None:
        """Write the backend's own state (DeepSpeed's partitions) into `folder`; every process calls it."""

    def load_state(self, model, folder) -> None:
        """Read back what `save_state` wrote."""

    @property
    def has_own_state(self) -> bool:
        """Whether checkpoints carry a `deepspeed/` folder of the backend's own state."""
        return False

    # ------------------------------------------------------------------ accounting
    def local_numel(self, tensor: torch.Tensor) -> int:
        """Elements of `tensor` this process stores."""
        return tensor.numel()

    def parameter_bytes(self, model) -> int:
        """Bytes this process holds of `model`'s parameters (no gradients or optimiser state)."""
        return sum(self.local_numel(p) * p.element_size() for p in model.parameters())

    def trained_state_bytes(self, model, optimizer) -> int:
        """Bytes this process holds for the policy: weights, gradients and optimiser state."""
        weights = self.parameter_bytes(model)
        gradients = sum(self.local_numel(p) * p.element_size() for p in model.parameters() if p.requires_grad)
        return weights + gradients + self.optimizer_bytes(optimizer)

    def optimizer_bytes(self, optimizer) -> int:
        return sum(self.local_numel(t) * t.element_size() for s in optimizer.state.values()
                   for t in s.values() if torch.is_tensor(t))

    def describe(self) -> dict:
        """What the run summary says of the processes."""
        return {}

    def check_in_sync(self, model) -> None:
        """Processes holding whole weights must end with the same ones (they apply the same summed
        gradients); a difference means something process-local leaked into the update."""


class SingleProcess(Backend):
    """One process: nothing to reduce or gather."""


class DataParallel(Backend):
    """Several processes, whole weights on each, gradients summed by hand.

    By hand (one flattened all-reduce) rather than by wrapping the model in DistributedDataParallel:
    the shared-prompt forward runs the model twice per micro-batch, and LoRA, the reference view and
    the value model all call it in ways DDP's hooks do not expect."""

    name = "data parallel"

    def reduce_gradients(self, model) -> None:
        # Every process sums the same tensors, also one whose rows gave it no gradient.
        trainable = [p for p in model.parameters() if p.requires_grad]
        used = torch.tensor([float(p.grad is not None) for p in trainable])
        used_anywhere = self.world.sum_tensor(used) > 0
        for p in trainable:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.world.sum_gradients(trainable)
        for p, anywhere in zip(trainable, used_anywhere.tolist()):
            if not anywhere:  # no process used it: leave it exactly as one process would (no decay, no momentum)
                p.grad = None

    def describe(self) -> dict:
        return {"processes": self.world.size, "fsdp": False}

    def check_in_sync(self, model) -> None:
        checksum = sum(p.detach().double().abs().sum().item() for p in model.parameters() if p.requires_grad)
        sums = self.world.gather(checksum)
        if max(sums) - min(sums) > 1e-9 * max(1.0, abs(sums[0])):
            raise GrpokitError(f"the {self.world.size} processes ended training with different weights (parameter "
                               f"checksums {sums}); please report this with the config.")
