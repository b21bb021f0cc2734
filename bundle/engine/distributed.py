"""Multi-GPU (DDP) helpers for ``configs/multi_gpu_train.json``.

The bundle trains with ``torchrun --nproc_per_node=N -m monai.bundle run --config_file
"['configs/train.json','configs/multi_gpu_train.json']"``. One process per device:

- :func:`init_distributed` starts the default process group (NCCL on CUDA, gloo on the CPU), and
  :func:`local_device` gives each rank its device (``cuda:LOCAL_RANK`` or the CPU); ranks other than 0 log
  warnings only;
- the student is wrapped in ``DistributedDataParallel`` (gradients all-reduced, parameters and BatchNorm
  buffers broadcast from rank 0 before every forward pass); the EMA teacher copies the unwrapped module;
- the labelled and unlabelled loaders use :class:`bundle.data.samplers.RepeatedShuffleSampler`, a
  ``DistributedSampler`` that reads the rank and world size of the initialised group: each rank draws its own
  share of one common seeded permutation (MONAI's workflow calls ``set_epoch`` on the labelled sampler every
  engine epoch; the unlabelled stream calls it every pass);
- :class:`bundle.handlers.broadcast.BroadcastBuffers` keeps the teacher identical on every rank: the EMA of the
  parameters is already identical (DDP keeps the student's parameters equal), but the student's BatchNorm running
  statistics are updated by each rank's own batch, so the teacher's buffers are broadcast from rank 0 after every
  step (and the student's before every validation);
- validation runs on every rank over its share of the validation set (:func:`validation_sampler`) with the
  unwrapped student; MONAI's metrics gather the per-case values of all ranks, so every rank sees the same
  metric and the same best checkpoint; only rank 0 writes checkpoints, ``model.pt``, the loss log and
  TensorBoard (:func:`rank_handlers`).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence, Sized
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "init_distributed",
    "destroy_distributed",
    "local_device",
    "rank",
    "world_size",
    "is_rank0",
    "rank_handlers",
    "validation_sampler",
    "unwrap_model",
]

#: handler classes that only rank 0 runs (by class name, so that MONAI's and Ignite's variants both match)
RANK0_ONLY_HANDLERS = ("TensorBoardStatsHandler", "StatsHandler", "MLFlowHandler")
#: loggers that ranks other than 0 restrict to warnings
QUIET_LOGGERS = ("plgdf", "ignite", "monai")


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> bool:
    """Initialise the default process group from the ``torchrun`` environment (idempotent).

    Args:
        backend: ``"nccl"``, ``"gloo"`` or ``None`` for NCCL when CUDA is available, else gloo. Defaults to None.
        timeout_minutes: timeout of a collective operation. Defaults to 30.

    Returns:
        True (so that it can be used in a config expression list).

    Raises:
        RuntimeError: not started by ``torchrun`` (no ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``).
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of PyTorch")
    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"multi_gpu_train.json must be started by torchrun (missing environment variables {missing}), "
                "e.g. torchrun --standalone --nproc_per_node=2 -m monai.bundle run --config_file "
                "\"['configs/train.json','configs/multi_gpu_train.json']\""
            )
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_device())
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=float(timeout_minutes)))
    if rank() > 0:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    return True


def destroy_distributed() -> bool:
    """Destroy the default process group if there is one, after a barrier (so that no rank tears its group down
    while another still has work in flight: gloo aborted a rank at exit, "terminate called without an active
    exception", once in a full test-suite run of the two-rank CPU test; it passed 11 of 11 times alone). Returns
    True."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return True


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Rank of this process: in the default group once it exists, else the ``RANK`` that ``torchrun`` sets (0 when
    not distributed). The one rank helper of the bundle: only rank 0 writes files."""
    return dist.get_rank() if _initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else 1


def is_rank0() -> bool:
    """Whether this process is rank 0 (True when not distributed)."""
    return rank() == 0


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain network inside ``DistributedDataParallel`` / ``DataParallel`` (``.module``) or ``torch.compile``
    (``._orig_mod``) wrappers; ``model`` itself otherwise."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def rank_handlers(handlers: Sequence[Any], rank0_only: Sequence[str] = RANK0_ONLY_HANDLERS) -> list[Any]:
    """The trainer handlers of this rank: all of them on rank 0; on the other ranks, those whose class name is not
    in ``rank0_only`` (logging). A dropped handler's TensorBoard writer is closed.

    Checkpoint and loss-log handlers stay on every rank: they write on rank 0 only by themselves, and every rank
    must restore the same checkpoint on resume. Validation stays on every rank (see :func:`validation_sampler`).

    Args:
        handlers: the instantiated ``train#handlers``.
        rank0_only: class names kept on rank 0 only. Defaults to :data:`RANK0_ONLY_HANDLERS`.
    """
    if is_rank0():
        return list(handlers)
    kept = []
    for h in handlers:
        if type(h).__name__ in rank0_only:
            writer = getattr(h, "_writer", None)
            if writer is not None and hasattr(writer, "close"):
                writer.close()
            continue
        kept.append(h)
    return kept


def validation_sampler(dataset: Sized) -> torch.utils.data.Sampler | None:
    """This rank's share of the validation set, or ``None`` when not distributed or the set is empty.

    Every rank validates its share with the unwrapped student, and MONAI's metrics gather the per-case values
    of all ranks, so the metric is that of the whole set. With at least as many cases as ranks the shares do not
    overlap (``even_divisible=False``); with fewer cases, some cases are repeated so that every rank has one
    (MONAI's metrics must run on every rank). An empty set is skipped by every rank alike.
    """
    from monai.data import DistributedSampler

    world = world_size()
    if world == 1 or len(dataset) == 0:
        return None
    return DistributedSampler(
        dataset, even_divisible=len(dataset) < world, num_replicas=world, rank=rank(), shuffle=False
    )
