"""Evaluation of binary segmentations with the paper's metrics, and its reports and pictures.

Per case: Dice, Jaccard, 95HD and ASD (``bundle.evaluation.metrics.case_metrics``: medpy's definitions, 95HD pooled over both
directions, ASD prediction -> reference) in voxels and in millimetres. Foreground is every non-zero label of
both the prediction and the reference (the paper's tasks are binary; BraTS whole tumour = label > 0).

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

:class:`EvaluationHandler` feeds the report from a MONAI evaluator (``configs/evaluate.json``);
:func:`evaluate_checkpoint` runs that config for a checkpoint on LA h5 cases or a NIfTI data list
(``python -m scripts.evaluate``).
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
from ignite.engine import Engine, Events

from bundle.evaluation.metrics import EMPTY_POLICIES, EMPTY_POLICY, METRIC_KEYS, case_metrics, summarize
from bundle.inference.writers import spacing_from_affine

__all__ = [
    "EMPTY_POLICY_TEXT",
    "EvaluationReport",
    "EvaluationHandler",
    "describe_inferer",
    "paper_stride",
    "strip_padding",
    "evaluate_checkpoint",
]

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
PAPER_STRIDES = {(112, 112, 80): (18, 18, 4), (96, 96, 96): (16, 16, 16)}


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(case_id)).strip("_") or "case"


def _fmt(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value) * scale:.{digits}f}"


def _json_safe(obj: Any) -> Any:
    """NaN -> None, numpy/torch scalars and arrays -> Python (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _json_safe(obj.tolist())
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def _centre_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    """The axial index ``bundle.evaluation.figures`` draws: the rounded reference centroid (else prediction, else middle)."""
    for mask in (ref, pred):
        if mask.any():
            return int(round(float(np.nonzero(mask)[2].mean())))
    return ref.shape[2] // 2


def strip_padding(applied_operations: Sequence[Mapping[str, Any]], *volumes: Any) -> list[np.ndarray]:
    """Crop away the padding of the trailing ``SpatialPad`` records of ``applied_operations`` (the preprocessing's
    ``SpatialPadd`` to the patch size): the volumes ``(H, W, D)`` or ``(1, H, W, D)`` are returned as numpy
    ``(H', W', D')`` on the grid before the padding, so padded voxels never count in model-space metrics."""
    arrays = [_numpy(v) for v in volumes]
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
        p, r = _numpy(pred) > 0, _numpy(ref) > 0
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
            img = _numpy(image).astype(np.float32)
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
        """Mean / std / median / n per metric (``bundle.evaluation.metrics.summarize``), empty-prediction count and policy."""
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
        _atomic_text(self.output_dir / "summary.json", json.dumps(_json_safe(summary), indent=2) + "\n")
        _atomic_text(self.output_dir / "summary.md", self.markdown(summary))
        if self.overview and self._slices:
            from bundle.evaluation.figures import overview_figure

            overview_figure(self._slices, self.output_dir / "overview.png", spacing=self._spacing)
        return summary

    def _write_csv(self, path: Path) -> None:
        columns = ["case", *METRIC_KEYS, "pred_empty", "ref_empty", "pred_voxels", "ref_voxels", "spacing"]
        columns += sorted({k for row in self.rows for k in row} - set(columns))
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
        os.replace(tmp, path)

    def markdown(self, summary: Mapping[str, Any] | None = None) -> str:
        """The summary and per-case tables as markdown (Dice/Jaccard in %, distances in voxels and mm)."""
        summary = summary or self.summary()
        stats = summary["metrics"]
        lines = ["# Evaluation", ""]
        for key in ("checkpoint", "data", "section", "space", "inferer"):
            if key in self.info:
                value = self.info[key]
                lines.append(f"- {key}: `{json.dumps(_json_safe(value)) if not isinstance(value, str) else value}`")
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
                f"| {_LABELS[key]} | {_fmt(s['mean'], scale)} | {_fmt(s['std'], scale)} | "
                f"{_fmt(s['median'], scale)} | {s['n']} |"
            )
        lines += [
            "",
            "| case | " + " | ".join(_LABELS[k] for k in METRIC_KEYS) + " | empty prediction |",
            "| --- |" + " ---: |" * len(METRIC_KEYS) + " :---: |",
        ]
        for row in self.rows:
            cells = [_fmt(row[k], 100.0 if k in _PERCENT else 1.0) for k in METRIC_KEYS]
            lines.append(f"| {row['case']} | " + " | ".join(cells) + f" | {'yes' if row['pred_empty'] else ''} |")
        return "\n".join(lines) + "\n"


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class EvaluationHandler:
    """Ignite handler that scores every case of a MONAI evaluator run and writes the reports at the end.

    Spaces:

    - ``"original"``: the prediction (after ``Invertd``) is compared with the reference label as stored, read
      from the path under ``label_file_key`` (NIfTI, NRRD/MHA or the ``label`` dataset of an LA ``.h5``); the
      picture uses the scan as stored; millimetres from the scan's affine.
    - ``"model"``: the prediction in the preprocessed grid (no ``Invertd``) is compared with the label that the
      preprocessing loaded and resampled with it (nearest) under ``label_key``, after removing the padding to the
      patch size (:func:`strip_padding`, as the paper's protocol crops its padding away); the picture uses the
      preprocessed image; millimetres from the preprocessed affine. Used for LA h5 cases, e.g. the LA-lite
      benchmark (evaluation at the resampled resolution). With ``crop_foreground`` the grid is the cropped one.

    Args:
        output_dir: report folder (see :class:`EvaluationReport`).
        space: ``"original"`` (default) or ``"model"``.
        empty_policy: ``"nan"`` (default) or ``"reference"``.
        figures: per-case PNGs. Default True.
        overview: ``overview.png``. Default True.
        info: run description for ``summary.json``. Default ``None``.
        label_key: output key of the preprocessed label (``"model"`` space). Default ``"label"``.
        label_file_key: batch key of the label path (``"original"`` space). Default ``"label_file"``.
        h5_spacing: voxel size of ``.h5`` files read in ``"original"`` space. Default 0.625.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        space: str = "original",
        empty_policy: str = EMPTY_POLICY,
        figures: bool = True,
        overview: bool = True,
        info: Mapping[str, Any] | None = None,
        label_key: str = "label",
        label_file_key: str = "label_file",
        h5_spacing: float = 0.625,
    ) -> None:
        if space not in ("original", "model"):
            raise ValueError(f"space must be 'original' or 'model', got {space!r}.")
        self.report = EvaluationReport(output_dir, empty_policy, figures, overview, info)
        self.space = space
        self.label_key = label_key
        self.label_file_key = label_file_key
        self.h5_spacing = h5_spacing
        self.summary: dict[str, Any] | None = None
        self._loader: Any = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _load(self, path: str, key: str) -> Any:
        if self._loader is None:
            from bundle.data.transforms import LoadVolumed

            self._loader = LoadVolumed(["image", "label"], image_only=True, h5_spacing=self.h5_spacing)
        return self._loader({key: path})[key]

    def _case(self, item: Mapping[str, Any], out: Mapping[str, Any], n: int) -> None:
        meta = item.get("image_meta_dict") or getattr(item.get("image"), "meta", {}) or {}
        image_file = str(meta.get("filename_or_obj", ""))
        case_id = item.get("case_id") if isinstance(item.get("case_id"), str) else Path(image_file).name or f"case{n}"
        pred = out["pred"]
        if self.space == "original":
            label_file = item.get(self.label_file_key)
            if not isinstance(label_file, str):
                raise KeyError(f"case {case_id}: no label path under '{self.label_file_key}' to evaluate against.")
            ref = self._load(label_file, "label")
            image = (
                self._load(image_file, "image")
                if image_file and (self.report.figures or self.report.overview)
                else None
            )
            spacing = spacing_from_affine(ref.affine)
            extra = {"image_file": image_file, "label_file": label_file}
        else:
            ref = out.get(self.label_key)
            if ref is None:
                raise KeyError(
                    f"case {case_id}: no '{self.label_key}' in the evaluator output; 'model' space needs the label "
                    "loaded by the preprocessing (data list entries with a 'label' key)."
                )
            image = out.get("image")
            spacing = spacing_from_affine(getattr(image, "affine", None) if image is not None else pred.affine)
            ops = getattr(image if image is not None else pred, "applied_operations", [])
            if image is not None and tuple(_numpy(image).shape) == tuple(_numpy(ref).shape):
                pred, ref, image = strip_padding(ops, pred, ref, image)
            else:
                (pred, ref), image = strip_padding(ops, pred, ref), None
            extra = {"image_file": image_file}
        if tuple(_numpy(pred).shape) != tuple(_numpy(ref).shape):
            raise ValueError(
                f"case {case_id}: prediction shape {tuple(_numpy(pred).shape)} differs from the reference's "
                f"{tuple(_numpy(ref).shape)} ({self.space} space; reference {extra.get('label_file', 'preprocessed')})."
            )
        if image is not None and tuple(_numpy(image).shape) != tuple(_numpy(ref).shape):
            image = None
        self.report.add(case_id, pred, ref, spacing=spacing, image=image, extra=extra)

    def _iteration(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item, out in zip(batch, outputs):
            self._case(item, out, len(self.report.rows) + 1)

    def _completed(self, engine: Engine) -> None:
        self.summary = self.report.write()
        dice = self.summary["metrics"].get("dice", {})
        print(
            f"evaluation: {self.summary['n_cases']} case(s), mean Dice {_fmt(dice.get('mean'), 100.0)}%, "
            f"{self.summary['n_pred_empty']} empty prediction(s) -> {self.report.output_dir}",
            flush=True,
        )


def paper_stride(roi_size: Sequence[int]) -> tuple[int, ...]:
    """The paper's stride for its windows: 18x18x4 for 112x112x80 (LA), 16^3 for 96^3 (Pancreas, BraTS)."""
    roi = tuple(int(r) for r in roi_size)
    if roi not in PAPER_STRIDES:
        raise ValueError(
            f"the paper defines strides only for windows {sorted(PAPER_STRIDES)}; give the stride for {roi} explicitly."
        )
    return PAPER_STRIDES[roi]


