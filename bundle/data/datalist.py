"""One JSON data list for a semi-supervised dataset: read, validate, and build it from a folder layout.

Format (MONAI-style; paths relative to the JSON file's folder, or absolute)::

    {
      "training":   [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}, ...],
      "unlabeled":  [{"image": "imagesUnlabeled/u.nii.gz"}, ...],
      "validation": [{"image": "imagesVal/v.nii.gz", "label": "labelsVal/v.nii.gz"}, ...],
      "test":       [{"image": "imagesTs/t.nii.gz", "label": "labelsTs/t.nii.gz"}, ...]
    }

``training`` and ``validation`` entries need a ``label``; ``test`` entries may omit it; ``unlabeled`` entries
only need an ``image``. Extra keys in an entry are kept. A legacy LA ``.h5`` file holds both the image and
the label, so its entry may name the same file twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle.data.readers import SUPPORTED_SUFFIXES
from bundle.engine.errors import DataValidationError

__all__ = ["SECTIONS", "load_datalist", "build_datalist", "case_name", "write_datalist", "resolve_datalist"]

SECTIONS = ("training", "unlabeled", "validation", "test")
_LABEL_REQUIRED = {"training": True, "unlabeled": False, "validation": True, "test": False}
_PATH_KEYS = ("image", "label")


def case_name(path: str | os.PathLike) -> str | None:
    """File name without its (supported) suffix, or ``None`` when the suffix is not supported."""
    name = Path(path).name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _resolve(value: Any, base: Path) -> Any:
    """Absolute, normalised path string(s) for ``value`` (a path or a list of paths) relative to ``base``."""
    if isinstance(value, (list, tuple)):
        return [_resolve(v, base) for v in value]
    path = Path(os.path.expanduser(value))
    return os.path.normpath(path if path.is_absolute() else base / path)


def _check_path_value(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value)
    return isinstance(value, list) and len(value) > 0 and all(isinstance(v, str) and v for v in value)


def load_datalist(
    path: str | os.PathLike, base_dir: str | os.PathLike | None = None, check_files: bool = False
) -> dict[str, list[dict]]:
    """Read and validate a data list; resolve its relative paths.

    Args:
        path: the JSON file.
        base_dir: folder that relative paths are relative to. Default ``None``: the JSON file's folder.
        check_files: also raise ``FileNotFoundError`` for entries whose files do not exist. Default False.

    Returns:
        ``{"training": [...], "unlabeled": [...], "validation": [...], "test": [...]}`` (missing sections are
        ``[]``) with absolute ``image``/``label`` paths; other top-level keys of the file are dropped.

    Raises:
        FileNotFoundError: ``path`` (or, with ``check_files``, a listed file) does not exist.
        ValueError: the JSON is malformed or an entry/section has the wrong structure; the message names the
            file, the section and the entry index.
    """
    path = Path(path)
    if not path.is_file():
        hint = "" if path.parent.is_dir() else f" (its folder {path.parent} does not exist: check dataset_dir)"
        raise FileNotFoundError(f"data list not found: {path}{hint}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataValidationError(f"{path}: not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}.") from None
    if not isinstance(raw, dict):
        raise DataValidationError(
            f"{path}: top level must be an object with keys {SECTIONS}, got {type(raw).__name__}."
        )
    base = Path(base_dir) if base_dir is not None else path.resolve().parent
    out: dict[str, list[dict]] = {}
    for section in SECTIONS:
        entries = raw.get(section, [])
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise DataValidationError(
                f"{path}: key '{section}' must be a list of objects, got {type(entries).__name__}."
            )
        resolved = []
        for i, entry in enumerate(entries):
            where = f"{path}: '{section}'[{i}]"
            if not isinstance(entry, dict):
                raise DataValidationError(f"{where} must be an object with an 'image' path, got {entry!r}.")
            if not _check_path_value(entry.get("image")):
                raise DataValidationError(f"{where} needs a non-empty 'image' path, got {entry.get('image')!r}.")
            if _LABEL_REQUIRED[section] and "label" not in entry:
                raise DataValidationError(f"{where} needs a 'label' path (section '{section}' is labelled): {entry!r}.")
            if "label" in entry and not _check_path_value(entry["label"]):
                raise DataValidationError(f"{where} has an invalid 'label' path {entry['label']!r}.")
            item = dict(entry)
            for key in _PATH_KEYS:
                if key in item:
                    item[key] = _resolve(item[key], base)
                    if check_files:
                        for f in item[key] if isinstance(item[key], list) else [item[key]]:
                            if not os.path.exists(f):
                                raise FileNotFoundError(f"{where}: '{key}' file not found: {f}")
            resolved.append(item)
        out[section] = resolved
    return out


def _scan(folder: Path) -> dict[str, Path]:
    """``{case name: file}`` for the supported, non-hidden files of ``folder`` (sorted by name)."""
    files: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        name = case_name(f)
        if f.name.startswith(".") or name is None or not f.is_file():
            continue
        if name in files:
            raise DataValidationError(f"{folder}: two files for case '{name}': {files[name].name} and {f.name}.")
        files[name] = f
    return files


def _pair(images_dir: Path, labels_dir: Path | None, labels_required: bool) -> list[dict[str, str]]:
    """Match images to labels by file name (``case_0000`` images may match a ``case`` label, nnU-Net style).

    A legacy ``.h5`` image without a label file is its own label (the file holds both datasets).
    """
    images = _scan(images_dir)
    labels = _scan(labels_dir) if labels_dir is not None and labels_dir.is_dir() else None
    if labels is None and labels_required and not all(f.suffix == ".h5" for f in images.values()):
        raise FileNotFoundError(f"label folder not found: {labels_dir} (needed for the images in {images_dir}).")
    entries, used = [], set()
    for name, image in images.items():
        entry = {"image": str(image)}
        candidates = (name, name[: -len("_0000")]) if name.endswith("_0000") else (name,)
        label_name = next((n for n in candidates if n in (labels or {})), None)
        if label_name is not None:
            entry["label"] = str(labels[label_name])
            used.add(label_name)
        elif image.suffix == ".h5":
            entry["label"] = str(image)
        elif labels is not None:
            raise FileNotFoundError(f"no label for image {image} in {labels_dir} (expected a file named {name}.*).")
        entries.append(entry)
    orphans = sorted(set(labels or {}) - used)
    if orphans:
        raise DataValidationError(f"label {labels[orphans[0]]} has no image in {images_dir}.")
    return entries


def _relative(value: Any, start: Path) -> Any:
    if isinstance(value, (list, tuple)):
        return [_relative(v, start) for v in value]
    try:
        return Path(os.path.relpath(value, start)).as_posix()
    except ValueError:  # different drive (Windows)
        return Path(value).as_posix()


def write_datalist(datalist: dict[str, list[dict]], out: str | os.PathLike) -> Path:
    """Write ``datalist`` to ``out`` as JSON with paths relative to ``out``'s folder. Returns ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = out.resolve().parent
    rel = {
        s: [{k: (_relative(v, start) if k in _PATH_KEYS else v) for k, v in e.items()} for e in datalist.get(s, [])]
        for s in SECTIONS
    }
    out.write_text(json.dumps(rel, indent=2) + "\n", encoding="utf-8")
    return out


