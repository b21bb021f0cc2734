"""The campaign report: paired gains at today's default window (read from window_summary.json) and the diagnosis."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.campaign_report import (
    MODELS,
    PROTOCOLS,
    _add_derived,
    _budget_block,
    _diagnosis_lines,
    average_markdown,
    average_summary,
    best_of_both,
    derived_variants,
    diagnosis,
    load_figures,
    load_plus_figures,
    plus_is_deployment_only,
    screen_markdown,
    screen_summary,
    window_gains,
)


def _row(name: str, dice: list[float], checkpoint: str = "best") -> dict:
    arm, seed, model = name.split("/")
    return {
        "name": f"{arm}/{seed}/{checkpoint}/{model}",
        "default": {"dice": sum(dice) / len(dice), "dice_per_case": dice},
    }


def test_window_gains_pairs_seeds_and_recovers_the_gap(tmp_path):
    rows = [
        _row("supervised-4/seed0/student", [70.0, 80.0]),
        _row("plgdf-4/seed0/student", [80.0, 84.0]),
        _row("supervised-4/seed1/student", [60.0, 70.0]),
        _row("plgdf-4/seed1/student", [70.0, 74.0]),
        _row("supervised-4/seed2/student", [65.0, 65.0]),  # no plgdf seed 2 yet: not paired
        _row("supervised-72/seed0/student", [90.0, 90.0]),
        _row("plgdf-4/seed0/student", [0.0, 0.0], checkpoint="last"),  # only best checkpoints count
    ]
    (tmp_path / "window_summary.json").write_text(json.dumps({"checkpoints": rows}))
    out = window_gains(tmp_path, [4, 8])
    assert set(out) == {"4"} and set(out["4"]) == {"student"}
    block = out["4"]["student"]
    assert block["dice"]["plgdf"] == {"0": 82.0, "1": 72.0}
    assert block["paired_gain"]["seeds"] == [0, 1]
    assert block["paired_gain"]["mean"] == pytest.approx(7.0)  # (10 + 4 + 10 + 4) / 4
    assert block["paired_gain"]["ci95"][0] <= 7.0 <= block["paired_gain"]["ci95"][1]
    # gap on seed 0 only (the ceiling's one seed): (82 - 75) / (90 - 75)
    assert block["gap_seeds"] == [0] and block["gap_recovered"] == pytest.approx(7 / 15)


def test_window_gains_best_of_both_uses_each_runs_pick(tmp_path):
    rows = [
        _row("supervised-4/seed0/student", [70.0, 80.0]),
        _row("supervised-4/seed0/teacher", [60.0, 60.0]),
        _row("plgdf-4/seed0/student", [80.0, 84.0]),
        _row("plgdf-4/seed0/teacher", [90.0, 90.0]),
    ]
    (tmp_path / "window_summary.json").write_text(json.dumps({"checkpoints": rows}))
    picks = {"supervised-4": {"0": "student"}, "plgdf-4": {"0": "teacher"}}
    block = window_gains(tmp_path, [4], picks=picks)["4"]["best_of_both"]
    assert block["dice"]["supervised"] == {"0": 75.0} and block["dice"]["plgdf"] == {"0": 90.0}
    assert block["paired_gain"]["mean"] == pytest.approx(15.0)
    assert "best_of_both" not in window_gains(tmp_path, [4])["4"]  # without the picks


def test_window_gains_without_the_file_is_empty(tmp_path):
    assert window_gains(tmp_path, [4]) == {}


def _figure(dice: list[float], pseudo_fg: list[float] | None = None, student_val: float = 0.5, **info: Any) -> dict:
    """A run's figures: the same per-case Dice in three best-checkpoint variants, validation curves and ``info``
    (``arm``, ``labels``, ``seed``...)."""
    cases = {f"case{i}": {"dice": d / 100, "hd95_mm": 5.0, "asd_mm": 1.0} for i, d in enumerate(dice)}
    evaluations = {v: {"cases": cases} for v in ("paper/best/student", "default/best/student", "paper/best/teacher")}
    curves = {"val_dice": [[250 * (i + 1), student_val] for i in range(5)], "val_dice_teacher": [[250, 0.4]]}
    if pseudo_fg is not None:
        curves["pseudo_fg"] = [[250 * (i + 1), v] for i, v in enumerate(pseudo_fg)]
        curves["label_fg"] = [[250 * (i + 1), 0.2] for i in range(len(pseudo_fg))]
    return {"evaluations": evaluations, "curves": curves, "wall_seconds": 600.0, "commit": "abc", **info}


def test_diagnosis_per_case_gain_and_late_pseudo_label_fraction(tmp_path):
    figs = {
        "supervised-4": {0: _figure([80.0, 20.0]), 1: _figure([70.0, 30.0]), 2: _figure([90.0, 90.0])},
        "plgdf-4": {
            0: _figure([82.0, 70.0], pseudo_fg=[0.5, 0.3, 0.25, 0.24, 0.22]),  # last fifth: iteration 1250 only
            1: _figure([68.0, 60.0], pseudo_fg=[0.1, 0.2, 0.2, 0.2, 0.26]),
        },
        "supervised-72": {0: _figure([90.0, 85.0])},
    }
    (tmp_path / "la_lite_crop_foreground.json").write_text(
        json.dumps({"4": {"parts": {"unlabeled": {"crop_fg": 0.237}}}})
    )
    d = diagnosis(figs, 4, tmp_path)
    assert d["seeds"] == [0, 1] and d["cases"] == ["case0", "case1"]  # seed 2 has no plgdf run: not paired
    assert d["dice"]["supervised"] == pytest.approx([75.0, 25.0]) and d["dice"]["supervised_72"] == [90.0, 85.0]
    assert d["paired_gain"] == pytest.approx([0.0, 40.0]) and d["paired_gain_min"] == pytest.approx([-2.0, 30.0])
    assert d["pseudo_fg_late"] == {"0": pytest.approx(0.22), "1": pytest.approx(0.26)}
    assert d["true_crop_fg"] == {"unlabeled": 0.237}
    lines = "\n".join(_diagnosis_lines("4", d))
    assert "| case1 | 25.00 | 65.00 | 85.00 | +40.00 (+30.00) |" in lines and "unlabeled 0.237" in lines
    assert diagnosis({"supervised-4": figs["supervised-4"]}, 4, tmp_path) is None  # nothing paired


def test_best_of_both_picks_the_better_validated_model_and_adds_its_variant():
    def fig(student: list[float], teacher: list[float] | None) -> dict:
        curves = {"val_dice": [[250 * (i + 1), v] for i, v in enumerate(student)]}
        if teacher is not None:
            curves["val_dice_teacher"] = [[250 * (i + 1), v] for i, v in enumerate(teacher)]
        evaluations = {f"{p}/best/{m}": {"model": m, "protocol": p} for p in PROTOCOLS for m in MODELS}
        return {"curves": curves, "evaluations": evaluations}

    assert best_of_both(fig([0.5, 0.8], [0.6, 0.81])) == "teacher"
    assert best_of_both(fig([0.5, 0.8], [0.8, 0.7])) == "student"  # a tie keeps the student
    assert best_of_both(fig([0.5, 0.8], None)) == "student"  # no teacher validation
    figs = {"plgdf-4": {0: fig([0.5], [0.9]), 1: fig([0.9], [0.5])}}
    _add_derived(figs)
    for seed, model in ((0, "teacher"), (1, "student")):
        assert figs["plgdf-4"][seed]["best_of_both"] == model
        for p in PROTOCOLS:
            assert figs["plgdf-4"][seed]["evaluations"][f"{p}/best/best_of_both"]["model"] == model
    assert derived_variants() == [f"{p}/best/best_of_both" for p in PROTOCOLS]


def _run_file(results: Path, arm: str, labels: int, seed: int, dice: list[float]) -> None:
    (results / "la_lite_runs").mkdir(parents=True, exist_ok=True)
    fig = _figure(dice, arm=arm, labels=labels, seed=seed)
    (results / "la_lite_runs" / f"{arm}-{labels}_seed{seed}.json").write_text(json.dumps(fig))


def test_screen_summary_reads_each_arm_against_its_own_reference(tmp_path):
    _run_file(tmp_path, "plgdf", 4, 0, [80.0, 70.0])
    _run_file(tmp_path, "plgdf_semi_warmup", 4, 0, [84.0, 76.0])
    _run_file(tmp_path, "plgdf_semi_warmup", 4, 1, [0.0, 0.0])  # another seed: not in the seed-0 screen
    _run_file(tmp_path, "plgdf_teacher_eval", 8, 0, [0.0, 0.0])  # another budget: left out
    screen = screen_summary(tmp_path)
    assert set(screen["arms"]) == {"plgdf", "plgdf_semi_warmup"}
    row = screen["arms"]["plgdf_semi_warmup"]["paper/best/student"]
    assert row["dice"] == pytest.approx(80.0) and row["vs_reference"]["mean"] == pytest.approx(5.0)
    assert row["vs_reference"]["ci95"] == pytest.approx([4.0, 6.0])  # the two cases' differences
    assert "vs_reference" not in screen["arms"]["plgdf"]["paper/best/student"]
    assert screen["arms"]["plgdf"]["best_of_both"] == "student"
    assert json.loads((tmp_path / "plgdf_plus_screen.json").read_text())["arms"].keys() == screen["arms"].keys()
    table = screen_markdown(screen)
    assert "| `plgdf_semi_warmup` | 0 | 80.00 (+5.00 [+4.00, +6.00])" in table and "(reference)" in table
    with pytest.raises(FileNotFoundError, match="needs its reference"):
        screen_summary(tmp_path, labels=8)
    with pytest.raises(FileNotFoundError, match="seed 3 figures"):
        screen_summary(tmp_path, seed=3)


def test_screen_summary_over_seeds_pairs_each_seed_with_the_reference_of_that_seed(tmp_path):
    _run_file(tmp_path, "plgdf", 4, 0, [80.0, 70.0])
    _run_file(tmp_path, "plgdf", 4, 1, [60.0, 50.0])
    _run_file(tmp_path, "plgdf", 4, 2, [90.0, 90.0])  # no candidate run of seed 2: not in the candidate's pairs
    _run_file(tmp_path, "plgdf_authors_aug", 4, 0, [78.0, 68.0])  # -2 on seed 0
    _run_file(tmp_path, "plgdf_authors_aug", 4, 1, [64.0, 54.0])  # +4 on seed 1
    _run_file(tmp_path, "plgdf_authors_aug", 4, 5, [0.0, 0.0])  # no reference of seed 5: left out
    screen = screen_summary(tmp_path, seed=None)
    row = screen["arms"]["plgdf_authors_aug"]
    assert row["seeds"] == [0, 1] and screen["arms"]["plgdf"]["seeds"] == [0, 1, 2]
    entry = row["paper/best/student"]
    assert entry["dice"] == pytest.approx(66.0) and entry["reference_dice"] == pytest.approx(65.0)
    assert entry["per_seed"] == pytest.approx([73.0, 59.0])
    assert entry["vs_reference"]["mean"] == pytest.approx(1.0)
    assert entry["vs_reference"]["ci95"][0] == pytest.approx(-2.0) and entry["vs_reference"]["ci95"][1] > 1.0
    assert json.loads((tmp_path / "plgdf_plus_screen_seeds.json").read_text())["seed"] is None
    assert "| `plgdf_authors_aug` | 0, 1 | 66.00 (+1.00 [-2.00, " in screen_markdown(screen)


def test_summary_reports_plgdf_plus_against_plgdf_and_supervised(tmp_path):
    for seed in (0, 1):
        _run_file(tmp_path, "supervised", 4, seed, [70.0, 60.0])
        _run_file(tmp_path, "plgdf", 4, seed, [80.0, 70.0])
        _run_file(tmp_path, "plgdf_plus", 4, seed, [82.0, 74.0])
        _run_file(tmp_path, "supervised", 72, seed, [90.0, 90.0])
    block = _budget_block(load_figures(tmp_path), 4, "paper/best/student")
    assert block["dice"]["plgdf_plus"] == {"0": 78.0, "1": 78.0}
    assert block["paired_gain_vs_plgdf"]["mean"] == pytest.approx(3.0)
    assert block["paired_gain_vs_plgdf"]["seeds"] == [0, 1]
    assert block["plgdf_plus_paired_gain"]["mean"] == pytest.approx(13.0)
    assert block["plgdf_plus_gap_recovered"] == pytest.approx(13.0 / 25.0)  # (78 - 65) / (90 - 65)
    assert block["paired_gain"]["mean"] == pytest.approx(10.0)  # plgdf's own gain is unchanged


def test_summary_compares_plgdf_plus_with_plgdf_of_its_own_commit_and_scores_what_it_deploys(tmp_path):
    plus_dir = tmp_path / "plgdf_plus"
    for seed in (0, 1):
        _run_file(tmp_path, "supervised", 4, seed, [70.0, 60.0])
        _run_file(tmp_path, "plgdf", 4, seed, [80.0, 70.0])  # the campaign's plgdf (older commit)
        _run_file(tmp_path, "supervised", 72, seed, [90.0, 90.0])
        _run_file(plus_dir, "plgdf", 4, seed, [84.0, 74.0])  # plgdf at the plgdf_plus runs' commit
        fig = _figure([86.0, 76.0], arm="plgdf_plus", labels=4, seed=seed, student_val=0.5)
        fig["curves"]["val_dice_teacher"] = [[250, 0.9]]  # the teacher validates better: best_of_both deploys it
        fig["evaluations"]["paper/best/teacher"] = {
            "cases": {f"case{i}": {"dice": d / 100, "hd95_mm": 5.0, "asd_mm": 1.0} for i, d in enumerate([88, 78])}
        }
        (plus_dir / "la_lite_runs" / f"plgdf_plus-4_seed{seed}.json").write_text(json.dumps(fig))
    figs = load_figures(tmp_path)
    load_plus_figures(tmp_path, figs)
    assert set(figs) == {"supervised-4", "plgdf-4", "supervised-72", "plgdf_plus-4", "plgdf_plus_ref-4"}
    _add_derived(figs)
    like_for_like = _budget_block(figs, 4, "paper/best/student")
    assert like_for_like["dice"]["plgdf_plus"] == {"0": 81.0, "1": 81.0}  # its student
    assert like_for_like["paired_gain_vs_plgdf"]["mean"] == pytest.approx(2.0)  # against 79, not the campaign's 75
    assert like_for_like["paired_gain_vs_plgdf"]["reference"].startswith("plgdf at the plgdf_plus")
    assert like_for_like["paired_gain"]["mean"] == pytest.approx(10.0)  # the campaign's own pair is untouched
    headline = _budget_block(figs, 4, "paper/best/student", plus_variant="paper/best/best_of_both")
    assert headline["plgdf_plus_variant"] == "paper/best/best_of_both"
    assert headline["dice"]["plgdf_plus"] == {"0": 83.0, "1": 83.0}  # the teacher it deploys
    assert headline["paired_gain_vs_plgdf"]["mean"] == pytest.approx(4.0)
    assert headline["plgdf_plus_gap_recovered"] == pytest.approx(18.0 / 25.0)  # (83 - 65) / (90 - 65)


def test_summary_reads_plgdf_plus_from_the_plgdf_runs_while_the_preset_only_changes_deployment(tmp_path):
    for seed in (0, 1):
        _run_file(tmp_path, "supervised", 4, seed, [70.0, 60.0])
        _run_file(tmp_path, "supervised", 72, seed, [90.0, 90.0])
        fig = _figure([80.0, 70.0], arm="plgdf", labels=4, seed=seed, student_val=0.5)
        if seed == 1:  # the teacher validates better on seed 1: the preset deploys it
            fig["curves"]["val_dice_teacher"] = [[250, 0.9]]
            fig["evaluations"]["paper/best/teacher"] = {
                "cases": {f"case{i}": {"dice": d / 100, "hd95_mm": 5.0, "asd_mm": 1.0} for i, d in enumerate([84, 74])}
            }
        (tmp_path / "la_lite_runs" / f"plgdf-4_seed{seed}.json").write_text(json.dumps(fig))
    figs = load_figures(tmp_path)
    _add_derived(figs)
    block = _budget_block(figs, 4, "paper/best/student", plus_variant="paper/best/best_of_both", plus_from_plgdf=True)
    assert block["dice"]["plgdf_plus"] == {"0": 75.0, "1": 79.0}
    assert block["paired_gain_vs_plgdf"]["mean"] == pytest.approx(2.0)  # (0 + 4) / 2
    assert block["paired_gain_vs_plgdf"]["reference"].startswith("the same plgdf runs")
    assert "plgdf_plus" not in _budget_block(figs, 4, "paper/best/student")["dice"]  # not asked: not read
    preset = tmp_path / "plgdf_plus.json"
    preset.write_text(json.dumps({"validate_teacher": True, "deploy_model": "best_of_both"}))
    assert plus_is_deployment_only(preset) and plus_is_deployment_only()  # the repository's preset too
    preset.write_text(json.dumps({"deploy_model": "best_of_both", "semi_on_clean": True}))
    assert not plus_is_deployment_only(preset) and not plus_is_deployment_only(tmp_path / "missing.json")


def test_average_summary_compares_the_networks_of_each_run(tmp_path):
    """PLGDF+ candidate 8: student, teacher and average model of the same runs, and what validation deploys."""

    def fig(seed: int, dice: dict[str, list[float]], val: dict[str, float]) -> dict:
        evaluations = {
            f"{p}/best/{m}": {"cases": {f"c{i}": {"dice": d / 100} for i, d in enumerate(dice[m])}}
            for p in PROTOCOLS
            for m in dice
        }
        keys = {"student": "val_dice", "teacher": "val_dice_teacher", "average": "val_dice_average"}
        curves = {key: [[250, val[m]]] for m, key in keys.items()}
        return {"run": f"plgdf_average-4:{seed}", "arm": "plgdf_average", "labels": 4, "seed": seed,
                "evaluations": evaluations, "curves": curves, "commit": "abc"}  # fmt: skip

    runs = tmp_path / "la_lite_runs"
    runs.mkdir()
    figs = [
        fig(0, {"student": [80, 82], "teacher": [84, 84], "average": [86, 86]}, {"student": .8, "teacher": .7, "average": .9}),
        fig(1, {"student": [70, 70], "teacher": [72, 74], "average": [71, 71]}, {"student": .8, "teacher": .85, "average": .85}),
    ]  # fmt: skip
    for f in figs:
        (runs / f"plgdf_average-4_seed{f['seed']}.json").write_text(json.dumps(f))
    out = average_summary(tmp_path)
    assert out["seeds"] == [0, 1] and json.loads((tmp_path / "average_model_screen.json").read_text()) == out
    # seed 0: the student validates best of student/teacher, the average best of all; seed 1: a tie goes to the teacher
    assert out["picks"] == {"best_of_both": ["student", "teacher"], "best_of_three": ["average", "teacher"]}
    block = out["protocols"]["paper"]
    assert block["average"]["per_seed"] == pytest.approx([86.0, 71.0])
    assert block["best_of_three"]["per_seed"] == pytest.approx([86.0, 73.0])
    assert block["best_of_both"]["per_seed"] == pytest.approx([81.0, 73.0])
    assert block["average - teacher"]["mean"] == pytest.approx((2 + 2 - 1 - 3) / 4)
    assert block["best_of_three - best_of_both"]["mean"] == pytest.approx((6 + 4 + 0 + 0) / 4)
    assert "| paper | 75.50 |" in average_markdown(out)
    with pytest.raises(FileNotFoundError, match="plgdf_average-8"):
        average_summary(tmp_path, labels=8)
