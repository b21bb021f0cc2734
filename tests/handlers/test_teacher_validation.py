"""The EMA teacher validated beside the student (``validate_teacher``), and the better of the two deployed
(``deploy_model: best_of_both``, a PLGDF+ candidate): ``model.pt`` and ``checkpoint_best.pt`` follow the best
validation Dice of either network and record which."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_TRAIN, TRAIN_CONFIG, read_log, run_bundle, run_dirs


@pytest.mark.slow
def test_best_of_student_and_teacher_is_deployed(tiny_demo, tmp_path):
    out = tmp_path / "run"
    args = [*TINY_TRAIN, *run_dirs(tiny_demo, out), "--num_iterations", "12", "--val_interval", "2", "--lr", "0.05"]
    run_bundle(TRAIN_CONFIG, *args, "--validate_teacher", "True", "--deploy_model", "best_of_both")
    log = read_log(out / "log.jsonl")
    student = {r["iteration"]: r["val_dice"] for r in log if "val_dice" in r}
    teacher = {r["iteration"]: r["val_dice_teacher"] for r in log if "val_dice_teacher" in r}
    assert sorted(student) == sorted(teacher) == [2, 4, 6, 8, 10, 12]
    best = torch.load(out / "checkpoint_best.pt", weights_only=True)
    best_student, best_teacher = max(student.values()), max(teacher.values())
    assert best["best_metric"] == pytest.approx(max(best_student, best_teacher))
    assert best["deployed"] == ("teacher" if best_teacher > best_student else "student")
    model = torch.load(out / "models" / "model.pt", weights_only=True)
    source = best["teacher"] if best["deployed"] == "teacher" else best["network"]
    assert all(torch.equal(model[k], source[k]) for k in model)


@pytest.mark.slow
def test_deploying_the_teacher_needs_its_validation(tiny_demo, tmp_path):
    proc = run_bundle(
        TRAIN_CONFIG, *TINY_TRAIN, *run_dirs(tiny_demo, tmp_path / "r"), "--num_iterations", "2",
        "--deploy_model", "best_of_both", check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "needs the teacher validated: set validate_teacher True" in proc.stderr


@pytest.mark.slow
def test_plgdf_plus_preset_changes_what_is_deployed_not_the_training(tiny_demo, tmp_path):
    """configs/presets/plgdf_plus.json over a run that already validates the teacher (LA-lite does): the same losses
    and the same final student and teacher, bit for bit. So the campaign's plgdf runs, scored by the model this
    preset would deploy (``best_of_both``), are the plgdf_plus runs of the same commit (docs/results.md)."""
    args = [*TINY_TRAIN, "--num_iterations", "8", "--val_interval", "2", "--lr", "0.05", "--validate_teacher", "True"]
    plain, plus = tmp_path / "plain", tmp_path / "plus"
    run_bundle(TRAIN_CONFIG, *args, *run_dirs(tiny_demo, plain))
    run_bundle(f"['{TRAIN_CONFIG}','configs/presets/plgdf_plus.json']", *args, *run_dirs(tiny_demo, plus))
    keys = ("iteration", "loss", "val_dice", "val_dice_teacher")
    rows = [[{k: r[k] for k in keys if k in r} for r in read_log(out / "log.jsonl")] for out in (plain, plus)]
    assert rows[0] == rows[1] and any("loss" in r for r in rows[0])
    last = [torch.load(out / "checkpoint_last.pt", weights_only=True) for out in (plain, plus)]
    for net in ("network", "teacher"):
        assert all(torch.equal(last[0][net][k], last[1][net][k]) for k in last[0][net])
    deployed = torch.load(plus / "checkpoint_best.pt", weights_only=True)["deployed"]
    assert deployed in ("student", "teacher")
