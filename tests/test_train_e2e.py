"""End-to-end: the real ``python -m monai.bundle run`` training command, stopped and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.demo import generate_demo_dataset
from tests.conftest import REPO_ROOT, TINY_TRAIN

pytestmark = pytest.mark.slow

TINY = TINY_TRAIN


def run_bundle(*args: str, config: str = "configs/train.json", check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, n_labelled=2, n_unlabelled=2, n_val=1, n_test=1, shape=(40, 40, 12))
    return root


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    run_bundle(*common, "--num_iterations", "4")
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    for key in ("network", "teacher", "optimizer", "lr_scheduler", "rng", "unlabeled_loader", "best_metric"):
        assert key in ckpt, key
    assert (models / "model.pt").is_file()
    flat = torch.load(models / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in flat.values())
    # the teacher differs from the student (EMA), and both have the network's keys
    assert set(ckpt["teacher"]["model"].keys()) == set(ckpt["network"].keys()) if "model" in ckpt["teacher"] else True

    run_bundle(*common, "--num_iterations", "8", "--resume", "true")
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
