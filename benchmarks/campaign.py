"""LA-lite campaign: (labelled budget, arm, seed) runs one after another, each evaluated and summarised as it ends.

A run is ``<arm>-<labels>:<seed>``, e.g. ``plgdf-4:0``; it trains in ``<run_root>/labels<N>/<arm>/seed<k>`` with
``configs/train.json`` + ``configs/presets/la_lite.json`` + the arm's presets, ``--seed k`` and the data list of
its budget (labelled = the first N IDs of the split's ``train`` list, validation = the split's last 8, unlabelled =
the rest). After training, four models (best-on-validation and last, student and EMA teacher) are scored on the
validation cases at the bundle's default inference and at the paper's stride, and one JSON of figures per run
goes into ``<results_dir>/la_lite_runs/``; the summary (:func:`summarize`) is rebuilt from those files alone, so
committing them after each run loses nothing if the machine (and ``runs/``) is replaced.

The statistics and the report are in :mod:`benchmarks.campaign_report`.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import la_lite
from benchmarks.campaign_report import (  # noqa: F401  (re-exported: the campaign's statistics and report)
    CEILING,
    CHECKPOINTS,
    HEADLINE,
    MODELS,
    PROTOCOLS,
    RUNS_DIR,
    SUMMARY,
    load_figures,
    markdown,
    paired_gain,
    summarize,
    variants,
)
from bundle.engine.files import write_json_atomic

ROOT = la_lite.ROOT
# arm -> presets merged after train.json + la_lite.json
METHODS: dict[str, tuple[str, ...]] = {
    "supervised": ("configs/presets/supervised.json",),
    "plgdf": (),
    "mean_teacher": ("configs/presets/mean_teacher.json",),
    # PLGDF+ screen (issue #18): one candidate switch each on top of plgdf
    "plgdf_semi_clean": ("configs/presets/semi_on_clean.json",),
    "plgdf_semi_warmup": ("configs/presets/semi_warmup.json",),
    "plgdf_teacher_eval": ("configs/presets/teacher_eval.json",),
    "plgdf_authors_aug": ("configs/presets/authors_augmentation.json",),
    # candidate 8 (beyond the list): a slower EMA of the student, validated and scored beside it
    "plgdf_average": ("configs/presets/average_model.json",),
    # PLGDF+ (issue #18): the screen's winners (configs/presets/plgdf_plus.json)
    "plgdf_plus": ("configs/presets/plgdf_plus.json",),
}
BUDGETS = (4, 8, 16, 72)
SEEDS = (0, 1, 2)
# the order: the 4-label runs, then the ceiling, then the 8-label runs (pairs of the same seed adjacent)
DEFAULT_PLAN = tuple(
    [f"{arm}-4:{s}" for s in SEEDS for arm in ("supervised", "plgdf")]
    + [f"supervised-72:{s}" for s in SEEDS]
    + [f"{arm}-8:{s}" for s in SEEDS for arm in ("supervised", "plgdf")]
)
PAPER_STRIDE = (9, 9, 2)  # the paper's 18x18x4 at 0.625 mm, at LA-lite's 1.25 mm
METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox")


@dataclass(frozen=True)
class Run:
    """One campaign run: an arm of :data:`METHODS`, a labelled budget and a seed."""

    arm: str
    labels: int
    seed: int

    @classmethod
    def parse(cls, spec: str) -> Run:
        """``"plgdf-4:0"`` -> ``Run("plgdf", 4, 0)``."""
        m = re.fullmatch(r"([a-z_]+)-(\d+):(\d+)", spec.strip())
        if not m:
            raise ValueError(f"run {spec!r}: expected <arm>-<labels>:<seed>, e.g. plgdf-4:0.")
        run = cls(m.group(1), int(m.group(2)), int(m.group(3)))
        if run.arm not in METHODS:
            raise ValueError(f"run {spec!r}: unknown arm {run.arm!r}; choose from {', '.join(METHODS)}.")
        if run.labels not in BUDGETS:
            raise ValueError(f"run {spec!r}: labelled budget {run.labels} not one of {BUDGETS}.")
        return run

    @property
    def name(self) -> str:
        return f"{self.arm}-{self.labels}"

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.seed}"

    def dir(self, run_root: str | os.PathLike) -> Path:
        return Path(run_root) / f"labels{self.labels}" / self.arm / f"seed{self.seed}"

    def figures_file(self, results_dir: str | os.PathLike) -> Path:
        return Path(results_dir) / RUNS_DIR / f"{self.name}_seed{self.seed}.json"


# -- provenance ----------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model and the flags that decide which precision is fast (:func:`bundle.engine.precision.cpu_model`,
    :func:`~bundle.engine.precision.cpu_flags`), core count, Python, torch and MONAI versions."""
    import monai
    import torch

    from bundle.engine.precision import cpu_flags, cpu_model

    model, keep = cpu_model(), cpu_flags()
    return {
        "cpu": model,
        "flags": "|".join(keep),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def git_commit(root: str | os.PathLike = ROOT) -> dict[str, Any]:
    """``{"commit": <hash or None>, "dirty": <tracked files changed>}`` of the checkout that runs the code."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except OSError:
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


# -- one run -------------------------------------------------------------------------------------------
def train_command(run: Run, run_root: str | os.PathLike, overrides: Sequence[str] = ()) -> list[str]:
    """The ``monai.bundle run`` command of ``run`` (outputs in :meth:`Run.dir`)."""
    datalist = Path(run_root) / "data" / f"datalist_{run.labels}.json"
    return la_lite.bundle_train_command(
        METHODS[run.arm], datalist, run.dir(run_root), ["--seed", str(run.seed), *overrides]
    )


def _read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


def _write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj, indent=1)
    return path


def is_trained(run: Run, run_root: str | os.PathLike) -> bool:
    record = _read_json(run.dir(run_root) / "run.json", {})
    return bool(record.get("finished"))


def train(run: Run, run_root: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``run`` (continuing from its ``checkpoint_last.pt`` when one exists); ``run.json`` records every
    attempt (command, exit status, wall seconds), the commit, the machine and the precision. Raises on failure."""
    out = run.dir(run_root)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "run.json"
    record = _read_json(record_path, {}) or {
        "run": run.spec,
        "arm": run.arm,
        "labels": run.labels,
        "seed": run.seed,
        "precision": "fp32",
        "attempts": [],
    }
    if record.get("finished"):
        return record
    resume = (out / "checkpoint_last.pt").is_file()
    cmd = train_command(run, run_root, [*overrides, *(["--resume", "True"] if resume else [])])
    print(f"[campaign] {run.spec}: {'resuming' if resume else 'starting'}: {' '.join(cmd)}", flush=True)
    start = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    attempt = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
        "wall_seconds": round(time.time() - start, 1),
        "returncode": rc,
        "resumed": resume,
        "command": cmd,
        **git_commit(),
        "machine": machine_info(),
    }
    record["attempts"].append(attempt)
    record["finished"] = rc == 0
    record["wall_seconds"] = round(sum(a["wall_seconds"] for a in record["attempts"]), 1)
    _write_json(record_path, record)
    if rc != 0:
        raise RuntimeError(f"run {run.spec} failed with exit status {rc}; see {out / 'log.jsonl'} and above.")
    return record


