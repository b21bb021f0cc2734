"""Timing helpers shared by the speed benchmarks (:mod:`benchmarks.speed`): device synchronisation, medians, peak
memory and the trainer's autocast."""

from __future__ import annotations

import contextlib
import resource
import statistics
import sys
from collections.abc import Sequence
from typing import Any

import torch


def peak_memory_mb(device: torch.device) -> float:
    """Peak RSS of this process (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    """The median of ``values`` as a float; ``nan`` when there are none."""
    return float(statistics.median(values)) if values else float("nan")


def check_precision(device: torch.device, amp: bool, amp_dtype: str) -> None:
    """Raise ``ValueError`` for autocast on the CPU in any dtype but ``bfloat16`` (the trainer's ``amp_cpu``)."""
    if amp and device.type == "cpu" and amp_dtype != "bfloat16":
        raise ValueError(f"autocast on CPU is bfloat16 only (the trainer's amp_cpu), got {amp_dtype}.")


def autocast(device: torch.device, amp: bool, amp_dtype: str) -> Any:
    """The trainer's autocast: ``amp_dtype`` on CUDA, bfloat16 on CPU (``amp_cpu``), nothing when ``amp`` is off."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, amp_dtype))
