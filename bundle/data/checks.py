"""Input checks before training or inference: every problem of the data named at once, before the first iteration.

- :func:`check_training_inputs` (``configs/train.json``, ``initialize``): every labelled, unlabelled and
  validation file is opened once; all problems are collected and raised together as one
  :class:`bundle.engine.errors.DataValidationError` whose message names each file and its problem. See the function
  for the list of checks.
- :func:`check_image_file`: the same per-file checks for one file (inference checks each input scan with it,
  ``bundle.inference.case_report.CaseReport``).
- :func:`find_leaks`: cases used both for training and for validation/test.

Accepted inputs: a 3D volume ``(H, W, D)``, or a 4D NIfTI ``(H, W, D, C)`` whose last axis is the channel axis
with ``C == in_channels`` (so a single-frame 4D file ``(H, W, D, 1)`` is accepted for one-channel networks);
a list of 3D files is stacked as channels. 2D images, single slices ``(H, W, 1)``, multi-frame 4D files and
5D files are refused. Legacy LA ``.h5`` files hold the datasets ``image`` and ``label`` in one file (the
data list then names the same file as image and label).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.content_checks import (
    content_digest,
    content_leaks,
    entry_files,
    identity,
    modality_note,
    repeated_cases,
)
from bundle.data.readers import VolumeInfo, VolumeProblemError, read_volume
from bundle.engine.errors import DataValidationError, install_error_hook

__all__ = ["ValidationReport", "check_image_file", "check_training_inputs", "entry_files", "find_leaks"]

logger = logging.getLogger("plgdf")

#: image/label affines may differ by ``atol + rtol * |value|`` per entry (mm and direction cosines).
AFFINE_RTOL, AFFINE_ATOL = 1e-3, 1e-4
MAX_LISTED_PROBLEMS = 20


def _statistics(info: VolumeInfo, data: np.ndarray, num_classes: int | None, label: bool) -> None:
    """Fill the value range; raise :class:`VolumeProblemError` for NaN/Inf voxels or bad label values."""
    if data.size == 0:
        raise VolumeProblemError("holds no voxels")
    lo, hi = data.min(), data.max()
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise VolumeProblemError(f"has {bad} NaN/Inf voxel(s) of {data.size}")
    info.minimum, info.maximum = float(lo), float(hi)
    info.distinct = min(3, len(np.unique(data.ravel()[:: max(1, data.size // 200_000)][:200_000])))
    if info.distinct < 3:  # a sample can miss rare values: count exactly
        info.distinct = min(3, len(np.unique(data)))
    if not label:
        info.digest = content_digest(data)
        return
    if data.dtype.kind == "f" and not np.array_equal(data, np.rint(data)):
        examples = np.unique(data[data != np.rint(data)])[:5].tolist()
        raise VolumeProblemError(f"label has non-integer values (e.g. {examples}); labels must be class indices")
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        outside = np.unique(data[(data < 0) | (data >= num_classes)])[:10].tolist()
        hint = " (a 0/255 mask must be converted to 0/1)" if outside == [255] and num_classes == 2 else ""
        raise VolumeProblemError(
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
    try:
        info, data = read_volume(path, key, in_channels, check_voxels, h5_spacing)
        if data is not None:
            _statistics(info, data, num_classes, key == "label")
    except VolumeProblemError as e:
        raise DataValidationError(f"{path}: {e}", [(path, str(e))]) from None
    return info


# -- data lists ---------------------------------------------------------------------------------------
@dataclass
class ValidationReport:
    """Result of :func:`check_training_inputs`: case counts per section, and notes (padding, overlaps)."""

    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    volumes: dict[str, VolumeInfo] = field(default_factory=dict)


def find_leaks(datalist: Mapping[str, Sequence[Mapping]]) -> list[tuple[str, str, str]]:
    """Cases used for training (``training`` or ``unlabeled``) that are also in ``validation`` or ``test``.

    Two entries are the same case when their image files are the same file (same path after resolving links,
    or the same inode). Returns ``(file, training section, evaluation section)`` triples.
    """
    where: dict[tuple, tuple[str, str]] = {}
    for section in ("validation", "test"):
        for entry in datalist.get(section) or []:
            for f in entry_files(entry.get("image")):
                where.setdefault(identity(f), (f, section))
    leaks = []
    for section in ("training", "unlabeled"):
        for entry in datalist.get(section) or []:
            for f in entry_files(entry.get("image")):
                hit = where.get(identity(f))
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
) -> tuple[list[tuple[str, str]], list[VolumeInfo], list[VolumeInfo]]:
    """Problems ``(file, problem)``, the image and the label volume infos of one data-list entry."""
    problems: list[tuple[str, str]] = []
    images: list[VolumeInfo] = []
    labels: list[VolumeInfo] = []
    image_files = entry_files(entry.get("image"))
    if not image_files:
        return [(repr(dict(entry)), f"'{section}' entry has no 'image' file")], [], []
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
        label_files = entry_files(entry.get("label"))
        if len(label_files) != 1:
            problems.append((image_files[0], f"'{section}' entry needs exactly one label file, got {label_files}"))
        else:
            try:
                lab = check_image_file(label_files[0], "label", 1, num_classes, check_voxels, h5_spacing)
                labels.append(lab)
                if images and not problems:
                    problems += _pair_problems(images[0], [lab], "label")
            except DataValidationError as e:
                problems += e.problems
    return problems, images, labels


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


def fit_batch_size(batch_size: int, cases: Sequence[Any], what: str = "labelled") -> int:
    """The labelled batch for ``cases``: ``batch_size``, or fewer when fewer cases exist (with a warning), so that
    a first MONAI Label round with one final label trains. Zero cases is left to :func:`check_training_inputs`."""
    n = len(cases or [])
    if 0 < n < batch_size:
        logger.warning(
            f"only {n} {what} case(s) for labeled_batch_size {batch_size}: training with batches of {n} "
            f"(add {what} cases to use the configured batch)"
        )
        return n
    return int(batch_size)


def _describe_source(cases: Sequence[Mapping], source: str | None) -> str:
    """Where the labelled cases come from: the data list file, or the folder of the cases a caller passed (e.g.
    MONAI Label's datastore, which sets ``train#dataset#data`` itself)."""
    files = [f for e in cases for f in entry_files(e.get("image"))]
    if files:
        folder = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
        return f" (cases in {folder})"
    if source and os.path.isfile(source):
        return f" in {source}"
    return " (no data list file: the labelled cases are the caller's, e.g. MONAI Label's datastore of final labels)"


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
    modality: str | None = None,
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
    With ``check_voxels``: a labelled set whose labels are all empty is an error, a single empty label a note;
    an image identical in content (voxel values) to a validation or test image is a leak like the same file;
    the same image listed twice for training is a note; images that do not look like ``modality`` are noted.
    ``test`` cases are only used for the leak checks (their voxels are read for the content check only).

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
        modality: the declared modality (``ct``, ``mr``, ``flair``, ``none``): images whose values do not look like
            it (:func:`modality_note`) get a warning naming the file, the range and the setting. Default None.

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
    listed = [f for e in training for f in entry_files(e.get("image"))]
    if not training:
        raise DataValidationError(
            f"the labelled training set is empty{_describe_source(training, source)}: nothing to train on; "
            "add labelled cases (in MONAI Label: submit at least one final label)",
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
    test_files = [f for e in lists.get("test") or [] for f in entry_files(e.get("image"))] if check_voxels else []

    def run(job):
        entry, section, labelled = job
        return _check_case(entry, section, labelled, in_channels, num_classes, check_voxels, h5_spacing)

    def digest(path: str) -> str | None:
        try:
            return check_image_file(path, "image", None, None, True, h5_spacing).digest
        except DataValidationError:
            return None  # unreadable test files are inference's concern

    if num_threads > 1 and len(jobs) > 1:
        with concurrent.futures.ThreadPoolExecutor(min(num_threads, len(jobs))) as pool:
            results = list(pool.map(run, jobs))
            test_digests = list(pool.map(digest, test_files))
    else:
        results = [run(job) for job in jobs]
        test_digests = [digest(f) for f in test_files]
    empty_labels, n_labels = [], 0
    for (_entry, section, _), (case_problems, images, labels) in zip(jobs, results):
        problems += case_problems
        for info in images:
            report.volumes[info.path] = info
            if patch_size is not None and section != "validation":
                note = _padding_note(info, patch_size, spacing)
                if note:
                    report.notes.append(note)
            note = modality_note(info, modality)
            if note:
                report.notes.append(note)
        if section == "training":
            n_labels += sum(lab.maximum is not None for lab in labels)
            empty_labels += [lab.path for lab in labels if lab.maximum is not None and lab.maximum == 0]
    if check_voxels and n_labels and len(empty_labels) == n_labels:
        problems.append((source or "training", f"all {n_labels} training labels are empty (only 0): nothing to learn"))
    elif empty_labels:
        report.notes += [f"{f}: training label is empty (only background)" for f in empty_labels]
    problems += content_leaks(jobs, results, test_files, test_digests, where)
    report.notes += repeated_cases(jobs, results)
    if problems:
        raise DataValidationError(_problem_message(problems, where), problems)
    for note in report.notes[:MAX_LISTED_PROBLEMS]:
        logger.warning(note)
    if len(report.notes) > MAX_LISTED_PROBLEMS:
        logger.warning(f"note: {len(report.notes) - MAX_LISTED_PROBLEMS} more note(s) not shown")
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