def model_files(run: Run, run_root: str | os.PathLike) -> dict[tuple[str, str], Path]:
    """Flat state_dicts (plain tensors) of the four evaluated models, written once into ``<run dir>/eval_models``:
    ``(best|last, student|teacher) -> path``. The best teacher is the teacher's own best on validation
    (``teacher_best.pt``); without one (no teacher validation), the teacher saved with the student's best. A run
    with ``average_model`` adds a fifth, ``(best, average)``: the average model's own best (``average_best.pt``)."""
    import torch

    from bundle.engine.files import safe_load, save_atomic

    d = run.dir(run_root)
    out = d / "eval_models"
    files = {(c, m): out / f"{m}_{c}.pt" for c in CHECKPOINTS for m in MODELS}
    if (d / "average_best.pt").is_file():
        files[("best", "average")] = out / "average_best.pt"
    if all(p.is_file() for p in files.values()):
        return files
    flats = {}
    for c in CHECKPOINTS:
        state = safe_load(d / f"checkpoint_{c}.pt")
        for m, key in (("student", "network"), ("teacher", "teacher")):
            own_best = d / f"{m}_best.pt"
            flats[(c, m)] = safe_load(own_best) if c == "best" and m == "teacher" and own_best.is_file() else state[key]
    if ("best", "average") in files:
        flats[("best", "average")] = safe_load(d / "average_best.pt")
    for which, flat in flats.items():
        save_atomic({k: torch.as_tensor(v).detach().clone() for k, v in flat.items()}, files[which])
    return files


