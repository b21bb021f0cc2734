"""The inference default against the paper's stride on every campaign checkpoint (``docs/results/window_summary.json``).

For each trained campaign run (``<campaign-root>/labels<N>/<arm>/seed<k>/eval_models/<model>_<which>.pt``) the
LA-lite validation cases are scored with each window setting (:func:`benchmarks.window_study.compare_windows`: Dice,
seconds per volume of the inferer alone, forward passes), all in one process over one preprocessing of the cases;
peak memory per setting is that of a fresh process running the setting once on the largest validation volume
(:func:`benchmarks.window_study.peak_memory_gb`). The paper's full-resolution configuration (215x140x88 volume,
V-Net 16, 112x112x80 window, ``configs/presets/la.json``'s default window; random weights: speed and memory only)
is timed the same way.

``default`` is read from ``configs/inference.json`` and the preset (:func:`default_setting`: the lattice
window's ``sw_lattice_stride``, ``sw_keep``, ``sw_mode`` / ``sw_sigma_scale``, ``sw_window_flips``), so the summary
always describes what users run. Results are written after every checkpoint and a rerun skips the checkpoints
already scored (``--resume``). Command: ``python -m scripts.la_lite window-summary``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.campaign import machine_info
from benchmarks.window_study import compare_windows, peak_memory_gb, prepare_cases
from bundle.engine.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
PAPER_LA_LITE = {"stride": [9, 9, 2]}  # 18x18x4 at 0.625 mm = 9x9x2 at 1.25 mm
PAPER_FULL = {"stride": [18, 18, 4]}
FULL_VOLUME, FULL_ROI, FULL_WIDTH = (215, 140, 88), (112, 112, 80), 16
MODELS = ("student_best", "teacher_best")

__all__ = ["default_setting", "find_checkpoints", "full_resolution", "window_summary"]


def default_setting(
    config: str | os.PathLike = ROOT / "configs" / "inference.json",
    presets: Sequence[str | os.PathLike] = (),
    roi_size: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The default window of ``config`` (+ ``presets``; ``roi_size`` overrides ``sw_roi_size``, ``overrides`` any
    other config id, e.g. ``{"sw_mode": "gaussian"}``) as a
    :mod:`benchmarks.window_study` setting: ``{"stride", "keep", "sigma", "flips"}`` for the lattice window
    (``"sigma"`` only with gaussian blending, ``"flips"`` only when ``sw_window_flips`` flips any window),
    ``{"overlap", "mode", "sigma", "average"}`` for MONAI's overlap window, ``{"stride"}`` for the paper's."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(config), *[str(p) for p in presets]])
    if roi_size is not None:
        parser["sw_roi_size"] = [int(r) for r in roi_size]
    for key, value in (overrides or {}).items():
        parser[key] = value
    window = parser["window_inferer"]
    if window == "@lattice_inferer":
        setting = {
            "stride": [int(s) for s in parser.get_parsed_content("sw_lattice_stride")],
            "keep": int(parser.get_parsed_content("sw_keep")),
        }
        if parser.get_parsed_content("sw_mode") == "gaussian":
            setting["sigma"] = parser.get_parsed_content("sw_sigma_scale")
        flips = [list(a) for a in parser.get_parsed_content("sw_window_flips")] if "sw_window_flips" in parser else []
        if any(flips):
            setting["flips"] = flips
        return setting
    if window == "@strided_inferer":
        return {"stride": [int(s) for s in parser.get_parsed_content("sw_stride")]}
    return {
        "overlap": parser.get_parsed_content("sw_overlap"),
        "mode": parser.get_parsed_content("sw_mode"),
        "sigma": parser.get_parsed_content("sw_sigma_scale"),
        "average": parser.get_parsed_content("sw_average"),
    }


def find_checkpoints(campaign_root: str | os.PathLike, models: Sequence[str] = MODELS) -> dict[str, Path]:
    """``{"plgdf-4/seed0/best/student": path}`` for every finished campaign run's exported ``models``."""
    found = {}
    for path in sorted(Path(campaign_root).glob("labels*/*/seed*/eval_models/*.pt")):
        if path.stem not in models:
            continue
        model, which = path.stem.split("_", 1)
        seed_dir = path.parents[1]
        arm, labels = seed_dir.parent.name, seed_dir.parents[1].name.removeprefix("labels")
        found[f"{arm}-{labels}/{seed_dir.name}/{which}/{model}"] = path
    return found


def full_resolution(repeats: int = 2, memory: bool = True) -> dict[str, Any]:
    """Seconds, forward passes and peak memory of the default window and the paper's stride at the paper's LA
    configuration (:func:`benchmarks.speed.bench_inference`: random V-Net 16 weights, one random 215x140x88 volume,
    one warm-up run first, both in the same process)."""
    from benchmarks.speed import bench_inference

    default = default_setting(presets=[ROOT / "configs" / "presets" / "la.json"], roi_size=FULL_ROI)
    res = bench_inference(
        "cpu",
        FULL_VOLUME,
        FULL_ROI,
        stride=PAPER_FULL["stride"],
        n_filters=FULL_WIDTH,
        repeats=repeats,
        default=default,
    )
    out: dict[str, Any] = {"volume": list(FULL_VOLUME), "roi": list(FULL_ROI), "n_filters": FULL_WIDTH}
    for name, key, setting in (("default", "default", default), ("paper_stride", "paper", PAPER_FULL)):
        row = {"seconds": res[key]["seconds_per_volume"], "forwards": res[key]["windows"], "setting": dict(setting)}
        if memory:
            row["peak_gb"] = peak_memory_gb(setting, FULL_VOLUME, FULL_ROI, FULL_WIDTH)
        out[name] = row
        print(f"[windows] full resolution, {name}: {row['seconds']:.1f} s, {row['forwards']} windows", flush=True)
    out["speedup"] = res["speedup_default_vs_paper"]
    return out


