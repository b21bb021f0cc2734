"""End-to-end: the real training command, stopped and resumed; MONAI Label training rounds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.data.demo import generate_demo_dataset
from tests.conftest import REPO_ROOT, TINY_TRAIN, TRAIN_CONFIG, bundle_env, read_log, run_bundle, run_dirs

pytestmark = pytest.mark.slow

TINY = TINY_TRAIN


def test_train_stop_resume(tiny_demo, tmp_path):
    out, models = tmp_path / "run", tmp_path / "models"
    common = [
        *TINY,
        "--dataset_dir",
        str(tiny_demo),
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(models),
        "--val_interval",
        "2",
    ]
    run_bundle(TRAIN_CONFIG, *common, "--num_iterations", "4")
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    for key in ("network", "teacher", "optimizer", "lr_scheduler", "rng", "unlabeled_loader", "best_metric"):
        assert key in ckpt, key
    assert (models / "model.pt").is_file()
    flat = torch.load(models / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in flat.values())
    # the teacher differs from the student (EMA), and both have the network's keys
    assert set(ckpt["teacher"]["model"].keys()) == set(ckpt["network"].keys()) if "model" in ckpt["teacher"] else True

    run_bundle(TRAIN_CONFIG, *common, "--num_iterations", "8", "--resume", "True")
    ckpt2 = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert ckpt2["iteration"] == 8
    log = read_log(out / "log.jsonl")
    its = [r["iteration"] for r in log if "loss" in r]
    assert its == list(range(1, 9)), its  # continued at 5, not restarted at 1
    vals = [r["iteration"] for r in log if "val_dice" in r]
    assert vals == [2, 4, 6, 8]
    for r in log:
        if "loss" in r:
            for key in ("loss_sup", "loss_semi", "loss_consis", "loss_sharp", "lambda", "lr", "pseudo_fg"):
                assert key in r


def test_bn_reestimation_changes_the_saved_statistics_not_the_training(tiny_demo, tmp_path):
    """``bn_reestimate_batches``: the same losses with and without it (its patches and dropout draws do not touch
    the training's random streams), different BatchNorm running statistics in ``model.pt``, the same weights."""
    runs = {}
    for batches in (0, 8):
        out, models = tmp_path / f"run{batches}", tmp_path / f"models{batches}"
        run_bundle(
            TRAIN_CONFIG, *TINY, *run_dirs(tiny_demo, out), "--ckpt_dir", str(models), "--num_iterations", "4",
            "--val_interval", "2", "--bn_reestimate_batches", str(batches),
        )  # fmt: skip
        losses = [(r["iteration"], r["loss"]) for r in read_log(out / "log.jsonl") if "loss" in r]
        runs[batches] = (losses, torch.load(models / "model.pt", weights_only=True))
    assert runs[0][0] == runs[8][0] and len(runs[0][0]) == 4
    plain, reestimated = runs[0][1], runs[8][1]
    stats = [k for k in plain if k.endswith(("running_mean", "running_var"))]
    assert stats and all(not torch.equal(plain[k], reestimated[k]) for k in stats)
    assert all(torch.equal(plain[k], reestimated[k]) for k in plain if k not in stats and "num_batches" not in k)


@pytest.mark.slow
def test_fewer_labelled_cases_than_the_batch_shrink_the_batch(tmp_path):
    """MONAI Label's first round after one final label: the shipped labeled_batch_size 2 with one labelled case."""
    data = tmp_path / "data"
    generate_demo_dataset(data, n_labelled=1, n_unlabelled=2, n_val=1, n_test=1, shape=(40, 40, 12))
    out = tmp_path / "run"
    i = TINY.index("--labeled_batch_size")
    tiny = [*TINY[:i], *TINY[i + 2 :]]
    proc = run_bundle(
        TRAIN_CONFIG, *tiny, *run_dirs(data, out), "--labeled_batch_size", "2", "--num_iterations", "2",
        "--val_interval", "2",
    )  # fmt: skip
    assert "only 1 labelled case(s) for labeled_batch_size 2: training with batches of 1" in proc.stdout + proc.stderr
    assert [r["iteration"] for r in read_log(out / "log.jsonl") if "loss" in r] == [1, 2]


# What MONAI Label 0.8.5's BundleTrainTask does for POST /train (monailabel/tasks/train/bundle.py): read train.json,
# insert a CheckpointLoader of models/model.pt first in train#handlers when that file exists ("pretrained"), and call
# monai.bundle.run with its overrides (max_epochs, the labelled pairs, the validation list, the handlers) and the
# request's run_id: 3D Slicer sends the trainer's option "run_id": "" unchanged, and with run_id "" MONAI resolves
# the whole config, so every id of train.json must resolve and none may evaluate or write anything by itself.
MONAILABEL_TRAIN = """
import json, os, sys
import monai.bundle
from monai.bundle import ConfigParser

config, model_pt, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
parser = ConfigParser()
parser.read_config(config)
handlers = parser.get("train#handlers", [])
if os.path.exists(model_pt):
    handlers.insert(0, {"_target_": "CheckpointLoader", "load_path": model_pt, "load_dict": {"model": "$@network"},
                        "strict": False})
monai.bundle.run(run_id="", init_id=None, final_id=None, config_file=config, **overrides,
                 **{"train#handlers": handlers})
"""


def _monailabel_train(studies: Path, out: Path, models: Path, epochs: int, **settings) -> list[dict]:
    """One MONAI Label training round of ``epochs`` engine epochs on a datastore folder (``studies``: images, final
    labels in ``labels/final``); the bundle root is ``<studies>/../bundle``. Returns the round's iteration records."""
    labelled = [
        {"image": str(studies / p.name), "label": str(p)} for p in sorted((studies / "labels" / "final").glob("*"))
    ]
    overrides = {
        "bundle_root": str(studies.parent / "bundle"), "output_dir": str(out), "ckpt_dir": str(models),
        "device": "cpu", "train#trainer#max_epochs": epochs, "train#dataset#data": labelled,
        "validate#dataset#data": [], **settings,
    }  # fmt: skip
    cmd = [sys.executable, "-c", MONAILABEL_TRAIN, str(REPO_ROOT / TRAIN_CONFIG), str(models / "model.pt")]
    proc = subprocess.run(
        [*cmd, json.dumps(overrides)], cwd=REPO_ROOT, env=bundle_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return [r for r in read_log(out / "log.jsonl") if "loss" in r]


@pytest.mark.slow
def test_monailabel_rounds_continue_the_schedule(tiny_demo, tmp_path):
    """A MONAI Label round from the previous round's model.pt continues lambda(t) and the lr where it stopped: its
    records equal those of the same iterations of one continuous run; the first round equals that run's start. The
    unlabelled set is the datastore's images without a final label, and nothing is written into the bundle root (no
    demo data: the data list of train.json is never read)."""
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for image in [*(tiny_demo / "imagesTr").glob("*.nii.gz"), *(tiny_demo / "imagesUnlabeled").glob("*.nii.gz")]:
        shutil.copy2(image, studies / image.name)
    for label in (tiny_demo / "labelsTr").glob("*.nii.gz"):
        shutil.copy2(label, studies / "labels" / "final" / label.name)
    settings = {
        "n_filters": 2, "patch_size": [16, 16, 16], "spacing": [3.0, 3.0, 3.0], "labeled_batch_size": 1,
        "unlabeled_batch_size": 1, "num_iterations": 8, "val_interval": 2, "lr_power": 0.9, "rampup_length": 8,
    }  # fmt: skip
    continuous = _monailabel_train(studies, tmp_path / "continuous", tmp_path / "m0", 4, **settings)
    round1 = _monailabel_train(studies, tmp_path / "round1", tmp_path / "models", 2, **settings)
    assert json.loads((tmp_path / "models" / "model.json").read_text())["iterations"] == 4
    round2 = _monailabel_train(studies, tmp_path / "round2", tmp_path / "models", 2, **settings)
    assert [r["iteration"] for r in continuous] == list(range(1, 9)) and len(round1) == len(round2) == 4
    assert all(r["loss_semi"] > 0 for r in continuous)  # the unlabelled studies are used
    assert [(r["loss"], r["lambda"], r["lr"]) for r in round1] == [
        (r["loss"], r["lambda"], r["lr"]) for r in continuous[:4]
    ]
    assert [(r["lambda"], r["lr"]) for r in round2] == [(r["lambda"], r["lr"]) for r in continuous[4:]]
    assert json.loads((tmp_path / "models" / "model.json").read_text())["iterations"] == 8
    assert not (tmp_path / "bundle").exists()
