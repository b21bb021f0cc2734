"""Evaluation reports of binary segmentations with the paper's metrics: CSV, JSON, markdown and pictures.

Per case: Dice, Jaccard, 95HD and ASD (``bundle.evaluation.metrics.case_metrics``: medpy's definitions, 95HD pooled
over both directions, ASD prediction -> reference) in voxels and in millimetres. Foreground is every non-zero label
of both the prediction and the reference (the paper's tasks are binary; BraTS whole tumour = label > 0).

Empty predictions are never hidden: with the default policy ``"nan"`` a case whose prediction is empty (and
reference not) scores Dice = Jaccard = 0 and undefined (NaN) distances, which the distance means skip; the
``"reference"`` policy scores everything 0 as the UA-MT/MC-Net code did silently. Either way ``summary.json``
and ``summary.md`` report the policy, the number of empty predictions and their case ids.

Outputs of :class:`EvaluationReport` in ``output_dir``:

- ``metrics.csv``: one row per case (``case``, the six metrics, ``pred_empty``, ``ref_empty``, voxel counts,
  spacing, source files);
- ``summary.json``: mean / std / median / n of every metric, ``n_cases``, ``n_pred_empty``, the policy and the
  run description (checkpoint, inferer, ...);
- ``summary.md``: the same as markdown tables (summary, then per case);
- ``cases/<case>.png``: axial / coronal / sagittal slices through the reference centre, reference boundary red,
  prediction boundary green (``bundle.evaluation.figures.case_figure``); ``overview.png``: one axial slice per case.

``bundle.handlers.evaluation.EvaluationHandler`` feeds the report from a MONAI evaluator (``configs/evaluate.json``);
``bundle.evaluation.evaluate.evaluate_checkpoint`` runs that config for a checkpoint (``python -m scripts.evaluate``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle.engine.files import atomic_path, write_json_atomic, write_text_atomic
from bundle.evaluation.metrics import EMPTY_POLICIES, EMPTY_POLICY, METRIC_KEYS, case_metrics, summarize

__all__ = ["EMPTY_POLICY_TEXT", "EvaluationReport", "strip_padding", "as_numpy", "json_safe", "fmt"]

EMPTY_POLICY_TEXT = {
    "nan": "a case with an empty prediction (non-empty reference) scores Dice = Jaccard = 0 and undefined (NaN) "
    "95HD/ASD; distance means are over the cases where both masks are non-empty; both empty scores "
    "Dice = 1 and distances 0",
    "reference": "UA-MT/MC-Net behaviour: if either mask is empty, all four metrics are 0 (a 0 distance flatters "
    "the distance means)",
}

_LABELS = {
    "dice": "Dice (%)",
    "jaccard": "Jaccard (%)",
    "hd95_vox": "95HD (voxels)",
    "asd_vox": "ASD (voxels)",
    "hd95_mm": "95HD (mm)",
    "asd_mm": "ASD (mm)",
}
_PERCENT = ("dice", "jaccard")


def as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(case_id)).strip("_") or "case"


def fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value) * scale:.{digits}f}"


def json_safe(obj: Any) -> Any:
    """NaN -> None, numpy/torch scalars and arrays -> Python (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def _centre_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    """The axial index ``bundle.evaluation.figures`` draws: the rounded reference centroid (else prediction, else
    middle)."""
    for mask in (ref, pred):
        if mask.any():
            return int(round(float(np.nonzero(mask)[2].mean())))
    return ref.shape[2] // 2


def strip_padding(applied_operations: Sequence[Mapping[str, Any]], *volumes: Any) -> list[np.ndarray]:
    """Crop away the padding of the trailing ``SpatialPad`` records of ``applied_operations`` (the preprocessing's
    ``SpatialPadd`` to the patch size): the volumes ``(H, W, D)`` or ``(1, H, W, D)`` are returned as numpy
    ``(H', W', D')`` on the grid before the padding, so padded voxels never count in model-space metrics."""
    arrays = [as_numpy(v) for v in volumes]
    for op in reversed(list(applied_operations or [])):
        if str(op.get("class")) not in ("SpatialPad", "SpatialPadd"):
            break
        padded = list(op.get("extra_info", {}).get("padded", []))[-3:]
        if len(padded) != 3:
            break
        crop = tuple(slice(int(lo), arrays[0].shape[i] - int(hi)) for i, (lo, hi) in enumerate(padded))
        arrays = [a[crop] for a in arrays]
    return arrays


class EvaluationReport:
    """Per-case metrics, reports and pictures of one evaluation run.

    Args:
        output_dir: folder of ``metrics.csv``, ``summary.json``, ``summary.md``, ``cases/`` and ``overview.png``
            (created).
        empty_policy: ``"nan"`` (default) or ``"reference"``; see the module docstring.
        figures: write one PNG per case (needs matplotlib). Default True.
        overview: write ``overview.png`` (one axial slice per case; needs matplotlib). Default True.
        info: run description stored in ``summary.json`` (checkpoint, inferer, data ...). Default ``None``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        empty_policy: str = EMPTY_POLICY,
        figures: bool = True,
        overview: bool = True,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if empty_policy not in EMPTY_POLICIES:
            raise ValueError(f"empty_policy must be one of {EMPTY_POLICIES}, got {empty_policy!r}.")
        self.output_dir = Path(output_dir)
        self.empty_policy = empty_policy
        self.figures = bool(figures)
        self.overview = bool(overview)
        self.info = dict(info or {})
        self.rows: list[dict[str, Any]] = []
        self._slices: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]] = []
        self._spacing: tuple[float, ...] | None = None

    def add(
        self,
        case_id: str,
        pred: Any,
        ref: Any,
        spacing: Sequence[float] | None = None,
        image: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Score one case and draw its picture.

        Args:
            case_id: case name (unique within the run; used for the PNG file name).
            pred: predicted label map ``(H, W, D)`` or ``(1, H, W, D)``; foreground = non-zero.
            ref: reference label map of the same shape.
            spacing: voxel size in mm per axis for the ``*_mm`` metrics; ``None`` leaves them NaN.
            image: intensity volume of the same shape for the picture; ``None``: no picture for this case.
            extra: more columns for the CSV (e.g. file paths).

        Returns:
            The CSV row.
        """
        p, r = as_numpy(pred) > 0, as_numpy(ref) > 0
        if p.shape != r.shape:
            raise ValueError(f"case {case_id}: prediction shape {p.shape} differs from the reference's {r.shape}.")
        if any(row["case"] == case_id for row in self.rows):
            raise ValueError(f"case {case_id} evaluated twice: case ids must be unique.")
        sp = tuple(float(s) for s in spacing) if spacing is not None else None
        row: dict[str, Any] = {"case": case_id, **case_metrics(p, r, spacing=sp, empty_policy=self.empty_policy)}
        row["pred_voxels"], row["ref_voxels"] = int(p.sum()), int(r.sum())
        row["spacing"] = "x".join(f"{s:g}" for s in sp) if sp is not None else ""
        row.update(extra or {})
        self.rows.append(row)
        if image is not None and (self.figures or self.overview):
            img = as_numpy(image).astype(np.float32)
            if img.shape != p.shape:
                raise ValueError(f"case {case_id}: image shape {img.shape} differs from the masks' {p.shape}.")
            if self.figures:
                from bundle.evaluation.figures import case_figure

                title = f"{case_id}  Dice {row['dice']:.3f}" + ("  (empty prediction)" if row["pred_empty"] else "")
                case_figure(
                    img, r, p, self.output_dir / "cases" / f"{_safe_name(case_id)}.png", title=title, spacing=sp
                )
            if self.overview:  # keep only the axial slice the overview draws
                k = _centre_slice(r, p)
                sl = slice(k, k + 1)
                self._slices.append(
                    (case_id, img[:, :, sl].copy(), r[:, :, sl].copy(), p[:, :, sl].copy(), row["dice"])
                )
                self._spacing = self._spacing or sp
        return row

    def summary(self) -> dict[str, Any]:
        """Mean / std / median / n per metric (``bundle.evaluation.metrics.summarize``), empty-prediction count and
        policy."""
        stats = summarize(self.rows)
        return {
            "n_cases": stats.pop("n_cases"),
            "n_pred_empty": stats.pop("n_pred_empty"),
            "n_ref_empty": stats.pop("n_ref_empty"),
            "pred_empty_cases": [row["case"] for row in self.rows if row["pred_empty"]],
            "empty_policy": self.empty_policy,
            "empty_policy_description": EMPTY_POLICY_TEXT[self.empty_policy],
            "metrics": stats,
            "info": self.info,
        }

    def write(self) -> dict[str, Any]:
        """Write ``metrics.csv``, ``summary.json``, ``summary.md`` and ``overview.png``; returns the summary."""
        if not self.rows:
            raise ValueError(f"no case was evaluated: nothing to write to {self.output_dir}.")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        summary = self.summary()
        self._write_csv(self.output_dir / "metrics.csv")
        write_json_atomic(self.output_dir / "summary.json", json_safe(summary))
        write_text_atomic(self.output_dir / "summary.md", self.markdown(summary))
        if self.overview and self._slices:
            from bundle.evaluation.figures import overview_figure

            overview_figure(self._slices, self.output_dir / "overview.png", spacing=self._spacing)
        return summary

    def _write_csv(self, path: Path) -> None:
        columns = ["case", *METRIC_KEYS, "pred_empty", "ref_empty", "pred_voxels", "ref_voxels", "spacing"]
        columns += sorted({k for row in self.rows for k in row} - set(columns))
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})

    def markdown(self, summary: Mapping[str, Any] | None = None) -> str:
        """The summary and per-case tables as markdown (Dice/Jaccard in %, distances in voxels and mm)."""
        summary = summary or self.summary()
        stats = summary["metrics"]
        lines = ["# Evaluation", ""]
        for key in ("checkpoint", "data", "section", "space", "inferer"):
            if key in self.info:
                value = self.info[key]
                lines.append(f"- {key}: `{json.dumps(json_safe(value)) if not isinstance(value, str) else value}`")
        n_empty = summary["n_pred_empty"]
        lines += [
            f"- cases: {summary['n_cases']}; empty predictions: {n_empty}"
            + (f" ({', '.join(summary['pred_empty_cases'])})" if n_empty else ""),
            f"- empty-prediction policy `{summary['empty_policy']}`: {summary['empty_policy_description']}",
            "",
            "| metric | mean | std | median | n |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for key in METRIC_KEYS:
            if key not in stats:
                continue
            s, scale = stats[key], (100.0 if key in _PERCENT else 1.0)
            lines.append(
                f"| {_LABELS[key]} | {fmt(s['mean'], scale)} | {fmt(s['std'], scale)} | "
                f"{fmt(s['median'], scale)} | {s['n']} |"
            )
        lines += [
            "",
            "| case | " + " | ".join(_LABELS[k] for k in METRIC_KEYS) + " | empty prediction |",
            "| --- |" + " ---: |" * len(METRIC_KEYS) + " :---: |",
        ]
        for row in self.rows:
            cells = [fmt(row[k], 100.0 if k in _PERCENT else 1.0) for k in METRIC_KEYS]
            lines.append(f"| {row['case']} | " + " | ".join(cells) + f" | {'yes' if row['pred_empty'] else ''} |")
        return "\n".join(lines) + "\n"
