"""LA-lite campaign statistics and report: paired gains with bootstrap intervals, the labelling gap recovered,
tables and learning curves, rebuilt from the per-run figure files that :mod:`benchmarks.campaign` writes.

Statistics (:func:`paired_gain`): the paired gain ``plgdf - supervised`` over the seeds both arms finished and
the validation cases, its 95% bootstrap interval (seeds and cases resampled with replacement, paired by seed
and case), and the fraction of the labelling gap recovered ``(plgdf_N - supervised_N) / (supervised_72 -
supervised_N)`` (seed-means of the case-mean Dice).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bundle.engine.files import write_json_atomic

CEILING = 72  # the fully labelled budget: supervised-<CEILING> is the ceiling of the gap
PLUS = "plgdf_plus"  # the PLGDF+ preset's arm (issue #18)
PLUS_REF = "plgdf_plus_ref"  # plgdf trained at the plgdf_plus runs' commit: the like-for-like reference
PLUS_DIR = "plgdf_plus"  # <results_dir>/plgdf_plus/la_lite_runs: the plgdf_plus campaign's figures
PLUS_DEPLOYED = "best_of_both"  # the model configs/presets/plgdf_plus.json deploys (deploy_model)
PROTOCOLS = {"default": "monai", "paper": "paper"}
CHECKPOINTS = ("best", "last")
MODELS = ("student", "teacher")
HEADLINE = "paper/best/student"  # protocol / checkpoint / model: what the bundle deploys, at the paper's stride
RUNS_DIR = "la_lite_runs"
SUMMARY = "la_lite_summary.json"


def _matrix(runs: dict[int, dict], variant: str, seeds: Sequence[int], cases: Sequence[str], metric: str) -> np.ndarray:
    """``(seeds, cases)`` array of ``metric`` (Dice and Jaccard in percent)."""
    scale = 100.0 if metric in ("dice", "jaccard") else 1.0
    return np.array(
        [[runs[s]["evaluations"][variant]["cases"][c][metric] * scale for c in cases] for s in seeds], dtype=float
    )


def paired_gain(
    a: np.ndarray, b: np.ndarray, n_boot: int = 10000, seed: int = 0, ceiling: np.ndarray | None = None
) -> dict[str, Any]:
    """Paired gain ``a - b`` of two ``(seeds, cases)`` arrays (same seed, same case in each cell).

    Returns ``{"mean", "ci95", "n_seeds", "n_cases"}``: the mean difference over all cells and its 95%
    percentile bootstrap interval, each replicate drawing seeds and cases with replacement (the same draw for
    both arms). With ``ceiling`` (a ``(seeds, cases)`` array of the fully labelled arm, same seeds), also
    ``gap_recovered`` = ``(mean a - mean b) / (mean ceiling - mean b)`` and its interval from the same draws.
    NaN cells (a distance metric of an empty mask) are left out of the means.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"paired arrays must have the same (seeds, cases) shape, got {a.shape} and {b.shape}.")
    rng = np.random.default_rng(seed)
    n_s, n_c = a.shape
    diff = a - b
    si = rng.integers(0, n_s, size=(n_boot, n_s))
    ci = rng.integers(0, n_c, size=(n_boot, n_c))
    boot = np.array([np.nanmean(diff[np.ix_(s, c)]) for s, c in zip(si, ci)])
    out: dict[str, Any] = {
        "mean": float(np.nanmean(diff)),
        "ci95": [float(np.nanpercentile(boot, 2.5)), float(np.nanpercentile(boot, 97.5))],
        "n_seeds": n_s,
        "n_cases": n_c,
    }
    if ceiling is not None:
        ceiling = np.asarray(ceiling, float)
        if ceiling.shape != a.shape:
            raise ValueError(f"ceiling shape {ceiling.shape} differs from {a.shape}.")
        out["gap_recovered"] = _gap(a, b, ceiling)
        ratios = np.array([_gap(a[np.ix_(s, c)], b[np.ix_(s, c)], ceiling[np.ix_(s, c)]) for s, c in zip(si, ci)])
        ratios = ratios[np.isfinite(ratios)]
        out["gap_recovered_ci95"] = (
            [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))] if ratios.size else None
        )
    return out


def _gap(a: np.ndarray, b: np.ndarray, ceiling: np.ndarray) -> float:
    gap = np.nanmean(ceiling) - np.nanmean(b)
    return float((np.nanmean(a) - np.nanmean(b)) / gap) if gap > 0 else math.nan


