"""``<output_dir>/run_settings.json``: everything needed to repeat a training run.

:func:`write_run_settings` records the seed, the command line, the library versions, device facts, the merged
configuration (overrides applied) and the resolved plain-JSON values (:func:`resolved_settings`). Called from
``configs/train.json``'s ``initialize`` it finds the ``ConfigParser`` evaluating it on the call stack.
:func:`update_run_settings` adds facts known only once the run has started (the CPU precision that
``cpu_precision: "auto"`` chose, with the probe's timings).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bundle.engine.distributed import rank
from bundle.engine.files import write_json_atomic

__all__ = ["resolved_settings", "write_run_settings", "update_run_settings"]

logger = logging.getLogger("plgdf")

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

    if rank() != 0:
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
    write_json_atomic(path, settings, default=str)
    logger.info(f"run settings written to {path}")
    return path


def update_run_settings(
    output_dir: str | os.PathLike, key: str, value: Any, filename: str = "run_settings.json"
) -> Path | None:
    """Set ``key`` to ``value`` (plain JSON) in ``<output_dir>/<filename>``, written atomically; the file is created
    when :func:`write_run_settings` has not written it. Only rank 0 writes.

    Args:
        output_dir: the run's output folder.
        key: the top-level entry, e.g. ``"cpu_precision"``.
        value: its value (numbers, text, lists and dicts of them).
        filename: file name. Default ``"run_settings.json"``.

    Returns:
        The written path, or ``None`` on ranks other than 0.
    """
    if rank() != 0:
        return None
    path = Path(output_dir) / filename
    settings: dict[str, Any] = {}
    if path.is_file():
        try:
            settings = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            logger.warning(f"{path} is not readable JSON ({err}); writing {key!r} into a new file")
    path.parent.mkdir(parents=True, exist_ok=True)
    settings[key] = _plain(value)
    write_json_atomic(path, settings, default=str)
    return path


def _plain_config(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)
