"""Silent misreading caught at the input check: intensities that do not fit the modality, empty labels, the same
case used twice, and held-out images copied into training under another name or format."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from bundle.data.checks import check_training_inputs
from bundle.engine.errors import DataValidationError

AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])


def _nii(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return str(path)


def _case(root: Path, name: str, image: np.ndarray, label: np.ndarray | None = None) -> dict:
    entry = {"image": _nii(root / f"{name}.nii.gz", image)}
    if label is not None:
        entry["label"] = _nii(root / f"{name}_label.nii.gz", label.astype(np.uint8))
    return entry


def _ct(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(-1000, 400, size=(16, 16, 16)).astype(np.int16)


def _label() -> np.ndarray:
    lab = np.zeros((16, 16, 16), np.uint8)
    lab[4:10, 4:10, 4:10] = 1
    return lab


def _check(lists, caplog, **kw):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="plgdf"):
        check_training_inputs(lists, num_classes=2, num_threads=1, **kw)
    return caplog.text


def test_intensities_that_do_not_fit_the_modality_are_noted(tmp_path, caplog):
    rng = np.random.default_rng(0)
    normalised = _case(tmp_path, "norm", rng.random((16, 16, 16)).astype(np.float32), _label())
    mr_like = _case(tmp_path, "mr", rng.integers(0, 800, size=(16, 16, 16)).astype(np.int16), _label())
    mask = _case(tmp_path, "mask", _label().astype(np.float32), _label())
    good = _case(tmp_path, "ct", _ct(rng), _label())
    text = _check({"training": [normalised, mr_like, mask, good]}, caplog, modality="ct")
    assert "norm.nii.gz: values 0" in text and "already normalised" in text and "set modality to 'none'" in text
    assert "mr.nii.gz: values 0 to" in text and "nothing below 0" in text
    assert "mask.nii.gz: image is binary" in text
    assert "ct.nii.gz" not in text  # a real CT range is not noted
    assert "mask.nii.gz: image is binary" in _check({"training": [mask, good]}, caplog, modality="mr")


def test_all_empty_labels_are_refused_and_one_is_noted(tmp_path, caplog):
    rng = np.random.default_rng(1)
    empty = [_case(tmp_path, f"e{i}", _ct(rng), np.zeros((16, 16, 16), np.uint8)) for i in range(2)]
    with pytest.raises(DataValidationError, match="all 2 training labels are empty"):
        check_training_inputs({"training": empty}, num_classes=2, num_threads=1)
    good = _case(tmp_path, "g", _ct(rng), _label())
    text = _check({"training": [empty[0], good]}, caplog)
    assert "e0_label.nii.gz: training label is empty" in text


def test_the_same_case_twice_and_content_leaks(tmp_path, caplog):
    rng = np.random.default_rng(2)
    a, b = _case(tmp_path, "a", _ct(rng), _label()), _case(tmp_path, "b", _ct(rng), _label())
    text = _check({"training": [a, b, dict(a)]}, caplog)
    assert "a.nii.gz (training) is the same file as" in text
    # the same voxels under another name and format, in validation and in test
    copy = tmp_path / "a_copy.mha"
    sitk.WriteImage(sitk.ReadImage(a["image"]), str(copy))
    val = {"image": str(copy), "label": a["label"]}
    with pytest.raises(DataValidationError, match=r"a\.nii\.gz: has the same image content as the 'validation' case"):
        check_training_inputs({"training": [a, b], "validation": [val]}, num_classes=2, num_threads=1)
    test = [{"image": _nii(tmp_path / "t.nii.gz", np.asarray(nib.load(b["image"]).dataobj))}]
    with pytest.raises(DataValidationError, match=r"b\.nii\.gz: has the same image content as the 'test' case"):
        check_training_inputs({"training": [a, b], "test": test}, num_classes=2, num_threads=2)
    unl = [{"image": _nii(tmp_path / "u.nii.gz", np.asarray(nib.load(b["image"]).dataobj))}]
    assert "identical in content to" in _check({"training": [a, b], "unlabeled": unl}, caplog)


@pytest.mark.slow
def test_all_empty_labels_stop_training_in_a_few_lines_and_change_nothing(tmp_path):
    from bundle.data.demo import generate_demo_dataset
    from tests.conftest import TINY_TRAIN, TRAIN_CONFIG, run_bundle, run_dirs

    data = tmp_path / "data"
    generate_demo_dataset(data, n_labelled=2, n_unlabelled=1, n_val=1, n_test=0, shape=(40, 40, 12))
    for label in (data / "labelsTr").iterdir():
        img = nib.load(str(label))
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine, img.header), str(label))
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint_last.pt").write_bytes(b"an earlier run")
    before = {p.name: p.read_bytes() for p in [*out.iterdir(), *(data / "labelsTr").iterdir()]}
    proc = run_bundle(TRAIN_CONFIG, *TINY_TRAIN, *run_dirs(data, out), "--num_iterations", "2", check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "all 2 training labels are empty" in proc.stderr.strip().splitlines()[-1]
    after = {p.name: p.read_bytes() for p in [*out.iterdir(), *(data / "labelsTr").iterdir()]}
    assert after == before
