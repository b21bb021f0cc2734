"""The unlabelled training set, also when MONAI Label gives only the labelled cases (its ``monaibundle`` app).

MONAI Label (0.8.5) trains a bundle by overriding ``bundle_root``, ``device``, ``train#trainer#max_epochs``,
``train#dataset#data`` (the labelled pairs of its datastore), ``train#handlers`` (a ``CheckpointLoader`` of
``models/model.pt`` inserted first) and ``validate#dataset#data`` (may be ``[]``). It sets no ``dataset_dir``, so:

- :func:`unlabeled_data` gives the unlabelled set: the datalist's ``unlabeled`` section when the labelled cases come
  from the datalist, otherwise (MONAI Label, or any labelled list given directly) the images beside the labelled
  ones that have no label in the list: the studies without a final label;
- :class:`bundle.handlers.teacher_init.TeacherFromStudent` starts the EMA teacher from the student's weights once a
  ``CheckpointLoader`` has replaced them (the teacher is a copy of the student made before any handler runs).

For inference MONAI Label reads ``inference.json`` (``network_def``, ``preprocessing``, ``inferer``,
``postprocessing``) and adds the string ``image_path`` to the data: see :class:`bundle.data.transforms.Spacingd`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.data.datalist import case_name, load_datalist

__all__ = ["unlabeled_data", "images_without_label", "datalist_section"]

logger = logging.getLogger("plgdf")


def _paths(value: Any) -> list[str]:
    """The file path(s) of an ``image``/``label`` value (a path or a list of channel paths)."""
    if value is None:
        return []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [os.path.realpath(os.fspath(v)) for v in values if isinstance(v, (str, os.PathLike))]


def _entry_files(entries: Iterable[Mapping] | None) -> set[str]:
    files: set[str] = set()
    for entry in entries or []:
        for key in ("image", "label"):
            files.update(_paths(entry.get(key)))
    return files


def images_without_label(labeled: Sequence[Mapping], exclude: Iterable[Mapping] | None = None) -> list[dict]:
    """The images in the folder(s) of the labelled images that are not in ``labeled`` (nor in ``exclude``).

    In a MONAI Label datastore the studies lie in one folder and their final labels in ``labels/final/`` below it,
    so these are the studies that have no final label. Only supported volume files directly in those folders count
    (``bundle.data.readers.SUPPORTED_SUFFIXES``; hidden files and sub-folders are skipped). Multi-channel
    entries (a list of paths) are excluded but their folders are not scanned.

    Args:
        labeled: the labelled entries (``{"image": path, "label": path}``).
        exclude: further entries whose files are never unlabelled (e.g. the validation cases). Defaults to None.

    Returns:
        ``[{"image": path}, ...]`` sorted by path.
    """
    taken = _entry_files(labeled) | _entry_files(exclude)
    folders = sorted(
        {
            os.path.dirname(p)
            for e in labeled
            if isinstance(e.get("image"), (str, os.PathLike))
            for p in _paths(e.get("image"))
        }
    )
    found = []
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for f in sorted(Path(folder).iterdir()):
            if f.name.startswith(".") or case_name(f) is None or not f.is_file():
                continue
            if os.path.realpath(f) not in taken:
                found.append({"image": str(f)})
    return found


def unlabeled_data(
    labeled: Sequence[Mapping], datalist_file: str | os.PathLike | None, exclude: Iterable[Mapping] | None = None
) -> list[dict]:
    """The unlabelled training set for ``labeled``.

    - When ``datalist_file`` exists and every labelled image is in its ``training`` section, the labelled cases
      come from that datalist: its ``unlabeled`` section.
    - Otherwise the labelled list was given directly (MONAI Label overrides ``train#dataset#data`` with its
      datastore's labelled pairs and sets no ``dataset_dir``): the images beside the labelled ones that have no
      label (:func:`images_without_label`), never the files of ``exclude`` (the validation cases).

    An empty result is allowed: the trainer then falls back to the supervised loss with a warning.

    Args:
        labeled: the labelled entries the trainer uses (``train#dataset#data``).
        datalist_file: the bundle's datalist (``datalist_file``); it may not exist.
        exclude: entries never used as unlabelled (``validate#dataset#data``). Defaults to None.
    """
    labeled = list(labeled or [])
    if datalist_file is not None and os.path.isfile(datalist_file):
        datalist = load_datalist(datalist_file)
        listed = {p for e in datalist["training"] for p in _paths(e.get("image"))}
        images = [p for e in labeled for p in _paths(e.get("image"))]
        if all(p in listed for p in images):
            return datalist["unlabeled"]
    found = images_without_label(labeled, exclude)
    logger.info(
        f"labelled cases given directly ({len(labeled)}): the unlabelled set is the {len(found)} image(s) beside "
        "them without a label"
    )
    return found


def datalist_section(datalist_file: str | os.PathLike | None, section: str) -> list[dict]:
    """Section ``section`` of ``datalist_file``, or ``[]`` when the file does not exist.

    For checks that only read a section: unlike ``@datalist``, it never generates the demo dataset (MONAI Label
    gives the data lists directly, and the demo's datalist file does not exist in its copy of the bundle).
    """
    if datalist_file is None or not os.path.isfile(datalist_file):
        return []
    return load_datalist(datalist_file)[section]
