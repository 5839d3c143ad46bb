"""Data-parallel training under ``torchrun``: gloo on CPUs, NCCL on GPUs; one process without it.

Each process drives one device. On CUDA, local rank r (the r-th process on its node) drives ``cuda:r``, and
``torch.cuda.set_device`` makes that the process's current device, so bare ``"cuda"`` tensors, NCCL
collectives and barriers land there too; without it every rank would load onto ``cuda:0``.
"""

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from musicrl.errors import InvalidRequest


logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Topology:
    """This process's place: ``rank`` of ``world_size`` processes, ``local_rank`` on its node, its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that logs, plots and saves)."""
        return self.rank == 0


def resolve_device(requested: str, env: Mapping[str, str], cuda_available: bool, device_count: int) -> str:
    """The device this process drives, from the configured one and the ``torchrun`` environment.

    Args:
        requested: The run's device (``cpu``, ``cuda``, ``cuda:N``, ...).
        env: The process environment (``WORLD_SIZE``, ``LOCAL_RANK``).
        cuda_available: Whether CUDA works here; device_count: how many GPUs this process sees.

    Returns:
        ``requested`` unchanged for non-CUDA devices; otherwise ``cuda:{LOCAL_RANK}`` under ``torchrun`` with
        more than one process, and ``cuda:N`` (``N`` from ``requested``, default 0) for a single process.

    Raises:
        InvalidRequest: CUDA was asked for but is absent, the index is malformed, or the node has fewer GPUs
            than the index needs.
    """
    kind, _, index = requested.partition(":")
    if kind != "cuda":
        return requested
    if not cuda_available or device_count < 1:
        raise InvalidRequest(f"device {requested!r} was asked for but CUDA is not available; use device: cpu")
    if index and not index.isdigit():
        raise InvalidRequest(f"device {requested!r} is malformed; use cuda or cuda:N")
    if world_size(env) > 1:
        chosen = int(env.get("LOCAL_RANK", "0"))
        if index and int(index) != chosen:
            # one config serves every rank, so the local rank, not the config, picks each process's GPU
            logger.warning("device %s ignored under torchrun: local rank %d drives cuda:%d", requested, chosen, chosen)
    else:
        chosen = int(index) if index else 0
    if chosen >= device_count:
        raise InvalidRequest(
            f"cuda:{chosen} is needed but this process sees {device_count} GPU(s); start at most {device_count} "
            f"processes per node (torchrun --nproc-per-node {device_count})"
        )
    return f"cuda:{chosen}"


def world_size(env: Mapping[str, str]) -> int:
    """The number of processes ``torchrun`` started (1 without it)."""
    return int(env.get("WORLD_SIZE", "1"))


def backend_for(device: str) -> str:
    """The process-group backend for a resolved device: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.startswith("cuda") else "gloo"


def init_distributed(device: str) -> Topology:
    """Pick this process's device, then join the process group ``torchrun`` describes, or run alone.

    Args:
        device: The run's configured device.

    Returns:
        This process's topology; ``device`` is the resolved one to load models onto.

    Raises:
        InvalidRequest: See :func:`resolve_device`.
    """
    resolved = resolve_device(device, os.environ, torch.cuda.is_available(), torch.cuda.device_count())
    if resolved.startswith("cuda"):
        torch.cuda.set_device(resolved)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if world_size(os.environ) == 1:
            return Topology(device=resolved)
        device_id = torch.device(resolved) if resolved.startswith("cuda") else None  # binds NCCL to this GPU
        dist.init_process_group(backend=backend_for(resolved), device_id=device_id)
    return Topology(dist.get_rank(), dist.get_world_size(), local_rank, resolved)


def close_distributed() -> None:
    """Wait for every process, then leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (a no-op when there is no process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
