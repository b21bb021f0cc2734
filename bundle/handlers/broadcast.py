"""Keep a network identical on every rank of a multi-process run (``configs/multi_gpu_train.json``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from bundle.engine.distributed import unwrap_model, world_size

__all__ = ["BroadcastBuffers"]


class BroadcastBuffers:
    """Broadcast the floating-point buffers (BatchNorm running statistics) of a network from rank 0 when an event
    of the engine it is attached to fires, so that the network is identical on every rank.

    Used for the EMA teacher after every iteration: its parameters are the EMA of the student's, which DDP keeps
    equal on every rank, but the student's running statistics are updated by each rank's own batch during the
    forward pass (DDP re-broadcasts them from rank 0 only before the next forward), so their EMA would drift apart.
    Used for the student before validation, so that every rank validates rank 0's statistics (those saved).
    Does nothing when the process group is not initialised or has one process.

    Args:
        network: an :class:`bundle.method.teacher.EMATeacher` (its ``model``), a DDP-wrapped or a plain module.
        event: name of the Ignite event. Defaults to ``"ITERATION_COMPLETED"``.
    """

    def __init__(self, network: Any, event: str = "ITERATION_COMPLETED"):
        if not hasattr(Events, event):
            raise ValueError(f"unknown Ignite event {event!r}")
        self.network = network
        self.event = getattr(Events, event)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(self.event, self)

    def _module(self) -> torch.nn.Module:
        return unwrap_model(getattr(self.network, "model", self.network))

    @torch.no_grad()
    def __call__(self, engine: Engine | None = None) -> None:
        if self.network is None or world_size() < 2:
            return
        buffers = [b for b in self._module().buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1) for b in buffers])
        dist.broadcast(flat, src=0)
        offset = 0
        for b in buffers:
            b.copy_(flat[offset : offset + b.numel()].view_as(b))
            offset += b.numel()
