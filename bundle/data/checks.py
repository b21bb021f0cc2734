"""Input validation before training or inference, readable errors, run settings and per-case inference safety.

Training (``configs/train.json``, ``initialize``):

- :func:`install_error_hook`: a ``sys.excepthook`` that prints the bundle's own errors (bad input, non-finite
  loss, bad checkpoint) as one readable line, also when MONAI wraps them in ``RuntimeError("Failed to evaluate
  ...")``; for other errors the full traceback is kept and the root cause is repeated as the last line.
- :func:`check_training_inputs`: every labelled, unlabelled and validation file is opened once before the
  first iteration; all problems are collected and raised together as one :class:`DataValidationError` whose
  message names each file and its problem. See the function for the list of checks.
- :func:`write_run_settings`: ``<output_dir>/run_settings.json`` with the seed, the command line, the
  library versions, the merged configuration (overrides applied) and the resolved plain-JSON values.

Inference (folder inference keeps going when one scan is corrupt):

- :func:`check_image_file`: the same per-file checks for one input scan.
- :class:`CaseReport`: splits a list of cases into readable ones and failures, records failures that happen
  later, writes a JSON summary and ends the process with a non-zero status when any case failed.
- :class:`AtomicNibabelWriter`: a MONAI ``ImageWriter`` that writes to a temporary name in the target folder
  and renames it, so an existing output is never replaced by a partial file.

Accepted inputs: a 3D volume ``(H, W, D)``, or a 4D NIfTI ``(H, W, D, C)`` whose last axis is the channel axis
with ``C == in_channels`` (so a single-frame 4D file ``(H, W, D, 1)`` is accepted for one-channel networks);
a list of 3D files is stacked as channels. 2D images, single slices ``(H, W, 1)``, multi-frame 4D files and
5D files are refused. Legacy LA ``.h5`` files hold the datasets ``image`` and ``label`` in one file (the
data list then names the same file as image and label).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import math
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelWriter

__all__ = [
    "DataValidationError",
    "VolumeInfo",
    "ValidationReport",
    "CaseReport",
    "AtomicNibabelWriter",
    "install_error_hook",
    "check_image_file",
    "check_training_inputs",
    "find_leaks",
    "resolved_settings",
    "run_cases",
    "write_run_settings",
]

logger = logging.getLogger("plgdf")

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr", ".img.gz")
H5_SUFFIXES = (".h5", ".hdf5")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: image/label affines may differ by ``atol + rtol * |value|`` per entry (mm and direction cosines).
AFFINE_RTOL, AFFINE_ATOL = 1e-3, 1e-4
MAX_LISTED_PROBLEMS = 20


class DataValidationError(ValueError):
    """Bad input data: the message names every offending file and its problem.

    Args:
        message: the full message.
        problems: ``(file, problem)`` pairs behind the message. Defaults to ``[]``.
    """

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()):
        super().__init__(message)
        self.problems = list(problems)


# -- readable errors on the command line ------------------------------------------------------------
def _user_errors() -> tuple[type[BaseException], ...]:
    from bundle.engine.checkpoint import CheckpointError, NonFiniteLossError

    return DataValidationError, NonFiniteLossError, CheckpointError


def _root_cause(exc: BaseException) -> BaseException:
    """The first bundle error in the ``raise ... from`` chain (MONAI wraps errors of config expressions in
    ``RuntimeError("Failed to evaluate ...")``), else the innermost cause."""
    user, seen = _user_errors(), set()
    while not isinstance(exc, user) and exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _excepthook(exc_type, exc, tb, previous) -> None:
    root = _root_cause(exc)
    if isinstance(root, _user_errors()) and not os.environ.get("PLGDF_TRACEBACK"):
        print("(set PLGDF_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        print(f"{type(root).__name__}: {root}", file=sys.stderr)
        return
    previous(exc_type, exc, tb)
    if root is not exc:
        print(f"\nroot cause: {type(root).__name__}: {root}", file=sys.stderr)


def install_error_hook() -> None:
    """Print the bundle's own errors readably when they end the process (idempotent).

    :class:`DataValidationError`, :class:`bundle.engine.checkpoint.NonFiniteLossError` and
    :class:`bundle.engine.checkpoint.CheckpointError` are printed as ``Type: message`` without a traceback (the message
    is the last line of stderr; set ``PLGDF_TRACEBACK=1`` for the traceback). Any other error keeps its full
    traceback, followed by its root cause when MONAI wrapped it (``Failed to evaluate ...``).
    """
    if getattr(sys.excepthook, "_plgdf", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        _excepthook(exc_type, exc, tb, previous)

    hook._plgdf = True  # type: ignore[attr-defined]
    sys.excepthook = hook


# -- one volume ---------------------------------------------------------------------------------------
@dataclass
class VolumeInfo:
    """What :func:`check_image_file` found in one file.

    Attributes:
        path: the file. ``key``: ``"image"`` or ``"label"`` (the h5 dataset read).
        shape: spatial shape ``(H, W, D)``; ``channels``: number of channels (1 for a plain 3D volume).
        affine: 4x4 voxel-to-world (RAS, mm) matrix. ``dtype``: stored data type.
        minimum, maximum: voxel value range (``None`` when voxels were not read).
    """

    path: str
    key: str
    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray
    dtype: str
    minimum: float | None = None
    maximum: float | None = None

    @property
    def spacing(self) -> np.ndarray:
        return np.linalg.norm(self.affine[:3, :3], axis=0)


class _Problem(Exception):
    """A problem with one file (internal; becomes a DataValidationError line)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _has_suffix(path: str, suffixes: Sequence[str]) -> bool:
    name = path.lower()
    return any(name.endswith(s) for s in suffixes)


