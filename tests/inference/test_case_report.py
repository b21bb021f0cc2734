"""Tests of bundle/inference/case_report.py: folder inference keeps going past a corrupt scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle.inference.case_report import CaseReport
from tests.conftest import SMALL_AFFINE, SMALL_SHAPE, nifti, noise_image

SHAPE, AFFINE, image = SMALL_SHAPE, SMALL_AFFINE, noise_image


def test_case_report_keeps_going_and_exits_non_zero(tmp_path: Path) -> None:
    files = [nifti(tmp_path / f"scan{i}.nii.gz", image(i)) for i in range(3)]
    Path(files[1]).write_bytes(b"corrupt")
    report = CaseReport(summary_file=tmp_path / "out" / "summary.json")
    good = report.filter([{"image": f} for f in files])
    assert [g["image"] for g in good] == [files[0], files[2]]
    report.record_output(tmp_path / "out" / "scan0_seg.nii.gz")
    with pytest.raises(SystemExit) as exit_info:
        report.finish()
    assert exit_info.value.code == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["total"] == 3 and summary["succeeded"] == 2 and summary["failed"] == 1
    assert files[1] in summary["failures"][0]["case"] and files[1] in summary["failures"][0]["error"]


def test_case_report_without_failures(tmp_path: Path) -> None:
    report = CaseReport(summary_file=tmp_path / "summary.json")
    assert report.finish()["total"] == 0
    ok = CaseReport(summary_file=tmp_path / "ok.json")
    ok.filter([nifti(tmp_path / "a.nii.gz", image(0))])
    assert ok.finish()["failed"] == 0
