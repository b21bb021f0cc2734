"""The average model (``average_model``, PLGDF+ candidate 8): a slower EMA of the student, validated beside it and
deployable by ``best_of_both``, that never changes the training."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from bundle.engine.checkpoint import TrainingState
from bundle.engine.errors import CheckpointError
from bundle.handlers.average_model import UpdateAverage
from bundle.method.teacher import EMATeacher
from tests.conftest import TINY_TRAIN, TRAIN_CONFIG, read_log, run_bundle, run_dirs


def test_update_average_is_the_ema_at_the_global_iteration():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    average = EMATeacher(net, decay=0.9)

    def step(engine, batch):
        with torch.no_grad():
            net.weight.add_(1.0)

    engine = Engine(step)
    engine.schedule_start = 10  # a resumed run: global iterations 11-13, where the decay cap applies
    UpdateAverage(average, net).attach(engine)
    expected, student = net.weight.detach().clone(), net.weight.detach().clone()
    engine.run([0, 0, 0], max_epochs=1)
    for t in (11, 12, 13):
        student = student + 1.0
        a = min(1 - 1 / (t + 1), 0.9)
        expected = a * expected + (1 - a) * student
    assert torch.allclose(average.model.weight, expected)
    assert not torch.allclose(average.model.weight, net.weight)


def test_update_average_off_or_missing():
    engine = Engine(lambda e, b: None)
    UpdateAverage(None, torch.nn.Linear(1, 1), enabled=False).attach(engine)  # off: nothing attached, no error
    with pytest.raises(ValueError, match="average_model is on but the run has no average network"):
        UpdateAverage(None, torch.nn.Linear(1, 1)).attach(engine)


def test_training_state_saves_restores_and_exports_the_average(tmp_path):
    net = torch.nn.Linear(2, 2)
    average = EMATeacher(net, decay=0.999)
    with torch.no_grad():
        average.model.weight.fill_(3.0)
    state = TrainingState(tmp_path, net, average=average, model_file=tmp_path / "models" / "model.pt")
    state.save()
    other = EMATeacher(net)
    TrainingState(tmp_path, net, average=other).load()
    assert torch.equal(other.model.weight, torch.full((2, 2), 3.0))
    state.export_model("average")
    assert torch.equal(torch.load(tmp_path / "models" / "model.pt", weights_only=True)["weight"], average.model.weight)
    with pytest.raises(ValueError, match="which must be one of"):
        TrainingState(tmp_path, net, model_file=tmp_path / "m.pt").export_model("average")
    TrainingState(tmp_path / "plain", net).save()
    with pytest.raises(CheckpointError, match="average"):
        TrainingState(tmp_path / "plain", net, average=EMATeacher(net)).load()


@pytest.mark.slow
def test_average_model_is_validated_and_deployed_without_changing_the_training(tiny_demo, tmp_path):
    """The preset adds a validated average model; with it and the teacher validated too, the losses, student and
    teacher are those of a run that validates neither, bit for bit (the side validations restore the random
    states), and with best_of_both ``model.pt`` holds the best-validating of student, teacher and average."""
    args = [*TINY_TRAIN, "--num_iterations", "8", "--val_interval", "2", "--lr", "0.05"]
    plain, avg = tmp_path / "plain", tmp_path / "avg"
    run_bundle(TRAIN_CONFIG, *args, *run_dirs(tiny_demo, plain))
    run_bundle(
        f"['{TRAIN_CONFIG}','configs/presets/average_model.json']", *args, *run_dirs(tiny_demo, avg),
        "--validate_teacher", "True", "--deploy_model", "best_of_both", "--average_decay", "0.5",
    )  # fmt: skip
    keys = ("iteration", "loss", "val_dice")
    logs = [read_log(out / "log.jsonl") for out in (plain, avg)]
    rows = [[{k: r[k] for k in keys if k in r} for r in log if any(k in r for k in keys[1:])] for log in logs]
    assert rows[0] == rows[1] and any("loss" in r for r in rows[0])
    last = [torch.load(out / "checkpoint_last.pt", weights_only=True) for out in (plain, avg)]
    for net in ("network", "teacher"):
        assert all(torch.equal(last[0][net][k], last[1][net][k]) for k in last[0][net])
    assert "average" not in last[0] and set(last[1]["average"]) == set(last[1]["network"])
    assert not all(torch.equal(last[1]["average"][k], last[1]["teacher"][k]) for k in last[1]["teacher"])
    curves = {
        m: {r["iteration"]: r[f"val_dice_{m}"] for r in logs[1] if f"val_dice_{m}" in r} for m in ("teacher", "average")
    }
    curves["student"] = {r["iteration"]: r["val_dice"] for r in logs[1] if "val_dice" in r}
    assert all(sorted(c) == [2, 4, 6, 8] for c in curves.values())
    assert (avg / "average_best.pt").is_file() and (avg / "average_best.json").is_file()
    best = torch.load(avg / "checkpoint_best.pt", weights_only=True)
    assert best["best_metric"] == pytest.approx(max(max(c.values()) for c in curves.values()))
    top = max(max(c.values()) for c in curves.values())
    assert best["deployed"] in {m for m, c in curves.items() if max(c.values()) == top}
    model = torch.load(avg / "models" / "model.pt", weights_only=True)
    source = best[{"student": "network", "teacher": "teacher", "average": "average"}[best["deployed"]]]
    assert all(torch.equal(model[k], source[k]) for k in model)


@pytest.mark.parametrize("on", [True, False])
def test_the_average_models_batchnorm_is_re_estimated_with_the_students(on):
    """train.json re-estimates the average model's BatchNorm statistics beside the student's (an average of weights
    over ~1000 iterations with averaged running statistics scored 4 Dice points lower on LA-lite validation)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN_CONFIG)
    parser["average_model"], parser["n_filters"] = on, 2
    handlers = parser["train"]["handlers"]
    at = next(i for i, h in enumerate(handlers) if h["_target_"].endswith("ReestimateBatchNorm"))
    also = parser.get_parsed_content(f"train#handlers#{at}#also")
    assert len(also) == int(on)
    if on:
        assert also[0] is parser.get_parsed_content("average").model
    validation = next(i for i, h in enumerate(handlers) if h["_target_"] == "ValidationHandler")
    assert at < validation