def _spatial(shape: Sequence[int], in_channels: int | None, label: bool) -> tuple[tuple[int, int, int], int]:
    """``(spatial shape, channels)`` of a stored array shape, or a :class:`_Problem` for 2D/4D/5D input."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise _Problem(f"is {len(shape)}D {shape}; the network is 3D and needs (H, W, D) volumes")
    if len(shape) == 3:
        spatial, channels = shape, 1
    elif len(shape) == 4:
        expected = 1 if label else (in_channels or 1)
        if shape[3] != expected:
            what = "a label must have one channel" if label else f"the network expects in_channels={expected}"
            raise _Problem(
                f"is 4D {shape} with {shape[3]} frames/channels on the last axis; {what} "
                f"(a 4D file is accepted only as (H, W, D, {expected}))"
            )
        spatial, channels = shape[:3], shape[3]
    else:
        raise _Problem(f"is {len(shape)}D {shape}; expected a 3D volume (H, W, D)")
    if min(spatial) <= 1:
        raise _Problem(f"has spatial shape {spatial}: a single slice (2D); the network needs a 3D volume")
    return spatial, channels  # type: ignore[return-value]


def _sitk_affine(reader: Any) -> np.ndarray:
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(reader.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = reader.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # LPS -> RAS, as bundle.data.transforms.SimpleITKVolumeReader


def _read(path: str, key: str, in_channels: int | None, label: bool, voxels: bool, h5_spacing: float):
    """``(VolumeInfo without statistics, voxel array or None)``; raises :class:`_Problem`."""
    p = Path(path)
    if not p.exists():
        parent = next((q for q in p.parents if q.exists()), None)
        hint = "" if parent == p.parent else f" (folder {p.parent} does not exist either)"
        raise _Problem(f"file not found{hint}")
    if p.is_dir() and not _has_suffix(path, NIFTI_SUFFIXES + H5_SUFFIXES + SITK_SUFFIXES):
        return _read_monai(path, key, in_channels, label, voxels)
    if p.is_dir():
        raise _Problem("is a folder, expected a volume file")
    if p.stat().st_size == 0:
        raise _Problem("is an empty file (0 bytes)")
    if _has_suffix(path, H5_SUFFIXES):
        return _read_h5(path, key, label, voxels, h5_spacing)
    if _has_suffix(path, SITK_SUFFIXES):
        return _read_sitk(path, key, in_channels, label, voxels)
    if _has_suffix(path, NIFTI_SUFFIXES):
        return _read_nifti(path, key, in_channels, label, voxels)
    return _read_monai(path, key, in_channels, label, voxels)


def _read_nifti(path: str, key: str, in_channels: int | None, label: bool, voxels: bool):
    import nibabel as nib

    try:
        img = nib.load(path)
        shape, affine = img.shape, np.asarray(img.affine, dtype=np.float64)
        dtype = str(img.get_data_dtype())
    except Exception as e:
        raise _Problem(f"unreadable NIfTI header (corrupt or truncated file?): {_first_line(e)}") from None
    spatial, channels = _spatial(shape, in_channels, label)
    data = None
    if voxels:
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            raise _Problem(f"cannot read the voxel data (truncated or corrupt file?): {_first_line(e)}") from None
    return VolumeInfo(path, key, spatial, channels, affine, dtype), data


def _read_h5(path: str, key: str, label: bool, voxels: bool, h5_spacing: float):
    import h5py

    dataset = "label" if label else "image"
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise _Problem(f"has no dataset '{dataset}' (datasets: {sorted(f.keys())})")
            ds = f[dataset]
            shape, dtype = ds.shape, str(ds.dtype)
            if len(shape) != 3:
                _spatial(shape, 1, label)  # 2D / single-slice messages
                raise _Problem(f"dataset '{dataset}' is {len(shape)}D {tuple(shape)}; expected 3D (x, y, z)")
            spatial, channels = _spatial(shape, 1, label)
            data = np.asarray(ds[()]) if voxels else None
    except _Problem:
        raise
    except Exception as e:
        raise _Problem(f"unreadable h5 file (corrupt or truncated?): {_first_line(e)}") from None
    affine = np.diag([*np.broadcast_to(np.asarray(h5_spacing, dtype=np.float64), (3,)), 1.0])
    return VolumeInfo(path, key, spatial, channels, affine, dtype), data


def _read_sitk(path: str, key: str, in_channels: int | None, label: bool, voxels: bool):
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        size, components = tuple(reader.GetSize()), int(reader.GetNumberOfComponents())
        dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    except Exception as e:
        raise _Problem(f"unreadable image header (corrupt or truncated file?): {_first_line(e)}") from None
    if len(size) != 3:
        _spatial(size, in_channels, label)
        raise _Problem(f"is {len(size)}D {size}; NRRD/MetaImage inputs must be 3D")
    spatial, _ = _spatial(size, in_channels, label)
    expected = 1 if label else (in_channels or 1)
    if components != expected:
        raise _Problem(f"has {components} components per voxel; expected {expected}")
    data = None
    if voxels:
        try:
            data = sitk.GetArrayFromImage(reader.Execute())
        except Exception as e:
            raise _Problem(f"cannot read the voxel data (truncated or corrupt file?): {_first_line(e)}") from None
    return VolumeInfo(path, key, spatial, components, _sitk_affine(reader), dtype), data


def _read_monai(path: str, key: str, in_channels: int | None, label: bool, voxels: bool):
    from monai.transforms import LoadImage

    try:
        img = LoadImage(image_only=True, ensure_channel_first=False)(path)
    except Exception as e:
        raise _Problem(f"unreadable image (unsupported format, corrupt or truncated?): {_first_line(e)}") from None
    spatial, channels = _spatial(img.shape, in_channels, label)
    affine = np.asarray(img.affine, dtype=np.float64)
    return VolumeInfo(path, key, spatial, channels, affine, str(img.dtype)), np.asarray(img)


def _statistics(info: VolumeInfo, data: np.ndarray, num_classes: int | None, label: bool) -> None:
    """Fill the value range; raise :class:`_Problem` for NaN/Inf voxels or bad label values."""
    if data.size == 0:
        raise _Problem("holds no voxels")
    lo, hi = data.min(), data.max()
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise _Problem(f"has {bad} NaN/Inf voxel(s) of {data.size}")
    info.minimum, info.maximum = float(lo), float(hi)
    if not label:
        return
    if data.dtype.kind == "f" and not np.array_equal(data, np.rint(data)):
        examples = np.unique(data[data != np.rint(data)])[:5].tolist()
        raise _Problem(f"label has non-integer values (e.g. {examples}); labels must be class indices")
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        outside = np.unique(data[(data < 0) | (data >= num_classes)])[:10].tolist()
        hint = " (a 0/255 mask must be converted to 0/1)" if outside == [255] and num_classes == 2 else ""
        raise _Problem(
            f"label values {outside} are outside the declared classes 0..{num_classes - 1} "
            f"(num_classes={num_classes}){hint}"
        )


def check_image_file(
    path: str | os.PathLike,
    key: str = "image",
    in_channels: int | None = 1,
    num_classes: int | None = None,
    check_voxels: bool = True,
    h5_spacing: float = 0.625,
) -> VolumeInfo:
    """Open one image or label file and check it (cheap header read, then one pass over the voxels).

    Checks: the file exists and is readable (NIfTI, legacy ``.h5``, NRRD/MetaImage, or any format MONAI's
    ``LoadImage`` reads); it is a 3D volume (see the module docstring for 4D); with ``check_voxels`` the voxel
    data is complete (a truncated file is found here), finite (no NaN/Inf), and, for ``key="label"``,
    integer-valued within ``0..num_classes-1``.

    Args:
        path: the file.
        key: ``"image"`` or ``"label"`` (also the dataset read from an ``.h5`` file). Default ``"image"``.
        in_channels: channels the network expects from an image; ``None`` accepts any. Default 1.
        num_classes: number of classes a label may index; ``None`` skips the range check. Default None.
        check_voxels: read the voxel data (needed for truncation, NaN/Inf and label values). Default True.
        h5_spacing: voxel size (mm) given to ``.h5`` volumes, as ``bundle.data.transforms.LoadVolumed``. Default 0.625.

    Returns:
        The :class:`VolumeInfo` of the file.

    Raises:
        DataValidationError: the message is ``"<path>: <problem>"``.
    """
    path = os.fspath(path)
    label = key == "label"
    try:
        info, data = _read(path, key, in_channels, label, check_voxels, h5_spacing)
        if data is not None:
            _statistics(info, data, num_classes, label)
    except _Problem as e:
        raise DataValidationError(f"{path}: {e}", [(path, str(e))]) from None
    return info


# -- data lists ---------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """Result of :func:`check_training_inputs`: case counts per section, and notes (padding, overlaps)."""

    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    volumes: dict[str, VolumeInfo] = field(default_factory=dict)


def _files(value: Any) -> list[str]:
    if value is None:
        return []
    return [os.fspath(v) for v in value] if isinstance(value, (list, tuple)) else [os.fspath(value)]


def _identity(path: str) -> tuple:
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def find_leaks(datalist: Mapping[str, Sequence[Mapping]]) -> list[tuple[str, str, str]]:
    """Cases used for training (``training`` or ``unlabeled``) that are also in ``validation`` or ``test``.

    Two entries are the same case when their image files are the same file (same path after resolving links,
    or the same inode). Returns ``(file, training section, evaluation section)`` triples.
    """
    where: dict[tuple, tuple[str, str]] = {}
    for section in ("validation", "test"):
        for entry in datalist.get(section) or []:
            for f in _files(entry.get("image")):
                where.setdefault(_identity(f), (f, section))
    leaks = []
    for section in ("training", "unlabeled"):
        for entry in datalist.get(section) or []:
            for f in _files(entry.get("image")):
                hit = where.get(_identity(f))
                if hit is not None:
                    leaks.append((f, section, hit[1]))
    return leaks


def _padding_note(info: VolumeInfo, patch_size: Sequence[int], spacing: Sequence[float] | None) -> str | None:
    """A note when the volume, after ``Orientationd("RAS")`` and ``Spacingd(spacing)``, is smaller than the patch."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(info.affine)
    extent = np.asarray(info.shape, dtype=float) * info.spacing  # mm per stored axis
    size = np.zeros(3)
    for axis, (ras_axis, _) in enumerate(ornt.astype(int)):
        size[ras_axis] = extent[axis] / spacing[ras_axis] if spacing is not None else info.shape[axis]
    size = np.maximum(np.rint(size), 1).astype(int)
    patch = np.asarray(patch_size, dtype=int)
    if np.all(size >= patch):
        return None
    at = f" at spacing {tuple(float(s) for s in spacing)} mm" if spacing is not None else ""
    return (
        f"note: {info.path} is about {tuple(size.tolist())} voxels{at} (RAS), smaller than the patch "
        f"{tuple(patch.tolist())}: it is zero-padded to the patch size (SpatialPadd)"
    )


