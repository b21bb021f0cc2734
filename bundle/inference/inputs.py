"""The cases to run inference on: a folder, a glob pattern, a data list or one scan."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundle.data.datalist import SECTIONS, case_name, load_datalist
from bundle.data.readers import SUPPORTED_SUFFIXES
from bundle.engine.errors import DataValidationError

__all__ = ["list_inputs"]


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _supported(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and case_name(path) is not None


def _case_ids(paths: Sequence[str]) -> list[str]:
    """A unique id per path: the file name without suffix, or ``<parent>`` / ``<parent>_<name>`` on collisions.

    The legacy LA layout (``<ID>/mri_norm2.h5`` for every case) gets ``<ID>``.
    """
    names = [case_name(p) or Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    parents = [Path(p).parent.name for p in paths]
    if len(set(parents)) == len(parents) and len(set(names)) == 1:
        return parents
    ids = [f"{parent}_{name}" for parent, name in zip(parents, names)]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataValidationError(f"inputs with the same case id {dup[0]!r}: rename them or list them in a datalist.")
    return ids


def list_inputs(
    source: str | os.PathLike, section: str = "test", label_key: str | None = None, skip_suffix: str | None = None
) -> list[dict[str, Any]]:
    """The cases to run inference on, as ``[{"image": path, "case_id": id, ...}, ...]``.

    Args:
        source: a folder (every file in it with a suffix of ``bundle.data.readers.SUPPORTED_SUFFIXES``; not
            recursive; hidden files skipped), a glob pattern (``"scans/**/*.nii.gz"``, recursive), a data list
            ``.json`` (entries of ``section``; other keys of an entry are kept) or a single scan file.
        section: data list section to read. Default ``"test"``.
        label_key: for evaluation: copy each data-list entry's ``label`` path to this key (``"label"`` lets the
            preprocessing load it, ``"label_file"`` keeps it as a path); entries without a label raise. Default
            ``None``: labels dropped (plain inference).
        skip_suffix: in folder/glob mode, skip files whose name without suffix ends with this (e.g. ``"_seg"``, so
            masks written into the input folder are not segmented again). Default ``None``.

    Returns:
        One dict per case, sorted by path for folders and globs, in data-list order otherwise; ``case_id`` is the
        file name without suffix (the parent folder name when all files share one name, as in the LA layout),
        unless the data list entry provides one.

    Raises:
        FileNotFoundError: ``source`` does not exist or matches no supported file.
        ValueError: unknown section, an empty section, or (with ``label_key``) an entry without ``label``.
    """
    src = str(source)
    path = Path(os.path.expanduser(src))
    if path.suffix.lower() == ".json" and path.is_file():
        if section not in SECTIONS:
            raise DataValidationError(f"unknown data list section {section!r}; expected one of {SECTIONS}.")
        datalist = load_datalist(path)
        entries = datalist[section]
        if not entries:
            counts = ", ".join(f"{k} {len(v)}" for k, v in datalist.items())
            raise DataValidationError(f"{path}: section '{section}' is empty ({counts}); choose another section.")
        out = []
        for i, entry in enumerate(entries):
            item = {k: v for k, v in entry.items() if k != "label"}
            if label_key is not None:
                if "label" not in entry:
                    raise DataValidationError(f"{path}: '{section}'[{i}] has no 'label' to evaluate against: {entry}.")
                item[label_key] = entry["label"]
            out.append(item)
        ids = _case_ids([e["image"] if isinstance(e["image"], str) else e["image"][0] for e in out])
        for item, case_id in zip(out, ids):
            item.setdefault("case_id", case_id)
        return out
    if label_key is not None:
        raise DataValidationError(f"labels for evaluation need a data list .json, got {src!r}.")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _supported(p))
        where = f"folder {path}"
    elif _has_magic(src):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(src), recursive=True) if _supported(Path(p)))
        where = f"pattern {src!r}"
    elif path.is_file():
        if case_name(path) is None:
            raise DataValidationError(
                f"{path}: unsupported file type; expected one of {SUPPORTED_SUFFIXES} or a .json list."
            )
        files = [path]
        where = str(path)
    else:
        raise FileNotFoundError(f"inference input not found: {src} (expected a folder, a glob or a data list .json)")
    if skip_suffix:
        files = [f for f in files if not (case_name(f) or "").endswith(skip_suffix)]
    if not files:
        raise FileNotFoundError(f"no scans ({', '.join(SUPPORTED_SUFFIXES)}) in {where}.")
    paths = [str(f.resolve()) for f in files]
    return [{"image": p, "case_id": c} for p, c in zip(paths, _case_ids(paths))]
