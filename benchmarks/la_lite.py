"""LA-lite: the semi-supervised gain on real LA data, on a CPU (``docs/results.md``).

The paper's LA protocol shrunk by resolution, not by method: every case resampled by 0.5 per axis (0.625 mm ->
1.25 mm, about 108x70x44 voxels; images bilinear, labels nearest, by the preprocessing's ``Spacingd``), the fixed
split of ``configs/la_lite_split.json`` (labelled = the first 8 of ``train.list``, validation = the last 8,
unlabelled = the 64 between), and arms that share the network, patch, schedule and seed of
``configs/presets/la_lite.json``:

- ``supervised-8``: L_sup on the 8 labelled cases only;
- ``plgdf-8``: the full method, 8 labelled + 64 unlabelled;
- ``supervised-72``: all 72 non-validation cases labelled (the ceiling);
- ``mean-teacher-8``: L_sup + L_semi, no mix, no consistency, no sharpening (optional).

``python -m scripts.la_lite`` is the command line; this module holds the steps so tests can drive them on tiny data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bundle.data.datalist import write_datalist
from bundle.data.prepare import la_entries
from bundle.engine.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
SPLIT_FILE = ROOT / "configs" / "la_lite_split.json"
PRESET = "configs/presets/la_lite.json"
RESAMPLE_FACTOR = 0.5  # 0.625 mm -> 1.25 mm, the spacing of the preset

# arm -> (extra presets after train.json + la_lite.json, labelled cases, unlabelled cases used)
ARMS: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "supervised-8": (("configs/presets/supervised.json",), 8, False),
    "plgdf-8": ((), 8, True),
    "supervised-72": (("configs/presets/supervised.json",), 72, False),
    "mean-teacher-8": (("configs/presets/mean_teacher.json",), 8, True),
}
DEFAULT_ARMS = ("supervised-8", "plgdf-8", "supervised-72")
CHECKPOINTS = {"last": "checkpoint_last.pt", "best": "checkpoint_best.pt"}


def load_split(path: str | os.PathLike = SPLIT_FILE) -> dict[str, Any]:
    """Read and check the versioned split file: ``train`` (72 IDs, ``train.list`` order) and ``validation`` (8)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LA-lite split file not found: {path}")
    split = json.loads(path.read_text(encoding="utf-8"))
    train, val = split.get("train"), split.get("validation")
    if not train or not val:
        raise ValueError(f"{path}: needs non-empty 'train' and 'validation' ID lists.")
    overlap = sorted(set(train) & set(val))
    if overlap or len(set(train)) != len(train) or len(set(val)) != len(val):
        raise ValueError(f"{path}: IDs repeated or in both train and validation: {overlap or 'duplicates'}.")
    return split


def arm_datalist(arm: str, run_root: str | os.PathLike) -> Path:
    """The data list written by :func:`prepare` for ``arm`` (one per labelled budget)."""
    return Path(run_root) / "data" / f"datalist_{ARMS[arm][1]}.json"


def prepare(
    la_dir: str | os.PathLike,
    run_root: str | os.PathLike,
    split_file: str | os.PathLike = SPLIT_FILE,
    budgets: Sequence[int] = (4, 8, 16, 72),
) -> dict[str, Path]:
    """Write one data list per labelled budget and the validation list file, from the split file.

    Each data list: ``training`` = the first ``n`` IDs of the split's ``train`` list, ``unlabeled`` = the rest of it
    (image only), ``validation`` = the split's ``validation`` IDs. The h5 files are used in place; the preset's
    ``spacing`` resamples them when the training caches them.

    Returns:
        ``{"datalist_<n>": path, ..., "validation_list": path}``.
    """
    split = load_split(split_file)
    data_dir = Path(run_root) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    val_list = data_dir / "validation.list"
    val_list.write_text("\n".join(split["validation"]) + "\n", encoding="utf-8")
    train_list = data_dir / "train.list"
    train_list.write_text("\n".join(split["train"]) + "\n", encoding="utf-8")
    train = la_entries(la_dir, train_list)  # names any missing case
    val = la_entries(la_dir, val_list)
    out = {"validation_list": val_list}
    for n in budgets:
        if not 1 <= n <= len(train):
            raise ValueError(f"labelled budget {n} outside 1..{len(train)} (split {split_file}).")
        datalist = {
            "training": train[:n],
            "unlabeled": [{"image": e["image"], "case_id": e["case_id"]} for e in train[n:]],
            "validation": val,
        }
        out[f"datalist_{n}"] = write_datalist(datalist, data_dir / f"datalist_{n}.json")
    return out


