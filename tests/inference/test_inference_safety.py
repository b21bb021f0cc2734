"""Inference never writes over its inputs: an output path equal to an input (directly, through a symbolic or hard
link, or through a linked folder) or two cases writing one file stop the run before anything is computed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import run_bundle

from bundle.engine.errors import DataValidationError
from bundle.inference.inputs import list_inputs
from bundle.inference.writers import check_output_paths
from bundle.method.networks import PLGDFVNet


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scans(tmp_path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        data = rng.integers(-200, 200, size=(20, 20, 20)).astype(np.int16)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(folder / f"{name}.nii.gz"))
    return folder


def test_output_in_the_input_folder_without_postfix_is_refused(scans):
    cases = list_inputs(scans)
    with pytest.raises(DataValidationError, match=r"a\.nii\.gz.*is the input file.*output_postfix"):
        check_output_paths(cases, scans, postfix="")
    assert check_output_paths(cases, scans, postfix="seg") == cases  # a_seg.nii.gz beside a.nii.gz is fine
    assert check_output_paths(cases, scans, postfix="", enabled=False) == cases  # masks not saved


def test_linked_outputs_are_refused(scans, tmp_path):
    cases = list_inputs(scans)
    linked_folder = tmp_path / "linked"
    linked_folder.symlink_to(scans, target_is_directory=True)
    with pytest.raises(DataValidationError, match="is the input file"):
        check_output_paths(cases, linked_folder, postfix="")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_seg.nii.gz").symlink_to(scans / "a.nii.gz")
    with pytest.raises(DataValidationError, match="is the input file"):
        check_output_paths(cases, out, postfix="seg")
    (out / "a_seg.nii.gz").unlink()
    os.link(scans / "b.nii.gz", out / "b_seg.nii.gz")
    with pytest.raises(DataValidationError, match=r"b\.nii\.gz"):
        check_output_paths(cases, out, postfix="seg")


def test_two_cases_writing_one_file_are_refused(scans, tmp_path):
    cases = [{"image": str(scans / "a.nii.gz"), "case_id": "x"}, {"image": str(scans / "b.nii.gz"), "case_id": "x"}]
    with pytest.raises(DataValidationError, match="would both be written"):
        check_output_paths(cases, tmp_path / "out")


@pytest.mark.slow
def test_inference_command_refuses_and_changes_nothing(scans, tmp_path):
    model = tmp_path / "model.pt"
    torch.save(PLGDFVNet(1, 2, n_filters=2).state_dict(), model)
    before = {p.name: _sha(p) for p in scans.iterdir()}
    proc = run_bundle(
        "configs/inference.json",
        "--input",
        str(scans),
        "--output_dir",
        str(scans),
        "--output_postfix",
        "",
        "--ckpt_path",
        str(model),
        "--n_filters",
        "2",
        "--patch_size",
        "[16,16,16]",
        check=False,
    )
    assert proc.returncode != 0
    noise = ("UserWarning", "workflow = create_workflow(", " - INFO - ")  # MONAI's config warning, log lines
    err = [line for line in proc.stderr.strip().splitlines() if not any(n in line for n in noise)]
    assert "Traceback" not in proc.stderr and len(err) <= 2, proc.stderr[-2000:]
    assert "is the input file" in err[-1] and "output_postfix" in err[-1]
    assert {p.name: _sha(p) for p in scans.iterdir()} == before
