"""The sigmoid-shaped ramp-up of the unsupervised loss weight (``lambda(t)`` of PLGDF, after Laine & Aila)."""

from __future__ import annotations

import math

__all__ = ["ConsistencyRampUp"]


class ConsistencyRampUp:
    """``lambda(t) = weight * exp(-5 * (1 - min(t, length) / length)^2)``.

    With ``step`` given, the iteration is first floored to a multiple of ``step`` (``t <- (t // step) * step``), so
    the weight changes every ``step`` iterations. The authors' code computes
    ``consistency * sigmoid_rampup(iter_num // 150, 40)``; that is ``ConsistencyRampUp(1.0, length=6000, step=150)``
    here (``40 * 150 = 6000``); both agree whenever ``length`` is a multiple of ``step``.

    Args:
        weight: the final weight ``w``. Defaults to 1.0.
        length: the ramp-up length ``t_r`` in iterations; ``length <= 0`` gives the constant weight ``w``.
            Defaults to 6000.
        step: if given (> 0), the ramp is a staircase updated every ``step`` iterations (the reference uses 150);
            ``None`` gives the smooth ramp. Defaults to ``None``.
    """

    def __init__(self, weight: float = 1.0, length: int = 6000, step: int | None = None) -> None:
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}.")
        if step is not None and step <= 0:
            raise ValueError(f"step must be a positive number of iterations or None, got {step}.")
        self.weight = float(weight)
        self.length = length
        self.step = step

    def __call__(self, iteration: int) -> float:
        """The weight at ``iteration`` (>= 0) as a Python float."""
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}.")
        if self.length <= 0:
            return self.weight
        t = (iteration // self.step) * self.step if self.step is not None else iteration
        phase = 1.0 - min(t, self.length) / self.length
        return self.weight * math.exp(-5.0 * phase * phase)
