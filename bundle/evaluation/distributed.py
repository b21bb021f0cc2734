"""Multi-process evaluation (``configs/multi_gpu_evaluate.json`` under ``torchrun``): each rank scores its share of
the cases with :func:`bundle.evaluation.evaluate.evaluate_checkpoint`; rank 0 merges the per-case rows into one
report (``metrics.csv``, ``summary.json``, ``summary.md``) in ``output_dir``."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from bundle.data.datalist import load_datalist, write_datalist
from bundle.engine.distributed import destroy_distributed, init_distributed, local_device, rank, world_size
from bundle.evaluation.evaluate import evaluate_checkpoint
from bundle.evaluation.metrics import METRIC_KEYS
from bundle.evaluation.report import EvaluationReport

__all__ = ["evaluate_distributed", "read_rows"]


def read_rows(metrics_csv: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-case rows of an evaluation's ``metrics.csv`` with their types (metrics float, empties NaN)."""
    rows = []
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            typed: dict[str, Any] = dict(row)
            for key in METRIC_KEYS:
                typed[key] = float(row[key]) if row.get(key) not in (None, "") else math.nan
            for key in ("pred_empty", "ref_empty"):
                typed[key] = row.get(key) == "True"
            for key in ("pred_voxels", "ref_voxels"):
                typed[key] = int(row[key]) if row.get(key) not in (None, "") else 0
            rows.append(typed)
    return rows


def evaluate_distributed(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    datalist: str | os.PathLike,
    section: str = "validation",
    **kwargs: Any,
) -> dict[str, Any] | None:
    """Score ``section`` of ``datalist`` over the ranks of a ``torchrun`` run (cases ``rank::world_size`` each, in
    ``<output_dir>/rank<r>``); rank 0 writes the merged report into ``output_dir`` and returns its summary (other
    ranks return None). Outside ``torchrun`` (one process) it is :func:`evaluate_checkpoint`. ``kwargs`` go to
    :func:`evaluate_checkpoint` (per-case figures are not drawn for the merged report)."""
    import torch.distributed as dist

    if "RANK" not in os.environ:
        return evaluate_checkpoint(checkpoint, output_dir, datalist=datalist, section=section, **kwargs)
    init_distributed()
    r, n = rank(), world_size()
    kwargs.setdefault("device", str(local_device()))  # this rank's GPU (or the CPU)
    out = Path(output_dir)
    entries = load_datalist(datalist)[section]
    shard = entries[r::n]
    if shard:
        shard_dir = out / f"rank{r}"
        shard_list = write_datalist({section: shard}, shard_dir / "cases.json")
        kwargs = {**kwargs, "figures": False}
        evaluate_checkpoint(checkpoint, shard_dir, datalist=shard_list, section=section, **kwargs)
    dist.barrier()
    summary = None
    if r == 0:
        rows, info = [], {}
        for k in range(n):
            part = out / f"rank{k}"
            if (part / "metrics.csv").is_file():
                rows += read_rows(part / "metrics.csv")
                info = info or json.loads((part / "summary.json").read_text(encoding="utf-8")).get("info", {})
        info = {**info, "ranks": n, "data": {"datalist": str(Path(datalist).resolve()), "section": section}}
        report = EvaluationReport(out, kwargs.get("empty_policy", "nan"), figures=False, overview=False, info=info)
        report.rows = rows
        summary = report.write()
    dist.barrier()
    destroy_distributed()
    return summary
