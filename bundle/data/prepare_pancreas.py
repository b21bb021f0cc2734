"""Pancreas-CT (TCIA NIH Pancreas-CT) into NIfTI volumes and a data list; see ``bundle.data.prepare``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from bundle.data.prepare import bbox, prepare_cases, read_volume, split_cases, write_split

__all__ = ["preprocess_pancreas_case", "prepare_pancreas"]


def preprocess_pancreas_case(
    image: MetaTensor,
    label: MetaTensor,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    hu_window: Sequence[float] = (-125.0, 275.0),
    margin: int = 25,
    name: str = "case",
) -> tuple[MetaTensor, MetaTensor]:
    """One Pancreas-CT case: RAS, ``spacing`` mm (CT bilinear; label nearest onto the CT grid), HU clip to
    ``hu_window`` scaled to [0, 1], crop x/y around the label (label > 0) with ``margin`` voxels (all z kept),
    z-score over the cropped volume.

    Args:
        image: CT ``(1, X, Y, Z)`` in HU with its affine.
        label: pancreas label ``(1, X', Y', Z')`` with its affine (any grid covering the CT).
        spacing: target voxel size in mm. Default 1 mm isotropic.
        hu_window: HU clipping window. Default ``(-125, 275)``.
        margin: x/y margin in voxels around the pancreas. Default 25.
        name: case name for error messages.

    Returns:
        ``(image float32, label uint8 0/1)``, both ``(1, X'', Y'', Z'')`` with the same affine.
    """
    from monai.transforms import (
        NormalizeIntensity,
        Orientation,
        ResampleToMatch,
        ScaleIntensityRange,
        Spacing,
        SpatialCrop,
    )

    lo, hi = (float(v) for v in hu_window)
    if not hi > lo:
        raise ValueError(f"hu_window must be (low, high) with high > low, got {tuple(hu_window)}.")
    img = Orientation(axcodes="RAS")(image.float())
    img = Spacing(pixdim=tuple(spacing), mode="bilinear")(img)
    lab = ResampleToMatch(mode="nearest")((label > 0).float(), img_dst=img)
    mask = np.asarray(lab[0]) > 0.5
    if not mask.any():
        raise ValueError(f"{name}: the label is empty on the CT grid (empty label, or label/CT geometries differ).")
    img = ScaleIntensityRange(a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True)(img)
    start, end = bbox(mask, axes=(0, 1), margin=margin)
    crop = SpatialCrop(roi_start=start, roi_end=end)
    img, lab = crop(img), crop(lab)
    img = NormalizeIntensity()(img)
    return img.float(), (lab > 0.5).to(torch.uint8)


def _number(name: str) -> str | None:
    found = re.findall(r"\d+", name)
    return f"{int(found[-1]):04d}" if found else None


def _pancreas_cases(images: Path, labels: Path) -> dict[str, tuple[Path, Path]]:
    """``{pancreas_NNNN: (CT folder or file, label file)}`` matched by the last number in the names."""
    from bundle.data.datalist import case_name

    label_files = {}
    for f in sorted(labels.iterdir()):
        if f.is_file() and case_name(f) is not None and _number(case_name(f)) is not None:
            label_files[_number(case_name(f))] = f
    cases = {}
    for entry in sorted(images.iterdir()):
        if entry.name.startswith("."):
            continue
        stem = case_name(entry) if entry.is_file() else entry.name
        if stem is None or _number(stem) is None:
            continue
        num = _number(stem)
        if num not in label_files:
            raise FileNotFoundError(f"no label for {entry} in {labels} (expected a file named like label{num}.nii.gz).")
        cases[f"pancreas_{num}"] = (entry, label_files[num])
    if not cases:
        raise FileNotFoundError(f"no CT case (DICOM folder or NIfTI/NRRD/MHA file) in {images}.")
    return cases


def prepare_pancreas(
    images: str | os.PathLike,
    labels: str | os.PathLike,
    out_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    n_labelled: int = 6,
    n_val: int = 0,
    n_test: int = 20,
    test_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    hu_window: Sequence[float] = (-125.0, 275.0),
    margin: int = 25,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, list[dict]]:
    """Prepare Pancreas-CT (see :func:`preprocess_pancreas_case`) and write its data list.

    Cases: every DICOM folder (e.g. TCIA's ``Pancreas-CT/PANCREAS_0001/``) or NIfTI/NRRD/MHA file in ``images``,
    matched to the file of ``labels`` with the same last number (``label0001.nii.gz``); ids ``pancreas_NNNN``.
    Split (sorted ids): the last ``n_test`` are test (the paper: 62 train / 20 test), the ``n_val`` before them
    validation, of the rest the first ``n_labelled`` labelled (paper budgets 3 / 6 / 12) and the others
    unlabelled; explicit ``test_ids`` / ``val_ids`` (ids or numbers) override.

    Args:
        images: folder of CT cases.
        labels: folder of label files.
        out_dir: output folder (``images/``, ``labels/``, the data list).
        datalist: data list path. Default ``<out_dir>/datalist.json``.
        n_labelled, n_val, n_test: split sizes. Defaults 6, 0, 20.
        test_ids, val_ids: explicit split. Default ``None``.
        spacing, hu_window, margin: preprocessing. Defaults 1 mm, (-125, 275), 25.
        overwrite: re-process cases whose outputs exist. Default False.
        log: progress printer (``None``: silent). Default ``print``.

    Returns:
        The data list (absolute paths).
    """
    images, labels, out_dir = Path(images), Path(labels), Path(out_dir)
    for p in (images, labels):
        if not p.is_dir():
            raise FileNotFoundError(f"folder not found: {p}")
    cases = _pancreas_cases(images, labels)
    norm = lambda ids: None if ids is None else [f"pancreas_{_number(str(i))}" for i in ids]  # noqa: E731
    split = split_cases(sorted(cases), n_labelled, n_val, n_test, val_ids=norm(val_ids), test_ids=norm(test_ids))

    def process(ct: Path, lab: Path) -> tuple[MetaTensor, MetaTensor]:
        return preprocess_pancreas_case(read_volume(ct), read_volume(lab), spacing, hu_window, margin, name=str(ct))

    files = prepare_cases(cases, out_dir, process, overwrite, log)
    return write_split(split, files, datalist or out_dir / "datalist.json")