def bundle_train_command(
    presets: Sequence[str], datalist: str | os.PathLike, out: str | os.PathLike, overrides: Sequence[str] = ()
) -> list[str]:
    """``python -m monai.bundle run`` with ``train.json`` + the LA-lite preset + ``presets``, the data list, and the
    outputs (checkpoints, log, ``models/model.pt``) in ``out``."""
    files = ["configs/train.json", PRESET, *presets]
    out = Path(out).resolve()
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "[" + ",".join(f"'{f}'" for f in files) + "]",
        "--datalist_file",
        str(Path(datalist).resolve()),
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(out / "models"),
        *overrides,
    ]


def train_command(arm: str, run_root: str | os.PathLike, overrides: Sequence[str] = ()) -> list[str]:
    """The ``monai.bundle run`` command of one arm (outputs in ``<run_root>/<arm>``)."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}.")
    return bundle_train_command(ARMS[arm][0], arm_datalist(arm, run_root), Path(run_root) / arm, overrides)


def run_arm(arm: str, run_root: str | os.PathLike, overrides: Sequence[str] = (), resume: bool = False) -> dict:
    """Train one arm; write ``<run_root>/<arm>/wall.json`` (command, wall seconds, exit status; a failed or resumed
    run writes ``wall_failed_<t>.json`` / ``wall_resume_<t>.json`` instead). Raises on failure."""
    cmd = train_command(arm, run_root, [*overrides, *(["--resume", "True"] if resume else [])])
    if not arm_datalist(arm, run_root).is_file():
        raise FileNotFoundError(f"{arm_datalist(arm, run_root)}: missing; run the prepare step first.")
    out = Path(run_root) / arm
    out.mkdir(parents=True, exist_ok=True)
    print(f"[la-lite] {arm}: {' '.join(cmd)}", flush=True)
    start = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    record = {
        "arm": arm,
        "command": cmd,
        "returncode": rc,
        "wall_seconds": round(time.time() - start, 1),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
        "resumed": bool(resume),
    }
    # a failed or resumed run never replaces the record of a finished one
    name = "wall.json" if rc == 0 and not resume else f"wall_{'resume' if rc == 0 else 'failed'}_{int(start)}.json"
    _write_json(out / name, record)
    if rc != 0:
        raise RuntimeError(f"arm {arm} failed with exit status {rc}; see {out / 'log.jsonl'} and the output above.")
    return record


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--n_filters", "2", "--patch_size", "[16,16,16]"]`` -> ``{"n_filters": 2, "patch_size": [16, 16, 16]}``."""
    out: dict[str, Any] = {}
    args = list(args)
    if len(args) % 2:
        raise ValueError(f"overrides must be '--key value' pairs, got {args}.")
    for key, value in zip(args[::2], args[1::2]):
        if not key.startswith("--"):
            raise ValueError(f"override {key!r} must start with '--'.")
        try:
            out[key[2:]] = json.loads(value)
        except json.JSONDecodeError:
            out[key[2:]] = value
    return out