def _check_case(
    entry: Mapping,
    section: str,
    labelled: bool,
    in_channels: int,
    num_classes: int,
    check_voxels: bool,
    h5_spacing: float,
) -> tuple[list[tuple[str, str]], list[VolumeInfo]]:
    """Problems ``(file, problem)`` and the image volume infos of one data-list entry."""
    problems: list[tuple[str, str]] = []
    images: list[VolumeInfo] = []
    image_files = _files(entry.get("image"))
    if not image_files:
        return [(repr(dict(entry)), f"'{section}' entry has no 'image' file")], []
    per_file_channels = in_channels if len(image_files) == 1 else 1
    for f in image_files:
        try:
            images.append(check_image_file(f, "image", per_file_channels, None, check_voxels, h5_spacing))
        except DataValidationError as e:
            problems += e.problems
    if not problems and len(image_files) > 1:
        total = sum(v.channels for v in images)
        if in_channels is not None and total != in_channels:
            problems.append((image_files[0], f"{total} channel files listed; the network expects {in_channels}"))
        problems += _pair_problems(images[0], images[1:], "channel file")
    elif images and in_channels is not None and images[0].channels != in_channels:
        problems.append((images[0].path, f"has {images[0].channels} channel(s); the network expects {in_channels}"))
    if labelled:
        label_files = _files(entry.get("label"))
        if len(label_files) != 1:
            problems.append((image_files[0], f"'{section}' entry needs exactly one label file, got {label_files}"))
        else:
            try:
                lab = check_image_file(label_files[0], "label", 1, num_classes, check_voxels, h5_spacing)
                if images and not problems:
                    problems += _pair_problems(images[0], [lab], "label")
            except DataValidationError as e:
                problems += e.problems
    return problems, images


