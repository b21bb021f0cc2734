"""Shared test helpers: where the real data lives, and a tiny-volume factory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLGDF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_FIXTURES = SHARED_DATA.parent / "fixtures"
SHARED_SCHEMA = SHARED_DATA.parent / "monai" / "meta_schema_20240725.json"


def shared_path(*parts: str) -> Path:
    """Path below ``../shared/data``; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


# The smallest settings of the real training command used by the end-to-end tests.
TINY_TRAIN = [
    "--n_filters", "2", "--patch_size", "[16,16,16]", "--spacing", "[3.0,3.0,3.0]",
    "--labeled_batch_size", "1", "--unlabeled_batch_size", "1", "--print_interval", "1",
]  # fmt: skip

TRAIN_CONFIG = "configs/train.json"


def bundle_env() -> dict[str, str]:
    """Environment of a bundle subprocess: the repo importable (bundle.md), one thread, plain error output."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    env.pop("PLGDF_TRACEBACK", None)
    return env


def bundle_cmd(config: str, *args: str) -> list[str]:
    """``python -m monai.bundle run --config_file <config> <args>``."""
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *map(str, args)]


def run_bundle(config: str, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a real bundle command from the repo root; with ``check`` a failure shows the command's output."""
    cmd = bundle_cmd(config, *args)
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=bundle_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def run_dirs(dataset: Path, out: Path) -> list[str]:
    """Training arguments that keep a test run's data, outputs and model inside its own folders."""
    return ["--dataset_dir", str(dataset), "--output_dir", str(out), "--ckpt_dir", str(out / "models")]


def read_log(path: Path) -> list[dict]:
    """Records of a run's ``log.jsonl`` (``path`` is the file or the run's output folder)."""
    path = path / "log.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def config_content(name: str, config: str = "configs/inference.json", **overrides):
    """The parsed id ``name`` of a bundle config with top-level ``overrides``, e.g. the preprocessing the bundle runs
    (``config_content("preprocessing", spacing=[2, 2, 2])``: inference.json's, which keeps the meta data)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / config))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content(name)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    """A tiny demo dataset (2 labelled, 2 unlabelled, 1 validation, 1 test case of 40x40x12) for training tests."""
    from bundle.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(root, n_labelled=2, n_unlabelled=2, n_val=1, n_test=1, shape=(40, 40, 12))
    return root


@pytest.fixture
def one_thread():
    """Run the test on one torch thread (timings and probes that must not depend on the machine's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: shape and affine of the small NIfTI volumes of the input-check and case-report tests
SMALL_SHAPE = (12, 10, 8)
SMALL_AFFINE = np.diag([1.5, 1.5, 2.0, 1.0])


def nifti(path: Path, array: np.ndarray, affine: np.ndarray = SMALL_AFFINE) -> str:
    """Save ``array`` as a NIfTI file at ``path`` (folders created); returns the path as text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def noise_image(seed: int = 0, shape=SMALL_SHAPE) -> np.ndarray:
    """A float32 volume of Gaussian noise (sd 100), reproducible from ``seed``."""
    return np.random.default_rng(seed).normal(0.0, 100.0, shape).astype(np.float32)
