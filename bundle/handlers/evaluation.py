"""Score every case of a MONAI evaluator run and write the evaluation report (``configs/evaluate.json``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from bundle.data.readers import spacing_from_affine
from bundle.evaluation.metrics import EMPTY_POLICY
from bundle.evaluation.report import EvaluationReport, as_numpy, fmt, strip_padding

__all__ = ["EvaluationHandler"]


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
            if image is not None and tuple(as_numpy(image).shape) == tuple(as_numpy(ref).shape):
                pred, ref, image = strip_padding(ops, pred, ref, image)
            else:
                (pred, ref), image = strip_padding(ops, pred, ref), None
            extra = {"image_file": image_file}
        if tuple(as_numpy(pred).shape) != tuple(as_numpy(ref).shape):
            raise ValueError(
                f"case {case_id}: prediction shape {tuple(as_numpy(pred).shape)} differs from the reference's "
                f"{tuple(as_numpy(ref).shape)} ({self.space} space; "
                f"reference {extra.get('label_file', 'preprocessed')})."
            )
        if image is not None and tuple(as_numpy(image).shape) != tuple(as_numpy(ref).shape):
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
            f"evaluation: {self.summary['n_cases']} case(s), mean Dice {fmt(dice.get('mean'), 100.0)}%, "
            f"{self.summary['n_pred_empty']} empty prediction(s) -> {self.report.output_dir}",
            flush=True,
        )
