"""``models/model.json``: how many training iterations the weights in ``models/model.pt`` have had.

Training writes the record beside ``model.pt`` (atomically, right after it) whenever it exports a model; a training
that starts from that model (MONAI Label's next round: :class:`bundle.handlers.schedule.ContinueSchedule`) reads it
to continue lambda(t) and the learning-rate schedule. ``model.pt`` itself stays a flat ``state_dict`` of tensors
(the Model Zoo's format, what MONAI Label loads). The record holds the SHA-256 of the ``model.pt`` it describes, so
a ``model.pt`` replaced by another file (copied from elsewhere) no longer matches it and the record is ignored::

    {"iterations": 650, "model_file": "model.pt", "sha256": "3f1c..."}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from bundle.engine.files import write_json_atomic

__all__ = ["record_path", "write_model_record", "read_model_record"]

logger = logging.getLogger("plgdf")


def record_path(model_file: str | os.PathLike) -> Path:
    """The record of ``model_file``: the same name with ``.json`` (``models/model.pt`` -> ``models/model.json``)."""
    return Path(model_file).with_suffix(".json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_model_record(model_file: str | os.PathLike, iterations: int) -> Path:
    """Record that the weights in ``model_file`` (already written) had ``iterations`` training iterations."""
    model_file = Path(model_file)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}.")
    record = {"iterations": int(iterations), "model_file": model_file.name, "sha256": _sha256(model_file)}
    return write_json_atomic(record_path(model_file), record)


def read_model_record(model_file: str | os.PathLike) -> int | None:
    """The training iterations recorded for ``model_file``, or None when there is no record that describes it.

    A missing record or model file is None without a message (a model from elsewhere, or none yet); an unreadable
    record, or one written for another file (its checksum differs), is None with a warning naming the file.
    """
    model_file = Path(model_file)
    path = record_path(model_file)
    if not path.is_file() or not model_file.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        iterations, sha256 = int(record["iterations"]), str(record["sha256"])
    except (ValueError, KeyError, TypeError) as e:
        logger.warning(f"{path} is not a model record ({type(e).__name__}: {e}): ignored, the schedule starts at 0")
        return None
    if iterations < 0:
        logger.warning(f"{path}: iterations {iterations} < 0: ignored, the schedule starts at 0")
        return None
    if sha256 != _sha256(model_file):
        logger.warning(
            f"{path} describes another {model_file.name} (its checksum differs: the file was replaced): ignored, "
            "the schedule starts at 0"
        )
        return None
    return iterations
