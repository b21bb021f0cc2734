"""Preparation of the paper's three datasets into data lists of the bundle's format (``bundle.data.datalist``).

- **LA** (2018 Atrial Segmentation Challenge, the UA-MT h5 release): used in place. Each case is
  ``<data_dir>/<ID>/mri_norm2.h5`` (datasets ``image``, z-scored, and ``label``; 0.625 mm isotropic, already
  cropped around the atrium in x and y). :func:`prepare_la` writes a data list from ``train.list`` (and
  ``test.list`` if given): labelled = the first ``n_labelled`` IDs of ``train.list``, validation = its last
  ``n_val`` IDs (8 for the LA-lite benchmark; 0 gives the paper's split), unlabelled = the IDs in between.
- **Pancreas-CT** (TCIA NIH Pancreas-CT, DICOM series + NIfTI labels):
  :func:`bundle.data.prepare_pancreas.prepare_pancreas` reads each CT (a DICOM folder through
  ``SimpleITK.ImageSeriesReader``, or a NIfTI/NRRD/MHA file), reorients to RAS,
  resamples to 1 mm (CT bilinear; label nearest onto the CT grid), clips HU to [-125, 275] and scales to [0, 1],
  crops x and y to the pancreas bounding box with a 25-voxel margin (all slices kept), z-scores, and writes
  NIfTI volumes plus a data list.
- **BraTS 2019** (FLAIR, whole tumour): :func:`bundle.data.prepare_brats.prepare_brats` reads the FLAIR, the label (whole tumour =
  label > 0) and the brain (a brain mask file when present, else FLAIR > 0), crops to the brain's bounding box,
  clips at the 99.9th percentile of the brain voxels and z-scores over them (0 outside the brain), and writes
  NIfTI volumes plus a data list. Layouts: the BraTS 2019 challenge folders (``<case>/<case>_flair.nii.gz``,
  ``<case>_seg.nii.gz``, possibly below ``HGG/`` and ``LGG/``) and the ``Flair_subtrMeanDivStd.nii.gz`` /
  ``OTMultiClass.nii.gz`` / ``brainmask.nii.gz`` layout of the BRATS 2013 cases in ``../shared/data``.

Prepared volumes are written as ``<out_dir>/images/<case>.nii.gz`` and ``<out_dir>/labels/<case>.nii.gz``
(atomically: temporary name, then rename; existing files are kept unless ``overwrite``), so data lists for
several label budgets reuse them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from bundle.data.datalist import write_datalist
from bundle.engine.files import atomic_path

__all__ = [
    "read_list",
    "la_entries",
    "prepare_la",
    "read_dicom_series",
    "read_volume",
    "split_cases",
    "write_split",
    "prepare_cases",
    "bbox",
]

LA_FILE = "mri_norm2.h5"
LA_FOLDER = "2018LA_Seg_Training Set"


# -- lists and splits ---------------------------------------------------------------------------------------------
def read_list(path: str | os.PathLike) -> list[str]:
    """Case IDs of a list file: one per line, blank lines and ``#`` comments skipped, duplicates rejected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"list file not found: {path}")
    ids = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    ids = [i for i in ids if i]
    if not ids:
        raise ValueError(f"{path}: no case IDs.")
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{path}: duplicate case IDs {dup[:5]}.")
    return ids


def _la_case(data_dir: Path, item: str, list_file: Path) -> tuple[str, Path]:
    """``(ID, h5 path)`` of a list line: an ID, or a path ending in ``.h5`` (UA-MT style ``.../<ID>/mri_norm2.h5``)."""
    if item.endswith((".h5", ".hdf5")):
        p = Path(item)
        case_id = p.parent.name
        candidates = [p if p.is_absolute() else list_file.parent / p, data_dir / case_id / p.name]
    else:
        case_id = item
        candidates = [data_dir / item / LA_FILE]
    for c in candidates:
        if c.is_file():
            return case_id, c.resolve()
    raise FileNotFoundError(f"{list_file}: case '{item}' not found (looked for {', '.join(map(str, candidates))}).")


def la_entries(data_dir: str | os.PathLike, list_file: str | os.PathLike) -> list[dict[str, str]]:
    """Data list entries ``{"image": h5, "label": h5, "case_id": ID}`` for the IDs of ``list_file``.

    Args:
        data_dir: folder of the case folders (``<data_dir>/<ID>/mri_norm2.h5``); a folder holding
            ``2018LA_Seg_Training Set`` is accepted too.
        list_file: one case ID (or UA-MT style h5 path) per line.

    Raises:
        FileNotFoundError: the folder, the list or a listed case is missing (the message names it).
    """
    data_dir = _la_dir(data_dir)
    list_file = Path(list_file)
    entries = []
    for item in read_list(list_file):
        case_id, h5 = _la_case(data_dir, item, list_file)
        entries.append({"image": str(h5), "label": str(h5), "case_id": case_id})
    return entries