def describe_inferer(inferer: Any) -> dict[str, Any]:
    """A JSON-able description of an inference protocol (``bundle.inference.writers.ProbabilityInferer`` or any inferer)."""
    desc: dict[str, Any] = {}
    inner = getattr(inferer, "inferer", inferer)
    if inner is not inferer:
        desc["flip_tta_axes"] = [list(a) for a in getattr(inferer, "flip_axes", [])]
    desc["name"] = type(inner).__name__
    for attr in ("roi_size", "stride", "overlap", "mode", "sw_batch_size"):
        if hasattr(inner, attr):
            value = getattr(inner, attr)
            desc[attr] = list(value) if isinstance(value, (tuple, list)) else getattr(value, "value", value)
    return _json_safe(desc)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    section: str = "test",
    la_dir: str | os.PathLike | None = None,
    la_list: str | os.PathLike | None = None,
    resample_factor: float | None = None,
    configs: Sequence[str | os.PathLike] = (),
    protocol: str = "monai",
    roi_size: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
    overlap: float | None = None,
    mode: str | None = None,
    sw_batch_size: int | None = None,
    space: str | None = None,
    empty_policy: str = EMPTY_POLICY,
    figures: bool = True,
    save_masks: bool = False,
    tta: bool = False,
    keep_largest_cc: bool = False,
    device: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    bundle_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint with ``configs/inference.json`` + ``configs/evaluate.json`` (+ ``configs``).

    Exactly one data source: ``datalist`` (+ ``section``) or ``la_dir`` + ``la_list`` (the legacy LA h5 layout,
    case = ``<la_dir>/<ID>/mri_norm2.h5``; a data list ``cases.json`` is written into ``output_dir``).

    Args:
        checkpoint: ``models/model.pt`` (flat state_dict) or a training checkpoint (its ``"network"`` entry);
            always read with ``torch.load(weights_only=True)``.
        output_dir: report folder.
        datalist: a data list JSON (paths relative to it).
        section: its section to evaluate. Default ``"test"``.
        la_dir: folder of LA case folders.
        la_list: file with one case ID per line.
        resample_factor: LA only: evaluate at ``0.625 / factor`` mm (0.5 gives the LA-lite 1.25 mm; images
            bilinear, labels nearest, through the preprocessing's ``Spacingd``). Default ``None``: native grid.
        configs: extra config files merged after the two (dataset presets such as ``configs/presets/la.json``).
            Default: ``configs/presets/la.json`` for LA cases, none for a data list.
        protocol: ``"monai"`` (``SlidingWindowInferer``: ``overlap``, ``mode``) or ``"paper"`` (exact-stride
            window, uniform averaging, no TTA, no component filtering). Default ``"monai"``.
        roi_size: window size; default the config's ``patch_size``.
        stride: paper protocol stride; default :func:`paper_stride` of the window.
        overlap, mode, sw_batch_size: ``SlidingWindowInferer`` settings; default the config's.
        space: ``"original"`` or ``"model"``; default ``"model"`` for LA cases, ``"original"`` for a data list.
        empty_policy: ``"nan"`` (default) or ``"reference"``.
        figures: per-case PNGs and the overview. Default True.
        save_masks: also write the predicted masks into ``output_dir/masks``. Default False.
        tta: flip test-time augmentation (monai protocol only). Default False.
        keep_largest_cc: keep the largest connected component (monai protocol only). Default False.
        device: e.g. ``"cpu"`` or ``"cuda:0"``; default the config's (CUDA when available).
        overrides: further config ids to set (e.g. ``{"n_filters": 16}``).
        bundle_root: the bundle folder; default the parent of this package.

    Returns:
        The summary (also written to ``output_dir/summary.json``).
    """
    from monai.bundle import ConfigWorkflow

    from bundle.data.prepare import la_entries
    from bundle.engine.checkpoint import safe_load

    root = Path(bundle_root) if bundle_root is not None else Path(__file__).resolve().parents[1]
    out = Path(output_dir).resolve()
    ckpt = Path(checkpoint).resolve()
    state = safe_load(ckpt)  # weights_only=True, errors name the file
    if not isinstance(state, Mapping) or not ("network" in state or all(hasattr(v, "shape") for v in state.values())):
        raise ValueError(f"{ckpt}: neither a flat state_dict of tensors nor a training checkpoint with 'network'.")
    kind = "training checkpoint ('network')" if "network" in state else "flat state_dict"
    del state
    if (datalist is None) == (la_dir is None):
        raise ValueError("give exactly one data source: a data list, or an LA folder with a list file.")
    if protocol not in ("monai", "paper"):
        raise ValueError(f"protocol must be 'monai' or 'paper', got {protocol!r}.")
    configs = [str(c) for c in configs]
    if la_dir is not None:
        if la_list is None:
            raise ValueError("an LA folder needs a list file (one case ID per line).")
        from bundle.data.datalist import write_datalist

        entries = la_entries(la_dir, la_list)
        data_file = write_datalist({"test": entries}, out / "cases.json")
        section, space = "test", space or "model"
        configs = configs or [str(root / "configs" / "presets" / "la.json")]
        data_desc = {"la_dir": str(Path(la_dir).resolve()), "la_list": str(Path(la_list).resolve())}
    else:
        data_file = Path(datalist).resolve()
        space = space or "original"
        data_desc = {"datalist": str(data_file)}
        if resample_factor is not None:
            raise ValueError("resample_factor applies to LA h5 cases only; set the spacing in a preset instead.")

    params: dict[str, Any] = {
        "bundle_root": str(root),
        "ckpt_path": str(ckpt),
        "input": str(data_file),
        "input_section": section,
        "eval_space": space,
        "eval_dir": str(out),
        "empty_policy": empty_policy,
        "eval_figures": bool(figures),
        "save_masks": bool(save_masks),
    }
    if resample_factor is not None:
        if not resample_factor > 0:
            raise ValueError(f"resample_factor must be positive, got {resample_factor}.")
        params["spacing"] = [0.625 / float(resample_factor)] * 3
    if roi_size is not None:
        params["sw_roi_size"] = [int(r) for r in roi_size]
    if sw_batch_size is not None:
        params["sw_batch_size"] = int(sw_batch_size)
    if device is not None:
        params["device"] = f"$torch.device('{device}')"
    if protocol == "paper":
        if tta or keep_largest_cc:
            raise ValueError("the paper protocol has no test-time augmentation and no component filtering.")
        params.update(window_inferer="@strided_inferer", tta=False, keep_largest_cc=False)
        if stride is not None:
            params["sw_stride"] = [int(s) for s in stride]
        else:
            params["sw_stride"] = "$bundle.evaluation.report.paper_stride(@sw_roi_size)"
    else:
        params.update(window_inferer="@sliding_window_inferer", tta=bool(tta), keep_largest_cc=bool(keep_largest_cc))
        if overlap is not None:
            params["sw_overlap"] = float(overlap)
        if mode is not None:
            params["sw_mode"] = mode
    params.update(dict(overrides or {}))
    files = [str(root / "configs" / "inference.json"), str(root / "configs" / "evaluate.json"), *configs]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"config file not found: {f}")
    params["eval_info"] = {
        "checkpoint": str(ckpt),
        "checkpoint_kind": kind,
        "data": data_desc,
        "section": section,
        "space": space,
        "protocol": protocol,
        "resample_factor": resample_factor,
        "configs": [os.path.relpath(f, root) if str(f).startswith(str(root)) else str(f) for f in files],
        # a JSON string: the config parser would resolve "@..." / "$..." values inside a dict
        "overrides": json.dumps(_json_safe(dict(overrides or {}))),
    }
    meta = root / "configs" / "metadata.json"
    workflow = ConfigWorkflow(
        config_file=files,
        meta_file=str(meta) if meta.is_file() else None,
        logging_file=str(root / "configs" / "logging.conf"),
        workflow_type="infer",
        **params,
    )
    workflow.initialize()
    print(f"evaluating {ckpt} ({kind}) with {describe_inferer(workflow.inferer)}", flush=True)
    workflow.run()
    workflow.finalize()
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))