def evaluate_arm(
    arm: str,
    run_root: str | os.PathLike,
    la_dir: str | os.PathLike,
    la_list: str | os.PathLike | None = None,
    name: str = "validation",
    figures: bool = False,
    protocol: str = "monai",
    stride: Sequence[int] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, dict]:
    """Score the arm's last and best-on-validation checkpoints on ``la_list`` (default: the validation list).

    ``protocol="monai"`` is the bundle default (sliding window, overlap 0.5, gaussian); ``"paper"`` the exact-stride
    window with ``stride`` (the paper's 18x18x4 for 112x112x80 scales to 9x9x2 for LA-lite's 48x48x32 at half the
    resolution). ``overrides`` are the training run's extra ``--key value`` arguments (the network must match).
    Reports go to ``<run_root>/<arm>/eval_<name>_<last|best>[_paper]``, each with ``timing.json`` (wall seconds per
    case, loading included); returns ``{"last": summary, "best": summary}``.
    """
    from bundle.evaluation.evaluate import evaluate_checkpoint

    run_dir = Path(run_root) / arm
    la_list = la_list or Path(run_root) / "data" / "validation.list"
    suffix = "" if protocol == "monai" else f"_{protocol}"
    summaries = {}
    for which, fname in CHECKPOINTS.items():
        ckpt = run_dir / fname
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"{ckpt}: missing; train the arm first (python -m scripts.la_lite train --arm {arm})."
            )
        out = run_dir / f"eval_{name}_{which}{suffix}"
        start = time.perf_counter()
        summaries[which] = evaluate_checkpoint(
            ckpt,
            out,
            la_dir=la_dir,
            la_list=la_list,
            resample_factor=RESAMPLE_FACTOR,
            configs=[str(ROOT / PRESET)],
            figures=figures,
            protocol=protocol,
            stride=stride,
            overrides=parse_overrides(overrides),
        )
        seconds = time.perf_counter() - start
        n = summaries[which]["n_cases"]
        _write_json(out / "timing.json", {"wall_seconds": seconds, "n_cases": n, "seconds_per_case": seconds / n})
    return summaries


