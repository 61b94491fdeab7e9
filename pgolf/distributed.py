"""Process-group setup shared by every verb.

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK). Without it we run as a world of one and never create a process
group, so every call below degenerates to a no-op: tests and laptops exercise
the same code path as 8 GPUs. Backend: NCCL on CUDA, gloo on CPU.

Virtual ranks (the static TTT schedule): N virtual ranks run on the real
ranks in contiguous blocks, and every reduction over them is `gather_ranks`
followed by `ordered_sum`, so the additions happen in virtual-rank order
whatever the number of processes; an all-reduce would add in an order that
depends on the process count (and on the collective's algorithm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pgolf.device import default_device
from pgolf.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


_STATE: Dist | None = None


def init_distributed(device: str | None = None) -> Dist:
    """Start (once) the process group torchrun asked for and pick the device."""
    global _STATE
    if _STATE is not None:
        return _STATE
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = default_device().type
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # Device plumbing, not policy: NCCL only talks to CUDA devices, gloo to CPU (emulation included).
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    _STATE = Dist(rank, world_size, local_rank, dev)
    return _STATE


def get_dist() -> Dist:
    return _STATE if _STATE is not None else init_distributed()


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work before reading a clock (device plumbing: CPU work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cleanup() -> None:
    global _STATE
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _STATE = None


def is_main() -> bool:
    return get_dist().is_main


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM across ranks (no-op on one process); returns `t`."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def virtual_ranks_here(num_virtual: int) -> range:
    """The block of virtual ranks this process runs: rank r of R runs [r*N/R, (r+1)*N/R)."""
    d = get_dist()
    if num_virtual % d.world_size:
        raise ConfigError(f"ttt.virtual_ranks={num_virtual} is not a multiple of the {d.world_size} processes")
    k = num_virtual // d.world_size
    return range(d.rank * k, (d.rank + 1) * k)


def gather_ranks(block: torch.Tensor) -> torch.Tensor:
    """Every rank's `block` (same shape everywhere) concatenated along dim 0 in rank order; `block` on one process."""
    if not dist.is_initialized():
        return block
    parts = [torch.empty_like(block) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, block.contiguous())
    return torch.cat(parts)


def ordered_sum(rows: torch.Tensor) -> torch.Tensor:
    """rows[0] + rows[1] + ... added left to right: one fixed order, so the bits do not depend on who held which row."""
    return sum(rows[1:], rows[0])
