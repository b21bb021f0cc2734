"""BraTS 2019 FLAIR (whole tumour) into NIfTI volumes and a data list; see ``bundle.data.prepare``."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from bundle.data.prepare import bbox, prepare_cases, read_volume, split_cases, write_split

__all__ = ["find_brats_cases", "preprocess_brats_case", "prepare_brats"]


_SHARED_LAYOUT = ("Flair_subtrMeanDivStd.nii.gz", "OTMultiClass.nii.gz", "brainmask.nii.gz")


def find_brats_cases(src: str | os.PathLike) -> dict[str, tuple[Path, Path, Path | None]]:
    """``{case: (flair, label, brain mask or None)}`` below ``src`` (searched recursively).

    Recognised: ``<case>/<case>_flair.nii(.gz)`` + ``<case>_seg.nii(.gz)`` (BraTS 2019; no mask file: brain =
    FLAIR > 0) and ``<case>/Flair_subtrMeanDivStd.nii.gz`` + ``OTMultiClass.nii.gz`` + ``brainmask.nii.gz``.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"BraTS folder not found: {src}")
    cases: dict[str, tuple[Path, Path, Path | None]] = {}
    for flair in sorted(src.rglob("*")):
        name = flair.name
        if not flair.is_file():
            continue
        if name == _SHARED_LAYOUT[0]:
            folder = flair.parent
            label, mask = folder / _SHARED_LAYOUT[1], folder / _SHARED_LAYOUT[2]
            case = folder.name
            entry = (flair, label, mask if mask.is_file() else None)
        elif re.search(r"_flair\.nii(\.gz)?$", name):
            case = re.sub(r"_flair\.nii(\.gz)?$", "", name)
            label = next(
                (
                    flair.parent / f"{case}_seg{ext}"
                    for ext in (".nii.gz", ".nii")
                    if (flair.parent / f"{case}_seg{ext}").is_file()
                ),
                flair.parent / f"{case}_seg.nii.gz",
            )
            entry = (flair, label, None)
        else:
            continue
        if not entry[1].is_file():
            raise FileNotFoundError(f"no label for {flair} (expected {entry[1]}).")
        if case in cases:
            raise ValueError(f"two BraTS cases named {case}: {cases[case][0]} and {flair}.")
        cases[case] = entry
    if not cases:
        raise FileNotFoundError(f"no BraTS case (*_flair.nii.gz or {_SHARED_LAYOUT[0]}) below {src}.")
    return cases


def preprocess_brats_case(
    flair: MetaTensor,
    label: MetaTensor,
    brain: MetaTensor | None = None,
    upper_percentile: float = 99.9,
    name: str = "case",
) -> tuple[MetaTensor, MetaTensor]:
    """One BraTS case: crop to the brain's bounding box, clip at the ``upper_percentile`` of the brain voxels,
    z-score over them (0 outside the brain); whole tumour = label > 0.

    Args:
        flair: FLAIR ``(1, X, Y, Z)``.
        label: BraTS labels, same grid.
        brain: brain mask, same grid; ``None``: FLAIR > 0 (the BraTS skull-stripped convention).
        upper_percentile: clipping percentile. Default 99.9.
        name: case name for error messages.

    Returns:
        ``(image float32, whole-tumour label uint8)`` on the cropped grid.
    """
    from monai.transforms import SpatialCrop

    from bundle.data.transforms import ScaleIntensityByModalityd

    brain_mask = (brain > 0) if brain is not None else (flair > 0)
    for other, what in ((label, "label"), (brain_mask, "brain mask")):
        if tuple(other.shape) != tuple(flair.shape):
            raise ValueError(f"{name}: {what} shape {tuple(other.shape)} differs from the FLAIR's {tuple(flair.shape)}")
    mask = np.asarray(brain_mask[0])
    if not mask.any():
        raise ValueError(f"{name}: empty brain mask.")
    start, end = bbox(mask, axes=(0, 1, 2), margin=0)
    crop = SpatialCrop(roi_start=start, roi_end=end)
    d = {"image": crop(flair.float()), "mask": crop(brain_mask.to(torch.uint8))}
    d = ScaleIntensityByModalityd("image", modality="flair", mask_key="mask", upper_percentile=upper_percentile)(d)
    return d["image"].float(), (crop(label) > 0).to(torch.uint8)


def prepare_brats(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    n_labelled: int = 25,
    n_val: int = 25,
    n_test: int = 60,
    seed: int | None = 0,
    val_ids: Sequence[str] | None = None,
    test_ids: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    upper_percentile: float = 99.9,
    overwrite: bool = False,
    log: Callable[[str], None] | None = print,
) -> dict[str, list[dict]]:
    """Prepare BraTS FLAIR whole tumour (see :func:`preprocess_brats_case`) and write its data list.

    Split (the paper: 250 train / 25 validation / 60 test of 335; budgets 12 / 25 / 50 labelled): explicit
    ``val_ids`` / ``test_ids`` (e.g. the reference lists), else the sorted cases permuted with ``seed``: the last
    ``n_test`` test, the ``n_val`` before them validation, of the rest the first ``n_labelled`` labelled and the
    others unlabelled.

    Args:
        src: folder with the cases (see :func:`find_brats_cases`).
        out_dir: output folder (``images/``, ``labels/``, the data list).
        datalist: data list path. Default ``<out_dir>/datalist.json``.
        n_labelled, n_val, n_test: split sizes. Defaults 25, 25, 60.
        seed: permutation seed; ``None`` keeps the sorted order. Default 0.
        val_ids, test_ids: explicit split. Default ``None``.
        cases: only these case names (e.g. a quick subset). Default ``None``: all.
        upper_percentile: clipping percentile. Default 99.9.
        overwrite: re-process cases whose outputs exist. Default False.
        log: progress printer (``None``: silent). Default ``print``.

    Returns:
        The data list (absolute paths).
    """
    found = find_brats_cases(src)
    if cases is not None:
        missing = sorted(set(cases) - set(found))
        if missing:
            raise ValueError(f"cases not found below {src}: {missing[:5]}.")
        found = {c: found[c] for c in cases}
    split = split_cases(sorted(found), n_labelled, n_val, n_test, seed=seed, val_ids=val_ids, test_ids=test_ids)
    out_dir = Path(out_dir)

    def process(flair: Path, label: Path, brain: Path | None) -> tuple[MetaTensor, MetaTensor]:
        return preprocess_brats_case(
            read_volume(flair),
            read_volume(label),
            read_volume(brain) if brain is not None else None,
            upper_percentile,
            name=str(flair.parent),
        )

    files = prepare_cases(found, out_dir, process, overwrite, log)
    return write_split(split, files, datalist or out_dir / "datalist.json")