def window_study(
    run_root: str | os.PathLike,
    arms: Sequence[str],
    la_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    la_list: str | os.PathLike | None = None,
    name: str = "validation",
    which: str = "last",
    settings: dict[str, dict] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Sliding-window settings compared on the arms' ``which`` checkpoints (:mod:`benchmarks.window_study`).

    Dice on ``la_list`` (default: the validation cases) and inference seconds per volume (the inferer alone, in
    one process) for each setting, against the paper's stride. Writes ``la_lite_windows_<name>.json`` and ``.md``
    into ``out_dir``; returns ``{arm: result}``.
    """
    from benchmarks.window_study import compare_windows, markdown

    if which not in CHECKPOINTS:
        raise ValueError(f"which must be one of {list(CHECKPOINTS)}, got {which!r}.")
    la_list = la_list or Path(run_root) / "data" / "validation.list"
    entries = la_entries(la_dir, la_list)
    params = {"spacing": [0.625 / RESAMPLE_FACTOR] * 3, "bundle_root": str(ROOT), **parse_overrides(overrides)}
    results = {}
    for arm in arms:
        ckpt = Path(run_root) / arm / CHECKPOINTS[which]
        if not ckpt.is_file():
            raise FileNotFoundError(
                f"{ckpt}: missing; train the arm first (python -m scripts.la_lite train --arm {arm})."
            )
        print(f"[la-lite] window settings on {arm} ({which} checkpoint), {len(entries)} cases", flush=True)
        results[f"{arm} ({which})"] = compare_windows(
            ckpt, entries, [str(ROOT / "configs" / "inference.json"), str(ROOT / PRESET)], settings, params
        )
    out_dir = Path(out_dir)
    _write_json(out_dir / f"la_lite_windows_{name}.json", results)
    (out_dir / f"la_lite_windows_{name}.md").write_text(markdown(results), encoding="utf-8")
    return results


def validation_curve(run_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """``[(iteration, validation Dice), ...]`` from a run's ``log.jsonl``."""
    from bundle.evaluation.figures import read_run_log

    series = read_run_log(Path(run_dir) / "log.jsonl")
    if "val_dice" not in series:  # the key bundle.handlers.run_log.ValidationLog writes
        raise ValueError(f"{run_dir}/log.jsonl has no validation Dice (keys: {sorted(series)}).")
    return [(int(i), float(v)) for i, v in series["val_dice"]]


def collect(run_root: str | os.PathLike, arms: Sequence[str], name: str = "validation") -> dict[str, Any]:
    """All figures of the finished arms: metric mean/std per checkpoint, wall time, best iteration, curve."""
    results: dict[str, Any] = {}
    for arm in arms:
        run_dir = Path(run_root) / arm
        entry: dict[str, Any] = {"checkpoints": {}}
        for which in CHECKPOINTS:
            for suffix in ("", "_paper"):
                folder = run_dir / f"eval_{name}_{which}{suffix}"
                if (folder / "summary.json").is_file():
                    figs = _summary_figures(json.loads((folder / "summary.json").read_text(encoding="utf-8")))
                    if (folder / "timing.json").is_file():
                        figs["seconds_per_case"] = json.loads((folder / "timing.json").read_text())["seconds_per_case"]
                    entry["checkpoints"][which + suffix] = figs
        wall = run_dir / "wall.json"
        if wall.is_file():
            entry["wall_seconds"] = json.loads(wall.read_text(encoding="utf-8"))["wall_seconds"]
        if (run_dir / "log.jsonl").is_file():
            curve = validation_curve(run_dir)
            entry["curve"] = curve
            if curve:
                best = max(curve, key=lambda p: p[1])
                entry["best_iteration"], entry["best_val_dice_logged"] = best
        results[arm] = entry
    return results


def _summary_figures(summary: dict) -> dict[str, Any]:
    """Mean and std of each metric (voxels and mm) from an evaluation ``summary.json``."""
    out: dict[str, Any] = {"n_cases": summary.get("n_cases")}
    stats = summary.get("metrics", summary)
    for key, val in stats.items():
        if isinstance(val, dict) and "mean" in val:
            out[key] = {"mean": val["mean"], "std": val.get("std"), "median": val.get("median")}
    return out


def markdown_table(results: dict[str, Any]) -> str:
    """The results table: one row per arm and checkpoint (and protocol); mean ± std over cases and the median Dice;
    Dice/Jaccard in %, 95HD/ASD in voxels (1.25 mm) and mm; s/case = evaluation wall time per case (loading and
    resampling included)."""
    head = (
        "| arm | checkpoint | Dice % | median Dice % | Jaccard % | 95HD vox | ASD vox | 95HD mm | ASD mm | cases "
        "| s/case |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for arm, entry in results.items():
        for which, figs in entry.get("checkpoints", {}).items():
            label = which.replace("best", f"best (it {entry.get('best_iteration', '?')})").replace(
                "_paper", ", paper stride"
            )
            cells = [
                _cell(figs, "dice", 100),
                f"{figs['dice']['median'] * 100:.2f}" if figs.get("dice", {}).get("median") is not None else "n/a",
                _cell(figs, "jaccard", 100),
                _cell(figs, "hd95_vox"),
                _cell(figs, "asd_vox"),
                _cell(figs, "hd95_mm"),
                _cell(figs, "asd_mm"),
            ]
            sec = f"{figs['seconds_per_case']:.1f}" if "seconds_per_case" in figs else ""
            rows.append(f"| {arm} | {label} | " + " | ".join(cells) + f" | {figs.get('n_cases', '')} | {sec} |")
    return head + "\n".join(rows) + "\n"


def _cell(figs: dict, key: str, scale: float = 1.0) -> str:
    val = figs.get(key)
    if not val or val.get("mean") is None:
        return "n/a"
    std = val.get("std")
    return f"{val['mean'] * scale:.2f} ± {std * scale:.2f}" if std is not None else f"{val['mean'] * scale:.2f}"


def report(
    run_root: str | os.PathLike, arms: Sequence[str], out_dir: str | os.PathLike, name: str = "validation"
) -> dict:
    """Write ``la_lite_<name>.json``, ``la_lite_<name>.md`` (table) and ``la_lite_curves.png`` into ``out_dir``."""
    from bundle.evaluation.figures import learning_curves

    results = collect(run_root, arms, name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / f"la_lite_{name}.json", results)
    (out_dir / f"la_lite_{name}.md").write_text(markdown_table(results), encoding="utf-8")
    curves = {arm: e["curve"] for arm, e in results.items() if e.get("curve")}
    if curves:
        learning_curves(curves, out_dir / "la_lite_curves.png", ylabel="validation Dice (LA-lite, 8 cases)")
    return results


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj, indent=1)
