"""PLGDF+ candidate 2 screened on a finished campaign run, no training: re-estimate the deployed student's BatchNorm
statistics on clean patches of the run's own training images (labelled and unlabelled; random crops, no flips, no
noise, no mixing) and score it on the validation cases at both protocols, beside the unchanged model.

    python -m scripts.la_lite bn-screen --plan plgdf-4:0 [--run-root runs/la_lite_campaign]

Writes ``<run dir>/eval_models/student_best_bn.pt`` and ``<run dir>/eval/<protocol>_best_student_bn/``; returns and
prints the validation Dice of both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from benchmarks import campaign, la_lite
from bundle.engine.files import safe_load, save_atomic

__all__ = ["clean_patches", "screen_bn", "record_screen"]

SCREEN_FILE = "la_lite_plgdf_plus_screen.json"


def clean_patches(datalist: str | os.PathLike, n_batches: int, batch_size: int, seed: int, overrides: dict):
    """``n_batches`` batches of clean random training crops, drawn exactly as the bundle's own re-estimation draws
    them (:meth:`bundle.handlers.bn_reestimate.ReestimateBatchNorm.patches`: the run's preprocessing, random crops of
    the patch size, no other augmentation), over all the list's labelled and unlabelled images."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from bundle.data.datalist import load_datalist
    from bundle.handlers.bn_reestimate import ReestimateBatchNorm

    parser = ConfigParser()
    parser.read_config([str(la_lite.ROOT / "configs" / "train.json"), str(la_lite.ROOT / la_lite.PRESET)])
    for key, value in overrides.items():
        parser[key] = value
    data = load_datalist(datalist)  # paths relative to the list's folder, resolved
    labelled = [{"image": e["image"]} for e in data["training"]]
    unlabelled = [{"image": e["image"]} for e in data.get("unlabeled", [])]
    source = ReestimateBatchNorm(
        torch.nn.Linear(1, 1),  # only its device is read: the CPU
        labelled,
        unlabelled,
        Compose(parser.get_parsed_content("preprocessing")),
        parser.get_parsed_content("patch_size"),
        batches=n_batches,
        batch_size=batch_size,
        max_volumes=len(labelled) + len(unlabelled),
        seed=seed,
    )
    yield from source.patches(0)


def screen_bn(
    run: campaign.Run,
    run_root: str | os.PathLike,
    la_dir: str | os.PathLike,
    n_batches: int = 64,
    batch_size: int = 4,
    seed: int = 0,
    overrides: dict | None = None,
) -> dict[str, Any]:
    """Re-estimate and score; ``{protocol: {"unchanged": dice, "bn": dice}}`` (mean over cases, 0-1)."""
    from bundle.method.bn_recalibration import reestimate_batchnorm
    from bundle.method.networks import PLGDFVNet

    overrides = dict(overrides or {})
    d = run.dir(run_root)
    files = campaign.model_files(run, run_root)
    state = safe_load(files[("best", "student")])
    net = PLGDFVNet(1, 2, n_filters=int(overrides.get("n_filters", 8)))
    net.load_state_dict(state)
    datalist = Path(run_root) / "data" / f"datalist_{run.labels}.json"
    torch.manual_seed(seed)  # the dropout draws during re-estimation
    used = reestimate_batchnorm(net, clean_patches(datalist, n_batches, batch_size, seed, overrides))
    bn_file = save_atomic(
        {k: v.detach().clone() for k, v in net.state_dict().items()}, d / "eval_models" / "student_best_bn.pt"
    )
    out: dict[str, Any] = {"batches": used, "batch_size": batch_size}
    for protocol in campaign.PROTOCOLS:
        folder = d / "eval" / f"{protocol}_best_student_bn"
        summary = campaign.evaluate_on_validation(bn_file, folder, run_root, la_dir, protocol, overrides)
        unchanged = json.loads((d / "eval" / f"{protocol}_best_student" / "summary.json").read_text(encoding="utf-8"))
        out[protocol] = {"unchanged": unchanged["metrics"]["dice"]["mean"], "bn": summary["metrics"]["dice"]["mean"]}
    return out


def record_screen(results_dir: str | os.PathLike, spec: str, candidate: str, result: dict[str, Any]) -> Path:
    """Add ``result`` under ``[spec][candidate]`` of ``<results_dir>/la_lite_plgdf_plus_screen.json`` (so that it is
    committed with the campaign's figures)."""
    from bundle.engine.files import write_json_atomic

    path = Path(results_dir) / SCREEN_FILE
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.setdefault(spec, {})[candidate] = result
    write_json_atomic(path, data, indent=1)
    return path
