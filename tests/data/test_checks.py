"""Tests of bundle/data/checks.py: one test per bad input (error type and the file named in the message), the
readable command-line error and the empty-unlabelled fallback."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from bundle.data.checks import check_image_file, check_training_inputs, find_leaks
from bundle.data.datalist import load_datalist
from bundle.data.demo import generate_demo_dataset
from bundle.data.samplers import unlabeled_stream
from bundle.engine.errors import DataValidationError
from tests.conftest import SMALL_AFFINE, SMALL_SHAPE, TINY_TRAIN, TRAIN_CONFIG, nifti, noise_image, run_bundle

SHAPE, AFFINE, image = SMALL_SHAPE, SMALL_AFFINE, noise_image


def label(shape=SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3:7, 3:7, 2:5] = 1
    return lab


@pytest.fixture
def cases(tmp_path: Path) -> dict:
    """A valid data list: 2 labelled, 1 unlabelled, 1 validation, 1 test case (NIfTI)."""
    d = {"training": [], "unlabeled": [], "validation": [], "test": []}
    for i in range(2):
        d["training"].append(
            {
                "image": nifti(tmp_path / f"img{i}.nii.gz", image(i)),
                "label": nifti(tmp_path / f"lab{i}.nii.gz", label()),
            }
        )
    d["unlabeled"].append({"image": nifti(tmp_path / "u0.nii.gz", image(5))})
    d["validation"].append(
        {"image": nifti(tmp_path / "v0.nii.gz", image(6)), "label": nifti(tmp_path / "vl0.nii.gz", label())}
    )
    d["test"].append({"image": nifti(tmp_path / "t0.nii.gz", image(7))})
    return d


def check(datalist, **kwargs):
    kwargs.setdefault("num_classes", 2)
    kwargs.setdefault("labeled_batch_size", 2)
    kwargs.setdefault("num_threads", 1)
    return check_training_inputs(datalist, **kwargs)


def expect_error(datalist, file: str, *words: str, **kwargs) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        check(datalist, **kwargs)
    message = str(info.value)
    assert file in message, message
    for word in words:
        assert word in message, message
    return info.value


# -- good input -----------------------------------------------------------------------------------------
def test_valid_inputs_pass(cases: dict) -> None:
    report = check(cases, patch_size=(8, 8, 8), spacing=(1.5, 1.5, 2.0))
    assert report.counts == {"training": 2, "unlabeled": 1, "validation": 1, "test": 1}
    assert report.notes == []
    assert not any(f.endswith("t0.nii.gz") for f in report.volumes)  # test files are not opened


def test_datalist_file_is_accepted(cases: dict, tmp_path: Path) -> None:
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(cases))
    assert check(path).counts["training"] == 2


# -- missing / unreadable / truncated -------------------------------------------------------------------
def test_missing_image_file(cases: dict) -> None:
    os.remove(cases["training"][1]["image"])
    expect_error(cases, cases["training"][1]["image"], "file not found")


def test_missing_label_folder(cases: dict, tmp_path: Path) -> None:
    cases["training"][0]["label"] = str(tmp_path / "labelsTr" / "lab0.nii.gz")
    expect_error(cases, cases["training"][0]["label"], "file not found", "does not exist either")


def test_missing_datalist_and_dataset_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dataset" / "datalist.json"
    error = expect_error(missing, str(missing), "not found", "check dataset_dir")
    assert isinstance(error, ValueError)


def test_unreadable_nifti(cases: dict) -> None:
    Path(cases["training"][0]["label"]).write_bytes(b"this is not a NIfTI file" * 20)
    expect_error(cases, cases["training"][0]["label"], "unreadable NIfTI")


def test_truncated_nifti_gz(cases: dict, tmp_path: Path) -> None:
    path = nifti(tmp_path / "big.nii.gz", image(1, (64, 64, 32)))  # big enough to keep its header when cut
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) * 2 // 3])
    cases["unlabeled"].append({"image": path})
    expect_error(cases, path, "truncated")


def test_truncated_raw_nifti(cases: dict, tmp_path: Path) -> None:
    path = nifti(tmp_path / "raw.nii", image(1))
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    cases["training"][0]["image"] = path
    expect_error(cases, path, "truncated")


def test_empty_file(cases: dict) -> None:
    Path(cases["validation"][0]["image"]).write_bytes(b"")
    expect_error(cases, cases["validation"][0]["image"], "empty file")


def test_truncated_and_incomplete_h5(tmp_path: Path) -> None:
    good = tmp_path / "la_good.h5"
    with h5py.File(good, "w") as f:
        f["image"], f["label"] = image(0), label()
    la_case = {"image": str(good), "label": str(good)}  # LA layout: one file holds both
    assert check({"training": [la_case]}, labeled_batch_size=1).counts["training"] == 1

    truncated = tmp_path / "la_cut.h5"
    truncated.write_bytes(good.read_bytes()[:3000])
    expect_error(
        {"training": [{"image": str(truncated), "label": str(truncated)}]},
        str(truncated),
        "unreadable h5",
        labeled_batch_size=1,
    )

    no_label = tmp_path / "la_nolabel.h5"
    with h5py.File(no_label, "w") as f:
        f["image"] = image(0)
    expect_error(
        {"training": [{"image": str(no_label), "label": str(no_label)}]},
        str(no_label),
        "no dataset 'label'",
        labeled_batch_size=1,
    )


# -- geometry -------------------------------------------------------------------------------------------
def test_image_label_shape_mismatch(cases: dict) -> None:
    nifti(Path(cases["training"][0]["label"]), label((12, 10, 9)))
    expect_error(cases, cases["training"][0]["label"], "shape (12, 10, 9) differs")


def test_image_label_affine_mismatch(cases: dict) -> None:
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5  # 0.5 mm origin shift
    nifti(Path(cases["training"][1]["label"]), label(), shifted)
    expect_error(cases, cases["training"][1]["label"], "affine differs")


def test_affine_within_tolerance_passes(cases: dict) -> None:
    nudged = AFFINE.copy()
    nudged[0, 0] *= 1 + 1e-5
    nudged[1, 3] += 5e-5
    nifti(Path(cases["training"][1]["label"]), label(), nudged)
    check(cases)


# -- values ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, words", [(2, ["[2]", "0..1"]), (255, ["[255]", "0/255"]), (-1, ["[-1]"])])
def test_label_outside_declared_classes(cases: dict, bad: int, words: list) -> None:
    lab = label().astype(np.int16)
    lab[0, 0, 0] = bad
    nifti(Path(cases["validation"][0]["label"]), lab)
    expect_error(cases, cases["validation"][0]["label"], "outside the declared classes", *words)


def test_label_with_more_classes_passes_when_declared(cases: dict) -> None:
    lab = label()
    lab[0, 0, 0] = 2
    nifti(Path(cases["training"][0]["label"]), lab)
    check(cases, num_classes=3)


def test_non_integer_label(cases: dict) -> None:
    lab = label().astype(np.float32)
    lab[1, 1, 1] = 0.5
    nifti(Path(cases["training"][0]["label"]), lab)
    expect_error(cases, cases["training"][0]["label"], "non-integer", "0.5")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_voxels(cases: dict, value: float) -> None:
    img = image(3)
    img[2, 2, 2] = value
    nifti(Path(cases["unlabeled"][0]["image"]), img)
    expect_error(cases, cases["unlabeled"][0]["image"], "1 NaN/Inf voxel(s)")


# -- dimensionality -------------------------------------------------------------------------------------
def test_2d_input(cases: dict) -> None:
    nifti(Path(cases["training"][0]["image"]), image(0, (12, 10)))
    expect_error(cases, cases["training"][0]["image"], "is 2D", "network is 3D")


def test_single_slice_input(cases: dict) -> None:
    nifti(Path(cases["unlabeled"][0]["image"]), image(0, (12, 10, 1)))
    expect_error(cases, cases["unlabeled"][0]["image"], "single slice (2D)")


def test_multi_frame_4d_input(cases: dict) -> None:
    nifti(Path(cases["training"][0]["image"]), image(0, (*SHAPE, 3)))
    expect_error(cases, cases["training"][0]["image"], "is 4D", "3 frames/channels")


def test_single_frame_4d_input_is_accepted(cases: dict) -> None:
    nifti(Path(cases["training"][0]["image"]), image(0, (*SHAPE, 1)))
    report = check(cases)
    assert report.volumes[cases["training"][0]["image"]].shape == SHAPE


def test_multi_channel_4d_input_with_matching_in_channels(cases: dict) -> None:
    for k, section in enumerate(("training", "unlabeled", "validation")):
        for i, entry in enumerate(cases[section]):
            nifti(Path(entry["image"]), image(10 * k + i, (*SHAPE, 2)))  # distinct images (no content leak)
    check(cases, in_channels=2)


def test_5d_input(cases: dict) -> None:
    nifti(Path(cases["training"][0]["image"]), image(0, (*SHAPE, 1, 2)))
    expect_error(cases, cases["training"][0]["image"], "is 5D")


def test_nrrd_input(cases: dict, tmp_path: Path) -> None:
    good = tmp_path / "u1.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(image(1).transpose(2, 1, 0)), str(good))
    flat = tmp_path / "u2.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(image(1, (12, 10))), str(flat))
    cases["unlabeled"] += [{"image": str(good)}]
    check(cases)
    cases["unlabeled"] += [{"image": str(flat)}]
    expect_error(cases, str(flat), "is 2D")


# -- data-list level ------------------------------------------------------------------------------------
def test_labelled_set_smaller_than_batch(cases: dict) -> None:
    expect_error(cases, cases["training"][0]["image"], "2 case(s)", "labeled_batch_size is 3", labeled_batch_size=3)


def test_empty_labelled_set(cases: dict, tmp_path: Path) -> None:
    cases["training"] = []
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(cases))
    expect_error(path, str(path), "labelled training set", "is empty")


def test_empty_unlabelled_set_is_allowed(cases: dict, caplog) -> None:
    cases["unlabeled"] = []
    assert check(cases).counts["unlabeled"] == 0
    with caplog.at_level(logging.WARNING, logger="plgdf"):
        assert unlabeled_stream([], batch_size=2) is None
    assert "falls back to the supervised loss" in caplog.text


def test_volume_smaller_than_patch_gets_a_note(cases: dict, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="plgdf"):
        report = check(cases, patch_size=(16, 16, 16), spacing=(1.5, 1.5, 2.0))
    small = cases["training"][0]["image"]
    assert any(small in note and "zero-padded" in note and "(12, 10, 8)" in note for note in report.notes)
    assert small in caplog.text
    # at a coarser spacing the volume shrinks: 12 x 1.5 mm / 3 mm = 6 voxels
    report = check(cases, patch_size=(8, 4, 4), spacing=(3.0, 3.0, 3.0))
    assert any("(6, 5, 5)" in note for note in report.notes)


@pytest.mark.parametrize(
    "train_section, eval_section", [("training", "validation"), ("training", "test"), ("unlabeled", "test")]
)
def test_leak_between_training_and_evaluation(cases: dict, train_section: str, eval_section: str) -> None:
    leaked = cases[eval_section][0]["image"]
    cases[train_section].append({"image": leaked, "label": cases["training"][0]["label"]})
    expect_error(cases, leaked, f"both a '{train_section}' case and a '{eval_section}' case", "leak")


def test_leak_through_a_link(cases: dict, tmp_path: Path) -> None:
    link = tmp_path / "elsewhere" / "same_case.nii.gz"
    link.parent.mkdir()
    os.symlink(cases["validation"][0]["image"], link)
    cases["unlabeled"].append({"image": str(link)})
    assert find_leaks(cases) == [(str(link), "unlabeled", "validation")]


def test_all_problems_are_listed_together(cases: dict) -> None:
    os.remove(cases["training"][0]["label"])
    img = image(3)
    img[0, 0, 0] = np.nan
    nifti(Path(cases["unlabeled"][0]["image"]), img)
    error = expect_error(cases, cases["training"][0]["label"], "2 problem(s)", cases["unlabeled"][0]["image"])
    assert len(error.problems) == 2


def test_headers_only_mode_skips_voxels(cases: dict) -> None:
    img = image(3)
    img[0, 0, 0] = np.nan
    nifti(Path(cases["unlabeled"][0]["image"]), img)
    check(cases, check_voxels=False)


def test_check_image_file(tmp_path: Path) -> None:
    good = nifti(tmp_path / "scan.nii.gz", image(0))
    info = check_image_file(good)
    assert info.shape == SHAPE and info.channels == 1 and np.allclose(info.spacing, [1.5, 1.5, 2.0])
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 10)
    with pytest.raises(DataValidationError, match="corrupt.nii.gz"):
        check_image_file(bad)


# -- the real training command --------------------------------------------------------------------------
TINY = TINY_TRAIN


def run_train(*args: str) -> subprocess.CompletedProcess:
    return run_bundle(TRAIN_CONFIG, *TINY, *args, check=False)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, n_labelled=2, n_unlabelled=1, n_val=1, n_test=1, shape=(40, 40, 12))
    return root


def write_datalist(datalist: dict, folder: Path) -> Path:
    path = folder / "datalist.json"
    path.write_text(json.dumps(datalist))  # absolute paths
    return path


@pytest.mark.slow
def test_cli_shows_the_validation_message(tiny_demo: Path, tmp_path: Path) -> None:
    datalist = load_datalist(tiny_demo / "datalist.json")
    datalist["validation"].append(datalist["training"][0])  # leak
    out = tmp_path / "run"
    proc = run_train(
        "--datalist_file",
        str(write_datalist(datalist, tmp_path)),
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(tmp_path / "m"),
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "data leak" in last and "demo_000.nii.gz" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (out / "checkpoint_last.pt").exists()  # nothing trained


@pytest.mark.slow
def test_cli_trains_supervised_when_the_unlabelled_set_is_empty(tiny_demo: Path, tmp_path: Path) -> None:
    datalist = load_datalist(tiny_demo / "datalist.json")
    datalist["unlabeled"] = []
    out = tmp_path / "run"
    proc = run_train(
        "--datalist_file",
        str(write_datalist(datalist, tmp_path)),
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(tmp_path / "m"),
        "--val_interval",
        "2",
        "--num_iterations",
        "2",
        "--labeled_batch_size",
        "2",
    )  # BatchNorm needs 2 rows when the 16^3 patch's bottleneck is 1^3
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "falls back to the supervised loss" in proc.stdout + proc.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r for r in log if "loss" in r]
    assert [r["iteration"] for r in losses] == [1, 2]
    assert all(r["loss_semi"] == 0.0 and r["loss"] == r["loss_sup"] for r in losses)
