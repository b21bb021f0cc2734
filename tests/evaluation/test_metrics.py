"""Tests of bundle.evaluation.metrics: hand-computed tiny masks, agreement with medpy (random and real masks),
empty policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion, gaussian_filter

from bundle.evaluation.metrics import (
    EMPTY_POLICY,
    METRIC_KEYS,
    asd,
    case_metrics,
    dice,
    hd95,
    jaccard,
    summarize,
    surface,
    surface_distances,
)
from tests.conftest import shared_path


def _cubes(shape=(6, 6, 6)) -> tuple[np.ndarray, np.ndarray]:
    """Reference 3x3x3 cube at x, y, z in {1, 2, 3}; prediction the same cube shifted by +1 along axis 0."""
    ref = np.zeros(shape, dtype=bool)
    pred = np.zeros(shape, dtype=bool)
    ref[1:4, 1:4, 1:4] = True
    pred[2:5, 1:4, 1:4] = True
    return pred, ref


def _blob(rng: np.random.Generator, shape=(34, 30, 22), sigma=2.5, level=0.55) -> np.ndarray:
    """Smoothed-noise blobs (several components, some touching the array border)."""
    field = gaussian_filter(rng.random(shape), sigma=sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return field > level


# ---------------------------------------------------------------- hand-computed values


def test_single_voxels_at_known_distance():
    pred = np.zeros((8, 8, 8), dtype=np.uint8)
    ref = np.zeros_like(pred)
    pred[2, 2, 2] = 1
    ref[2, 2, 5] = 1
    assert dice(pred, ref) == 0.0 and jaccard(pred, ref) == 0.0
    # Each voxel is its own surface; the only distance is 3 voxels, in both directions.
    assert hd95(pred, ref) == pytest.approx(3.0, abs=1e-12)
    assert asd(pred, ref) == pytest.approx(3.0, abs=1e-12)
    assert hd95(pred, ref, spacing=(1.0, 1.0, 2.0)) == pytest.approx(6.0, abs=1e-12)
    assert asd(pred, ref, spacing=(0.5, 0.5, 0.5)) == pytest.approx(1.5, abs=1e-12)
    ref[2, 2, 5], ref[5, 6, 2] = 0, 1  # distance sqrt(3^2 + 4^2) = 5
    assert hd95(pred, ref) == pytest.approx(5.0, abs=1e-12)


def test_cube_and_shifted_cube():
    pred, ref = _cubes()
    # |P & R| = 2*3*3 = 18, |P| = |R| = 27, |P | R| = 36.
    assert dice(pred, ref) == pytest.approx(2 * 18 / 54)
    assert jaccard(pred, ref) == pytest.approx(18 / 36)
    # A 3x3x3 cube eroded with the 6-neighbourhood keeps only its centre: 26 surface voxels each.
    assert surface(ref).sum() == 26 and not surface(ref)[2, 2, 2]
    # d(P -> R): the 9 voxels of the x=4 face are 1 away, the pred-surface voxel (2,2,2) (interior of R) is
    # 1 away, the other 16 lie on S(R). Symmetrically for d(R -> P). Pooled: 20 ones, 32 zeros.
    d_pr, d_rp = surface_distances(pred, ref)
    assert sorted(d_pr.tolist()) == [0.0] * 16 + [1.0] * 10
    assert sorted(d_rp.tolist()) == [0.0] * 16 + [1.0] * 10
    assert asd(pred, ref) == pytest.approx(10 / 26)
    assert hd95(pred, ref) == pytest.approx(1.0)  # sorted position 0.95 * 51 = 48.45 falls among the ones
    # Spacing (2, 1, 1): the x-face distances double, (2,2,2) still finds S(R) 1 mm away along y.
    assert asd(pred, ref, spacing=(2.0, 1.0, 1.0)) == pytest.approx((1 + 9 * 2) / 26)
    assert hd95(pred, ref, spacing=(2.0, 1.0, 1.0)) == pytest.approx(2.0)  # 32 zeros, 2 ones, 18 twos


def test_hd95_pools_both_directions_unlike_max_of_directed():
    # A 5x5x5 cube and the same cube plus a 1-voxel spur 4 voxels away: only R -> P sees the spur.
    ref = np.zeros((12, 12, 12), dtype=bool)
    ref[2:7, 2:7, 2:7] = True
    pred = ref.copy()
    pred[10, 4, 4] = True
    d_pr, d_rp = surface_distances(pred, ref)
    assert d_rp.max() == 0.0 and d_pr.max() == pytest.approx(4.0)
    pooled = np.concatenate((d_pr, d_rp))
    assert hd95(pred, ref) == pytest.approx(np.percentile(pooled, 95))
    assert hd95(pred, ref) == hd95(ref, pred)
    assert asd(pred, ref) == pytest.approx(4.0 / d_pr.size)  # only the spur is off the reference surface
    assert asd(ref, pred) == 0.0  # directed: not symmetric


def test_mask_touching_the_border_has_a_surface_there():
    ref = np.ones((4, 4, 4), dtype=bool)  # fills the array: everything but the 2x2x2 core is surface
    assert surface(ref).sum() == 64 - 8
    pred = ref.copy()
    pred[:, :, 3] = False  # 4x4x3 block: 48 - 4 interior = 44 surface voxels, 4 of them (z=2) inside R's core
    assert surface(pred).sum() == 44
    assert asd(pred, ref) == pytest.approx(4 / 44)
    # R -> P: the 16 voxels of R's z=3 face are 1 away. Pooled: 20 ones in 100 values.
    assert hd95(pred, ref) == pytest.approx(1.0)
    assert hd95(pred, pred) == 0.0


# ---------------------------------------------------------------- medpy agreement


@pytest.fixture
def medpy_binary():
    """``medpy.metric.binary``: the test-only reference implementation."""
    return pytest.importorskip("medpy.metric.binary")


def _assert_matches_medpy(medpy_binary, pred: np.ndarray, ref: np.ndarray, spacing) -> None:
    row = case_metrics(pred, ref, spacing=spacing)
    assert row["dice"] == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-6)
    assert row["jaccard"] == pytest.approx(medpy_binary.jc(pred, ref), abs=1e-6)
    assert row["hd95_vox"] == pytest.approx(medpy_binary.hd95(pred, ref), abs=1e-6)
    assert row["asd_vox"] == pytest.approx(medpy_binary.asd(pred, ref), abs=1e-6)
    assert row["hd95_mm"] == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=spacing), abs=1e-6)
    assert row["asd_mm"] == pytest.approx(medpy_binary.asd(pred, ref, voxelspacing=spacing), abs=1e-6)
    assert hd95(pred, ref, spacing) == pytest.approx(row["hd95_mm"], abs=1e-12)
    assert asd(pred, ref, spacing) == pytest.approx(row["asd_mm"], abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 1.1, 2.5)])
def test_random_blobs_match_medpy(medpy_binary, seed, spacing):
    rng = np.random.default_rng(seed)
    ref = _blob(rng)
    pred = (
        _blob(rng)
        if seed % 2
        else np.roll(binary_erosion(ref), shift=(1, -2, 1), axis=(0, 1, 2)) | _blob(rng, level=0.75)
    )
    assert ref.any() and pred.any()
    _assert_matches_medpy(medpy_binary, pred, ref, spacing)


def test_small_blob_in_large_volume_matches_medpy(medpy_binary):
    """The bounding-box crop (the fast path) must not change the numbers: a far-away small structure."""
    rng = np.random.default_rng(7)
    ref = np.zeros((60, 50, 40), dtype=bool)
    pred = np.zeros_like(ref)
    ref[20:36, 10:26, 5:21] = _blob(rng, shape=(16, 16, 16), sigma=1.5, level=0.45)
    pred[22:38, 12:28, 24:40] = _blob(rng, shape=(16, 16, 16), sigma=1.5, level=0.45)  # touches the z border
    _assert_matches_medpy(medpy_binary, pred, ref, (0.8, 0.8, 1.6))


def test_real_spleen_mask_matches_medpy(medpy_binary):
    nib = pytest.importorskip("nibabel")
    image = nib.load(str(shared_path("spleen_ct", "spleen2_ct_seg-manual.nii.gz")))
    ref = np.asarray(image.dataobj) > 0
    spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    pred = np.roll(binary_erosion(ref, iterations=2), shift=(3, -2, 1), axis=(0, 1, 2))
    assert ref.any() and pred.any()
    _assert_matches_medpy(medpy_binary, pred, ref, spacing)


# ---------------------------------------------------------------- inputs, empty policy, summary


def test_accepts_tensors_and_integer_labels():
    pred, ref = _cubes()
    expected = case_metrics(pred, ref, spacing=(1.0, 2.0, 3.0))
    got = case_metrics(torch.from_numpy(pred.astype(np.int64) * 2), ref.astype(np.float32), spacing=[1, 2, 3])
    assert got == expected


def test_bad_inputs_raise_early():
    pred, ref = _cubes()
    with pytest.raises(ValueError, match=r"same shape"):
        dice(pred, ref[:-1])
    with pytest.raises(ValueError, match=r"one value per axis"):
        hd95(pred, ref, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"positive"):
        asd(pred, ref, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"pred is empty"):
        hd95(np.zeros_like(pred), ref)
    with pytest.raises(ValueError, match=r"ref is empty"):
        asd(pred, np.zeros_like(ref))
    with pytest.raises(ValueError, match=r"empty_policy"):
        case_metrics(pred, ref, empty_policy="zero")


def test_empty_policy_default():
    assert EMPTY_POLICY == "nan"
    pred, ref = _cubes()
    empty = np.zeros_like(ref)
    row = case_metrics(empty, ref, spacing=(1, 1, 1))
    assert row["dice"] == 0.0 and row["jaccard"] == 0.0
    assert all(math.isnan(row[k]) for k in ("hd95_vox", "asd_vox", "hd95_mm", "asd_mm"))
    assert row["pred_empty"] and not row["ref_empty"]
    row = case_metrics(pred, empty, spacing=(1, 1, 1))
    assert row["dice"] == 0.0 and math.isnan(row["hd95_vox"]) and row["ref_empty"] and not row["pred_empty"]
    row = case_metrics(empty, empty, spacing=(1, 1, 1))
    assert row == {
        "dice": 1.0, "jaccard": 1.0, "hd95_vox": 0.0, "asd_vox": 0.0, "hd95_mm": 0.0, "asd_mm": 0.0,
        "pred_empty": True, "ref_empty": True,
    }  # fmt: skip
    row = case_metrics(pred, ref)  # no spacing: no millimetres
    assert math.isnan(row["hd95_mm"]) and math.isnan(row["asd_mm"]) and row["hd95_vox"] == pytest.approx(1.0)


def test_empty_policy_reference_scores_zero():
    _, ref = _cubes()
    row = case_metrics(np.zeros_like(ref), ref, spacing=(1, 1, 1), empty_policy="reference")
    assert all(row[k] == 0.0 for k in METRIC_KEYS) and row["pred_empty"]


def test_summarize_nan_aware_with_empty_counts():
    pred, ref = _cubes()
    rows = [
        case_metrics(pred, ref, spacing=(1, 1, 1)),
        case_metrics(ref, ref, spacing=(1, 1, 1)),
        case_metrics(np.zeros_like(ref), ref, spacing=(1, 1, 1)),
    ]
    summary = summarize(rows)
    assert summary["n_cases"] == 3 and summary["n_pred_empty"] == 1 and summary["n_ref_empty"] == 0
    dices = [2 / 3, 1.0, 0.0]  # the empty prediction's zero counts for Dice ...
    assert summary["dice"]["mean"] == pytest.approx(np.mean(dices))
    assert summary["dice"]["std"] == pytest.approx(np.std(dices))
    assert summary["dice"]["median"] == pytest.approx(2 / 3)
    assert summary["dice"]["n"] == 3
    assert summary["asd_vox"]["n"] == 2  # ... its NaN distances are left out
    assert summary["asd_vox"]["mean"] == pytest.approx((10 / 26 + 0.0) / 2)
    assert summary["hd95_mm"]["median"] == pytest.approx(0.5)
    all_nan = summarize([case_metrics(np.zeros_like(ref), ref)])
    assert all_nan["hd95_vox"]["n"] == 0 and math.isnan(all_nan["hd95_vox"]["mean"])
    assert summarize([{"dice": 0.5, "case": "a"}])["dice"] == {"mean": 0.5, "std": 0.0, "median": 0.5, "n": 1}
