"""Evaluate a checkpoint: ``configs/inference.json`` + ``configs/evaluate.json`` run through MONAI's ``ConfigWorkflow``
(``python -m scripts.evaluate``), on LA h5 cases or a data list, with MONAI's window or the paper's exact stride."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.evaluation.metrics import EMPTY_POLICY
from bundle.evaluation.report import json_safe

__all__ = ["PAPER_STRIDES", "paper_stride", "describe_inferer", "default_bundle_root", "evaluate_checkpoint"]

PAPER_STRIDES = {(112, 112, 80): (18, 18, 4), (96, 96, 96): (16, 16, 16)}


def default_bundle_root() -> Path:
    """The bundle folder: the working directory when it holds ``configs/inference.json`` (the bundle convention,
    ``bundle_root: "."``), else the checkout this package lies in."""
    cwd = Path.cwd()
    if (cwd / "configs" / "inference.json").is_file():
        return cwd
    return Path(__file__).resolve().parents[2]


def paper_stride(roi_size: Sequence[int]) -> tuple[int, ...]:
    """The paper's stride for its windows: 18x18x4 for 112x112x80 (LA), 16^3 for 96^3 (Pancreas, BraTS)."""
    roi = tuple(int(r) for r in roi_size)
    if roi not in PAPER_STRIDES:
        raise ValueError(
            f"the paper defines strides only for windows {sorted(PAPER_STRIDES)}; give the stride for {roi} explicitly."
        )
    return PAPER_STRIDES[roi]


def describe_inferer(inferer: Any) -> dict[str, Any]:
    """A JSON-able description of an inference protocol (``bundle.inference.inferers.ProbabilityInferer`` or any
    inferer)."""
    desc: dict[str, Any] = {}
    inner = getattr(inferer, "inferer", inferer)
    if inner is not inferer:
        desc["flip_tta_axes"] = [list(a) for a in getattr(inferer, "flip_axes", [])]
        if hasattr(inferer, "average"):
            desc["average"] = inferer.average
    desc["name"] = type(inner).__name__
    for attr in ("roi_size", "stride", "keep", "overlap", "mode", "sigma_scale", "sw_batch_size"):
        if hasattr(inner, attr):
            value = getattr(inner, attr)
            desc[attr] = list(value) if isinstance(value, (tuple, list)) else getattr(value, "value", value)
    return json_safe(desc)


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
    overlap: float | Sequence[float] | None = None,
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
        protocol: ``"monai"`` or ``"default"`` (the same: the bundle's default window, ``window_inferer`` of
            ``configs/inference.json``, a lattice subset of a dense strided grid with gaussian blending) or
            ``"paper"`` (exact-stride window, uniform averaging, no TTA, no component filtering). Default ``"monai"``.
        roi_size: window size; default the config's ``patch_size``.
        stride: paper protocol stride; default :func:`paper_stride` of the window.
        overlap: MONAI ``SlidingWindowInferer`` overlap (one value or one per axis): gives that window instead of
            the default one. Default ``None``.
        mode, sw_batch_size: blending (``"gaussian"`` or ``"constant"``) and windows per forward pass; default the
            config's.
        space: ``"original"`` or ``"model"``; default ``"model"`` for LA cases, ``"original"`` for a data list.
        empty_policy: ``"nan"`` (default) or ``"reference"``.
        figures: per-case PNGs and the overview. Default True.
        save_masks: also write the predicted masks into ``output_dir/masks``. Default False.
        tta: flip test-time augmentation (monai protocol only). Default False.
        keep_largest_cc: keep the largest connected component (monai protocol only). Default False.
        device: e.g. ``"cpu"`` or ``"cuda:0"``; default the config's (CUDA when available).
        overrides: further config ids to set (e.g. ``{"n_filters": 16}``).
        bundle_root: the bundle folder (with ``configs/``); default :func:`default_bundle_root`.

    Returns:
        The summary (also written to ``output_dir/summary.json``).
    """
    from monai.bundle import ConfigWorkflow

    from bundle.data.prepare import la_entries
    from bundle.engine.files import safe_load

    root = Path(bundle_root) if bundle_root is not None else default_bundle_root()
    out = Path(output_dir).resolve()
    ckpt = Path(checkpoint).resolve()
    state = safe_load(ckpt)  # weights_only=True, errors name the file
    if not isinstance(state, Mapping) or not ("network" in state or all(hasattr(v, "shape") for v in state.values())):
        raise ValueError(f"{ckpt}: neither a flat state_dict of tensors nor a training checkpoint with 'network'.")
    kind = "training checkpoint ('network')" if "network" in state else "flat state_dict"
    del state
    if (datalist is None) == (la_dir is None):
        raise ValueError("give exactly one data source: a data list, or an LA folder with a list file.")
    if protocol not in ("monai", "default", "paper"):
        raise ValueError(f"protocol must be 'default' (also 'monai') or 'paper', got {protocol!r}.")
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
            params["sw_stride"] = "$bundle.evaluation.evaluate.paper_stride(@sw_roi_size)"
    else:
        params.update(tta=bool(tta), keep_largest_cc=bool(keep_largest_cc))
        if overlap is not None:  # MONAI's overlap-placed window instead of the default lattice
            params["window_inferer"] = "@sliding_window_inferer"
            params["sw_overlap"] = [float(o) for o in overlap] if isinstance(overlap, (list, tuple)) else float(overlap)
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
        "overrides": json.dumps(json_safe(dict(overrides or {}))),
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
