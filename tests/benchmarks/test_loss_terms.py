"""The loss-term benchmark: the baseline revision's losses load beside this checkout's, both sides are timed on the
same outputs and give the same total."""

from __future__ import annotations

import subprocess

import pytest
import torch
from conftest import REPO_ROOT

from benchmarks import loss_terms

pytestmark = pytest.mark.usefixtures("one_thread")


def _has_revision(revision: str) -> bool:
    probe = ["git", "-C", str(REPO_ROOT), "cat-file", "-e", f"{revision}:bundle/method/losses.py"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def baseline() -> str:
    if not _has_revision(loss_terms.BASELINE):
        pytest.skip("the baseline revision is not in this clone's history")
    return loss_terms.BASELINE


def test_outputs_are_shaped_as_the_students_pyramid():
    outputs = loss_terms.student_outputs(rows=8, patch=(16, 16, 8))
    assert len(outputs) == 4
    for out in outputs:
        assert out.shape == (8, 2, 16, 16, 8) and out.dtype == torch.bfloat16
        assert out.is_contiguous(memory_format=torch.channels_last_3d)


def test_baseline_losses_load_as_a_separate_module(baseline):
    module = loss_terms.load_losses(baseline)
    assert module is not loss_terms.current_losses
    assert not hasattr(module.SoftmaxPyramid, "two_class")  # the baseline predates the two-class closed forms


def test_bench_times_both_sides_on_the_same_terms(baseline):
    out = loss_terms.bench_loss_terms(baseline, patch=(16, 16, 8), warmup=1, repeats=2)
    assert out["baseline_s"] > 0 and out["current_s"] > 0
    assert out["ratio"] == pytest.approx(out["baseline_s"] / out["current_s"])
    assert len(out["times_s"]["baseline"]) == len(out["times_s"]["current"]) == 2
    assert out["values"]["current"] == pytest.approx(out["values"]["baseline"], rel=1e-5)
    assert out["settings"]["rows"] == 8 and out["settings"]["threads"] == 1
