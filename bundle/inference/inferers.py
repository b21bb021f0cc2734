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

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils.type_conversion import convert_to_dst_type

__all__ = ["window_starts", "count_windows", "lattice_windows", "StridedSlidingWindowInferer", "ProbabilityInferer"]

_PAD_MODES = ("constant", "reflect", "replicate", "circular")
# weight of the windows :func:`lattice_windows` adds only to cover the voxels no lattice window reaches: they decide
# those voxels and (nearly) nothing else (blending them in fully cost 0.2-0.7 Dice points on LA-lite validation)
FILL_WEIGHT = 1e-3


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


def lattice_windows(
    spatial_shape: Sequence[int],
    roi_size: Sequence[int],
    stride: Sequence[int],
    keep: int = 1,
    with_fill_flags: bool = False,
) -> list[Any]:
    """Window corners: one of every ``keep`` windows of the dense strided grid, chosen as a rank-1 lattice.

    The dense grid is :func:`window_starts` per axis (on the padded shape: axes smaller than the window count as
    the window). Window ``(i_1, .., i_n)`` of it (its index along each axis) runs when
    ``(1 * i_1 + 2 * i_2 + .. + n * i_n) % keep == 0``; then skipped windows are added greedily (the one holding the
    most voxels no kept window covers first) until every voxel is covered. ``keep=1`` is the whole grid (the paper's protocol).

    Why a lattice: the V-Net downsamples four times (a factor 16), so its prediction for a voxel depends on where
    the voxel sits in the window. A coarse grid (steps 16x16x8) puts every voxel at the same few positions in all
    of its windows, while the lattice keeps the dense grid's spread of positions at ``keep`` times fewer windows
    (``docs/performance.md``, "Choosing the inference window").

    Example: ``len(lattice_windows((108, 70, 44), (48, 48, 32), (9, 9, 2), 5))`` is 51 of the dense grid's 224
    (45 from the lattice, 6 to cover the borders).
    """
    if keep < 1:
        raise ValueError(f"keep must be a positive integer (1 = every window of the grid), got {keep}.")
    key = tuple(tuple(int(v) for v in t) for t in (spatial_shape, roi_size, stride))
    plan = _lattice_windows(*key, int(keep))
    return [(corner, filled) for corner, filled in plan] if with_fill_flags else [corner for corner, _ in plan]


@functools.lru_cache(maxsize=256)
def _lattice_windows(
    spatial_shape: tuple[int, ...], roi_size: tuple[int, ...], stride: tuple[int, ...], keep: int
) -> tuple[tuple[tuple[int, ...], bool], ...]:
    shape = [max(s, r) for s, r in zip(spatial_shape, roi_size)]
    axes = [window_starts(s, r, k) for s, r, k in zip(shape, roi_size, stride)]
    grid = list(itertools.product(*[range(len(a)) for a in axes]))
    corners = [tuple(a[i] for a, i in zip(axes, idx)) for idx in grid]
    if keep == 1:
        return tuple((corner, False) for corner in corners)
    lattice = np.array([sum((d + 1) * i for d, i in enumerate(idx)) % keep == 0 for idx in grid])
    # coverage only changes at window borders: work on the cells between them, weighted by their voxel counts
    edges = [sorted({0, size, *a, *(st + r for st in a)}) for a, size, r in zip(axes, shape, roi_size)]
    cells = functools.reduce(np.multiply.outer, [np.diff(e) for e in edges])
    kept = lattice.copy()
    lo = np.array([[e.index(c) for e, c in zip(edges, corner)] for corner in corners])  # (N, 3) in cells
    hi = np.array([[e.index(c + r) for e, c, r in zip(edges, corner, roi_size)] for corner in corners])
    windows = [tuple(slice(a, b) for a, b in zip(low, high)) for low, high in zip(lo, hi)]
    covered = np.zeros(cells.shape, dtype=bool)
    for n in np.flatnonzero(kept):
        covered[windows[n]] = True
    while not covered.all():  # greedy cover: the skipped window holding the most uncovered voxels first
        table = cells * ~covered
        for d in range(table.ndim):
            table = table.cumsum(d)
        table = np.pad(table, [(1, 0)] * table.ndim)
        gains = np.zeros(len(corners), dtype=np.int64)
        for bits in itertools.product((0, 1), repeat=table.ndim):  # inclusion-exclusion over each window's corners
            idx = tuple(hi[:, d] if b else lo[:, d] for d, b in enumerate(bits))
            gains += (-1) ** (table.ndim - sum(bits)) * table[idx]
        gains[kept] = -1
        best = int(gains.argmax())
        kept[best] = True
        covered[windows[best]] = True
    return tuple((corner, not on) for corner, k, on in zip(corners, kept.tolist(), lattice.tolist()) if k)