def _pair_problems(ref: VolumeInfo, others: Sequence[VolumeInfo], what: str) -> list[tuple[str, str]]:
    problems = []
    for other in others:
        if other.shape != ref.shape:
            problems.append((other.path, f"{what} shape {other.shape} differs from image {ref.path} shape {ref.shape}"))
        elif not np.allclose(other.affine, ref.affine, rtol=AFFINE_RTOL, atol=AFFINE_ATOL):
            diff = float(np.max(np.abs(other.affine - ref.affine)))
            problems.append(
                (
                    other.path,
                    f"{what} affine differs from image {ref.path} (largest difference {diff:.4g}; "
                    f"tolerance {AFFINE_ATOL} + {AFFINE_RTOL} x value):\n      {_fmt(other.affine)}\n"
                    f"    vs {_fmt(ref.affine)}",
                )
            )
    return problems


def _fmt(affine: np.ndarray) -> str:
    return np.array2string(affine[:3], precision=4, suppress_small=True, max_line_width=200).replace("\n", "")


def _as_datalist(datalist: Any) -> tuple[dict[str, list], str | None]:
    from bundle.data.datalist import load_datalist

    if isinstance(datalist, Mapping):
        return {k: list(v or []) for k, v in datalist.items()}, None
    path = os.fspath(datalist)
    try:
        return load_datalist(path), path
    except FileNotFoundError as e:
        hint = "" if Path(path).parent.is_dir() else f" (folder {Path(path).parent} does not exist: check dataset_dir)"
        raise DataValidationError(f"{e}{hint}", [(path, str(e))]) from None
    except ValueError as e:
        raise DataValidationError(str(e), [(path, str(e))]) from None