def window_summary(
    campaign_root: str | os.PathLike,
    entries: Sequence[Mapping[str, Any]],
    out_file: str | os.PathLike,
    overrides: Mapping[str, Any],
    configs: Sequence[str | os.PathLike],
    models: Sequence[str] = MODELS,
    extra_settings: Mapping[str, Mapping[str, Any]] | None = None,
    repeats: int = 1,
    resume: bool = True,
    full: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Score ``default`` and the paper's stride (and ``extra_settings``) on every campaign checkpoint.

    Returns (and writes to ``out_file`` after each checkpoint) ``{"checkpoints": [{"name", "default": {"dice",
    "seconds", "forwards", "peak_gb"}, "paper_stride": {...}, ...}], "full_resolution", "targets", "machine",
    "date", "command"}``; Dice in percent, seconds per volume (median over cases).
    """
    out_file = Path(out_file)
    checkpoints = find_checkpoints(campaign_root, models)
    if not checkpoints:
        raise FileNotFoundError(f"{campaign_root}: no finished campaign run with {list(models)} in eval_models/.")
    default = default_setting(configs[0], configs[1:])
    settings = {"default": default, "paper_stride": PAPER_LA_LITE, **dict(extra_settings or {})}
    previous = json.loads(out_file.read_text(encoding="utf-8")) if resume and out_file.is_file() else {}
    rows = {r["name"]: r for r in previous.get("checkpoints", []) if r.get("default", {}).get("setting") == default}
    cases = prepare_cases(entries, configs, overrides)
    for name, path in checkpoints.items():
        if name in rows and all(s in rows[name] for s in settings):
            print(f"[windows] {name}: already scored, skipped", flush=True)
            continue
        print(f"[windows] {name} ({path})", flush=True)
        res = compare_windows(path, entries, configs, settings, overrides, "paper_stride", repeats, cases)
        rows[name] = {"name": name, "checkpoint": str(path)}
        for key, r in res["settings"].items():
            rows[name][key] = {
                "dice": round(100 * r["dice_mean"], 2),
                "dice_per_case": [round(100 * d, 2) for d in r["dice_per_case"]],
                "seconds": round(r["seconds_per_volume"], 3),
                "forwards": r["windows_per_volume"],
                "setting": r["setting"],
            }
        _write(out_file, rows, previous, settings, command)
    largest = max((tuple(c[1].shape[2:]) for c in cases), key=lambda s: s[0] * s[1] * s[2])
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    for key, value in overrides.items():
        parser[key] = value
    roi, width = [int(r) for r in parser.get_parsed_content("patch_size")], int(parser.get_parsed_content("n_filters"))
    for key, setting in settings.items():
        peak = round(peak_memory_gb(setting, largest, roi, width), 3)
        for row in rows.values():
            if key in row:
                row[key]["peak_gb"] = peak
    previous["peak_volume"] = list(largest)
    if full:
        previous["full_resolution"] = full_resolution()
    return _write(out_file, rows, previous, settings, command)


def _write(
    out_file: Path, rows: Mapping[str, Any], previous: dict[str, Any], settings: Mapping[str, Any], command: str
) -> dict[str, Any]:
    checks = []
    for row in rows.values():
        if "default" in row and "paper_stride" in row:
            d, p = row["default"], row["paper_stride"]
            row["speedup"] = round(p["seconds"] / d["seconds"], 2) if d["seconds"] > 0 else None
            row["dice_minus_paper"] = round(d["dice"] - p["dice"], 2)
            checks.append(row["dice_minus_paper"] >= -0.5 and (row["speedup"] or 0) >= 5.0)
    full = previous.get("full_resolution")
    summary = {
        "description": "LA-lite validation (8 cases, 1.25 mm): the inference default vs the paper's stride per "
        "campaign checkpoint; Dice in percent, seconds per volume of the inferer alone (median over cases), "
        "forwards per volume, peak_gb of a fresh process running the setting once on the largest validation volume.",
        "settings": {k: dict(v) for k, v in settings.items()},
        "checkpoints": list(rows.values()),
        "peak_volume": previous.get("peak_volume"),
        "full_resolution": full,
        "targets": {
            "every_checkpoint_5x_and_within_0.5_dice": bool(checks) and all(checks),
            "checkpoints_meeting": f"{sum(checks)}/{len(checks)}",
            "full_resolution_5x": bool(full and full["speedup"] >= 5.0),
        },
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
        "command": command,
    }
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_file, summary, indent=1)
    return summary
