"""The speed summary ``docs/results/speed_summary.json``: one entry per CPU host from a :func:`benchmarks.
speed_training.bench_training` result (:func:`host_summary_entry`), merged into the file (:func:`merge_host_summary`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bundle.engine import precision as cpu_precisions

#: the configuration of ``docs/results/speed_summary.json``'s figures (issue: 64x64x32, batch 2+2, width 16)
SUMMARY_SETTINGS = {"patch_size": [64, 64, 32], "labeled_batch": 2, "unlabeled_batch": 2, "n_filters": 16}


def host_summary_entry(training: Mapping[str, Any], machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One host's entry of the speed summary from a :func:`bench_training` result (measured in one process).

    ``{"cpu", "flags" ("avx2|avx512_bf16|..."), "chosen" (the CPU precision the iteration ran in),
    "iteration_s", "iteration_over_bare_same_setting", "iteration_over_authors_fp32_bare"}`` and, to make the entry
    self-describing, ``probe_s`` (auto's seconds per step of each candidate, or ``null``), ``loss_terms_s``,
    ``loss_terms_unshared_s``, ``compile``, ``cpu_allocator`` (``"system"`` for results without it),
    ``patch_size``, ``batch``, ``n_filters``, ``torch``, ``threads``, ``date``.

    Raises:
        ValueError: ``training`` was not measured on the CPU.
    """
    settings = training["settings"]
    if not str(settings["device"]).startswith("cpu"):
        raise ValueError(f"the speed summary records CPU hosts; this result ran on {settings['device']}.")
    report = training.get("precision", {})
    flags = report.get("flags", cpu_precisions.cpu_flags())
    return {
        "cpu": report.get("cpu") or cpu_precisions.cpu_model(),
        "flags": "|".join(flags),
        "chosen": report.get("chosen"),
        "iteration_s": training["iteration_s"]["total"],
        "iteration_over_bare_same_setting": training["ratio_to_bare_same_setting"],
        "iteration_over_authors_fp32_bare": training["ratio_to_bare_reference"],
        "probe_s": report.get("timings_s"),
        "loss_terms_s": training.get("loss_terms_s"),
        "loss_terms_unshared_s": training.get("loss_terms_unshared_s"),
        "compile": bool(settings.get("compile", False)),
        "cpu_allocator": (training.get("cpu_allocator") or {}).get("cpu_allocator", "system"),
        "patch_size": list(settings["patch_size"]),
        "batch": [settings["labeled_batch"], settings["unlabeled_batch"]],
        "n_filters": settings["n_filters"],
        "torch": (machine or {}).get("torch", torch.__version__),
        "threads": (machine or {}).get("threads", torch.get_num_threads()),
        "date": time.strftime("%Y-%m-%d"),
    }


def _summary_key(entry: Mapping[str, Any]) -> tuple:
    return (
        entry.get("cpu"),
        entry.get("flags"),
        tuple(entry.get("patch_size") or ()),
        tuple(entry.get("batch") or ()),
        entry.get("n_filters"),
        bool(entry.get("compile", False)),
        entry.get("cpu_allocator", "system"),
    )


def merge_host_summary(path: str | Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``entry`` to the summary file ``path`` (``{"hosts": [...]}``, created if missing), replacing an entry of
    the same CPU model, flags, configuration, compile and allocator setting; written atomically. Returns the summary.

    Raises:
        ValueError: ``path`` exists but is not such a summary (nothing is written).
    """
    from bundle.engine.files import write_json_atomic

    path = Path(path)
    summary: dict[str, Any] = {"hosts": []}
    if path.exists():
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); not overwritten.") from err
        if not isinstance(summary, dict) or not isinstance(summary.get("hosts"), list):
            raise ValueError(f'{path} is not a speed summary ({{"hosts": [...]}}); not overwritten.')
    key = _summary_key(entry)
    summary["hosts"] = [h for h in summary["hosts"] if _summary_key(h) != key] + [dict(entry)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, summary)
    return summary