def evaluate(
    run: Run, run_root: str | os.PathLike, la_dir: str | os.PathLike, overrides: Sequence[str] = ()
) -> dict[str, Path]:
    """Score the four models at both protocols on the validation cases; ``{variant: folder}`` with variant
    ``<protocol>/<checkpoint>/<model>``. A folder that already has ``summary.json`` is not evaluated again."""
    d = run.dir(run_root)
    files = model_files(run, run_root)
    folders = {}
    for protocol in PROTOCOLS:
        for (c, m), path in files.items():
            variant = f"{protocol}/{c}/{m}"
            folder = d / "eval" / variant.replace("/", "_")
            folders[variant] = folder
            if (folder / "summary.json").is_file():
                continue
            start = time.perf_counter()
            net = la_lite.parse_overrides(_network_overrides(overrides))
            summary = evaluate_on_validation(path, folder, run_root, la_dir, protocol, net)
            seconds = time.perf_counter() - start
            _write_json(
                folder / "timing.json", {"wall_seconds": seconds, "seconds_per_case": seconds / summary["n_cases"]}
            )
            print(f"[campaign] {run.spec} {variant}: Dice {summary['metrics']['dice']['mean']:.4f}", flush=True)
    return folders


def evaluate_on_validation(
    model: str | os.PathLike,
    folder: str | os.PathLike,
    run_root: str | os.PathLike,
    la_dir: str | os.PathLike,
    protocol: str,
    overrides: dict | None = None,
) -> dict[str, Any]:
    """Score a flat model on the campaign's validation cases at 1.25 mm with ``protocol`` (a key of
    :data:`PROTOCOLS`: the bundle's default window or the paper's stride); returns the evaluation summary."""
    from bundle.evaluation.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(
        model,
        folder,
        la_dir=la_dir,
        la_list=Path(run_root) / "data" / "validation.list",
        resample_factor=la_lite.RESAMPLE_FACTOR,
        configs=[str(ROOT / la_lite.PRESET)],
        figures=False,
        protocol=PROTOCOLS[protocol],
        stride=PAPER_STRIDE if protocol == "paper" else None,
        overrides=dict(overrides or {}),
    )


def _network_overrides(overrides: Sequence[str]) -> list[str]:
    """The training overrides that shape the network (the evaluation must build the same one)."""
    keep = ("--n_filters", "--num_classes", "--in_channels", "--patch_size")
    pairs = list(zip(overrides[::2], overrides[1::2]))
    return [x for k, v in pairs if k in keep for x in (k, v)]


def _per_case(folder: Path) -> dict[str, dict[str, float]]:
    """``{case: {metric: value}}`` from an evaluation's ``metrics.csv`` (NaN for an empty cell)."""
    rows = {}
    with open(folder / "metrics.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows[row["case"]] = {k: float(row[k]) if row.get(k) not in (None, "") else math.nan for k in METRICS}
    return rows


def _log_series(log: Path) -> dict[str, list]:
    """Validation curves of student and teacher, and the pseudo-label / labelled-crop foreground fractions
    averaged per validation interval, from ``log.jsonl``."""
    from bundle.evaluation.figures import read_run_log

    series = read_run_log(log) if log.is_file() else {}
    out: dict[str, list] = {
        k: [[int(i), float(v)] for i, v in series.get(k, [])] for k in ("val_dice", "val_dice_teacher")
    }
    if series.get("val_dice_average"):
        out["val_dice_average"] = [[int(i), float(v)] for i, v in series["val_dice_average"]]
    ends = [i for i, _ in out["val_dice"]] or [max((int(i) for i, _ in series.get("loss", [])), default=0)]
    for key in ("pseudo_fg", "label_fg"):
        pts = series.get(key, [])
        binned, start = [], 0
        for end in ends:
            vals = [v for i, v in pts if start < i <= end]
            if vals:
                binned.append([end, float(np.mean(vals))])
            start = end
        out[key] = binned
    return out


def run_figures(run: Run, run_root: str | os.PathLike, folders: dict[str, Path]) -> dict[str, Any]:
    """Everything the summary needs of one run, as one JSON-able dict (per-case metrics of every variant)."""
    d = run.dir(run_root)
    record = _read_json(d / "run.json", {})
    ckpt_best = _read_json(d / "teacher_best.json", {})
    evals = {}
    for variant, folder in folders.items():
        summary = _read_json(folder / "summary.json")
        evals[variant] = {
            "cases": _per_case(folder),
            "seconds_per_case": _read_json(folder / "timing.json", {}).get("seconds_per_case"),
            "inferer": summary.get("info", {}).get("inferer"),
        }
    last = record.get("attempts", [{}])[-1]
    return {
        "run": run.spec,
        "arm": run.arm,
        "labels": run.labels,
        "seed": run.seed,
        "commit": last.get("commit"),
        "dirty": last.get("dirty"),
        "machine": last.get("machine"),
        "precision": record.get("precision"),
        "wall_seconds": record.get("wall_seconds"),
        "attempts": len(record.get("attempts", [])),
        "teacher_best_iteration": ckpt_best.get("iteration"),
        "curves": _log_series(d / "log.jsonl"),
        "evaluations": evals,
    }


def export_deployed(run: Run, run_root: str | os.PathLike, models_dir: str | os.PathLike) -> Path:
    """The deployed model (best-on-validation student, flat state_dict) in fp16 at
    ``<models_dir>/la_lite_<arm>-<labels>_seed<k>.pt``."""
    from bundle.engine.files import safe_load, save_atomic

    flat = safe_load(model_files(run, run_root)[("best", "student")])
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in flat.items()}
    return save_atomic(half, Path(models_dir) / f"la_lite_{run.name}_seed{run.seed}.pt")


