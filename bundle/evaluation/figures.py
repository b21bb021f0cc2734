"""Figures: per-case orthogonal slices with contours, a case overview grid, training and learning curves.

matplotlib is an optional dependency (``pip install matplotlib`` or the bundle's ``plot`` extra); it is
imported inside the functions with the non-interactive Agg backend, so importing this module never needs it.

Orientation convention: volumes are ``(H, W, D)`` arrays in their stored index order (no reorientation).
The axial view is the slice ``[:, :, k]`` drawn with axis 0 horizontally and axis 1 vertically; coronal
``[:, j, :]`` (axis 0 across, axis 2 up); sagittal ``[i, :, :]`` (axis 1 across, axis 2 up); the origin is at
the lower left and the pixel aspect follows ``spacing``. Reference boundaries are red, prediction boundaries
green.

Run log format (``read_run_log``): a JSON-lines file, one object per logged iteration, every object with an
integer ``"iteration"`` and any number of float fields, e.g. training lines
``{"iteration": 200, "loss": 0.41, "loss_sup": 0.30, "loss_consis": 0.08, "loss_sharp": 0.03}`` and validation
lines ``{"iteration": 200, "val_dice": 0.87}``. A CSV with an ``iteration`` column and empty cells for missing
values is read the same way. Keys starting with ``loss`` are plotted as loss terms, keys starting with ``val_``
as validation metrics.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["case_figure", "overview_figure", "read_run_log", "training_curves", "learning_curves"]

REF_COLOR = "red"
PRED_COLOR = "green"
Series = dict[str, list[tuple[int, float]]]


def _pyplot() -> Any:
    """``matplotlib.pyplot`` with the Agg backend, or an ImportError that says how to install it."""
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bundle.evaluation.figures needs matplotlib, a dependency of the bundle: `pip install matplotlib` "
            "(or reinstall the bundle, `pip install -e .`)."
        ) from err
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _to_numpy(x: Any, name: str, ndim: int = 3) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:  # (1, H, W, D) channel-first
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}D volume (H, W, D) (or (1, H, W, D)), got shape {arr.shape}.")
    return arr


def _volumes(image: Any, ref: Any, pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = _to_numpy(image, "image").astype(np.float32)
    r = _to_numpy(ref, "ref").astype(bool) if ref is not None else np.zeros(img.shape, bool)
    p = _to_numpy(pred, "pred").astype(bool) if pred is not None else np.zeros(img.shape, bool)
    if not img.shape == r.shape == p.shape:
        raise ValueError(f"image {img.shape}, ref {r.shape} and pred {p.shape} must have the same shape.")
    return img, r, p


def _spacing(spacing: Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be three positive numbers, got {spacing!r}.")
    return sp  # type: ignore[return-value]


def _centre(ref: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Rounded centroid of ``ref``, else of ``pred`` when ``ref`` is empty, else the volume centre."""
    for mask in (ref, pred):
        if mask.any():
            return tuple(int(round(float(c.mean()))) for c in np.nonzero(mask))  # type: ignore[return-value]
    return tuple(s // 2 for s in ref.shape)  # type: ignore[return-value]


def _window(image: np.ndarray) -> tuple[float, float]:
    """Display range: the 0.5 and 99.5 percentiles of the image (robust to CT extremes)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(lo), float(hi) if hi > lo else float(lo) + 1.0


def _draw_slice(
    ax: Any, img2d: np.ndarray, ref2d: np.ndarray, pred2d: np.ndarray, aspect: float, vrange: tuple[float, float]
) -> None:
    """Grey image with the reference (red) and prediction (green) boundaries; first array axis horizontal."""
    ax.imshow(
        img2d.T, cmap="gray", origin="lower", aspect=aspect, vmin=vrange[0], vmax=vrange[1], interpolation="nearest"
    )
    for mask, color in ((ref2d, REF_COLOR), (pred2d, PRED_COLOR)):
        if mask.any() and not mask.all():
            ax.contour(mask.T.astype(np.float32), levels=[0.5], colors=color, linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])


def _legend(fig: Any) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=REF_COLOR, label="reference"), Line2D([], [], color=PRED_COLOR, label="prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False, fontsize=8)


def case_figure(
    image: Any,
    ref: Any,
    pred: Any,
    out_png: str | Path,
    title: str | None = None,
    spacing: Sequence[float] | None = None,
) -> Path:
    """Axial, coronal and sagittal slices through the reference centre, with both boundaries, saved as PNG.

    Args:
        image: intensity volume ``(H, W, D)`` (or ``(1, H, W, D)``); numpy array or tensor.
        ref: reference mask, same shape (``None`` = empty).
        pred: predicted mask, same shape (``None`` = empty).
        out_png: output path; parent folders are created.
        title: figure title (default none).
        spacing: voxel size per axis for the pixel aspect (default ``None``: isotropic).

    Returns:
        The written path.
    """
    plt = _pyplot()
    img, r, p = _volumes(image, ref, pred)
    sx, sy, sz = _spacing(spacing)
    i, j, k = _centre(r, p)
    vrange = _window(img)
    views = (
        (f"axial (z={k})", img[:, :, k], r[:, :, k], p[:, :, k], sy / sx),
        (f"coronal (y={j})", img[:, j, :], r[:, j, :], p[:, j, :], sz / sx),
        (f"sagittal (x={i})", img[i, :, :], r[i, :, :], p[i, :, :], sz / sy),
    )
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (name, im2, r2, p2, aspect) in zip(axes, views):
        _draw_slice(ax, im2, r2, p2, aspect, vrange)
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, plt, out_png)


def overview_figure(
    items: Sequence[tuple[str, Any, Any, Any, float]],
    out_png: str | Path,
    spacing: Sequence[float] | None = None,
    ncols: int = 5,
) -> Path:
    """Grid of one axial slice per case (through the reference centre), both boundaries, Dice in each title.

    Args:
        items: ``(name, image, ref, pred, dice)`` per case; volumes ``(H, W, D)``.
        out_png: output path; parent folders are created.
        spacing: voxel size per axis for the pixel aspect (default ``None``: isotropic); shared by all cases.
        ncols: number of columns of the grid (default 5).

    Returns:
        The written path.
    """
    if not items:
        raise ValueError("items is empty: nothing to plot.")
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}.")
    plt = _pyplot()
    sx, sy, _ = _spacing(spacing)
    ncols = min(ncols, len(items))
    nrows = math.ceil(len(items) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.8 * ncols, 2.9 * nrows + 0.4), squeeze=False)
    for ax in axes.flat[len(items) :]:
        ax.axis("off")
    for ax, (name, image, ref, pred, dice_value) in zip(axes.flat, items):
        img, r, p = _volumes(image, ref, pred)
        k = _centre(r, p)[2]
        _draw_slice(ax, img[:, :, k], r[:, :, k], p[:, :, k], sy / sx, _window(img))
        ax.set_title(f"{name}  Dice {float(dice_value):.3f}", fontsize=8)
    _legend(fig)
    fig.tight_layout(rect=(0, 0.06 if nrows == 1 else 0.03, 1, 1))
    return _save(fig, plt, out_png)


def read_run_log(path: str | Path) -> Series:
    """Read a run log (JSON lines, or CSV with an ``iteration`` column) into ``{key: [(iteration, value), ...]}``.

    Every numeric non-``iteration`` field of every line becomes a point of the series of that name; ``null``,
    empty and non-numeric values are skipped. Points keep file order.

    Args:
        path: ``*.jsonl`` / ``*.json`` (one JSON object per line) or ``*.csv``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run log not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            records: list[dict[str, Any]] = list(csv.DictReader(f))
    else:
        records = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n} is not a JSON object: {line[:80]!r}") from err
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{n} is not a JSON object: {line[:80]!r}")
            records.append(obj)
    series: Series = {}
    for n, rec in enumerate(records, start=1):
        if rec.get("iteration") in (None, ""):
            raise ValueError(f"{path}: record {n} has no 'iteration': {rec}")
        it = int(float(rec["iteration"]))
        for key, value in rec.items():
            if key == "iteration" or value is None or value == "" or isinstance(value, bool):
                continue
            try:
                series.setdefault(key, []).append((it, float(value)))
            except (TypeError, ValueError):
                continue
    return series


