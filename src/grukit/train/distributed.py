"""Multi-process data-parallel training with torch.distributed (gloo on CPU, launched by torchrun).

Launch a script that calls ``fit(..., distributed=True)`` with::

    torchrun --nproc_per_node=2 train.py

Every process builds the same model; DistributedDataParallel broadcasts rank 0's weights at the
start and averages gradients. The batches are *global*: epoch e's order is the same in every
process (same seed), and process r trains on the disjoint slice ``batch[r::world_size]`` of each
global batch. Each process scales its loss so that the averaged gradient is exactly the gradient
of the mean loss over the global batch, which makes the gradients and final weights equal to a
single-process run with the same ``batch_size`` (within float summation order). Logs (loss,
metrics) are gathered so that every process sees the same numbers and callbacks such as
EarlyStopping decide alike; only rank 0 prints and writes files.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist

from ..errors import ConfigError


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def ensure_process_group() -> tuple[int, int]:
    """Join the process group torchrun prepared (gloo backend); returns (rank, world_size)."""
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; train without distributed=True")
    if not dist.is_initialized():
        if not launched_by_torchrun():
            raise ConfigError("fit(distributed=True) must run under torchrun, e.g. "
                              "`torchrun --nproc_per_node=2 train.py` (RANK, WORLD_SIZE, MASTER_ADDR and "
                              "MASTER_PORT are not set)")
        dist.init_process_group(backend="gloo")
        # A process that exits with the group alive can abort in gloo's threads during interpreter
        # teardown ("terminate called without an active exception", pytorch issue 190489): this
        # test suite's two-process run did so about once in ten. Leave the group while Python is alive.
        atexit.register(shutdown)
        # each process gets its share of the cores: no oversubscription between processes
        local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def broadcast_seed(seed: int) -> int:
    """Every process uses rank 0's seed, so all see the same batch order."""
    holder = [seed]
    dist.broadcast_object_list(holder, src=0)
    return int(holder[0])


def local_slice(index: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's disjoint share of one global batch."""
    return index[rank::world_size]


def sum_across(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def gather_arrays(arrays: list) -> list:
    """All processes' lists concatenated in rank order (for epoch metrics)."""
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, arrays)
    return [item for part in gathered for item in part]


class _WithForward(torch.nn.Module):
    """``model`` whose forward is ``forward(model, inputs)``: DDP must run a custom forward (a task's
    padding trimming, say) inside its own forward, or it would not average the gradients; and the
    custom forward must see the model itself, not the DDP wrapper."""

    def __init__(self, model: torch.nn.Module, forward) -> None:
        super().__init__()
        self.model = model
        self.custom_forward = forward

    def forward(self, *inputs):
        return self.custom_forward(self.model, inputs)


def wrap(model: torch.nn.Module, forward=None) -> torch.nn.parallel.DistributedDataParallel:
    """DDP around ``model``; with ``forward(model, xs)``, calling the result runs that forward
    under DDP (pass the result to ``forward`` as ``forward_through_wrapper`` does in the loop)."""
    inner = model if forward is None else _WithForward(model, forward)
    return torch.nn.parallel.DistributedDataParallel(inner)


def shutdown() -> None:
    """Leave the process group. Runs at exit by itself when grukit joined the group
    (:func:`ensure_process_group`); call it earlier to free the connections sooner."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["launched_by_torchrun", "ensure_process_group", "is_main_process", "broadcast_seed",
           "local_slice", "sum_across", "gather_arrays", "wrap", "shutdown"]