def _la_dir(data_dir: str | os.PathLike) -> Path:
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"LA data folder not found: {data_dir}")
    return data_dir / LA_FOLDER if (data_dir / LA_FOLDER).is_dir() else data_dir


def prepare_la(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    train_list: str | os.PathLike | None = None,
    test_list: str | os.PathLike | None = None,
    n_labelled: int = 8,
    n_val: int = 8,
) -> dict[str, list[dict]]:
    """Write the LA data list (h5 files used in place).

    Split of ``train.list`` (order kept): ``training`` = the first ``n_labelled`` IDs, ``validation`` = the last
    ``n_val`` IDs, ``unlabeled`` = the IDs in between (image only); ``test`` = the IDs of ``test_list`` (empty
    without one). The paper's settings: ``n_labelled`` 4 / 8 / 16 (5 / 10 / 20 %) of 80; the LA-lite benchmark
    adds ``n_val=8``; ``n_val=0`` gives the paper's split (no validation).

    Args:
        data_dir: folder of the case folders, or the folder holding ``2018LA_Seg_Training Set`` and ``train.list``.
        out: the data list JSON to write (paths relative to its folder).
        train_list: default ``train.list`` in ``data_dir`` or its parent folders (first found).
        test_list: default ``test.list`` next to the train list if present, else no test section.
        n_labelled: labelled cases. Default 8.
        n_val: validation cases from the end of the train list. Default 8.

    Returns:
        The data list (absolute paths).
    """
    root = Path(data_dir).expanduser()
    cases_dir = _la_dir(root)
    if train_list is None:
        search = [root, cases_dir, *root.resolve().parents[:1]]
        train_list = next((d / "train.list" for d in search if (d / "train.list").is_file()), None)
        if train_list is None:
            raise FileNotFoundError(f"no train.list in {root} or its parent; pass train_list.")
    train_list = Path(train_list)
    if test_list is None and (train_list.parent / "test.list").is_file():
        test_list = train_list.parent / "test.list"
    train = la_entries(cases_dir, train_list)
    n = len(train)
    if int(n_labelled) != n_labelled or int(n_val) != n_val or n_labelled < 1 or n_val < 0:
        raise ValueError(f"n_labelled ({n_labelled}) must be a positive and n_val ({n_val}) a non-negative integer.")
    if n_labelled + n_val > n:
        raise ValueError(f"{train_list}: {n} cases cannot give {n_labelled} labelled + {n_val} validation cases.")
    val = train[n - n_val :] if n_val else []
    datalist = {
        "training": train[:n_labelled],
        "unlabeled": [{"image": e["image"], "case_id": e["case_id"]} for e in train[n_labelled : n - n_val]],
        "validation": val,
        "test": la_entries(cases_dir, test_list) if test_list is not None else [],
    }
    write_datalist(datalist, out)
    return datalist


def split_cases(
    ids: Sequence[str],
    n_labelled: int,
    n_val: int = 0,
    n_test: int = 0,
    seed: int | None = None,
    val_ids: Sequence[str] | None = None,
    test_ids: Sequence[str] | None = None,
) -> dict[str, list[str]]:
    """Split case IDs into ``training`` (labelled), ``unlabeled``, ``validation`` and ``test``.

    Explicit ``val_ids`` / ``test_ids`` win; otherwise, in the order of ``ids`` (permuted by
    ``numpy.random.default_rng(seed)`` when ``seed`` is given), the last ``n_test`` go to test, the ``n_val``
    before them to validation. Of the rest (order kept) the first ``n_labelled`` are labelled, the others
    unlabelled.

    Raises:
        ValueError: unknown explicit IDs, or too few cases for the requested counts.
    """
    ids = list(ids)
    known = set(ids)
    for name, chosen in (("validation", val_ids), ("test", test_ids)):
        unknown = sorted(set(chosen or []) - known)
        if unknown:
            raise ValueError(f"{name} IDs not among the prepared cases: {unknown[:5]}.")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))] if seed is not None else ids
    if test_ids is not None:
        test = [i for i in ids if i in set(test_ids)]
    else:
        test = order[len(order) - n_test :] if n_test else []
    rest = [i for i in order if i not in set(test)]
    if val_ids is not None:
        val = [i for i in ids if i in set(val_ids)]
    else:
        val = rest[len(rest) - n_val :] if n_val else []
    train = [i for i in rest if i not in set(val)]
    if not 1 <= n_labelled <= len(train):
        raise ValueError(
            f"{len(ids)} cases leave {len(train)} for training after {len(val)} validation and {len(test)} test: "
            f"cannot label {n_labelled}."
        )
    return {"training": train[:n_labelled], "unlabeled": train[n_labelled:], "validation": val, "test": test}


