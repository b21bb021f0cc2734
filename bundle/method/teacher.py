"""The mean (EMA) teacher of PLGDF and its pseudo-labels from noisy copies."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from bundle.engine.distributed import unwrap_model

__all__ = ["EMATeacher"]


class EMATeacher:
    """An exponential-moving-average copy of a student network that makes PLGDF's pseudo-labels.

    Standard update (mean teacher), for every parameter and floating-point buffer (BatchNorm running mean/var):

    ``theta_t <- a * theta_t + (1 - a) * theta_s``, ``a = min(1 - 1 / (iteration + 1), decay)``;

    integer buffers (``num_batches_tracked``) are copied from the student.

    With ``reference_double_update=True`` (the authors' code, where a second EMA hides in an optimizer wrapper) each
    :meth:`update` first does, over all floating-point state (parameters and buffers),
    ``theta_t <- reference_decay * theta_t + (1 - reference_decay) * theta_s`` and
    ``theta_s <- (1 - reference_weight_shrink) * theta_s`` (the wrapper's "weight decay", which it applies in the same
    loop to every float32 state entry of the student, BN running statistics included), and then the standard update
    above with the shrunk student.

    The teacher is a deep copy of the student made at construction (after unwrapping DDP / ``torch.compile``); its
    parameters have ``requires_grad=False``, so it only ever changes through :meth:`update` (and, in train mode, the
    BatchNorm running statistics its own forward passes accumulate).

    Args:
        student: the student network (possibly wrapped in DDP / DataParallel).
        decay: the EMA decay cap. Defaults to 0.99.
        reference_double_update: also apply the reference code's second EMA and student shrink. Defaults to False.
        reference_decay: decay of that second EMA. Defaults to 0.99.
        reference_weight_shrink: factor by which that step shrinks the student (``0.02 * lr``). Defaults to 2e-4.
        train_mode: run the teacher in train mode (dropout on, batch statistics in BatchNorm) when it makes
            pseudo-labels; ``False`` uses eval mode. Defaults to True (the paper and the reference).
    """

    def __init__(
        self,
        student: nn.Module,
        decay: float = 0.99,
        reference_double_update: bool = False,
        reference_decay: float = 0.99,
        reference_weight_shrink: float = 2e-4,
        train_mode: bool = True,
    ) -> None:
        for name, value in (("decay", decay), ("reference_decay", reference_decay)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}.")
        if not 0.0 <= reference_weight_shrink < 1.0:
            raise ValueError(f"reference_weight_shrink must be in [0, 1), got {reference_weight_shrink}.")
        self.decay = float(decay)
        self.reference_double_update = bool(reference_double_update)
        self.reference_decay = float(reference_decay)
        self.reference_weight_shrink = float(reference_weight_shrink)
        self.train_mode = bool(train_mode)
        self.model: nn.Module = copy.deepcopy(unwrap_model(student))
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.train(self.train_mode)

    def _paired_state(self, student: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        """(teacher float tensors, matching student float tensors, [(teacher, student)] non-float buffer pairs)."""
        student = unwrap_model(student)
        t_state = dict(self.model.named_parameters())
        t_state.update(self.model.named_buffers())
        s_state = dict(student.named_parameters())
        s_state.update(student.named_buffers())
        if t_state.keys() != s_state.keys():
            missing, extra = sorted(t_state.keys() - s_state.keys()), sorted(s_state.keys() - t_state.keys())
            raise ValueError(f"student does not match the teacher: missing {missing[:5]}, unexpected {extra[:5]}.")
        t_float, s_float, others = [], [], []
        for name, t in t_state.items():
            s = s_state[name]
            if t.shape != s.shape:
                raise ValueError(f"shape of {name!r} differs: teacher {tuple(t.shape)}, student {tuple(s.shape)}.")
            if t.is_floating_point():
                t_float.append(t)
                s_float.append(s.detach())
            else:
                others.append((t, s))
        return t_float, s_float, others

    @staticmethod
    def _ema_(teacher: list[torch.Tensor], student: list[torch.Tensor], a: float) -> None:
        """``teacher <- a * teacher + (1 - a) * student`` in place."""
        if not teacher:
            return
        if all(t.dtype == s.dtype and t.device == s.device for t, s in zip(teacher, student)):
            torch._foreach_lerp_(teacher, student, 1.0 - a)
        else:
            for t, s in zip(teacher, student):
                t.lerp_(s.to(device=t.device, dtype=t.dtype), 1.0 - a)

    @torch.no_grad()
    def update(self, student: nn.Module, iteration: int) -> None:
        """One EMA step from ``student`` at global ``iteration`` (>= 0; ``a = min(1 - 1/(iteration+1), decay)``)."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}.")
        t_float, s_float, others = self._paired_state(student)
        if self.reference_double_update:
            self._ema_(t_float, s_float, self.reference_decay)
            if s_float:
                torch._foreach_mul_(s_float, 1.0 - self.reference_weight_shrink)
        a = min(1.0 - 1.0 / (iteration + 1), self.decay)
        self._ema_(t_float, s_float, a)
        for t, s in others:
            t.copy_(s)

    @torch.no_grad()
    def pseudo_labels(self, x_noisy: torch.Tensor, n_copies: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard pseudo-labels from ``n_copies`` noisy copies of each of ``N`` unlabelled images.

        One batched forward pass of the teacher (in train mode if ``train_mode``, else eval; its mode is restored
        afterwards) on ``x_noisy``; the softmax of P1 is averaged over the copies and its argmax is the label.

        Args:
            x_noisy: ``(n_copies * N, C_in, H, W, D)``, copy-major: rows ``[j * N, (j + 1) * N)`` are copy ``j`` of
                the ``N`` images.
            n_copies: ``K`` >= 1, the number of noisy copies per image (independent of the class count).

        Returns:
            ``(labels, mean_probs)``: ``labels`` long ``(N, H, W, D)``, ``mean_probs`` float32 ``(N, C, H, W, D)``.
        """
        if n_copies < 1:
            raise ValueError(f"n_copies must be >= 1, got {n_copies}.")
        if x_noisy.shape[0] % n_copies != 0:
            raise ValueError(f"the batch size {x_noisy.shape[0]} of x_noisy is not a multiple of n_copies={n_copies}.")
        was_training = self.model.training
        self.model.train(self.train_mode)
        try:
            out = self.model(x_noisy)
        finally:
            self.model.train(was_training)
        p1 = out if isinstance(out, torch.Tensor) else out[0]
        probs = torch.softmax(p1.float(), dim=1)
        n = x_noisy.shape[0] // n_copies
        mean_probs = probs.reshape(n_copies, n, *probs.shape[1:]).mean(dim=0)
        return mean_probs.argmax(dim=1), mean_probs

    def to(self, *args: Any, **kwargs: Any) -> EMATeacher:
        """Move the teacher network (``nn.Module.to`` arguments); returns ``self``."""
        self.model.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher network's state (plain tensors), for checkpoints."""
        return self.model.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> Any:
        """Load a state saved by :meth:`state_dict` (or any matching network state)."""
        return self.model.load_state_dict(state_dict, strict=strict)
