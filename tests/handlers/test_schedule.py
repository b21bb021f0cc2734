"""Tests of bundle/handlers/schedule.py and bundle/engine/model_record.py: a training round that starts from the
model of an earlier one (MONAI Label's next round) continues lambda(t), the lr schedule and the EMA where it stopped.

The runs are the real ``PLGDFTrainer`` with the handlers ``configs/train.json`` wires around it (and MONAI Label's
``CheckpointLoader`` listed first, as its ``/train`` inserts it), on a tiny network: a continuous run of 2N
iterations against a first round of N iterations followed by a second round from the first round's ``model.pt``.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.handlers import CheckpointLoader, LrScheduleHandler

from bundle.engine.checkpoint import TrainingState
from bundle.engine.files import safe_load
from bundle.engine.model_record import read_model_record, record_path, write_model_record
from bundle.handlers.checkpoint import ModelExporter, TrainingCheckpointSaver
from bundle.handlers.resume import ResumeTraining
from bundle.handlers.schedule import ContinueSchedule
from bundle.handlers.teacher_init import TeacherFromStudent
from bundle.method.mix import MixModule
from bundle.method.networks import PLGDFVNet
from bundle.method.rampup import ConsistencyRampUp
from bundle.method.teacher import EMATeacher
from bundle.method.trainer import PLGDFTrainer

N = 4  # iterations of a round
T = 12  # num_iterations of the schedule: ramp-up and poly lr over T, both still changing at 2N


def _run(tmp: Path, models: Path, iterations: int, load: bool, resume: bool = False) -> dict:
    """A PLGDF training of ``iterations`` iterations with ``models/model.pt`` as its model file; ``load`` inserts
    MONAI Label's ``CheckpointLoader`` of that file first. Returns per iteration the lambda, the lr of the optimizer
    step and the loss, the trainer and the training state."""
    torch.manual_seed(0)
    network = PLGDFVNet(in_channels=1, out_channels=2, n_filters=2, dropout=False)
    teacher = EMATeacher(network, decay=0.99)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=T, power=0.9)
    g = torch.Generator().manual_seed(1)
    x_l = torch.randn(1, 1, 16, 16, 16, generator=g)
    batch = {"image": x_l, "label": (x_l > 0.5).to(torch.uint8)}
    x_u = torch.randn(1, 1, 16, 16, 16, generator=g)
    state = TrainingState(tmp, network, teacher, optimizer, scheduler, model_file=models / "model.pt")
    handlers = [
        TeacherFromStudent(teacher, network),
        LrScheduleHandler(scheduler, epoch_level=False, print_lr=False),
        ResumeTraining(state, resume=resume),
        ContinueSchedule(state),
        TrainingCheckpointSaver(state),
        ModelExporter(state),
    ]
    if load:  # what MONAI Label's /train inserts at the front of train#handlers
        handlers.insert(0, CheckpointLoader(str(models / "model.pt"), {"model": network}, strict=False))
    trainer = PLGDFTrainer(
        device="cpu",
        max_epochs=iterations,
        epoch_length=1,
        train_data_loader=[batch],
        network=network,
        optimizer=optimizer,
        teacher=teacher,
        unlabeled_loader=itertools.repeat(x_u),
        rampup=ConsistencyRampUp(weight=1.0, length=T),
        mix=MixModule(alpha=0.75),
        n_copies=2,
        channels_last=False,
        train_handlers=handlers,
    )
    seen: dict = {"lambda": [], "lr": [], "loss": [], "t0": [], "ema": []}
    update = teacher.update
    teacher.update = lambda student, iteration: (seen["ema"].append(iteration), update(student, iteration))
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen["lr"].append(optimizer.param_groups[0]["lr"]))
    trainer.add_event_handler(Events.STARTED, lambda e: seen["t0"].append(e.schedule_start))

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine) -> None:
        seen["lambda"].append(float(engine.state.output["lambda"]))
        seen["loss"].append(float(engine.state.output["loss"]))

    torch.manual_seed(2)
    trainer.run()
    return {**seen, "trainer": trainer, "state": state}


@pytest.fixture(scope="module")
def continuous(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("continuous")
    return _run(tmp / "run", tmp / "models", 2 * N, load=False)


def test_a_fresh_round_is_the_start_of_a_continuous_run(continuous, tmp_path: Path) -> None:
    first = _run(tmp_path / "run", tmp_path / "models", N, load=False)
    assert first["t0"] == [0]
    for key in ("lambda", "lr", "loss"):
        assert first[key] == continuous[key][:N], key
    assert json.loads((tmp_path / "models" / "model.json").read_text())["iterations"] == N


def test_the_next_round_continues_lambda_lr_and_ema(continuous, tmp_path: Path, caplog) -> None:
    models = tmp_path / "models"
    _run(tmp_path / "round1", models, N, load=False)
    with caplog.at_level(logging.INFO, logger="plgdf"):
        second = _run(tmp_path / "round2", models, N, load=True)
    assert second["t0"] == [N]
    # the first iteration of the continued round has the lambda and lr of iteration N + 1 (t = N) of one run
    assert second["lambda"] == continuous["lambda"][N:]
    assert second["lr"] == continuous["lr"][N:]
    assert second["lambda"][0] == pytest.approx(ConsistencyRampUp(weight=1.0, length=T)(N), rel=1e-6)
    assert second["lambda"][0] > continuous["lambda"][N - 1]
    assert second["lr"][0] == pytest.approx(0.01 * (1 - N / T) ** 0.9, rel=1e-6)
    assert f"which had {N} iterations (model.json): the schedule continues at t = {N}" in caplog.text
    # the EMA continues too (its factor min(1 - 1/(iteration + 1), decay) is not restarted at 0.5)
    assert second["ema"] == continuous["ema"][N:] == list(range(N + 1, 2 * N + 1))
    assert read_model_record(models / "model.pt") == 2 * N
    assert safe_load(second["state"].last_path)["schedule_start"] == N


def test_a_fresh_training_beside_a_recorded_model_starts_at_zero(continuous, tmp_path: Path) -> None:
    """The command-line training with an earlier model.pt (and its record) in models/: not loaded, so t starts at 0."""
    models = tmp_path / "models"
    _run(tmp_path / "earlier", models, N, load=False)
    assert read_model_record(models / "model.pt") == N
    fresh = _run(tmp_path / "fresh", models, N, load=False)
    assert fresh["t0"] == [0]
    for key in ("lambda", "lr", "loss"):
        assert fresh[key] == continuous[key][:N], key


def test_a_model_without_record_starts_at_zero(continuous, tmp_path: Path) -> None:
    models = tmp_path / "models"
    _run(tmp_path / "round1", models, N, load=False)
    record_path(models / "model.pt").unlink()
    second = _run(tmp_path / "round2", models, N, load=True)
    assert second["t0"] == [0]
    assert second["lambda"] == continuous["lambda"][:N] and second["lr"] == continuous["lr"][:N]


def test_a_resumed_continued_round_keeps_its_start(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _run(tmp_path / "round1", models, N, load=False)
    _run(tmp_path / "round2", models, 2, load=True)  # stopped after 2 of its iterations
    resumed = _run(tmp_path / "round2", models, N, load=False, resume=True)
    assert resumed["t0"] == [N]  # restored from checkpoint_last.pt, not read again from model.json
    assert resumed["ema"] == [N + 3, N + 4]  # t = N + 2, N + 3
    assert resumed["lambda"] == pytest.approx([ConsistencyRampUp(weight=1.0, length=T)(t) for t in (N + 2, N + 3)])


def test_model_record_names_the_file_it_describes(tmp_path: Path, caplog) -> None:
    model = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, model)
    assert read_model_record(model) is None  # no record: nothing to say
    write_model_record(model, 650)
    assert read_model_record(model) == 650
    assert json.loads((tmp_path / "model.json").read_text())["model_file"] == "model.pt"
    torch.save({"w": torch.ones(2)}, model)  # replaced by another file
    with caplog.at_level(logging.WARNING, logger="plgdf"):
        assert read_model_record(model) is None
    assert f"{tmp_path / 'model.json'} describes another model.pt (its checksum differs" in caplog.text
    (tmp_path / "model.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="plgdf"):
        assert read_model_record(model) is None
    assert "is not a model record (JSONDecodeError" in caplog.text
    with pytest.raises(ValueError, match="iterations must be >= 0, got -1"):
        write_model_record(model, -1)
