"""The Model Zoo's unit test of a bundle (model-zoo ci/unit_tests, e.g. test_spleen_ct_segmentation.py), for this one:
train -> evaluate (``evaluate.json`` merged over ``train.json``, the Zoo's convention) -> infer, each a
``ConfigWorkflow`` checked with ``check_properties`` and run as the Zoo's ``check_workflow`` runs it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from bundle.data.demo import generate_demo_dataset
from tests.conftest import REPO_ROOT

CONFIGS = REPO_ROOT / "configs"


def check_workflow(workflow: ConfigWorkflow, check_properties: bool = False) -> None:
    """model-zoo ci/unit_tests/utils.py: check_workflow."""
    workflow.initialize()
    if check_properties is True:
        check_result = workflow.check_properties()
        if check_result is not None and len(check_result) > 0:
            raise ValueError(f"check properties for workflow failed: {check_result}")
    workflow.run()
    workflow.finalize()


def _workflow(workflow_type: str, files: list[str], **override) -> ConfigWorkflow:
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=[str(CONFIGS / f) for f in files],
        logging_file=str(CONFIGS / "logging.conf"),
        meta_file=str(CONFIGS / "metadata.json"),
        **override,
    )


def _tiny(data: Path) -> dict:
    """The settings every workflow here shares: this checkout, the test data, a tiny network on the CPU."""
    return {
        "bundle_root": str(REPO_ROOT),
        "dataset_dir": str(data),
        "device": "$torch.device('cpu')",
        "n_filters": 2,
        "patch_size": [16, 16, 16],
        "spacing": [3.0, 3.0, 3.0],
    }


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_train_evaluate_infer_as_the_zoo_runs_them(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = tmp_path / "data"
    generate_demo_dataset(data, n_labelled=2, n_unlabelled=2, n_val=1, n_test=1, shape=(40, 40, 12))
    override = {
        **_tiny(data),
        "output_dir": str(tmp_path / "run"),
        "ckpt_dir": str(tmp_path / "models"),
        "eval_dir": str(tmp_path / "eval"),
        "labeled_batch_size": 1,
        "unlabeled_batch_size": 1,
        "num_iterations": 4,
        "val_interval": 2,
        "eval_figures": False,
    }
    check_workflow(_workflow("train", ["train.json"], **override), check_properties=True)
    model, last = tmp_path / "models" / "model.pt", tmp_path / "run" / "checkpoint_last.pt"
    before = (_sha(model), _sha(last), (tmp_path / "run" / "log.jsonl").read_text())

    # evaluation: the train config with evaluate.json merged over it evaluates models/model.pt and never trains
    check_workflow(_workflow("train", ["train.json", "evaluate.json"], **override), check_properties=True)
    assert (_sha(model), _sha(last), (tmp_path / "run" / "log.jsonl").read_text()) == before
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["info"]["section"] == "validation"
    assert 0.0 <= summary["metrics"]["dice"]["mean"] <= 1.0

    # inference with the trained model (evaluate.json over inference.json keeps working: tests/inference)
    infer = {**_tiny(data), "ckpt_path": str(model), "output_dir": str(tmp_path / "infer")}
    check_workflow(_workflow("infer", ["inference.json"], **infer), check_properties=True)
    assert len(list((tmp_path / "infer").glob("*_seg.nii.gz"))) == 1


@pytest.mark.slow
def test_inference_without_weights_as_the_zoo_tests_it(tmp_path, monkeypatch):
    """The Zoo's inference case disables the checkpoint loader (``handlers#0#_disabled_``) and has no model.pt."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = tmp_path / "data"
    generate_demo_dataset(data, n_labelled=1, n_unlabelled=0, n_val=0, n_test=2, shape=(40, 40, 12))
    override = {
        **_tiny(data),
        "output_dir": str(tmp_path / "infer"),
        "ckpt_path": str(tmp_path / "no_model.pt"),
        "handlers#0#_disabled_": True,  # do not load weights (the Zoo's own override)
    }
    check_workflow(_workflow("infer", ["inference.json"], **override), check_properties=True)
    assert len(list((tmp_path / "infer").glob("*_seg.nii.gz"))) == 2
