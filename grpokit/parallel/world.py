"""This process's place in a job of several (`torchrun` or `accelerate launch`), and the few collectives
training needs.

Each process samples and scores whole groups for its share of a step's prompts, so a group's
advantages are computed where the group lives. The losses are normalised by the sizes of the whole
step (summed across processes, `World.sum`), each process back-propagates its own rows, and the
backend sums gradients before the optimiser step. The update is therefore the one a single process
would make on the whole batch with gradient accumulation. A single process is a world of size 1,
and every collective here is then a no-op.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import math

import torch


class World:
    """This process's place in the job: rank, size, device, and the few collectives training needs."""

    def __init__(self):
        from accelerate import PartialState  # reads torchrun's / accelerate launch's environment

        # cpu=True where there is no GPU: accelerate then forms a gloo group from torchrun's environment
        # (without it a CPU-only process reports a world of one).
        # The main process evaluates and writes checkpoints while the others wait in the next collective:
        # a long timeout, so a long evaluation is not taken for a hung process (NCCL's default is 10 min).
        self.state = PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(hours=2))
        self.rank, self.size = self.state.process_index, self.state.num_processes
        self.is_main = self.state.is_main_process
        self.device = self.state.device
        if self.size > 1:
            # Leave the process group before the interpreter tears down: a gloo peer that is destroyed
            # at exit while the other is still shutting down can abort the process (SIGABRT).
            atexit.register(_leave_process_group)

    def shard(self, rows: list) -> list:
        """This process's contiguous share of a step's rows (their number must divide evenly)."""
        n = len(rows) // self.size
        return rows[self.rank * n: (self.rank + 1) * n]

    def sum(self, value: float) -> float:
        if self.size == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.item()

    def sum_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if self.size == 1:
            return t
        t = t.to(self.device)
        torch.distributed.all_reduce(t)
        return t.cpu()

    def all_finite(self, value: float) -> bool:
        """True only if `value` is finite on every process (so all skip a step together)."""
        return self.sum(0.0 if math.isfinite(value) else 1.0) == 0.0

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Sum every parameter's gradient across processes, in one flattened all-reduce."""
        if self.size == 1 or not params:
            return
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order (on every process)."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        """Wait for every process, then leave the process group together. A process that exits
        while its peer is still using the group can be aborted by gloo ("terminate called")."""
        if self.size > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def _leave_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@functools.lru_cache(maxsize=1)
def world() -> World:
    return World()