def training_curves(metrics: Series | str | Path, out_png: str | Path) -> Path:
    """Loss terms against iteration (left) and validation metrics against iteration (right), saved as PNG.

    Args:
        metrics: ``{name: [(iteration, value), ...]}`` or the path of a run log (see ``read_run_log``). Names
            starting with ``loss`` go to the left panel (log scale when all positive), names starting with
            ``val_`` to the right one; other names are ignored.
        out_png: output path; parent folders are created.

    Returns:
        The written path.
    """
    series = read_run_log(metrics) if isinstance(metrics, (str, Path)) else dict(metrics)
    losses = {k: v for k, v in series.items() if k.startswith("loss") and v}
    vals = {k: v for k, v in series.items() if k.startswith("val_") and v}
    if not losses and not vals:
        raise ValueError(f"no 'loss*' or 'val_*' series to plot, got keys {sorted(series)}.")
    plt = _pyplot()
    fig, (ax_l, ax_v) = plt.subplots(1, 2, figsize=(11, 4))
    for name, pts in sorted(losses.items()):
        its, ys = zip(*pts)
        ax_l.plot(its, ys, label=name, linewidth=1.0)
    if losses and all(y > 0 for pts in losses.values() for _, y in pts):
        ax_l.set_yscale("log")
    ax_l.set(xlabel="iteration", ylabel="loss", title="training losses")
    for name, pts in sorted(vals.items()):
        its, ys = zip(*pts)
        ax_v.plot(its, ys, marker="o", markersize=3, label=name)
    ax_v.set(xlabel="iteration", ylabel="validation", title="validation")
    for ax, group in ((ax_l, losses), (ax_v, vals)):
        ax.grid(alpha=0.3)
        if group:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, out_png)


def learning_curves(
    runs: dict[str, Sequence[tuple[int, float]]],
    out_png: str | Path,
    ylabel: str = "validation Dice",
    styles: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Validation Dice against iteration, one line per arm (e.g. supervised-8, plgdf-8, supervised-72).

    Args:
        runs: ``{arm_name: [(iteration, val_dice), ...]}``.
        out_png: output path; parent folders are created.
        ylabel: y-axis label (default ``"validation Dice"``).
        styles: ``{arm_name: matplotlib line keywords}`` (``color``, ``linestyle``...) for some lines. Default
            ``None``: matplotlib's colour cycle.

    Returns:
        The written path.
    """
    if not runs or not any(runs.values()):
        raise ValueError("runs is empty: nothing to plot.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, pts in runs.items():
        if not pts:
            continue
        its, ys = zip(*sorted(pts))
        ax.plot(its, ys, **{"marker": "o", "markersize": 3, **(styles or {}).get(name, {})}, label=name)
    ax.set(xlabel="iteration", ylabel=ylabel, title="learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, out_png)


def _save(fig: Any, plt: Any, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
