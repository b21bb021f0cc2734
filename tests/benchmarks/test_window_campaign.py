"""The window summary over campaign checkpoints: discovery, the default read from inference.json, resume, targets."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO_ROOT
from test_window_study import cases  # noqa: F401  (fixture: two NIfTI cases, a preset with a threshold network)

from benchmarks.window_campaign import default_setting, find_checkpoints, window_summary


def _campaign(tmp_path):
    root = tmp_path / "campaign"
    for arm, seed in (("plgdf", 0), ("supervised", 1)):
        models = root / "labels4" / arm / f"seed{seed}" / "eval_models"
        models.mkdir(parents=True)
        for name in ("student_best", "teacher_best", "student_last", "student_best_bn"):
            torch.save({}, models / f"{name}.pt")
    return root


def test_find_checkpoints_names_arm_budget_seed_checkpoint_and_model(tmp_path):
    found = find_checkpoints(_campaign(tmp_path))
    assert sorted(found) == [
        "plgdf-4/seed0/best/student",
        "plgdf-4/seed0/best/teacher",
        "supervised-4/seed1/best/student",
        "supervised-4/seed1/best/teacher",
    ]
    assert found["plgdf-4/seed0/best/student"].name == "student_best.pt"
    assert list(find_checkpoints(_campaign(tmp_path / "x"), ("student_last",))) == [
        "plgdf-4/seed0/last/student",
        "supervised-4/seed1/last/student",
    ]


def test_default_setting_follows_the_inference_config(tmp_path):
    cfg = json.loads((REPO_ROOT / "configs" / "inference.json").read_text())
    assert cfg["window_inferer"] == "@lattice_inferer"
    # the demo's 32^3 window: a 6x6x2 grid (3/16 of the window in-plane, 1/16 across), one window in sw_keep
    assert default_setting() == {"stride": [6, 6, 2], "keep": cfg["sw_keep"]}
    la_lite = REPO_ROOT / "configs" / "presets" / "la_lite.json"
    assert default_setting(presets=[la_lite]) == {"stride": [9, 9, 2], "keep": 7}
    la = REPO_ROOT / "configs" / "presets" / "la.json"
    assert default_setting(presets=[la]) == {"stride": [21, 21, 5], "keep": 10}
    assert default_setting(roi_size=(16, 16, 16))["stride"] == [3, 3, 1]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"sw_mode": "gaussian"}))
    assert default_setting(presets=[la_lite, other]) == {"stride": [9, 9, 2], "keep": 7, "sigma": 0.5}
    other.write_text(json.dumps({"sw_window_flips": [[], [0, 1, 2]]}))
    assert default_setting(presets=[la_lite, other]) == {"stride": [9, 9, 2], "keep": 7, "flips": [[], [0, 1, 2]]}
    other.write_text(json.dumps({"window_inferer": "@sliding_window_inferer"}))
    assert default_setting(presets=[other]) == {
        "overlap": cfg["sw_overlap"],
        "mode": cfg["sw_mode"],
        "sigma": cfg["sw_sigma_scale"],
        "average": cfg["sw_average"],
    }
    other.write_text(json.dumps({"window_inferer": "@strided_inferer", "sw_stride": [4, 4, 2]}))
    assert default_setting(presets=[other]) == {"stride": [4, 4, 2]}


def test_window_summary_scores_every_checkpoint_and_resumes(tmp_path, cases, monkeypatch):  # noqa: F811
    entries, configs, _ = cases
    root = _campaign(tmp_path)
    out = tmp_path / "window_summary.json"
    overrides = {"bundle_root": str(REPO_ROOT)}
    summary = window_summary(root, entries, out, overrides, configs, models=("student_best",), full=False)
    assert json.loads(out.read_text()) == summary
    names = [row["name"] for row in summary["checkpoints"]]
    assert names == ["plgdf-4/seed0/best/student", "supervised-4/seed1/best/student"]
    for row in summary["checkpoints"]:
        # the threshold network is right whatever the window: Dice 100 for both protocols, so only speed can fail
        assert row["default"]["dice"] == row["paper_stride"]["dice"] == 100.0
        # 40x30x20 with a 16^3 window: the default keeps 49 of its 3x3x1 grid's 270 windows, the 9x9x2 stride 4*3*3
        assert (row["default"]["forwards"], row["paper_stride"]["forwards"]) == (49, 36)
        assert row["default"]["peak_gb"] > 0 and row["dice_minus_paper"] == 0
    assert summary["targets"]["checkpoints_meeting"].endswith("/2")
    assert summary["machine"]["cpu"] and summary["full_resolution"] is None

    def fail(*args, **kwargs):
        raise AssertionError("a scored checkpoint was scored again")

    monkeypatch.setattr("benchmarks.window_campaign.compare_windows", fail)
    again = window_summary(root, entries, out, overrides, configs, models=("student_best",), full=False)
    assert [row["name"] for row in again["checkpoints"]] == names


def test_window_summary_without_runs_says_so(tmp_path, cases):  # noqa: F811
    entries, configs, _ = cases
    with pytest.raises(FileNotFoundError, match="no finished campaign run"):
        window_summary(tmp_path, entries, tmp_path / "s.json", {}, configs)


def test_full_resolution_times_the_default_against_the_paper_stride(monkeypatch):
    import benchmarks.window_campaign as wc

    monkeypatch.setattr(wc, "FULL_VOLUME", (40, 30, 20))
    monkeypatch.setattr(wc, "FULL_ROI", (16, 16, 16))
    monkeypatch.setattr(wc, "FULL_WIDTH", 2)
    monkeypatch.setattr(wc, "PAPER_FULL", {"stride": [4, 4, 4]})
    out = wc.full_resolution(repeats=1, memory=False)
    # la.json's default (one window in 10 of a 3x3x1 grid for a 16^3 window) on 40x30x20: 36 windows; stride 4: 7*5*2
    assert (out["default"]["forwards"], out["paper_stride"]["forwards"]) == (36, 70)
    assert out["default"]["setting"] == default_setting(
        presets=[REPO_ROOT / "configs" / "presets" / "la.json"], roi_size=(16, 16, 16)
    )
    assert out["speedup"] == pytest.approx(out["paper_stride"]["seconds"] / out["default"]["seconds"])