def write_split(split: dict[str, list[str]], files: dict[str, tuple[Path, Path]], out: str | os.PathLike) -> dict:
    datalist: dict[str, list[dict]] = {}
    for section, ids in split.items():
        datalist[section] = [
            (
                {"image": str(files[i][0]), "case_id": i}
                if section == "unlabeled"
                else {"image": str(files[i][0]), "label": str(files[i][1]), "case_id": i}
            )
            for i in ids
        ]
    write_datalist(datalist, out)
    return datalist


# -- volume I/O ---------------------------------------------------------------------------------------------------
def _metatensor(array: np.ndarray, affine: np.ndarray, filename: str) -> MetaTensor:
    return MetaTensor(
        torch.as_tensor(np.ascontiguousarray(array))[None],
        affine=torch.as_tensor(affine, dtype=torch.float64),
        meta={"filename_or_obj": filename, "original_affine": affine, "space": "RAS"},
    )


def read_dicom_series(folder: str | os.PathLike) -> MetaTensor:
    """The largest DICOM series found in ``folder`` (searched recursively), read with
    ``SimpleITK.ImageSeriesReader`` (slices sorted by position by GDCM) as a ``(1, X, Y, Z)`` MetaTensor with a
    RAS affine (``bundle.data.readers.ras_affine``).

    Raises:
        FileNotFoundError: no DICOM series in ``folder``.
    """
    import SimpleITK as sitk  # noqa: N813

    from bundle.data.readers import SimpleITKVolumeReader

    folder = Path(folder)
    best: list[str] = []
    for dirpath, _, _ in os.walk(folder):
        for series_id in sitk.ImageSeriesReader.GetGDCMSeriesIDs(dirpath) or ():
            names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(dirpath, series_id))
            if len(names) > len(best):
                best = names
    if not best:
        raise FileNotFoundError(f"no DICOM series in {folder}.")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(best)
    image = reader.Execute()
    array, meta = SimpleITKVolumeReader().get_data(image)
    return _metatensor(array.astype(np.float32), meta["affine"], str(folder))


def read_volume(path: str | os.PathLike) -> MetaTensor:
    """A volume as a ``(1, X, Y, Z)`` float MetaTensor: a DICOM folder, or a NIfTI / NRRD / MHA file."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.is_file():
        raise FileNotFoundError(f"volume not found: {path}")
    from bundle.data.transforms import LoadVolumed

    img = LoadVolumed("image", image_only=True)({"image": str(path)})["image"]
    if img.shape[0] != 1:
        raise ValueError(f"{path}: expected a single-channel 3D volume, got shape {tuple(img.shape)}.")
    return img


def _save_nifti(volume: Any, path: Path, dtype: Any) -> Path:
    """Write a ``(1, X, Y, Z)`` MetaTensor as NIfTI (its affine, qform = sform, mm units), atomically."""
    array = np.asarray(volume.detach().cpu()[0]).astype(dtype)
    affine = np.asarray(volume.affine, dtype=np.float64)
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    with atomic_path(path, ".nii.gz") as tmp:
        nib.save(img, str(tmp))
    return path


def bbox(mask: np.ndarray, axes: Sequence[int], margin: int) -> tuple[list[int], list[int]]:
    """Start/end (exclusive) per axis of the non-zero voxels of ``mask`` (X, Y, Z), grown by ``margin`` on
    ``axes`` and clipped to the array; the other axes keep their full extent."""
    start, end = [0, 0, 0], list(mask.shape)
    for axis in axes:
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        start[axis] = max(int(idx[0]) - margin, 0)
        end[axis] = min(int(idx[-1]) + 1 + margin, mask.shape[axis])
    return start, end


def prepare_cases(
    cases: dict[str, Any],
    out_dir: Path,
    process: Callable[..., tuple[MetaTensor, MetaTensor]],
    overwrite: bool,
    log: Callable[[str], None] | None,
) -> dict[str, tuple[Path, Path]]:
    files: dict[str, tuple[Path, Path]] = {}
    for k, (case_id, source) in enumerate(cases.items(), start=1):
        image_file = out_dir / "images" / f"{case_id}.nii.gz"
        label_file = out_dir / "labels" / f"{case_id}.nii.gz"
        if overwrite or not (image_file.is_file() and label_file.is_file()):
            image, label = process(*source)
            _save_nifti(label, label_file, np.uint8)
            _save_nifti(image, image_file, np.float32)
            if log:
                log(f"[{k}/{len(cases)}] {case_id}: {tuple(image.shape[1:])} -> {image_file}")
        elif log:
            log(f"[{k}/{len(cases)}] {case_id}: kept existing {image_file}")
        files[case_id] = (image_file.resolve(), label_file.resolve())
    return files
