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
from collections.abc import Iterator, Mapping
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
        where = "" if path.parent.is_dir() else f" (the folder {path.parent} does not exist either)"
        raise CheckpointError(f"checkpoint not found: {path}{where}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ... by cause
        text = str(e)
        if "Unsupported global" in text or "GLOBAL" in text:  # a pickled object; never repeat torch's advice
            raise CheckpointError(
                f"refused to load {path} for safety: it holds pickled Python objects, not only tensors and plain "
                "containers, and loading it could run code. Save the weights as a plain state_dict "
                "(torch.save(model.state_dict(), path)) from the code that made the file."
            ) from None
        if path.stat().st_size == 0:
            raise CheckpointError(f"cannot read checkpoint {path}: the file is empty") from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: truncated, corrupt or not a PyTorch checkpoint "
            f"({type(e).__name__}: {text.splitlines()[0][:120] if text else 'no detail'})"
        ) from None


def _conv_shapes(state: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in state.items() if hasattr(v, "shape") and len(v.shape) == 5]


def check_state_dict(
    state: Mapping[str, Any], network: torch.nn.Module, path: str | os.PathLike = "checkpoint"
) -> None:
    """Raise a :class:`CheckpointError` that names the settings which differ when ``state`` (a flat state_dict)
    does not fit ``network``, instead of PyTorch's list of every mismatching tensor.

    The network's width (``n_filters``), ``in_channels`` and ``num_classes`` are read from the first and last 3D
    convolutions of both (``(out, in, k, k, k)`` weights).
    """
    expected = network.state_dict()
    if not isinstance(state, Mapping) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path} is not a flat state_dict of tensors (keys: {list(state)[:5]}).")
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or extra or wrong):
        return
    mine, theirs = _conv_shapes(expected), _conv_shapes(state)
    settings = []
    if mine and theirs:
        pairs = (
            ("n_filters", mine[0][1][0], theirs[0][1][0]),
            ("in_channels", mine[0][1][1], theirs[0][1][1]),
            ("num_classes", mine[-4 if len(mine) >= 4 else -1][1][0], theirs[-4 if len(theirs) >= 4 else -1][1][0]),
        )
        settings = [f"{name} = {ours} here, {saved} in the checkpoint" for name, ours, saved in pairs if ours != saved]
    if settings:
        raise CheckpointError(
            f"{path} was trained with other network settings: {'; '.join(settings)}. Set "
            f"{', '.join(s.split(' = ')[0] for s in settings)} to the checkpoint's values (e.g. --n_filters 16)."
        )
    detail = f"{len(missing)} missing, {len(extra)} unexpected, {len(wrong)} of another shape"
    example = (missing or extra or wrong)[0]
    raise CheckpointError(f"{path} does not fit this network ({detail}; e.g. {example!r}): not a model of this bundle?")


def check_checkpoint(path: str | os.PathLike, network: torch.nn.Module) -> None:
    """Read ``path`` safely (:func:`safe_load`) and check that it fits ``network`` (:func:`check_state_dict`), before
    a run loads it: ``model.pt`` (a flat state_dict) or a training checkpoint (its ``"network"`` entry)."""
    from bundle.engine.distributed import unwrap_model

    state = safe_load(path)
    if isinstance(state, Mapping) and isinstance(state.get("network"), Mapping):
        state = state["network"]
    check_state_dict(state, unwrap_model(network), path)


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
