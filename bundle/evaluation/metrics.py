"""Per-case binary segmentation metrics with the paper's definitions (Dice, Jaccard, 95HD, ASD).

The surface distances follow ``medpy.metric.binary`` exactly (medpy is only a test dependency: the
tests pin agreement to 1e-6):

- surface of a mask ``M``: ``S(M) = M XOR erode(M)``, where ``erode`` is a single binary erosion
  with the connectivity-1 structuring element (6-neighbourhood in 3D,
  ``scipy.ndimage.generate_binary_structure(ndim, 1)``) and the outside of the array counted as
  background (scipy's default ``border_value=0``, as medpy calls it), so a mask touching the array
  edge has a surface there;
- directed distances ``d(A -> B) = {EDT_B(a) : a in S(A)}``, where ``EDT_B`` is the Euclidean
  distance to the nearest voxel of ``S(B)`` (``scipy.ndimage.distance_transform_edt`` with
  ``sampling=spacing``; unit spacing gives voxels, the image spacing gives millimetres);
- ``hd95(P, R) = percentile_95(concat(d(P -> R), d(R -> P)))`` (numpy's default linear
  interpolation): the 95th percentile of the *pooled* distances of both directions. MONAI's
  ``compute_hausdorff_distance(percentile=95)`` instead takes ``max`` of the two directed
  percentiles, a different number;
- ``asd(P, R) = mean(d(P -> R))``: one direction only, prediction to reference (not the symmetric
  ASSD).

Speed: the distance transforms run on the bounding box of ``P OR R`` grown by a one-voxel margin
(clipped at the array edge), not on the whole volume. This gives identical numbers: every surface
voxel of either mask lies in the box, the margin (or the array edge, where the box is clipped)
is background for the erosion exactly as in the full array, and the nearest ``S(B)`` voxel of any
voxel is found wherever it is, since all of ``S(B)`` is inside the box. ``case_metrics``
computes the two surfaces once and shares them between 95HD and ASD.

Empty masks (``EMPTY_POLICY``, overridable per call with ``empty_policy``):

- ``"nan"`` (default): a non-empty reference with an empty prediction (or the reverse) scores
  ``dice = jaccard = 0`` and every distance ``NaN`` (a surface distance to nothing is undefined),
  flagged with ``pred_empty=True`` (resp. ``ref_empty=True``). ``summarize`` counts these cases and
  averages the distances over the cases where they are defined, while Dice/Jaccard means include
  the zeros. Both empty: ``dice = jaccard = 1`` and distances ``0`` (a perfect empty prediction).
- ``"reference"``: the UA-MT / MC-Net ``calculate_metric_percase`` behaviour, for reproducing the
  published tables: if either mask is empty, all four metrics are silently ``0`` (a 0 distance then
  flatters the mean). The flags are still set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.ndimage import binary_erosion, distance_transform_edt, generate_binary_structure

__all__ = [
    "EMPTY_POLICY",
    "EMPTY_POLICIES",
    "METRIC_KEYS",
    "dice",
    "jaccard",
    "surface",
    "surface_distances",
    "hd95",
    "asd",
    "case_metrics",
    "summarize",
]

# default scoring of a case where exactly one of prediction / reference is empty (see the module docstring)
EMPTY_POLICY = "nan"

EMPTY_POLICIES = ("nan", "reference")

# the numeric per-case keys returned by ``case_metrics`` and summarised by ``summarize``
METRIC_KEYS = ("dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm")


def _as_bool(mask: Any, name: str) -> np.ndarray:
    """Binary numpy view of ``mask`` (numpy array, array-like or CPU/GPU torch tensor); nonzero = object."""
    if hasattr(mask, "detach"):  # torch.Tensor without importing torch
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be an array with at least one dimension, got a scalar {arr!r}.")
    return arr.astype(bool, copy=False)


def _pair(pred: Any, ref: Any) -> tuple[np.ndarray, np.ndarray]:
    p, r = _as_bool(pred, "pred"), _as_bool(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got pred {p.shape} and ref {r.shape}.")
    return p, r


def _normalize_spacing(spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """``None`` (voxel units), one number for every axis, or one positive finite number per axis."""
    if spacing is None:
        return None
    if hasattr(spacing, "tolist"):
        spacing = spacing.tolist()
    values = [spacing] * ndim if np.isscalar(spacing) else list(spacing)  # type: ignore[list-item]
    if len(values) != ndim:
        raise ValueError(f"spacing must have one value per axis ({ndim}), got {spacing!r}.")
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) and v > 0 for v in out):
        raise ValueError(f"spacing values must be positive and finite, got {spacing!r}.")
    return out


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Slices of the bounding box of the nonzero voxels of ``mask``, grown by ``margin`` and clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface(mask: Any) -> np.ndarray:
    """One-voxel surface ``S(M) = M XOR erode(M)`` (connectivity-1 structure, outside = background), as medpy.

    Args:
        mask: binary array of any dimension (nonzero = object).

    Returns:
        Boolean array of the same shape.
    """
    m = _as_bool(mask, "mask")
    return m ^ binary_erosion(m, structure=generate_binary_structure(m.ndim, 1), iterations=1)


def _directed(from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...] | None) -> np.ndarray:
    """Distances from every voxel of ``from_surface`` to the nearest voxel of ``to_surface`` (non-empty)."""
    return distance_transform_edt(~to_surface, sampling=spacing)[from_surface]


def _cropped_surfaces(p: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Surfaces of two non-empty masks, computed on their joint bounding box plus a one-voxel margin."""
    box = _bounding_box(p | r, margin=1)
    return surface(p[box]), surface(r[box])


