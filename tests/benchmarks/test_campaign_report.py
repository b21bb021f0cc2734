"""Paired gains at today's default window, read from window_summary.json."""

from __future__ import annotations

import json

import pytest

from benchmarks.campaign_report import window_gains


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


def test_window_gains_without_the_file_is_empty(tmp_path):
    assert window_gains(tmp_path, [4]) == {}