def load_figures(results_dir: str | os.PathLike) -> dict[str, dict[int, dict]]:
    """``{"<arm>-<labels>": {seed: figures}}`` from ``<results_dir>/la_lite_runs/*.json``."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted((Path(results_dir) / RUNS_DIR).glob("*.json")):
        fig = json.loads(path.read_text(encoding="utf-8"))
        out.setdefault(f"{fig['arm']}-{fig['labels']}", {})[int(fig["seed"])] = fig
    return out


def load_plus_figures(results_dir: str | os.PathLike, figs: dict[str, dict[int, dict]]) -> None:
    """Add the plgdf_plus campaign's runs from ``<results_dir>/plgdf_plus/la_lite_runs`` to ``figs`` (in place):
    its ``plgdf_plus`` runs as they are, its ``plgdf`` runs (the same code but the preset) as ``plgdf_plus_ref``.
    Runs already in ``figs`` under those names win."""
    plus_dir = Path(results_dir) / PLUS_DIR
    if not (plus_dir / RUNS_DIR).is_dir():
        return
    for name, runs in load_figures(plus_dir).items():
        arm, labels = name.rsplit("-", 1)
        key = {PLUS: PLUS, "plgdf": PLUS_REF}.get(arm)
        if key:
            merged = figs.setdefault(f"{key}-{labels}", {})
            for seed, fig in runs.items():
                merged.setdefault(seed, fig)


DEPLOYMENT_ONLY = {"validate_teacher", "deploy_model"}  # preset ids that change what is deployed, not training
PLUS_PRESET = Path(__file__).resolve().parents[1] / "configs" / "presets" / "plgdf_plus.json"


def plus_is_deployment_only(preset: str | os.PathLike = PLUS_PRESET) -> bool:
    """Whether the PLGDF+ preset changes only what is deployed (``validate_teacher``, ``deploy_model``). Then
    training with it is the same computation as without it (a test checks this, bit for bit), and a plgdf run
    scored by the model the preset deploys *is* its plgdf_plus run: :func:`summarize` reads plgdf_plus from the
    plgdf runs when none was trained."""
    try:
        return set(json.loads(Path(preset).read_text(encoding="utf-8"))) <= DEPLOYMENT_ONLY
    except (OSError, ValueError):
        return False


def _rows(runs: Mapping[int, Any], seeds: Sequence[int]) -> np.ndarray:
    return np.array([runs[s] for s in seeds], dtype=float)


def _gains(plg: Mapping[int, Any], sup: Mapping[int, Any], ceil: Mapping[int, Any]) -> dict[str, Any]:
    """``paired_gain`` (plgdf - supervised over the seeds both have) and, over the seeds the ceiling also has,
    ``gap_recovered`` with its interval; each argument maps a seed to its per-case Dice (the same cases)."""
    paired = sorted(set(sup) & set(plg))
    if not paired:
        return {}
    gain = paired_gain(_rows(plg, paired), _rows(sup, paired))
    out: dict[str, Any] = {"paired_gain": {"mean": gain["mean"], "ci95": gain["ci95"], "seeds": paired}}
    with_ceiling = [s for s in paired if s in ceil]
    if with_ceiling:
        g = paired_gain(_rows(plg, with_ceiling), _rows(sup, with_ceiling), ceiling=_rows(ceil, with_ceiling))
        out.update(gap_recovered=g["gap_recovered"], gap_recovered_ci95=g["gap_recovered_ci95"], gap_seeds=with_ceiling)
    return out


def _budget_block(
    figs: dict[str, dict[int, dict]],
    labels: int,
    variant: str,
    semi: str = "plgdf",
    plus_variant: str | None = None,
    plus_from_plgdf: bool = False,
) -> dict | None:
    """The summary of one budget for one variant; ``None`` when neither arm of the budget has a run.

    ``plgdf_plus`` runs (issue #18; with ``plus_from_plgdf`` and none trained, the plgdf runs themselves, see
    :func:`plus_is_deployment_only`) are scored at ``plus_variant`` (default: ``variant``; the headline passes the
    model the preset deploys) and compared with plgdf on the same seeds: with the ``plgdf_plus_ref`` runs (plgdf
    trained at the plgdf_plus runs' commit, :func:`load_plus_figures`) when there are any, else with the
    campaign's plgdf."""
    sup, plg, ceil = (
        figs.get(f"supervised-{labels}", {}),
        figs.get(f"{semi}-{labels}", {}),
        figs.get(f"supervised-{CEILING}", {}),
    )
    if not sup and not plg:
        return None
    arms = {"supervised": sup, semi: plg, "supervised_72": ceil}
    any_run = next(iter({**sup, **plg, **ceil}.values()))
    cases = sorted(any_run["evaluations"][variant]["cases"])
    block: dict[str, Any] = {"cases": cases}
    for metric, key in (("dice", "dice"), ("hd95_mm", "hd95_mm"), ("asd_mm", "asd_mm")):
        block[key] = {
            name: {str(s): float(np.nanmean(_matrix(runs, variant, [s], cases, metric))) for s in sorted(runs)}
            for name, runs in arms.items()
        }
    block["mean_sd"] = {
        name: {metric: _mean_sd(list(block[metric][name].values())) for metric in ("dice", "hd95_mm", "asd_mm")}
        for name in arms
    }
    per_case = {
        name: {seed: _matrix(runs, variant, [seed], cases, "dice")[0] for seed in runs} for name, runs in arms.items()
    }
    block.update(_gains(per_case[semi], per_case["supervised"], per_case["supervised_72"]))
    if "paired_gain" in block:
        block["paired_gain"]["n_cases"] = len(cases)
    trained_plus = figs.get(f"{PLUS}-{labels}", {})
    plus = trained_plus or (plg if plus_from_plgdf else {})
    if semi == "plgdf" and plus:  # issue #18: the PLGDF+ preset, against PLGDF and against supervised
        plus_variant = plus_variant or variant
        per_plus = {s: _matrix(plus, plus_variant, [s], cases, "dice")[0] for s in sorted(plus)}
        block[f"{PLUS}_variant"] = plus_variant
        block["dice"][PLUS] = {str(s): float(np.mean(v)) for s, v in per_plus.items()}
        block["mean_sd"][PLUS] = {"dice": _mean_sd(list(block["dice"][PLUS].values()))}
        ref = figs.get(f"{PLUS_REF}-{labels}", {})
        per_ref = {s: _matrix(ref, variant, [s], cases, "dice")[0] for s in sorted(ref)} if ref else per_case[semi]
        vs_plgdf = _gains(per_plus, per_ref, {})
        if vs_plgdf:
            block["paired_gain_vs_plgdf"] = {k: vs_plgdf["paired_gain"][k] for k in ("mean", "ci95", "seeds")}
            block["paired_gain_vs_plgdf"]["reference"] = (
                "plgdf at the plgdf_plus runs' commit"
                if ref
                else (
                    "the campaign's plgdf runs"
                    if trained_plus
                    else "the same plgdf runs: the preset changes only the deployed model"
                )
            )
            if ref:
                block["dice"][PLUS_REF] = {str(s): float(np.mean(v)) for s, v in per_ref.items()}
        vs_sup = _gains(per_plus, per_case["supervised"], per_case["supervised_72"])
        if vs_sup:
            block[f"{PLUS}_paired_gain"] = vs_sup["paired_gain"]
            if "gap_recovered" in vs_sup:
                block[f"{PLUS}_gap_recovered"] = vs_sup["gap_recovered"]
                block[f"{PLUS}_gap_recovered_ci95"] = vs_sup["gap_recovered_ci95"]
    return block


def _mean_sd(values: Sequence[float]) -> list[float | None]:
    v = np.asarray(values, float)
    if v.size == 0:
        return [None, None]
    return [float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else None]


def variants() -> list[str]:
    """The eight evaluations of every run: protocol / checkpoint / model."""
    return [f"{p}/{c}/{m}" for p in PROTOCOLS for c in CHECKPOINTS for m in MODELS]


BEST_OF_BOTH = "best_of_both"


#: the in-training validation curve of each network a run can deploy, in the order ties are broken
VALIDATION_CURVES = {"student": "val_dice", "teacher": "val_dice_teacher", "average": "val_dice_average"}


def best_validated(fig: Mapping[str, Any], models: Sequence[str] = ("student", "teacher")) -> str:
    """The network of ``models`` with the highest best in-training validation Dice in a run (the earlier of
    ``models`` on a tie; a network without a curve is not a candidate; none: the student). What ``deploy_model:
    "best_of_both"`` deploys when those networks are validated."""
    best = {m: _curve_best(fig, VALIDATION_CURVES[m]) for m in models}
    best = {m: v for m, v in best.items() if v is not None}
    return max(best, key=lambda m: (best[m], -list(models).index(m))) if best else "student"


def best_of_both(fig: Mapping[str, Any]) -> str:
    """The model that ``deploy_model: "best_of_both"`` (PLGDF+ candidate 1) would have deployed from a run:
    ``"teacher"`` when the teacher's best in-training validation Dice beats the student's, else ``"student"``
    (no teacher validation: the student)."""
    return best_validated(fig, ("student", "teacher"))


def _curve_best(fig: Mapping[str, Any], key: str) -> float | None:
    """The best value of a run's logged curve ``key`` (``[[iteration, value], ...]``); ``None`` without one."""
    return max((v for _, v in (fig.get("curves") or {}).get(key) or []), default=None)


def derived_variants() -> list[str]:
    """Variants computed from the eight: the best checkpoint of the model ``best_of_both`` picks, per protocol."""
    return [f"{p}/best/{BEST_OF_BOTH}" for p in PROTOCOLS]


def _add_derived(figs: dict[str, dict[int, dict]]) -> None:
    """Add :func:`derived_variants` to every run's evaluations (in place) and record the pick as
    ``best_of_both``."""
    for runs in figs.values():
        for fig in runs.values():
            pick = fig["best_of_both"] = best_of_both(fig)
            for p in PROTOCOLS:
                if f"{p}/best/{pick}" in fig["evaluations"]:
                    fig["evaluations"][f"{p}/best/{BEST_OF_BOTH}"] = fig["evaluations"][f"{p}/best/{pick}"]


WINDOW_SUMMARY = "window_summary.json"


def window_gains(
    results_dir: str | os.PathLike, budgets: Iterable[int], picks: Mapping[str, Mapping[int, str]] | None = None
) -> dict[str, Any]:
    """Paired gains at the bundle's *current* default window, from ``window_summary.json`` (``python -m
    scripts.la_lite window-summary``), which scores the best-on-validation checkpoints with today's default; the
    campaign's own "default" protocol is the pinned commit's older window. ``{budget: {model: {"dice": {arm:
    {seed: Dice %}}, "paired_gain", "gap_recovered"...}}}`` for the seeds whose checkpoints are scored; ``{}``
    without the file. With ``picks`` (``{"<arm>-<labels>": {seed: "student" | "teacher"}}``, what
    :func:`best_of_both` chose from each run's curves) also the model ``best_of_both``."""
    path = Path(results_dir) / WINDOW_SUMMARY
    if not path.is_file():
        return {}
    per_case: dict[tuple[str, int, str], list[float]] = {}  # (arm-labels, seed, model) -> Dice per case
    for row in json.loads(path.read_text(encoding="utf-8")).get("checkpoints", []):
        name, seed, checkpoint, model = row["name"].split("/")
        if checkpoint == "best" and "default" in row:
            per_case[(name, int(seed.removeprefix("seed")), model)] = row["default"]["dice_per_case"]
    for name, seeds in (picks or {}).items():
        for seed, model in seeds.items():
            if (name, int(seed), model) in per_case:
                per_case[(name, int(seed), BEST_OF_BOTH)] = per_case[(name, int(seed), model)]
    out: dict[str, Any] = {}
    for n in budgets:
        for model in (*MODELS, BEST_OF_BOTH):
            keys = {"supervised": f"supervised-{n}", "plgdf": f"plgdf-{n}", "supervised_72": f"supervised-{CEILING}"}
            arms = {
                arm: {s: v for (a, s, m), v in per_case.items() if a == key and m == model} for arm, key in keys.items()
            }
            if not arms["supervised"] and not arms["plgdf"]:
                continue
            block: dict[str, Any] = {
                "dice": {
                    arm: {str(s): float(np.mean(v)) for s, v in sorted(runs.items())} for arm, runs in arms.items()
                }
            }
            block.update(_gains(arms["plgdf"], arms["supervised"], arms["supervised_72"]))
            out.setdefault(str(n), {})[model] = block
    return out


CROP_FOREGROUND = "la_lite_crop_foreground.json"
LATE_FRACTION = 0.2  # the "late" part of a run: its last fifth of iterations


def _late_mean(series: Sequence[Sequence[float]]) -> float | None:
    """Mean of a logged ``[[iteration, value], ...]`` series over its last :data:`LATE_FRACTION` of iterations."""
    if not series:
        return None
    last = max(i for i, _ in series)
    values = [v for i, v in series if i > (1.0 - LATE_FRACTION) * last]
    return float(np.mean(values)) if values else None


def diagnosis(
    figs: dict[str, dict[int, dict]], labels: int, results_dir: str | os.PathLike, variant: str = HEADLINE
) -> dict[str, Any] | None:
    """Where the gain of one budget comes from (issue #13's diagnosis), at ``variant``: per validation case the
    Dice of each arm (mean over its seeds) and the paired gain (mean over the seeds both arms have); per
    ``plgdf`` seed the pseudo-label foreground fraction late in training (mean over the last fifth) beside the
    labelled crops' logged fraction and, from ``la_lite_crop_foreground.json`` (``python -m scripts.la_lite
    crop-fg``), the true fraction of random crops of the unlabelled images. ``None`` without a paired seed."""
    sup, plg = figs.get(f"supervised-{labels}", {}), figs.get(f"plgdf-{labels}", {})
    ceil = figs.get(f"supervised-{CEILING}", {})
    paired = sorted(set(sup) & set(plg))
    if not paired:
        return None
    cases = sorted(plg[paired[0]]["evaluations"][variant]["cases"])

    def case_means(runs: Mapping[int, Any], seeds: Sequence[int]) -> list[float]:
        return [float(v) for v in _matrix(dict(runs), variant, list(seeds), cases, "dice").mean(axis=0)]

    gain = _matrix(plg, variant, paired, cases, "dice") - _matrix(sup, variant, paired, cases, "dice")
    out: dict[str, Any] = {
        "variant": variant,
        "seeds": paired,
        "cases": cases,
        "dice": {"supervised": case_means(sup, paired), "plgdf": case_means(plg, paired)},
        "paired_gain": [float(v) for v in gain.mean(axis=0)],
        "paired_gain_min": [float(v) for v in gain.min(axis=0)],
    }
    if ceil:
        out["dice"]["supervised_72"] = case_means(ceil, sorted(ceil))
    out["pseudo_fg_late"] = {str(s): _late_mean(plg[s]["curves"].get("pseudo_fg", [])) for s in sorted(plg)}
    out["label_fg_late"] = {str(s): _late_mean(plg[s]["curves"].get("label_fg", [])) for s in sorted(plg)}
    crop_file = Path(results_dir) / CROP_FOREGROUND
    if crop_file.is_file():
        parts = (json.loads(crop_file.read_text(encoding="utf-8")).get(str(labels)) or {}).get("parts", {})
        out["true_crop_fg"] = {part: v["crop_fg"] for part, v in parts.items()}
    return out


def summarize(results_dir: str | os.PathLike, budgets: Iterable[int] | None = None) -> dict[str, Any]:
    """Rebuild ``la_lite_summary.json``, ``la_lite_campaign.md`` and ``la_lite_curves_<N>labels.png`` in
    ``results_dir`` from the per-run figures. The top level is the headline variant (:data:`HEADLINE`); every
    variant is under ``"variants"``."""
    results_dir = Path(results_dir)
    figs = load_figures(results_dir)
    if not figs:
        raise FileNotFoundError(f"no run figures in {results_dir / RUNS_DIR}: nothing to summarise.")
    if budgets is None:  # every budget with a run, except the ceiling's
        budgets = sorted({int(name.rsplit("-", 1)[1]) for name in figs} - {CEILING})
    load_plus_figures(results_dir, figs)
    protocol, checkpoint, model = HEADLINE.split("/")
    out: dict[str, Any] = {
        "protocol": "paper_stride" if protocol == "paper" else "default",
        "checkpoint": checkpoint,
        "model": model,
        "unit": "Dice and Jaccard in percent, distances in mm (1.25 mm grid)",
        "runs": {name: sorted(seeds) for name, seeds in sorted(figs.items())},
        "machines": sorted(
            {json.dumps(f.get("machine") or {}, sort_keys=True) for r in figs.values() for f in r.values()}
        ),
        "commits": sorted({str(f.get("commit")) for r in figs.values() for f in r.values()}),
        "budgets": {},
        "variants": {},
    }
    out["machines"] = [json.loads(m) for m in out["machines"]]
    _add_derived(figs)
    out["best_of_both"] = {name: {str(s): f["best_of_both"] for s, f in sorted(r.items())} for name, r in figs.items()}
    # no plgdf_plus run trained and a deployment-only preset: plgdf_plus is the plgdf runs' deployed model
    from_plgdf = not any(name.startswith(f"{PLUS}-") for name in figs) and plus_is_deployment_only()
    out[f"{PLUS}_from_plgdf_runs"] = from_plgdf
    for variant in variants() + derived_variants():
        # the headline scores plgdf_plus by the model it deploys; the other variants like for like, for trained
        # plgdf_plus runs only (read from the plgdf runs, plgdf_plus equals plgdf there)
        head = variant == HEADLINE
        kw = {"plus_variant": f"{protocol}/{checkpoint}/{PLUS_DEPLOYED}" if head else None}
        kw["plus_from_plgdf"] = from_plgdf and head
        blocks = {str(n): b for n in budgets if (b := _budget_block(figs, n, variant, **kw)) is not None}
        out["variants"][variant] = blocks
        if variant == HEADLINE:
            out["budgets"] = blocks
    out["current_default_window"] = window_gains(results_dir, budgets, picks=out["best_of_both"])
    out["diagnosis"] = {str(n): d for n in budgets if (d := diagnosis(figs, n, results_dir)) is not None}
    write_json_atomic(results_dir / SUMMARY, out, indent=1)
    (results_dir / "la_lite_campaign.md").write_text(markdown(out, figs), encoding="utf-8")
    try:
        _curves(figs, results_dir, budgets)
    except ImportError as err:  # the figures are optional; the numbers above are written
        print(f"[campaign] warning: learning curves not drawn: {err}", flush=True)
    return out


SCREEN_FILE = "plgdf_plus_screen.json"
SCREEN_SEEDS_FILE = "plgdf_plus_screen_seeds.json"  # every seed an arm shares with the reference
SCREEN_VARIANTS = ("paper/best/student", "default/best/student", "paper/best/teacher", f"paper/best/{BEST_OF_BOTH}")


def screen_summary(
    results_dir: str | os.PathLike, labels: int = 4, seed: int | None = 0, reference: str = "plgdf"
) -> dict[str, Any]:
    """The PLGDF+ screen (issue #18): every arm run at ``labels`` in ``results_dir`` (its own folder, one commit)
    against the ``reference`` arm of the same folder, on the validation cases. ``seed``: the one seed compared
    (written to ``plgdf_plus_screen.json``), or ``None``: every seed an arm shares with the reference, paired seed
    by seed and case by case (``plgdf_plus_screen_seeds.json``). Per arm and variant (:data:`SCREEN_VARIANTS`): the
    mean Dice, the reference's over the same seeds, and the paired difference with its 95 % bootstrap interval
    (over seeds and cases; one seed: the case spread only); per arm the seeds, the best in-training validation Dice
    of student and teacher and the wall time (means over the seeds).

    Raises:
        FileNotFoundError: no figures of the reference arm at that budget (and seed).
    """
    results_dir = Path(results_dir)
    figs = load_figures(results_dir)
    _add_derived(figs)
    refs = figs.get(f"{reference}-{labels}", {})
    if seed is not None:
        refs = {seed: refs[seed]} if seed in refs else {}
    if not refs:
        at = f" seed {seed}" if seed is not None else ""
        raise FileNotFoundError(
            f"no {reference}-{labels}{at} figures in {results_dir / RUNS_DIR}: the screen needs its reference."
        )
    out: dict[str, Any] = {"labels": labels, "seed": seed, "reference": reference, "arms": {}}
    for name, runs in sorted(figs.items()):
        arm, n = name.rsplit("-", 1)
        seeds = sorted(s for s in runs if s in refs)
        if int(n) != labels or not seeds:
            continue
        row: dict[str, Any] = {"seeds": seeds, "commit": runs[seeds[0]].get("commit")}
        walls = [runs[s]["wall_seconds"] for s in seeds if runs[s].get("wall_seconds")]
        row["wall_seconds"] = float(np.mean(walls)) if walls else None
        for key in ("val_dice", "val_dice_teacher"):
            best = [b for b in (_curve_best(runs[s], key) for s in seeds) if b is not None]
            row[f"{key}_best"] = float(np.mean(best)) if best else None
        row["best_of_both"] = (
            runs[seeds[0]]["best_of_both"] if len(seeds) == 1 else [runs[s]["best_of_both"] for s in seeds]
        )
        for variant in SCREEN_VARIANTS:
            if any(variant not in runs[s]["evaluations"] or variant not in refs[s]["evaluations"] for s in seeds):
                continue
            cases = sorted(refs[seeds[0]]["evaluations"][variant]["cases"])
            a = _matrix(runs, variant, seeds, cases, "dice")
            b = _matrix(refs, variant, seeds, cases, "dice")
            entry: dict[str, Any] = {"dice": float(a.mean()), "per_seed": [float(x) for x in a.mean(axis=1)]}
            if arm != reference:
                gain = paired_gain(a, b)
                entry["reference_dice"] = float(b.mean())
                entry["vs_reference"] = {"mean": gain["mean"], "ci95": gain["ci95"]}
            row[variant] = entry
        out["arms"][arm] = row
    write_json_atomic(results_dir / (SCREEN_FILE if seed is not None else SCREEN_SEEDS_FILE), out, indent=1)
    return out


def screen_markdown(screen: dict[str, Any]) -> str:
    """The screen's table: Dice % per arm and variant, with the paired difference to the reference [95 % CI] (and,
    over several seeds, the reference's Dice on the same seeds)."""
    head = ["arm", "seeds", *SCREEN_VARIANTS, "in-training best (student / teacher)", "wall min"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, row in screen["arms"].items():
        cells = [f"`{arm}`", ", ".join(str(s) for s in row.get("seeds", [screen.get("seed")]))]
        for variant in SCREEN_VARIANTS:
            entry = row.get(variant)
            if entry is None:
                cells.append("–")
                continue
            g = entry.get("vs_reference")
            ref = f"{g['mean']:+.2f} [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]" if g else ""
            if g and len(row.get("seeds", [])) > 1:
                ref += f" vs {entry['reference_dice']:.2f}"
            cells.append(f"{entry['dice']:.2f}" + (f" ({ref})" if g else " (reference)"))
        best = [row.get("val_dice_best"), row.get("val_dice_teacher_best")]
        cells.append(" / ".join(f"{v:.4f}" if v is not None else "–" for v in best))
        cells.append(f"{row['wall_seconds'] / 60:.0f}" if row.get("wall_seconds") else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(ms: Sequence[float | None], digits: int = 2) -> str:
    m, sd = ms
    if m is None:
        return "–"
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{m:.{digits}f}"


def _ci(block: dict, key: str = "paired_gain") -> str:
    g = block.get(key)
    if not g:
        return "–"
    return f"{g['mean']:+.2f} [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]"


def _gap_cell(block: dict, prefix: str = "") -> str:
    """``<prefix>gap_recovered`` with its interval (``prefix`` ``"plgdf_plus_"`` for the PLGDF+ arm)."""
    gap = block.get(f"{prefix}gap_recovered")
    if gap is None or not math.isfinite(gap):
        return "–"
    ci = block.get(f"{prefix}gap_recovered_ci95")
    ci_txt = f" [{ci[0] * 100:.0f}, {ci[1] * 100:.0f}]" if ci else ""
    return f"{gap * 100:.0f} %{ci_txt}"


def markdown(summary: dict[str, Any], figs: dict[str, dict[int, dict]]) -> str:
    """The campaign tables: headline first, then every variant, then the runs (wall time, machine, commit)."""
    lines = [
        "# LA-lite campaign (generated by `python -m scripts.la_lite summary`)",
        "",
        "Validation Dice % (8 cases, 1.25 mm), mean ± sd over seeds of the case-mean; paired gain = plgdf − "
        "supervised, same seed and cases, with its 95 % bootstrap CI over seeds and cases; gap recovered = "
        "(plgdf − supervised) / (supervised-72 − supervised).",
        "",
    ]
    for variant, blocks in summary["variants"].items():
        title = "**Headline**: " if variant == HEADLINE else ""
        lines += [f"### {title}{variant} (protocol / checkpoint / model)", ""]
        lines += [
            "| labels | supervised | plgdf | supervised-72 | paired gain [95 % CI] | gap recovered [95 % CI] | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, b in blocks.items():
            ms = b["mean_sd"]
            seeds = ",".join(str(s) for s in b.get("paired_gain", {}).get("seeds", [])) or "–"
            lines.append(
                f"| {n} | {_fmt(ms['supervised']['dice'])} | {_fmt(ms['plgdf']['dice'])} | "
                f"{_fmt(ms['supervised_72']['dice'])} | {_ci(b)} | {_gap_cell(b)} | {seeds} |"
            )
        for n, b in blocks.items():
            if "paired_gain_vs_plgdf" in b:
                lines.append(
                    f"{n} labels, `{PLUS}` ({b[f'{PLUS}_variant']}): {_fmt(b['mean_sd'][PLUS]['dice'])}; against "
                    f"plgdf {_ci(b, 'paired_gain_vs_plgdf')} ({b['paired_gain_vs_plgdf']['reference']}), against "
                    f"supervised {_ci(b, f'{PLUS}_paired_gain')}, gap recovered {_gap_cell(b, f'{PLUS}_')}"
                )
        lines.append("")
    current = summary.get("current_default_window") or {}
    if current:
        lines += [
            "### Today's default window / best / student, teacher and best_of_both (from `window_summary.json`)",
            "",
            "The campaign's own `default` rows above use the pinned commit's older window; these score the same "
            "best-on-validation checkpoints with the bundle's current default (only the seeds scored so far).",
            "",
            "| labels | model | supervised | plgdf | supervised-72 | paired gain [95 % CI] | gap recovered [95 % CI] |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, models in current.items():
            for model, b in models.items():
                cells = [
                    _fmt(_mean_sd(list(b["dice"][arm].values()))) for arm in ("supervised", "plgdf", "supervised_72")
                ]
                lines.append(f"| {n} | {model} | {' | '.join(cells)} | {_ci(b)} | {_gap_cell(b)} |")
        lines.append("")
    for n, d in (summary.get("diagnosis") or {}).items():
        lines += _diagnosis_lines(n, d)
    lines += ["### Runs", "", "| run | seed | wall min | attempts | CPU | commit |", "|---|---|---|---|---|---|"]
    for name, runs in sorted(figs.items()):
        for s, f in sorted(runs.items()):
            wall = f"{f['wall_seconds'] / 60:.1f}" if f.get("wall_seconds") else "–"
            cpu = (f.get("machine") or {}).get("cpu", "?")
            lines.append(f"| {name} | {s} | {wall} | {f.get('attempts')} | {cpu} | {str(f.get('commit'))[:10]} |")
    return "\n".join(lines) + "\n"


def _diagnosis_lines(labels: str, d: dict[str, Any]) -> list[str]:
    """The per-case table and the pseudo-label foreground line of one budget's :func:`diagnosis`."""
    arms = [a for a in ("supervised", "plgdf", "supervised_72") if a in d["dice"]]
    seeds = ",".join(str(s) for s in d["seeds"])
    lines = [
        f"### Where the gain comes from: {labels} labelled, {d['variant']}, per validation case",
        "",
        f"Dice % per case, mean over seeds ({seeds}; supervised-72: its seeds); paired gain = plgdf − supervised "
        "per case, mean (and smallest) over the paired seeds.",
        "",
        "| case | " + " | ".join(a.replace("_", "-") for a in arms) + " | paired gain (min) |",
        "|---|" + "---|" * len(arms) + "---|",
    ]
    for i, case in enumerate(d["cases"]):
        cells = " | ".join(f"{d['dice'][a][i]:.2f}" for a in arms)
        lines.append(f"| {case} | {cells} | {d['paired_gain'][i]:+.2f} ({d['paired_gain_min'][i]:+.2f}) |")
    fg = [f"seed {s} {v:.3f}" for s, v in d["pseudo_fg_late"].items() if v is not None]
    label_fg = [v for v in d["label_fg_late"].values() if v is not None]
    notes = [
        "Pseudo-label foreground fraction (the teacher's, on unlabelled crops), last fifth of training: "
        + (", ".join(fg) or "–")
    ]
    if label_fg:
        notes.append(f"labelled crops (logged): {np.mean(label_fg):.3f}")
    if d.get("true_crop_fg"):
        notes.append(
            "true fraction of random crops (`crop-fg`): "
            + ", ".join(f"{part} {v:.3f}" for part, v in d["true_crop_fg"].items())
        )
    lines += ["", "; ".join(notes) + "."]
    return lines + [""]


def _curves(figs: dict[str, dict[int, dict]], results_dir: Path, budgets: Iterable[int]) -> None:
    from bundle.evaluation.figures import learning_curves

    colours = ("tab:blue", "tab:red", "tab:green", "tab:gray")  # one per arm, a line style per seed
    dashes = ("-", "--", ":", "-.")
    for n in budgets:
        series, styles = {}, {}
        for colour, name in zip(colours, (f"supervised-{n}", f"plgdf-{n}", f"{PLUS}-{n}", f"supervised-{CEILING}")):
            for s, f in sorted(figs.get(name, {}).items()):
                if f["curves"].get("val_dice"):
                    series[f"{name} s{s}"] = [tuple(p) for p in f["curves"]["val_dice"]]
                    styles[f"{name} s{s}"] = {"color": colour, "linestyle": dashes[s % len(dashes)]}
        if any(not k.startswith(f"supervised-{CEILING} ") for k in series):
            learning_curves(
                series,
                results_dir / f"la_lite_curves_{n}labels.png",
                ylabel=f"validation Dice ({n} labelled)",
                styles=styles,
            )


AVERAGE_FILE = "average_model_screen.json"
AVERAGE_COMPARISONS = (("average", "student"), ("average", "teacher"), ("best_of_three", "best_of_both"))


def average_summary(results_dir: str | os.PathLike, arm: str = "plgdf_average", labels: int = 4) -> dict[str, Any]:
    """PLGDF+ candidate 8 (``average_model``), compared inside each run of ``arm``: the best-on-validation
    student, teacher and average model of the same training, and what validation would deploy from student and
    teacher (``best_of_both``) or from all three (``best_of_three``). Per protocol: the mean Dice of each (and per
    seed), and the paired differences of :data:`AVERAGE_COMPARISONS` with 95 % bootstrap intervals over seeds and
    cases. Written to ``<results_dir>/average_model_screen.json``.

    Raises:
        FileNotFoundError: no figures of ``arm`` at ``labels``, or none that scored the average model.
    """
    results_dir = Path(results_dir)
    runs = {
        s: fig
        for s, fig in load_figures(results_dir).get(f"{arm}-{labels}", {}).items()
        if all(f"{p}/best/average" in fig["evaluations"] for p in PROTOCOLS)
    }
    if not runs:
        raise FileNotFoundError(f"no {arm}-{labels} figures with the average model in {results_dir / RUNS_DIR}.")
    seeds = sorted(runs)
    picks = {
        "best_of_both": [best_validated(runs[s], ("student", "teacher")) for s in seeds],
        "best_of_three": [best_validated(runs[s], ("student", "teacher", "average")) for s in seeds],
    }
    out: dict[str, Any] = {"arm": arm, "labels": labels, "seeds": seeds, "picks": picks, "protocols": {}}
    out["validation_best"] = {m: [_curve_best(runs[s], key) for s in seeds] for m, key in VALIDATION_CURVES.items()}
    out["commits"] = sorted({str(runs[s].get("commit")) for s in seeds})
    for p in PROTOCOLS:
        cases = sorted(runs[seeds[0]]["evaluations"][f"{p}/best/student"]["cases"])
        mats = {m: _matrix(runs, f"{p}/best/{m}", seeds, cases, "dice") for m in ("student", "teacher", "average")}
        for name, chosen in picks.items():
            mats[name] = np.stack([mats[m][i] for i, m in enumerate(chosen)])
        block: dict[str, Any] = {
            name: {"dice": float(m.mean()), "per_seed": [float(x) for x in m.mean(axis=1)]} for name, m in mats.items()
        }
        for a, b in AVERAGE_COMPARISONS:
            gain = paired_gain(mats[a], mats[b])
            block[f"{a} - {b}"] = {"mean": gain["mean"], "ci95": gain["ci95"]}
        out["protocols"][p] = block
    write_json_atomic(results_dir / AVERAGE_FILE, out, indent=1)
    return out


def average_markdown(summary: dict[str, Any]) -> str:
    """The table of :func:`average_summary`: Dice % per network and protocol, and the paired differences."""
    names = ("student", "teacher", "average", "best_of_both", "best_of_three")
    lines = [
        "| protocol | " + " | ".join(names) + " | " + " | ".join(f"{a} - {b}" for a, b in AVERAGE_COMPARISONS) + " |",
        "|" + "---|" * (1 + len(names) + len(AVERAGE_COMPARISONS)),
    ]
    for p, block in summary["protocols"].items():
        cells = [f"{block[n]['dice']:.2f}" for n in names]
        for a, b in AVERAGE_COMPARISONS:
            g = block[f"{a} - {b}"]
            cells.append(f"{g['mean']:+.2f} [{g['ci95'][0]:+.2f}, {g['ci95'][1]:+.2f}]")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    picks = "; ".join(f"{k}: {', '.join(v)}" for k, v in summary["picks"].items())
    return "\n".join(lines) + f"\n\nseeds {summary['seeds']}; picks per seed: {picks}\n"