# -- the campaign --------------------------------------------------------------------------------------
def git_commit_results(repo: str | os.PathLike, paths: Sequence[Path], message: str, tries: int = 5) -> bool:
    """``git add`` + ``git commit --only`` of ``paths`` in ``repo`` (other staged work is left alone)."""
    rel = [os.path.relpath(p, repo) for p in paths if Path(p).exists()]
    for k in range(tries):
        add = subprocess.run(["git", "-C", str(repo), "add", "--", *rel], capture_output=True, text=True)
        commit = subprocess.run(
            ["git", "-C", str(repo), "commit", "-q", "-m", message, "--only", "--", *rel],
            capture_output=True,
            text=True,
        )
        if add.returncode == 0 and commit.returncode == 0:
            return True
        if "nothing to commit" in commit.stdout + commit.stderr or "no changes added" in commit.stdout:
            return True
        time.sleep(2 + 3 * k)  # another git process holds the index lock
    print(f"[campaign] warning: could not commit {rel}: {commit.stderr.strip()}", flush=True)
    return False


def run_campaign(
    plan: Sequence[str],
    run_root: str | os.PathLike,
    la_dir: str | os.PathLike,
    results_dir: str | os.PathLike,
    overrides: Sequence[str] = (),
    split_file: str | os.PathLike = la_lite.SPLIT_FILE,
    commit_repo: str | os.PathLike | None = None,
    models_seed: int = 0,
) -> list[str]:
    """Run ``plan`` (run specs) in order: skip a run whose figures exist, evaluate a trained one, resume an
    interrupted one; after each run write its figures (and, for seed ``models_seed``, its deployed model in fp16
    under ``<results_dir>/models``), rebuild the summary and, with ``commit_repo``, commit those files there.
    Returns the specs completed in this call."""
    runs = [Run.parse(s) for s in plan]
    results_dir = Path(results_dir)
    la_lite.prepare(la_dir, run_root, split_file, budgets=sorted({r.labels for r in runs}))
    done = []
    if load_figures(results_dir):  # a run finished by an earlier call that stopped before summarising
        summarize(results_dir)
    for k, run in enumerate(runs, start=1):
        fig_file = run.figures_file(results_dir)
        if fig_file.is_file():
            print(f"[campaign] {k}/{len(runs)} {run.spec}: figures exist ({fig_file}), skipped", flush=True)
            continue
        print(f"[campaign] {k}/{len(runs)} {run.spec}", flush=True)
        train(run, run_root, overrides)
        folders = evaluate(run, run_root, la_dir, overrides)
        _write_json(fig_file, run_figures(run, run_root, folders))
        written = [fig_file]
        if run.seed == models_seed:
            written.append(export_deployed(run, run_root, results_dir / "models"))
        summarize(results_dir)
        written += [results_dir / SUMMARY, results_dir / "la_lite_campaign.md"]
        written += sorted(results_dir.glob("la_lite_curves_*labels.png"))
        if commit_repo is not None:
            git_commit_results(commit_repo, written, f"LA-lite campaign: {run.spec} finished, figures and summary")
        done.append(run.spec)
    return done
