"""BatchNorm re-estimation of a trained network on clean patches (a PLGDF+ candidate, issue #18).

The student's running statistics come from batches in which half the rows are mixes of two images; the deployed
model sees clean scans. :func:`reestimate_batchnorm` replaces every BatchNorm layer's running mean and variance by
their average over clean patches, the weights unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn

__all__ = ["reestimate_batchnorm"]


@torch.no_grad()
def reestimate_batchnorm(network: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate the running statistics of every BatchNorm layer of ``network`` in place.

    The statistics are reset and recomputed as the cumulative average (``momentum=None``) of the per-batch statistics
    over ``batches`` (``(B, C, H, W, D)`` tensors on the network's device), in train mode without gradients; dropout
    draws do not change the statistics' expectation. The layers' momenta and every module's train/eval mode are
    restored afterwards; parameters are untouched.

    Args:
        network: the model (e.g. the deployed student).
        batches: clean patches (labelled and unlabelled images, no mixing, no noise).

    Returns:
        The number of batches used.

    Raises:
        ValueError: ``batches`` is empty, or the network has no BatchNorm layer.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError("the network has no BatchNorm layer to re-estimate.")
    modes = {m: m.training for m in network.modules()}
    momenta = {m: m.momentum for m in norms}
    n = 0
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches seen
        network.train()
        for batch in batches:
            network(batch)
            n += 1
    finally:
        for m in norms:
            m.momentum = momenta[m]
        for m, mode in modes.items():
            m.train(mode)
    if n == 0:
        raise ValueError("no batches given: the BatchNorm statistics were reset and not re-estimated.")
    return n
