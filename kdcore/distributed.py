"""Data-parallel training under ``torchrun``: one process per device, gradients averaged across them.

``torchrun --nproc_per_node N -m kdcore.cli train ...`` (or ``torchrun ... $(which kd) train ...``) sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :func:`init` then joins the process group (NCCL when the
run's device is CUDA, gloo when it is the CPU, also on a machine with GPUs). In a run:

* each process takes its own shard of every epoch (``DistributedSampler``, shuffled by the run seed and
  the epoch), so an epoch is shared out, not repeated; ``data.batch_size`` is per process;
* only the model being trained is wrapped in ``DistributedDataParallel``; a frozen teacher is not (it
  has no gradients to average);
* every process validates on the whole validation set, so all take the same best-checkpoint and stop
  decisions; only rank 0 writes the run directory (config, metrics, checkpoints, report) and prints.

Learning rate: the effective batch is ``world_size * data.batch_size``. Averaged gradients keep the
per-step scale of one process, so with N processes an epoch takes N times fewer steps. The usual rule
(Goyal et al., 2017) raises the lr linearly with N, with a short warm-up (an ``lr_schedule``) for large
N; kdcore leaves ``lr`` as configured, so a run keeps its meaning when N changes.

Not yet under ``torchrun`` (refused with a message): ``--resume``, ``train.teacher_cache``, feature
hints and learnable schedules (their parameters live outside the wrapped model).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank, the number of processes, and its device index."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(requested: torch.device) -> Distributed:
    """Join the process group when launched by ``torchrun`` with more than one process: NCCL when the
    run's device is CUDA (one GPU per process on a node, checked here), gloo when it is the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if requested.type == "cuda" and local_rank >= torch.cuda.device_count():
        raise RuntimeError(
            f"torchrun started process LOCAL_RANK={local_rank} but this node has "
            f"{torch.cuda.device_count()} CUDA device(s): start at most that many processes per node "
            "(--nproc_per_node), or train on CPUs with --device cpu"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if requested.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank)


def broadcast(value: Any, where: Distributed) -> Any:
    """Rank 0's ``value`` on every process (e.g. the run directory it created)."""
    if not where.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def device(requested: torch.device, where: Distributed) -> torch.device:
    """One CUDA device per process (``cuda:LOCAL_RANK``); CPUs are shared."""
    if where.active and requested.type == "cuda":
        torch.cuda.set_device(where.local_rank)
        return torch.device("cuda", where.local_rank)
    return requested


def wrap(model: torch.nn.Module, where: Distributed) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed, else unchanged."""
    if not where.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [where.local_rank] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (or the model itself)."""
    return getattr(model, "module", model)


def sampler(dataset: Any, where: Distributed, seed: int) -> Any:
    """This process's shard of ``dataset``, reshuffled every epoch from ``seed``."""
    from torch.utils.data.distributed import DistributedSampler

    return DistributedSampler(
        dataset, num_replicas=where.world_size, rank=where.rank, shuffle=True, seed=seed
    )


def barrier(where: Distributed) -> None:
    """Wait for every process (a no-op outside a distributed run)."""
    if where.active:
        dist.barrier()