def surface_distances(
    pred: Any, ref: Any, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances ``(d(P -> R), d(R -> P))`` between two non-empty masks (medpy definition).

    Args:
        pred: prediction mask ``P``, e.g. ``(H, W, D)``; nonzero = object.
        ref: reference mask ``R``, same shape.
        spacing: ``None`` (default) for voxel units, or the voxel size per axis (or one number for all) for
            physical units (e.g. mm).

    Returns:
        Two float64 arrays: distances from each surface voxel of ``P`` to ``S(R)`` and from each surface voxel
        of ``R`` to ``S(P)``.

    Raises:
        ValueError: when a mask is empty (the distance to an empty surface is undefined), or on bad shapes/spacing.
    """
    p, r = _pair(pred, ref)
    sp = _normalize_spacing(spacing, p.ndim)
    if not p.any():
        raise ValueError("pred is empty: surface distances are undefined (see case_metrics for the empty policy).")
    if not r.any():
        raise ValueError("ref is empty: surface distances are undefined (see case_metrics for the empty policy).")
    sp_, sr_ = _cropped_surfaces(p, r)
    return _directed(sp_, sr_, sp), _directed(sr_, sp_, sp)


def dice(pred: Any, ref: Any) -> float:
    """Dice coefficient ``2 |P & R| / (|P| + |R|)``; ``1.0`` when both masks are empty (as medpy ``dc``).

    Args:
        pred: prediction mask of any shape; nonzero = object.
        ref: reference mask, same shape.
    """
    p, r = _pair(pred, ref)
    total = np.count_nonzero(p) + np.count_nonzero(r)
    return 1.0 if total == 0 else float(2.0 * np.count_nonzero(p & r) / total)


def jaccard(pred: Any, ref: Any) -> float:
    """Jaccard index ``|P & R| / |P | R|``; ``1.0`` when both masks are empty (as medpy ``jc``).

    Args:
        pred: prediction mask of any shape; nonzero = object.
        ref: reference mask, same shape.
    """
    p, r = _pair(pred, ref)
    union = np.count_nonzero(p | r)
    return 1.0 if union == 0 else float(np.count_nonzero(p & r) / union)


def hd95(pred: Any, ref: Any, spacing: float | Sequence[float] | None = None) -> float:
    """95th percentile of the pooled symmetric surface distances, ``percentile_95(d(P -> R) ++ d(R -> P))``.

    Identical to ``medpy.metric.binary.hd95(pred, ref, voxelspacing=spacing)``.

    Args:
        pred: prediction mask, e.g. ``(H, W, D)``; must be non-empty.
        ref: reference mask, same shape; must be non-empty.
        spacing: ``None`` (default, voxels) or voxel size per axis (physical units).
    """
    d_pr, d_rp = surface_distances(pred, ref, spacing)
    return float(np.percentile(np.concatenate((d_pr, d_rp)), 95))


def asd(pred: Any, ref: Any, spacing: float | Sequence[float] | None = None) -> float:
    """Average surface distance from prediction to reference, ``mean(d(P -> R))`` (one direction).

    Identical to ``medpy.metric.binary.asd(pred, ref, voxelspacing=spacing)``.

    Args:
        pred: prediction mask, e.g. ``(H, W, D)``; must be non-empty.
        ref: reference mask, same shape; must be non-empty.
        spacing: ``None`` (default, voxels) or voxel size per axis (physical units).
    """
    d_pr, _ = surface_distances(pred, ref, spacing)
    return float(d_pr.mean())


def case_metrics(
    pred: Any, ref: Any, spacing: float | Sequence[float] | None = None, empty_policy: str = EMPTY_POLICY
) -> dict[str, Any]:
    """All per-case metrics of one binary prediction, sharing the surface computation.

    Args:
        pred: prediction mask, e.g. ``(H, W, D)``; nonzero = object.
        ref: reference mask, same shape.
        spacing: voxel size per axis (e.g. mm) for the ``*_mm`` distances; ``None`` (default) leaves them ``NaN``.
        empty_policy: ``"nan"`` (default, ``EMPTY_POLICY``) or ``"reference"``; see the module docstring.

    Returns:
        ``{"dice", "jaccard", "hd95_vox", "asd_vox", "hd95_mm", "asd_mm"}`` as floats, plus the booleans
        ``"pred_empty"`` and ``"ref_empty"``.
    """
    if empty_policy not in EMPTY_POLICIES:
        raise ValueError(f"empty_policy must be one of {EMPTY_POLICIES}, got {empty_policy!r}.")
    p, r = _pair(pred, ref)
    sp = _normalize_spacing(spacing, p.ndim)
    p_empty, r_empty = not p.any(), not r.any()
    out: dict[str, Any] = {"dice": dice(p, r), "jaccard": jaccard(p, r)}
    nan = float("nan")
    if p_empty or r_empty:
        if empty_policy == "reference":
            out.update(dice=0.0, jaccard=0.0, hd95_vox=0.0, asd_vox=0.0, hd95_mm=0.0, asd_mm=0.0)
        elif p_empty and r_empty:
            mm = nan if sp is None else 0.0
            out.update(hd95_vox=0.0, asd_vox=0.0, hd95_mm=mm, asd_mm=mm)
        else:
            out.update(hd95_vox=nan, asd_vox=nan, hd95_mm=nan, asd_mm=nan)
    else:
        s_p, s_r = _cropped_surfaces(p, r)
        for unit, sampling in (("vox", None), ("mm", sp)):
            if unit == "mm" and sampling is None:
                out.update(hd95_mm=nan, asd_mm=nan)
                continue
            d_pr, d_rp = _directed(s_p, s_r, sampling), _directed(s_r, s_p, sampling)
            out[f"hd95_{unit}"] = float(np.percentile(np.concatenate((d_pr, d_rp)), 95))
            out[f"asd_{unit}"] = float(d_pr.mean())
    out["pred_empty"], out["ref_empty"] = bool(p_empty), bool(r_empty)
    return out


def summarize(rows: Sequence[dict[str, Any]], keys: Sequence[str] = METRIC_KEYS) -> dict[str, Any]:
    """Mean, standard deviation and median over cases of each metric, ignoring ``NaN`` entries.

    ``std`` is the population standard deviation (``ddof=0``, as ``numpy.std``). With the default ``"nan"``
    empty policy the distance statistics are therefore over the cases where both masks are non-empty (or both
    empty), while Dice/Jaccard include the zeros of empty predictions; ``n`` per metric says how many cases
    entered it.

    Args:
        rows: per-case dictionaries from ``case_metrics`` (extra keys, e.g. a case id, are ignored).
        keys: metrics to summarise (default ``METRIC_KEYS``); a key absent from every row is skipped.

    Returns:
        ``{metric: {"mean", "std", "median", "n"}, ..., "n_cases", "n_pred_empty", "n_ref_empty"}``; statistics of
        a metric with no defined value are ``NaN``.
    """
    out: dict[str, Any] = {}
    for key in keys:
        if not any(key in row for row in rows):
            continue
        values = np.asarray([float(row.get(key, float("nan"))) for row in rows], dtype=np.float64)
        valid = values[~np.isnan(values)]
        if valid.size == 0:
            out[key] = {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
            continue
        out[key] = {
            "mean": float(valid.mean()),
            "std": float(valid.std()),
            "median": float(np.median(valid)),
            "n": int(valid.size),
        }
    out["n_cases"] = len(rows)
    out["n_pred_empty"] = sum(bool(row.get("pred_empty", False)) for row in rows)
    out["n_ref_empty"] = sum(bool(row.get("ref_empty", False)) for row in rows)
    return out
