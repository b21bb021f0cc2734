"""scripts/gpu_check.sh on a machine without a GPU (it says so and exits 77), and its wall-clock guard."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT, bundle_env

from benchmarks import gpu_check


def test_gpu_check_says_no_gpu_and_exits_77(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "gpu_check.json"
    env = dict(bundle_env(), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == gpu_check.EXIT_NO_GPU == 77, proc.stderr[-2000:]
    assert proc.stdout.startswith("no GPU:") and "nothing was run" in proc.stdout
    assert "Traceback" not in proc.stderr and not out.exists()
    assert time.monotonic() - start < 60


def test_run_step_keeps_the_budget():
    now = time.monotonic()
    assert gpu_check.run_step(["true"], now + 60, cap_s=10, min_s=1)["status"] == "passed"
    failed = gpu_check.run_step([sys.executable, "-c", "raise SystemExit(3)"], now + 60, cap_s=10, min_s=1)
    assert failed["status"] == "failed" and failed["returncode"] == 3
    skipped = gpu_check.run_step(["true"], time.monotonic() + 5, cap_s=10, min_s=30)
    assert skipped["status"] == "skipped" and "needs 30 s" in skipped["reason"]
    start = time.monotonic()
    slow = gpu_check.run_step(["sleep", "30"], time.monotonic() + 1.5, cap_s=60, min_s=0)
    assert slow["status"] == "timed out" and time.monotonic() - start < 10  # the deadline, not the step's cap


def test_summary_and_junit_counts(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite tests="6" failures="1" errors="0" skipped="2"></testsuite></testsuites>')
    assert gpu_check._junit_counts(junit) == {"tests": 6, "failures": 1, "errors": 0, "skipped": 2}
    figures = {
        "iteration_s": {"total": 0.2},
        "ratio_to_bare_same_setting": 1.03,
        "ratio_to_bare_reference": 0.4,
        "peak_memory_mb": 9000,
    }
    window = {"seconds_per_volume": 0.5, "windows": 63}
    result = {
        "gpu": {"gpu": "Test GPU", "memory_gib": 80, "driver": "1", "torch": "2", "cuda": "12", "cudnn": 9},
        "budget_s": 450,
        "wall_s": 100,
        "tests": {"tests": 6, "failures": 0, "errors": 0, "skipped": 0},
        "training": {"bf16": figures},
        "inference": {"fp32": {"paper": window, "default": dict(window, windows=12)}},
        "steps": {"training_fp16": {"status": "timed out"}},
    }
    text = "\n".join(gpu_check.summary_lines(result))
    assert "Test GPU" in text and "bf16" in text and "0.2000" in text and "1.030" in text
    assert "(63)" in text and "(12)" in text and "step training_fp16: timed out" in text
