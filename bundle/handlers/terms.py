"""The scalar terms of a PLGDF iteration output (``PLGDFTrainer._iteration``), read once per iteration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["SCALAR_KEYS", "loss_terms", "iteration_terms", "finite_output"]

SCALAR_KEYS = ("loss", "loss_sup", "loss_semi", "loss_consis", "loss_sharp", "lambda", "pseudo_fg", "label_fg")


def loss_terms(output: Mapping) -> dict[str, float]:
    """The scalar terms of a trainer output as floats (one host synchronisation; also the ``output_transform`` of
    MONAI's StatsHandler / TensorBoardStatsHandler)."""
    keys = [k for k in SCALAR_KEYS if k in output]
    values = torch.stack([torch.as_tensor(output[k], dtype=torch.float32).detach().cpu() for k in keys]).tolist()
    return dict(zip(keys, values))


def finite_output(output: Any) -> bool:
    """False when the iteration output's loss terms hold NaN/Inf (True when there is nothing to check)."""
    if not isinstance(output, Mapping):
        return True
    terms = [torch.as_tensor(output[k]).detach().float() for k in SCALAR_KEYS if k in output]
    return not terms or bool(torch.isfinite(torch.stack([t.reshape(()) for t in terms])).all())


def iteration_terms(engine: Any) -> dict[str, float]:
    """:func:`loss_terms` of ``engine.state.output``, computed once per iteration and shared by the handlers that
    read them (a copy is returned)."""
    cached = getattr(engine.state, "plgdf_terms", None)
    if cached is None or cached[0] != engine.state.iteration:
        cached = (engine.state.iteration, loss_terms(engine.state.output))
        engine.state.plgdf_terms = cached
    return dict(cached[1])
