"""Tests of bundle.evaluation.report and .evaluate: reports on known masks, the empty-prediction policy, padding
removal, protocols."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import SpatialPadd

from bundle.evaluation.evaluate import describe_inferer, paper_stride
from bundle.evaluation.metrics import METRIC_KEYS, case_metrics, summarize
from bundle.evaluation.report import EvaluationReport, strip_padding
from bundle.inference.inferers import ProbabilityInferer, StridedSlidingWindowInferer


def _ball(shape, centre, radius):
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@pytest.fixture
def cases():
    rng = np.random.default_rng(0)
    shape = (24, 20, 16)
    out = []
    for i in range(3):
        ref = _ball(shape, (12, 10, 8), 5 + i)
        pred = _ball(shape, (12 + i, 10, 8 - i), 5)
        out.append((f"case_{i}", pred, ref, rng.normal(size=shape).astype(np.float32)))
    return out


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_report_matches_bundle_metrics(tmp_path, cases):
    spacing = (0.8, 0.8, 2.5)
    report = EvaluationReport(tmp_path, info={"checkpoint": "model.pt"})
    for name, pred, ref, image in cases:
        report.add(name, pred.astype(np.uint8), ref.astype(np.uint8), spacing=spacing, image=image)
    # an empty prediction is counted and reported, not hidden
    report.add("empty", np.zeros_like(cases[0][2]), cases[0][2], spacing=spacing, image=cases[0][3])
    summary = report.write()

    expected = [case_metrics(p, r, spacing=spacing) for _, p, r, _ in cases]
    expected.append(case_metrics(np.zeros_like(cases[0][2]), cases[0][2], spacing=spacing))
    rows = _read_csv(tmp_path / "metrics.csv")
    assert [r["case"] for r in rows] == ["case_0", "case_1", "case_2", "empty"]
    for row, exp in zip(rows, expected):
        for key in METRIC_KEYS:
            if math.isnan(exp[key]):
                assert row[key] == ""
            else:
                assert float(row[key]) == pytest.approx(exp[key], abs=1e-9)
    assert rows[-1]["pred_empty"] == "True" and rows[0]["spacing"] == "0.8x0.8x2.5"

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    ref_summary = summarize(expected)
    for key in METRIC_KEYS:
        for stat in ("mean", "std", "median", "n"):
            assert on_disk["metrics"][key][stat] == pytest.approx(ref_summary[key][stat], abs=1e-9)
            assert summary["metrics"][key][stat] == pytest.approx(ref_summary[key][stat], abs=1e-9)
    assert on_disk["n_cases"] == 4 and on_disk["n_pred_empty"] == 1 and on_disk["pred_empty_cases"] == ["empty"]
    assert on_disk["empty_policy"] == "nan" and on_disk["info"]["checkpoint"] == "model.pt"
    assert on_disk["metrics"]["hd95_vox"]["n"] == 3  # the undefined distance of the empty case is skipped

    md = (tmp_path / "summary.md").read_text()
    assert "empty predictions: 1 (empty)" in md and "`nan`" in md
    assert f"| Dice (%) | {100 * ref_summary['dice']['mean']:.2f} |" in md
    for name in ("case_0", "case_1", "case_2", "empty"):
        assert (tmp_path / "cases" / f"{name}.png").stat().st_size > 1000
    assert (tmp_path / "overview.png").stat().st_size > 1000


def test_hand_computed_tiny_masks(tmp_path):
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1  # 8 voxels
    pred = np.zeros_like(ref)
    pred[1:3, 1:3, 2:4] = 1  # shifted by one slice: 4 voxels overlap
    report = EvaluationReport(tmp_path, figures=False, overview=False)
    row = report.add("shift", pred, ref, spacing=(1.0, 1.0, 2.0))
    assert row["dice"] == pytest.approx(2 * 4 / 16)
    assert row["jaccard"] == pytest.approx(4 / 12)
    # every voxel of a 2x2x2 cube is on its surface; the shifted surfaces are 0 or 1 voxel apart (2 mm along z)
    assert row["asd_vox"] == pytest.approx(0.5) and row["hd95_vox"] == pytest.approx(1.0)
    assert row["asd_mm"] == pytest.approx(1.0) and row["hd95_mm"] == pytest.approx(2.0)
    summary = report.write()
    assert summary["n_pred_empty"] == 0 and not (tmp_path / "overview.png").exists()


def test_reference_policy_and_errors(tmp_path, cases):
    _, pred, ref, _ = cases[0]
    report = EvaluationReport(tmp_path, empty_policy="reference", figures=False, overview=False)
    row = report.add("empty", np.zeros_like(ref), ref)
    assert row["dice"] == 0.0 and row["hd95_vox"] == 0.0 and row["pred_empty"]
    summary = report.write()
    assert summary["n_pred_empty"] == 1 and "UA-MT" in summary["empty_policy_description"]
    with pytest.raises(ValueError, match="twice"):
        report.add("empty", pred, ref)
    with pytest.raises(ValueError, match="shape"):
        report.add("other", pred[:-1], ref)
    with pytest.raises(ValueError, match="empty_policy"):
        EvaluationReport(tmp_path, empty_policy="zero")
    with pytest.raises(ValueError, match="no case"):
        EvaluationReport(tmp_path / "none").write()


def test_strip_padding_undoes_spatial_pad():
    x = MetaTensor(torch.arange(10 * 12 * 5, dtype=torch.float32).reshape(1, 10, 12, 5))
    padded = SpatialPadd("image", spatial_size=(16, 16, 16))({"image": x})["image"]
    mask = (padded > 100).to(torch.uint8)
    img, m = strip_padding(padded.applied_operations, padded, mask)
    assert img.shape == (10, 12, 5)
    np.testing.assert_array_equal(img, x[0].numpy())
    np.testing.assert_array_equal(m, (x[0].numpy() > 100))
    # no padding record: unchanged
    (same,) = strip_padding([], x)
    assert same.shape == (10, 12, 5)


def test_protocol_helpers():
    assert paper_stride((112, 112, 80)) == (18, 18, 4)
    assert paper_stride([96, 96, 96]) == (16, 16, 16)
    with pytest.raises(ValueError, match="explicitly"):
        paper_stride((64, 64, 32))
    desc = describe_inferer(ProbabilityInferer(StridedSlidingWindowInferer((112, 112, 80), (18, 18, 4)), [[0]]))
    assert desc == {
        "flip_tta_axes": [[0]],
        "average": "probabilities",
        "name": "StridedSlidingWindowInferer",
        "roi_size": [112, 112, 80],
        "stride": [18, 18, 4],
        "keep": 1,
        "sigma_scale": None,
        "sw_batch_size": 1,
    }
    desc = describe_inferer(SlidingWindowInferer((32, 32, 32), overlap=0.5, mode="gaussian"))
    assert desc["name"] == "SlidingWindowInferer" and desc["overlap"] == 0.5 and desc["mode"] == "gaussian"


def test_evaluate_checkpoint_on_la_h5_cases(tmp_path):
    """LA h5 cases + a list file, resampled by 0.5 (0.625 -> 1.25 mm), the paper protocol, model-space metrics."""
    import h5py

    from bundle.data.transforms import LoadVolumed
    from bundle.evaluation.evaluate import evaluate_checkpoint
    from bundle.method.networks import PLGDFVNet

    shape = (40, 36, 24)
    ids = ["CASE_A", "CASE_B"]
    rng = np.random.default_rng(0)
    for k, case in enumerate(ids):
        (tmp_path / "LA" / case).mkdir(parents=True)
        label = _ball(shape, (20, 18, 12), 6 + 2 * k)
        with h5py.File(tmp_path / "LA" / case / "mri_norm2.h5", "w") as f:
            f["image"] = (rng.normal(size=shape) + 2.0 * label).astype(np.float32)
            f["label"] = label.astype(np.uint8)
    (tmp_path / "cases.list").write_text("\n".join(ids) + "\n")
    torch.manual_seed(0)
    net = PLGDFVNet(n_filters=2)
    torch.save({"network": net.state_dict(), "iteration": torch.tensor(1)}, tmp_path / "checkpoint.pt")

    summary = evaluate_checkpoint(
        tmp_path / "checkpoint.pt",
        tmp_path / "eval",
        la_dir=tmp_path / "LA",
        la_list=tmp_path / "cases.list",
        resample_factor=0.5,
        protocol="paper",
        roi_size=(16, 16, 16),
        stride=(8, 8, 8),
        overrides={"n_filters": 2, "patch_size": [16, 16, 16]},
        device="cpu",
    )
    assert summary["n_cases"] == 2 and summary["info"]["space"] == "model"
    assert summary["info"]["checkpoint_kind"].startswith("training checkpoint")
    assert summary["info"]["inferer"]["name"] == "StridedSlidingWindowInferer"
    assert summary["info"]["inferer"]["stride"] == [8, 8, 8]
    with open(tmp_path / "eval" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ids and all(r["spacing"] == "1.25x1.25x1.25" for r in rows)
    # the reference is the label resampled (nearest) to 1.25 mm, without the padding to the 16^3 patch
    from monai.transforms import Spacingd

    for row, case in zip(rows, ids):
        d = LoadVolumed(["image", "label"])(
            {
                "image": str(tmp_path / "LA" / case / "mri_norm2.h5"),
                "label": str(tmp_path / "LA" / case / "mri_norm2.h5"),
            }
        )
        lab = Spacingd("label", pixdim=(1.25, 1.25, 1.25), mode="nearest")(d)["label"]
        assert tuple(lab.shape[1:]) == (20, 18, 12)
        assert int(row["ref_voxels"]) == int((lab > 0).sum())
        assert 0 <= int(row["pred_voxels"]) <= 20 * 18 * 12
    assert (tmp_path / "eval" / "cases" / "CASE_A.png").is_file()
    assert json.loads((tmp_path / "eval" / "cases.json").read_text())["test"][0]["case_id"] == "CASE_A"
    with pytest.raises(ValueError, match="exactly one data source"):
        evaluate_checkpoint(tmp_path / "checkpoint.pt", tmp_path / "x")