def _window_flips(window_flips: Any, nd: int) -> tuple[tuple[int, ...], ...]:
    """``window_flips`` checked: a list of lists of distinct spatial axes (``0 .. nd - 1``); ``()`` -> ``((),)``."""
    error = ValueError(
        f"window_flips must be a list of lists of spatial axes 0..{nd - 1}, e.g. [[], [0, 1, 2]], got {window_flips!r}."
    )
    if isinstance(window_flips, (str, bytes)) or not isinstance(window_flips, Sequence):
        raise error
    out = []
    for axes in window_flips:
        if isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
            raise error
        bad_axis = any(isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < nd for a in axes)
        if bad_axis or len(set(axes)) < len(axes):
            raise error
        out.append(tuple(int(a) for a in axes))
    return tuple(out) or ((),)


def _flip(t: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """``t`` ``(N, C, *spatial)`` flipped along spatial ``axes`` (its own inverse)."""
    return t.flip([a + 2 for a in axes]) if axes else t


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
        keep: run one window of every ``keep`` of the strided grid (:func:`lattice_windows`: a rank-1 lattice
            subset, topped up so that every voxel is covered; the windows added to cover get :data:`FILL_WEIGHT`
            in the average, so they decide only the voxels no lattice window covers); default 1, every window
            (the paper's protocol).
        sigma_scale: weight each window's probabilities by a gaussian of ``sigma_scale * roi_size`` per axis
            (MONAI's ``compute_importance_map``) in the average; default ``None``, uniform (the paper's protocol).
        window_flips: test-time augmentation at no extra forward pass: window ``n`` of the run (in plan order) is
            flipped along the spatial axes ``window_flips[n % len(window_flips)]`` before the network and its
            output flipped back, e.g. ``[[], [0, 1, 2]]``: every second window seen mirrored through all three
            axes, as ``configs/train.json``'s ``RandFlipd`` does with ``rand_flip_prob > 0`` (``la_lite.json``).
            Use only flips the model was trained with (a flip it never saw costs Dice). Default ``()``: no
            flipping (the paper's protocol).
    """

    def __init__(
        self,
        roi_size: Sequence[int],
        stride: Sequence[int] | int,
        num_classes: int | None = None,
        sw_batch_size: int = 1,
        pad_mode: str = "constant",
        keep: int = 1,
        sigma_scale: float | Sequence[float] | None = None,
        window_flips: Sequence[Sequence[int]] = (),
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
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep must be a positive integer (1 = every window of the grid), got {keep!r}.")
        sigmas = sigma_scale
        if isinstance(sigma_scale, (int, float)) and not isinstance(sigma_scale, bool):
            sigmas = [sigma_scale] * len(self.roi_size)
        if sigmas is not None and (
            isinstance(sigmas, (bool, str)) or len(sigmas) != len(self.roi_size) or any(float(v) <= 0 for v in sigmas)
        ):
            raise ValueError(
                f"sigma_scale must be None (uniform average) or a positive number (one per axis), got {sigma_scale!r}."
            )
        self.num_classes = num_classes
        self.sw_batch_size = int(sw_batch_size)
        self.pad_mode = pad_mode
        self.keep = int(keep)
        self.sigma_scale = None if sigmas is None else tuple(float(v) for v in sigmas)
        self.window_flips = _window_flips(window_flips, len(self.roi_size))

    def count_windows(self, spatial_shape: Sequence[int]) -> int:
        """Number of windows run over a volume of ``spatial_shape`` (``(H, W, D)``)."""
        return len(lattice_windows(spatial_shape, self.roi_size, self.stride, self.keep))

    def _weight(self, device: torch.device) -> torch.Tensor | float:
        if self.sigma_scale is None:
            return 1.0
        from monai.data.utils import compute_importance_map

        return compute_importance_map(self.roi_size, mode="gaussian", sigma_scale=self.sigma_scale, device=device)

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
        plan = lattice_windows(padded, self.roi_size, self.stride, self.keep, with_fill_flags=True)
        slices = [tuple(slice(st, st + r) for st, r in zip(corner, self.roi_size)) for corner, _ in plan]
        weight = self._weight(x.device)
        weights = [weight * FILL_WEIGHT if filled else weight for _, filled in plan]

        batch = x.shape[0]
        score: torch.Tensor | None = None
        count = torch.zeros((1, 1, *padded), dtype=torch.float32, device=x.device)
        for i in range(0, len(slices), self.sw_batch_size):
            chunk = slices[i : i + self.sw_batch_size]
            flips = [self.window_flips[(i + j) % len(self.window_flips)] for j in range(len(chunk))]
            patches = torch.cat(
                [_flip(x[(slice(None), slice(None), *sl)], dims) for sl, dims in zip(chunk, flips)], dim=0
            )
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
            if any(flips):
                prob = torch.cat([_flip(p, dims) for p, dims in zip(prob.split(batch), flips)], dim=0)
            if score is None:
                score = torch.zeros((batch, prob.shape[1], *padded), dtype=torch.float32, device=x.device)
            for j, sl in enumerate(chunk):
                w = weights[i + j]
                score[(slice(None), slice(None), *sl)] += prob[j * batch : (j + 1) * batch] * w
                count[(slice(None), slice(None), *sl)] += w
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