def check_training_inputs(
    datalist: str | os.PathLike | Mapping[str, Sequence[Mapping]],
    num_classes: int,
    labeled_batch_size: int = 1,
    patch_size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    in_channels: int = 1,
    use_unlabeled: bool = True,
    check_voxels: bool = True,
    h5_spacing: float = 0.625,
    num_threads: int = 4,
    source: str | None = None,
) -> ValidationReport:
    """Check everything training will read, before the first iteration; raise one error listing every problem.

    Per file (:func:`check_image_file`): missing, unreadable or truncated files; 2D, single-slice, multi-frame
    4D or 5D volumes; NaN/Inf voxels; non-integer labels or labels outside ``0..num_classes-1``; image channels
    differing from ``in_channels``. Per labelled case: image and label with different shapes, or affines
    differing beyond ``1e-4 + 1e-3 * |value|``. Per data list: an empty labelled set; a labelled set smaller
    than ``labeled_batch_size``; a case used for training (labelled or unlabelled) that is also a validation
    or test case (a leak; same file). Not errors: an empty unlabelled set (training falls back to the
    supervised loss with a warning, see ``bundle.data.samplers.unlabeled_stream``), and a volume smaller than
    ``patch_size`` at the training ``spacing`` (zero-padded by ``SpatialPadd``; a note names the file).
    ``test`` cases are only used for the leak check (their files are not opened).

    Args:
        datalist: a data-list JSON path (see ``bundle.data.datalist``) or a mapping with the sections
            ``training``, ``unlabeled``, ``validation``, ``test`` (missing sections are empty).
        num_classes: classes of the network; label values must lie in ``0..num_classes-1``.
        labeled_batch_size: labelled cases per batch. Default 1.
        patch_size: training patch ``(H, W, D)``; ``None`` skips the padding note. Default None.
        spacing: training voxel size (mm) of ``Spacingd``; ``None`` keeps the input spacing. Default None.
        in_channels: channels of the network input. Default 1.
        use_unlabeled: check the unlabelled set (False: it is not read by training). Default True.
        check_voxels: read voxel data (truncation, NaN/Inf, label values); False reads headers only. Default True.
        h5_spacing: voxel size (mm) given to legacy ``.h5`` volumes. Default 0.625.
        num_threads: files read in parallel. Default 4.
        source: where the data list came from, quoted in messages (e.g. the data-list file). Default None.

    Returns:
        A :class:`ValidationReport` (counts and notes; notes are also logged).

    Raises:
        DataValidationError: the message lists ``<file>: <problem>`` for every problem found.
    """
    install_error_hook()
    t0 = time.perf_counter()
    lists, path = _as_datalist(datalist)
    source = source or path
    where = f" in {source}" if source else ""
    training = lists.get("training") or []
    unlabeled = (lists.get("unlabeled") or []) if use_unlabeled else []
    validation = lists.get("validation") or []
    report = ValidationReport(
        counts={k: len(lists.get(k) or []) for k in ("training", "unlabeled", "validation", "test")}
    )
    problems: list[tuple[str, str]] = []
    listed = [f for e in training for f in _files(e.get("image"))]
    if not training:
        raise DataValidationError(
            f"the labelled training set ('training'{where}) is empty: nothing to train on",
            [(source or "training", "empty labelled set")],
        )
    if len(training) < labeled_batch_size:
        raise DataValidationError(
            f"the labelled training set ('training'{where}) has {len(training)} case(s) ({', '.join(listed)}) but "
            f"labeled_batch_size is {labeled_batch_size}: add labelled cases or lower labeled_batch_size",
            [(listed[0], "labelled set smaller than the labelled batch size")],
        )
    for f, section, other in find_leaks(lists):
        problems.append((f, f"is both a '{section}' case and a '{other}' case (data leak){where}"))

    jobs = [(e, "training", True) for e in training] + [(e, "validation", True) for e in validation]
    jobs += [(e, "unlabeled", False) for e in unlabeled]

    def run(job):
        entry, section, labelled = job
        return _check_case(entry, section, labelled, in_channels, num_classes, check_voxels, h5_spacing)

    if num_threads > 1 and len(jobs) > 1:
        with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(jobs))) as pool:
            results = list(pool.map(run, jobs))
    else:
        results = [run(job) for job in jobs]
    for (entry, section, _), (case_problems, images) in zip(jobs, results):
        problems += case_problems
        for info in images:
            report.volumes[info.path] = info
            if patch_size is not None and section != "validation":
                note = _padding_note(info, patch_size, spacing)
                if note:
                    report.notes.append(note)
    if problems:
        raise DataValidationError(_problem_message(problems, where), problems)
    for note in report.notes[:MAX_LISTED_PROBLEMS]:
        logger.warning(note)
    if len(report.notes) > MAX_LISTED_PROBLEMS:
        logger.warning(f"note: {len(report.notes) - MAX_LISTED_PROBLEMS} more volume(s) are smaller than the patch")
    logger.info(
        f"checked {len(jobs)} case(s) ({len(training)} labelled, {len(unlabeled)} unlabelled, {len(validation)} "
        f"validation) in {time.perf_counter() - t0:.1f} s: no problems"
    )
    return report


