"""End-to-end: the real ``python -m monai.bundle run`` training command, stopped and resumed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bundle.data.demo import generate_demo_dataset
from tests.conftest import TINY_TRAIN, TRAIN_CONFIG, read_log, run_bundle, run_dirs

pytestmark = pytest.mark.slow

TINY = TINY_TRAIN


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, n_labelled=2, n_unlabelled=2, n_val=1, n_test=1, shape=(40, 40, 12))
    return root


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
