"""Parts of a PLGDF step timed on their own, beside the trainer iteration (:func:`benchmarks.speed_training.
bench_training`): the bare network work it contains and its loss terms alone, shared as the trainer computes them or
each term on its own rows (the earlier implementation)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.speed_timing import sync
from bundle.method.trainer import PLGDFTrainer


def bare_work(
    net: torch.nn.Module,
    teacher_net: torch.nn.Module,
    x_student: torch.Tensor,
    x_teacher: torch.Tensor,
    device: torch.device,
    autocast: Any,
) -> float:
    """Seconds for the student's forward + backward on ``x_student`` and the teacher's no-grad forward on
    ``x_teacher``."""
    start = time.perf_counter()
    net.zero_grad(set_to_none=True)
    with autocast():
        out = net(x_student)
        loss = sum(o.float().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
    loss.backward()
    with torch.no_grad(), autocast():
        teacher_net(x_teacher)
    sync(device)
    return time.perf_counter() - start


class OutputCapture:
    """The student's outputs of the last forward pass (detached), for timing the loss terms on their own."""

    def __init__(self, network: torch.nn.Module):
        self.outputs: list[torch.Tensor] = []
        network.register_forward_hook(torch.compiler.disable(self._hook))

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self.outputs = [o.detach() for o in (output if isinstance(output, (list, tuple)) else [output])]


def unshared_loss_terms(trainer: PLGDFTrainer, outputs: Sequence[torch.Tensor], n_l: int, y_l, y_hat, t: int):
    """The loss terms as the trainer computed them before the shared softmax pyramid: each term called on its own
    rows of the logits (its own float cast, softmax and log-softmax). The benchmark's baseline for the saving."""
    sup, _ = trainer.loss_function([o[:n_l] for o in outputs], y_l)
    n_semi = y_hat.shape[0]
    semi, _ = trainer.loss_function([o[n_l : n_l + n_semi] for o in outputs], y_hat)
    consis = trainer.consistency_loss([o[n_l:] for o in outputs])
    sharp = trainer.sharpening_loss([o[n_l + n_semi :] for o in outputs])
    weight = float(trainer.rampup(t))
    return {"loss": sup + semi + weight * (sharp + consis)}


def time_loss_terms(
    trainer: PLGDFTrainer, outputs: Sequence[torch.Tensor], n_l: int, shared: bool = True, t: int = 0
) -> float:
    """Seconds for the loss terms' forward + backward on leaf copies of the student's ``outputs`` (all terms on;
    labels random, the cost does not depend on them); ``shared``: as the trainer does, else
    :func:`unshared_loss_terms`."""
    device = outputs[0].device
    n_semi = trainer.n_copies * (outputs[0].shape[0] - n_l) // (trainer.n_copies + 1)
    spatial = tuple(outputs[0].shape[2:])
    generator = torch.Generator().manual_seed(0)
    y_l = torch.randint(0, outputs[0].shape[1], (n_l, *spatial), generator=generator).to(device)
    y_hat = torch.randint(0, outputs[0].shape[1], (n_semi, *spatial), generator=generator).to(device)
    leaves = [o.clone().requires_grad_() for o in outputs]
    sync(device)
    start = time.perf_counter()
    terms = (trainer.loss_terms if shared else lambda *a: unshared_loss_terms(trainer, *a))(leaves, n_l, y_l, y_hat, t)
    terms["loss"].backward()
    sync(device)
    return time.perf_counter() - start