def _problem_message(problems: Sequence[tuple[str, str]], where: str) -> str:
    lines = [f"{len(problems)} problem(s) in the training inputs{where}:"]
    lines += [f"  - {f}: {p}" for f, p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)


# -- run settings -------------------------------------------------------------------------------------
_SAFE_CALLS = {"int", "float", "str", "bool", "min", "max", "round", "abs", "len", "list", "tuple", "sorted"}
_CONTROL_IDS = ("imports", "initialize", "run", "finalize")


def _current_parser() -> Any:
    """The ``monai.bundle.ConfigParser`` evaluating the calling expression (found on the call stack)."""
    from monai.bundle import ConfigParser

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            return candidate
        frame = frame.f_back
    return None


def _plain(value: Any) -> Any:
    """``value`` as plain JSON, or raise ``TypeError``."""
    import torch

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        if "_target_" in value:
            raise TypeError("component")
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(type(value).__name__)


def _is_code(value: Any) -> bool:
    if isinstance(value, str):
        return value.startswith(("$", "@", "%"))
    if isinstance(value, Mapping):
        return "_target_" in value or any(_is_code(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_is_code(v) for v in value)
    return False


def _safe_to_evaluate(key: str, config: Mapping, depth: int = 0) -> bool:
    """An expression that only combines plain values with simple built-ins (no objects are created)."""
    value = config.get(key)
    if depth > 20 or not isinstance(value, str):
        return not _is_code(value)
    if value.startswith("%"):
        return False
    calls = set(re.findall(r"([A-Za-z_][\w.]*)\s*\(", value))
    if not calls <= _SAFE_CALLS | {"os.path.join", "torch.device", "torch.cuda.is_available"}:
        return False
    refs = re.findall(r"@([\w#:]+)", value)
    return all(r in config and _safe_to_evaluate(r, config, depth + 1) for r in refs)


def resolved_settings(parser: Any) -> dict[str, Any]:
    """Top-level config values as plain JSON: literal values, and expressions already evaluated or safe to evaluate.

    Components (``_target_``) and expressions that would create objects are left out; their text is in the
    merged configuration recorded next to it.
    """
    config = parser.get()
    resolved_cache = getattr(getattr(parser, "ref_resolver", None), "resolved_content", {})
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _CONTROL_IDS:
            continue
        try:
            if not _is_code(value):
                out[key] = _plain(value)
            elif key in resolved_cache or _safe_to_evaluate(key, config):
                out[key] = _plain(parser.get_parsed_content(key))
        except Exception:  # not plain JSON, or not evaluable here: the raw text is in "config"
            continue
    return out


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("torch", "monai", "pytorch-ignite", "numpy", "nibabel", "SimpleITK", "h5py", "scipy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import bundle

        versions["bundle"] = bundle.__version__
    except Exception:
        pass
    return versions


def write_run_settings(
    output_dir: str | os.PathLike,
    seed: int | None,
    parser: Any = None,
    filename: str = "run_settings.json",
    extra: Mapping[str, Any] | None = None,
) -> Path | None:
    """Write ``<output_dir>/<filename>``: everything needed to repeat the run.

    Contents: ``seed``; ``argv`` (the command line); ``versions`` (Python, torch, MONAI, Ignite, NumPy ...);
    ``device`` facts (CUDA device names, deterministic-algorithm flags); ``resolved`` (top-level config values as
    plain JSON, see :func:`resolved_settings`); ``config`` (the merged configuration with overrides applied,
    expressions as text); ``extra``. Written atomically; on a multi-process run only rank 0 writes (also before
    the process group exists: the ``RANK`` variable of ``torchrun``). A
    settings file of an earlier invocation in the same folder (e.g. before a resume) is kept as
    ``run_settings.<n>.json``.

    Args:
        output_dir: the run's output folder (created).
        seed: the run's seed.
        parser: the ``ConfigParser``; ``None`` finds the one evaluating the calling config expression. Default None.
        filename: file name. Default ``"run_settings.json"``.
        extra: more plain-JSON values to record. Default None.

    Returns:
        The written path, or ``None`` on ranks other than 0.
    """
    import torch

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else int(os.environ.get("RANK", "0"))  # torchrun sets RANK
    if rank != 0:
        return None
    parser = parser if parser is not None else _current_parser()
    settings: dict[str, Any] = {
        "seed": seed,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "versions": _versions(),
        "device": {
            "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
            "num_threads": torch.get_num_threads(),
        },
    }
    if parser is not None:
        settings["resolved"] = resolved_settings(parser)
        settings["config"] = _plain_config(parser.get())
    if extra:
        settings["extra"] = _plain(dict(extra))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    if path.exists():
        n = 1
        while path.with_name(f"{path.stem}.{n}{path.suffix}").exists():
            n += 1
        os.replace(path, path.with_name(f"{path.stem}.{n}{path.suffix}"))
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    logger.info(f"run settings written to {path}")
    return path


def _plain_config(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


# -- inference: one failing case does not stop the others ----------------------------------------------
class CaseReport:
    """Per-case bookkeeping for folder inference: failures are recorded, the other cases go on.

    Typical use from ``configs/inference.json``::

        "report": {"_target_": "bundle.data.checks.CaseReport", "summary_file": "$@output_dir + '/summary.json'"}
        "dataset#data": "$@report.filter(@datalist)"             # readable cases only; failures recorded
        "finalize": ["$@report.finish()"]                        # summary.json; exit status 1 on failures

    A case that fails later (while being processed) is recorded with :meth:`record_failure` (for example from
    an Ignite ``EXCEPTION_RAISED`` handler), and a written output with :meth:`record_output`.

    Args:
        summary_file: where :meth:`finish` writes the JSON summary; ``None`` writes nothing. Default None.
        in_channels: channels the network expects (checked per file). Default 1.
        check_voxels: read the voxel data of every input (finds truncated files and NaN/Inf). Default True.
        exit_on_failure: :meth:`finish` ends the process with status 1 when a case failed. Default True.
    """

    def __init__(
        self,
        summary_file: str | os.PathLike | None = None,
        in_channels: int | None = 1,
        check_voxels: bool = True,
        exit_on_failure: bool = True,
    ):
        self.summary_file = Path(summary_file) if summary_file else None
        self.in_channels, self.check_voxels, self.exit_on_failure = in_channels, check_voxels, exit_on_failure
        self.total = 0
        self.failures: list[dict[str, str]] = []
        self.outputs: list[str] = []

    def filter(self, cases: Iterable[Mapping | str], key: str = "image") -> list[dict]:
        """The cases whose ``key`` file(s) pass :func:`check_image_file`; the others are recorded as failures.

        Args:
            cases: data-list entries (``{"image": path, ...}``) or plain paths.
            key: the entry key of the input file. Default ``"image"``.
        """
        good = []
        for case in cases:
            entry = dict(case) if isinstance(case, Mapping) else {key: os.fspath(case)}
            self.total += 1
            files = _files(entry.get(key))
            try:
                if not files:
                    raise DataValidationError(f"entry {entry!r} has no '{key}' file")
                channels = self.in_channels if len(files) == 1 else None
                for f in files:
                    check_image_file(f, "image", channels, None, self.check_voxels)
            except DataValidationError as e:
                self.record_failure(files[0] if files else repr(entry), e)
                continue
            good.append(entry)
        return good

    def record_failure(self, case: str, error: BaseException | str) -> None:
        """Record a failed case and log it (the run goes on)."""
        message = str(error) if isinstance(error, BaseException) else error
        self.failures.append({"case": os.fspath(case), "error": message})
        logger.error(f"case failed, skipped: {message}")

    def record_output(self, path: str | os.PathLike) -> None:
        self.outputs.append(os.fspath(path))

    @property
    def failed(self) -> int:
        return len(self.failures)

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "succeeded": self.total - self.failed,
            "failed": self.failed,
            "failures": list(self.failures),
            "outputs": list(self.outputs),
        }

    def finish(self) -> dict[str, Any]:
        """Write the summary (atomically), log it, and end the process with status 1 when a case failed."""
        summary = self.summary()
        if self.summary_file is not None:
            self.summary_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.summary_file.with_name(f".{self.summary_file.name}.tmp.{os.getpid()}")
            tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.summary_file)
        where = f" (summary: {self.summary_file})" if self.summary_file else ""
        if self.failures:
            lines = "\n".join(f"  - {f['error']}" for f in self.failures)
            logger.error(f"{self.failed} of {self.total} case(s) failed{where}:\n{lines}")
            if self.exit_on_failure:
                print(f"{self.failed} of {self.total} case(s) failed{where}", file=sys.stderr)
                raise SystemExit(1)
        else:
            logger.info(f"all {self.total} case(s) succeeded{where}")
        return summary


class AtomicNibabelWriter(NibabelWriter):
    """``monai.data.NibabelWriter`` that writes ``<folder>/.<name>.tmp-<pid>.nii[.gz]`` and renames it to the
    target, so an existing output is never replaced by a partial file.

    Use it as ``SaveImaged(..., writer="bundle.data.checks.AtomicNibabelWriter")``.
    """

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs: Any) -> None:
        target = Path(filename)
        suffix = "".join(s for s in target.suffixes[-2:] if s in (".nii", ".gz")) or target.suffix
        stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{stem}.tmp-{os.getpid()}{suffix}")
        try:
            super().write(str(tmp), verbose=False, **obj_kwargs)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        if verbose:
            logger.info(f"writing: {target}")


def run_cases(cases: Iterable[Any], fn: Callable[[Any], Any], report: CaseReport, name: Callable[[Any], str] = str):
    """Call ``fn(case)`` for every case; a failing case is recorded in ``report`` and the next one goes on.

    Returns the list of results of the successful cases.
    """
    results = []
    for case in cases:
        report.total += 1
        try:
            results.append(fn(case))
        except Exception as e:  # one bad case must not stop the others
            report.record_failure(name(case), f"{name(case)}: {_first_line(e)}")
            logger.debug("".join(traceback.format_exception(e)))
    return results