def build_datalist(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    val_fraction: float = 0.0,
    test_fraction: float = 0.0,
    n_labelled: int | None = None,
    seed: int = 0,
    images_tr: str = "imagesTr",
    labels_tr: str = "labelsTr",
    images_unlabeled: str = "imagesUnlabeled",
    images_val: str = "imagesVal",
    labels_val: str = "labelsVal",
    images_ts: str = "imagesTs",
    labels_ts: str = "labelsTs",
) -> dict[str, list[dict]]:
    """Build a data list from a folder layout, with an optional seeded split.

    Layout below ``root`` (folder names configurable): ``imagesTr/`` + ``labelsTr/`` (required; matched by file
    name), optional ``imagesUnlabeled/``, ``imagesVal/`` + ``labelsVal/``, ``imagesTs/`` (+ ``labelsTs/``).
    Supported files: ``bundle.data.readers.SUPPORTED_SUFFIXES`` (NIfTI, NRRD/MetaImage, ``.h5``; hidden files and
    other suffixes are ignored). Split of the labelled cases, sorted by name and permuted by ``np.random.default_rng(seed)``:
    the first ``max(1, round(val_fraction * n))`` go to ``validation`` (none when the fraction is 0), the next
    ``max(1, round(test_fraction * n))`` to ``test``; of the rest, the first ``n_labelled`` stay in
    ``training`` and the others are demoted to ``unlabeled`` (image only). Every section is sorted by name.

    Args:
        root: dataset folder.
        out: where to write the JSON (paths relative to its folder). Default ``None``: not written.
        val_fraction: fraction of labelled cases moved to validation. Default 0.0.
        test_fraction: fraction of labelled cases moved to test. Default 0.0.
        n_labelled: labelled cases to keep in training (``None``: all). Default ``None``.
        seed: seed of the split. Default 0.
        images_tr, labels_tr, images_unlabeled, images_val, labels_val, images_ts, labels_ts: sub-folder names.

    Returns:
        The data list with absolute paths (the same content as :func:`load_datalist` of the written file).

    Raises:
        FileNotFoundError: ``root/images_tr`` or ``root/labels_tr`` is missing, or an image has no label
            (the message names the image file).
        ValueError: a label without an image, bad fractions or ``n_labelled``.
    """
    root = Path(root).expanduser().resolve()
    tr_dir = root / images_tr
    if not tr_dir.is_dir():
        raise FileNotFoundError(f"labelled image folder not found: {tr_dir}")
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise DataValidationError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) with a sum below 1."
        )
    labelled = _pair(tr_dir, root / labels_tr, labels_required=True)
    if not labelled:
        raise DataValidationError(f"no supported image files ({', '.join(SUPPORTED_SUFFIXES)}) in {tr_dir}.")
    n = len(labelled)
    order = [labelled[i] for i in np.random.default_rng(seed).permutation(n)]
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise DataValidationError(
            f"{n} labelled cases in {tr_dir} leave none for training with {n_val} val / {n_test} test."
        )
    validation, test, training = order[:n_val], order[n_val : n_val + n_test], order[n_val + n_test :]
    demoted: list[dict] = []
    if n_labelled is not None:
        if int(n_labelled) != n_labelled or not 1 <= n_labelled <= len(training):
            raise DataValidationError(
                f"n_labelled={n_labelled} must be an integer in [1, {len(training)}] for {tr_dir}."
            )
        training, demoted = training[: int(n_labelled)], [{"image": e["image"]} for e in training[int(n_labelled) :]]

    unlabeled_dir = root / images_unlabeled
    unlabeled = [{"image": str(f)} for f in _scan(unlabeled_dir).values()] if unlabeled_dir.is_dir() else []
    if (root / images_val).is_dir():
        validation = validation + _pair(root / images_val, root / labels_val, labels_required=True)
    if (root / images_ts).is_dir():
        test = test + _pair(root / images_ts, root / labels_ts, labels_required=False)

    def by_name(entries: Sequence[dict]) -> list[dict]:
        return sorted(entries, key=lambda e: (Path(e["image"]).name, e["image"]))

    datalist = {
        "training": by_name(training),
        "unlabeled": by_name(demoted) + by_name(unlabeled),
        "validation": by_name(validation),
        "test": by_name(test),
    }
    if out is not None:
        write_datalist(datalist, out)
    return datalist


def resolve_datalist(datalist_file: str, demo_dir: str) -> str:
    """The datalist path to use; when it is the embedded demo's, generate the demo data first.

    The demo dataset (``bundle.data.demo``) is created on first use and never committed.
    """
    from bundle.data.demo import ensure_demo_dataset

    if Path(datalist_file).resolve() == (Path(demo_dir) / "datalist.json").resolve():
        return str(ensure_demo_dataset(demo_dir))
    return datalist_file
