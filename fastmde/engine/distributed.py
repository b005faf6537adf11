"""Process-group set-up for DDP and the samplers that make data order resumable.

``torchrun --nproc_per_node N -m fastmde train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
:func:`setup` then joins the group (nccl on CUDA, gloo on CPU). A single process needs no
group at all. Only rank 0 writes logs and checkpoints (:attr:`DistInfo.is_main`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> DistInfo:
    """Join the process group described by the torchrun environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    initialised_here = False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        initialised_here = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    initialised_here=initialised_here)


def teardown(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo, device) -> bool:
    """Rank 0's decision (e.g. "time is up") for every rank, so all stop at the same step."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def all_reduce_mean(value: float, info: DistInfo, device) -> float:
    if not info.distributed:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` (shuffled by ``seed + epoch``) that can start mid-epoch.

    The order of an epoch depends only on (seed, epoch, rank, world size), so a resumed run
    sees exactly the batches the interrupted one would have; ``set_range(start, stop)`` yields
    only samples ``start`` to ``stop`` (exclusive; None = the end) of this rank's order for the
    current epoch: the trainer skips what an interrupted epoch already trained on, and stops
    where the epoch's full batches end. Works with one process too (rank 0 of 1).
    """

    def __init__(self, dataset, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.start, self.stop = 0, None

    def set_range(self, start: int, stop: int | None = None) -> None:
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"sampler range must have 0 <= start <= stop, got {start}, {stop}")
        self.start, self.stop = int(start), None if stop is None else int(stop)

    def set_start(self, start: int) -> None:
        self.set_range(start, self.stop)

    def __iter__(self):
        return iter(list(super().__iter__())[self.start:self.stop])

    def __len__(self) -> int:
        stop = self.num_samples if self.stop is None else min(self.stop, self.num_samples)
        return max(0, stop - self.start)


class ShardSampler(Sampler):
    """Evaluation order: rank r takes items r, r + world, ...; no padding, so metrics reduced
    across ranks count every item exactly once."""

    def __init__(self, dataset, *, num_replicas: int = 1, rank: int = 0):
        self.indices = list(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
