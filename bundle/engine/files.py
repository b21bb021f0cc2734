"""Files that are never left half written, and checkpoints that load only plain tensors.

Every file the bundle writes (checkpoints, ``model.pt``, ``log.jsonl`` rewrites, JSON summaries, run settings,
masks, reports) goes through :func:`atomic_path`: the data are written to ``.<name>.tmp.<pid><suffix>`` in the target
folder and renamed over the target, so an interrupted process leaves the previous file intact (and at most a hidden
temporary file, which :func:`remove_stale_temporaries` deletes). :func:`safe_load` is the one checkpoint loader:
``torch.load(weights_only=True)`` with errors that name the file.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from bundle.engine.errors import CheckpointError

__all__ = [
    "TMP_GLOB",
    "atomic_path",
    "write_text_atomic",
    "write_json_atomic",
    "save_atomic",
    "safe_load",
    "remove_stale_temporaries",
]

logger = logging.getLogger("plgdf")
#: the names of the temporary files of :func:`atomic_path`, for ``Path.glob``.
TMP_GLOB = ".*.tmp.*"


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it over ``path``.

    The temporary name is ``.<name>.tmp.<pid><suffix>`` in the same folder (created), so the rename is atomic;
    ``suffix`` lets writers that choose the format by file name (nibabel) see the right extension. On an error the
    temporary file is removed and ``path`` is untouched.

    Args:
        path: the target file.
        suffix: appended to the temporary name (e.g. ``".nii.gz"``). Default ``""``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2, **kwargs: Any) -> Path:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically; ``kwargs`` go to ``json.dumps``."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file, fsync, then rename over ``path`` (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the problem.

    Raises:
        CheckpointError: the file is missing, corrupt or truncated, or holds pickled objects other than tensors and
            plain containers.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... by cause
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled objects other than tensors and plain "
                f"containers (possible code); only plain-tensor checkpoints are accepted ({msg})"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or truncated file ({msg})") from None


def remove_stale_temporaries(folder: str | os.PathLike, target: str | None = None) -> list[Path]:
    """Delete the temporary files of :func:`atomic_path` that a killed process left in ``folder`` (their targets are
    intact): all of them, or only those of the file named ``target``. Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = sorted(folder.glob(f".{target}.tmp.*" if target else TMP_GLOB))
    for path in removed:
        path.unlink(missing_ok=True)
        logger.info(f"removed the temporary file {path} left by an interrupted save")
    return removed
