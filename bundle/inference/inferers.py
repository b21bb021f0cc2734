"""Inferers: the paper's strided sliding-window test protocol as a MONAI ``Inferer``, and class probabilities with
optional flip test-time augmentation (:class:`ProbabilityInferer`, the ``inferer`` of ``configs/inference.json``).

:class:`StridedSlidingWindowInferer`

This is the UA-MT / MC-Net ``test_single_case`` used to produce every published PLGDF number
(LA: window 112x112x80, stride 18x18x4; Pancreas and BraTS: window 96^3, stride 16^3):

1. per spatial axis, if the volume is smaller than the window, pad it with
   ``(pad // 2, pad - pad // 2)`` (zeros by default), ``pad = roi - size``;
2. per axis, windows start at ``min(stride * i, size - roi)`` for
   ``i = 0 .. ceil((size - roi) / stride)`` (the last window is pulled back to end at the border);
3. the softmax of each window's logits is summed into a score map and every voxel divided by the
   number of windows that covered it (uniform averaging: no Gaussian weighting);
4. the padding is cropped away.

MONAI's ``SlidingWindowInferer`` places windows by an overlap fraction instead of a stride, so it
runs a different number of windows and gives different numbers: use it for fast validation, this
class to reproduce the paper.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils.type_conversion import convert_to_dst_type

__all__ = ["window_starts", "count_windows", "StridedSlidingWindowInferer", "ProbabilityInferer"]

_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def window_starts(size: int, roi: int, stride: int) -> list[int]:
    """Window start indices along one axis: ``min(stride * i, size - roi)``, ``i = 0 .. ceil((size - roi) / stride)``.

    Args:
        size: axis length (after padding, so ``size >= roi``).
        roi: window length along the axis.
        stride: step between consecutive windows (``1 <= stride <= roi``).

    Example: ``window_starts(215, 112, 18) == [0, 18, 36, 54, 72, 90, 103]``.
    """
    if roi < 1 or stride < 1:
        raise ValueError(f"roi and stride must be positive, got roi={roi}, stride={stride}.")
    if size < roi:
        raise ValueError(f"size ({size}) must be at least roi ({roi}); pad the volume first.")
    n = math.ceil((size - roi) / stride) + 1
    return [min(stride * i, size - roi) for i in range(n)]


def count_windows(spatial_shape: Sequence[int], roi_size: Sequence[int], stride: Sequence[int]) -> int:
    """Number of windows the protocol runs over a volume of ``spatial_shape`` (axes smaller than the window padded).

    Args:
        spatial_shape: ``(H, W, D)`` of the volume.
        roi_size: window size per axis.
        stride: stride per axis.
    """
    if not len(spatial_shape) == len(roi_size) == len(stride):
        raise ValueError(
            f"spatial_shape {tuple(spatial_shape)}, roi_size {tuple(roi_size)} and stride "
            f"{tuple(stride)} must have the same length."
        )
    return math.prod(len(window_starts(max(s, r), r, k)) for s, r, k in zip(spatial_shape, roi_size, stride))


class StridedSlidingWindowInferer(Inferer):
    """Strided sliding window with uniform averaging of window softmaxes (the paper's test protocol).

    For an input ``x`` of shape ``(B, C, H, W, D)`` the output is

    .. math::
        P(v) = \\frac{1}{|\\{w : v \\in w\\}|} \\sum_{w \\ni v} \\mathrm{softmax}_c(f(x_w))(v),

    of shape ``(B, num_classes, H, W, D)``, where the windows ``w`` follow ``window_starts`` on the padded
    volume. Run it under ``torch.no_grad()`` with the network in ``eval()`` mode (it must then return one logit
    tensor ``(N, num_classes, *roi_size)`` per batch of windows).

    Args:
        roi_size: window size per spatial axis, e.g. ``(112, 112, 80)``.
        stride: step per spatial axis, e.g. ``(18, 18, 4)``; one int is used for every axis. ``1 <= stride <= roi``.
        num_classes: expected number of output channels; ``None`` (default) takes it from the network's output.
        sw_batch_size: number of windows sent to the network at once (default 1); the network sees
            ``sw_batch_size * B`` patches.
        pad_mode: ``torch.nn.functional.pad`` mode for volumes smaller than the window (default ``"constant"``,
            zeros, as the reference code); the other modes need ``roi - size < size`` on the padded axes.
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        stride: Sequence[int] | int,
        num_classes: int | None = None,
        sw_batch_size: int = 1,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        self.roi_size = tuple(int(r) for r in roi_size)
        strides = [stride] * len(self.roi_size) if isinstance(stride, int) else list(stride)
        self.stride = tuple(int(s) for s in strides)
        if len(self.stride) != len(self.roi_size):
            raise ValueError(f"stride {stride!r} must have one value per axis of roi_size {self.roi_size}.")
        if any(r < 1 for r in self.roi_size):
            raise ValueError(f"roi_size must be positive, got {self.roi_size}.")
        if any(s < 1 or s > r for s, r in zip(self.stride, self.roi_size)):
            raise ValueError(
                f"stride must satisfy 1 <= stride <= roi_size per axis (no gaps), got stride "
                f"{self.stride} for roi_size {self.roi_size}."
            )
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be positive or None, got {num_classes}.")
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be positive, got {sw_batch_size}.")
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {pad_mode!r}.")
        self.num_classes = num_classes
        self.sw_batch_size = int(sw_batch_size)
        self.pad_mode = pad_mode

    def count_windows(self, spatial_shape: Sequence[int]) -> int:
        """Number of windows run over a volume of ``spatial_shape`` (``(H, W, D)``)."""
        return count_windows(spatial_shape, self.roi_size, self.stride)

    def _padding(self, spatial_shape: Sequence[int]) -> list[tuple[int, int]]:
        """``(before, after)`` per spatial axis: ``(pad // 2, pad - pad // 2)``, ``pad = max(roi - size, 0)``."""
        pads = [max(r - s, 0) for s, r in zip(spatial_shape, self.roi_size)]
        return [(p // 2, p - p // 2) for p in pads]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Averaged softmax probabilities ``(B, num_classes, H, W, D)`` for ``inputs`` ``(B, C, H, W, D)``.

        Extra ``args``/``kwargs`` are passed to ``network``.
        """
        nd = len(self.roi_size)
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != nd + 2:
            raise ValueError(
                f"inputs must be a tensor (B, C, *spatial) with {nd} spatial axes, got "
                f"{type(inputs).__name__} of shape {tuple(getattr(inputs, 'shape', ()))}."
            )
        spatial = tuple(inputs.shape[2:])
        padding = self._padding(spatial)
        x = inputs
        if any(p for pair in padding for p in pair):
            flat = [p for pair in reversed(padding) for p in pair]  # F.pad wants the last axis first
            x = F.pad(x if x.is_floating_point() else x.float(), flat, mode=self.pad_mode)
        padded = tuple(x.shape[2:])
        starts = [window_starts(s, r, k) for s, r, k in zip(padded, self.roi_size, self.stride)]
        slices = [
            tuple(slice(st, st + r) for st, r in zip(corner, self.roi_size)) for corner in itertools.product(*starts)
        ]

        batch = x.shape[0]
        score: torch.Tensor | None = None
        count = torch.zeros((1, 1, *padded), dtype=torch.float32, device=x.device)
        for i in range(0, len(slices), self.sw_batch_size):
            chunk = slices[i : i + self.sw_batch_size]
            patches = torch.cat([x[(slice(None), slice(None), *sl)] for sl in chunk], dim=0)
            logits = network(patches, *args, **kwargs)
            if not isinstance(logits, torch.Tensor):
                raise TypeError(
                    f"network must return one logit tensor (call it in eval() mode), got {type(logits).__name__}."
                )
            expected = (len(chunk) * batch, *self.roi_size)
            if logits.ndim != nd + 2 or (logits.shape[0], *logits.shape[2:]) != expected:
                raise ValueError(
                    f"network output shape {tuple(logits.shape)} does not match the windows "
                    f"(N={expected[0]}, C, {self.roi_size})."
                )
            if self.num_classes is not None and logits.shape[1] != self.num_classes:
                raise ValueError(
                    f"network returned {logits.shape[1]} channels, expected num_classes={self.num_classes}."
                )
            prob = torch.softmax(logits.float(), dim=1)
            if score is None:
                score = torch.zeros((batch, prob.shape[1], *padded), dtype=torch.float32, device=x.device)
            for j, sl in enumerate(chunk):
                score[(slice(None), slice(None), *sl)] += prob[j * batch : (j + 1) * batch]
                count[(slice(None), slice(None), *sl)] += 1.0
        assert score is not None  # at least one window always exists
        score = score / count
        crop = tuple(slice(before, before + s) for (before, _), s in zip(padding, spatial))
        return score[(slice(None), slice(None), *crop)]


class ProbabilityInferer(Inferer):
    """Class probabilities ``(B, C, H, W, D)`` from a sliding-window inferer, optionally averaged over flips.

    With flip sets ``F = {identity} + flip_axes`` (test-time augmentation):

    .. math::
        P(x) = \\frac{1}{|F|} \\sum_{f \\in F} f^{-1}\\left(\\mathrm{softmax}_c\\, I(f(x))\\right),

    where ``I`` is the inner inferer (``softmax`` is skipped when it already returns probabilities, as
    :class:`StridedSlidingWindowInferer` does). Flips are their own inverse.

    Args:
        inferer: the inner inferer, e.g. ``monai.inferers.SlidingWindowInferer`` (logits) or
            ``StridedSlidingWindowInferer`` (probabilities).
        flip_axes: spatial axes flipped together per extra pass, e.g. ``[[0], [1], [2]]`` (three extra passes).
            Default ``()``: no test-time augmentation.
        softmax: apply a softmax over channels to the inner output; ``None`` (default) decides by type (False
            for ``StridedSlidingWindowInferer``, True otherwise).
        average: what the inner inferer blends where windows overlap: ``"logits"`` (default, the network's raw
            output, softmax after blending) or ``"probabilities"`` (the network is wrapped in a softmax, so the
            blend is a weighted mean of window probabilities, as :class:`StridedSlidingWindowInferer` does; the
            bundle's default, ``docs/performance.md``). Ignored for :class:`StridedSlidingWindowInferer`.
    """

    def __init__(
        self,
        inferer: Inferer,
        flip_axes: Sequence[Sequence[int]] = (),
        softmax: bool | None = None,
        average: str = "logits",
    ) -> None:
        super().__init__()
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        if average not in ("logits", "probabilities"):
            raise ValueError(f"average must be 'logits' or 'probabilities', got {average!r}.")
        self.inferer = inferer
        self.flip_axes = [tuple(int(a) for a in axes) for axes in (flip_axes or ())]
        for axes in self.flip_axes:
            if not axes or any(a < 0 or a > 2 for a in axes):
                raise ValueError(f"flip_axes entries must be non-empty lists of spatial axes 0..2, got {flip_axes}.")
        strided = isinstance(inferer, StridedSlidingWindowInferer)
        self.average = "probabilities" if strided else average
        self.softmax = (not strided and average == "logits") if softmax is None else bool(softmax)

    def _probs(self, x: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.average == "probabilities" and not isinstance(self.inferer, StridedSlidingWindowInferer):

            def probabilities(patches: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
                return torch.softmax(network(patches, *a, **k).float(), dim=1)

            out = self.inferer(x, probabilities, *args, **kwargs)
        else:
            out = self.inferer(x, network, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the inner inferer must return one tensor, got {type(out).__name__}.")
        out = out.float()
        return torch.softmax(out, dim=1) if self.softmax else out

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Probabilities for ``inputs`` ``(B, C_in, H, W, D)``; extra arguments go to the inner inferer."""
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        prob = self._probs(x, network, *args, **kwargs)
        for axes in self.flip_axes:
            dims = [a + 2 for a in axes]
            prob = prob + torch.flip(self._probs(torch.flip(x, dims), network, *args, **kwargs), dims)
        prob = prob / (1 + len(self.flip_axes))
        if isinstance(inputs, MetaTensor):  # keep the input's meta data (Invertd and the saver read it)
            prob = convert_to_dst_type(prob, inputs, dtype=prob.dtype)[0]
        return prob
