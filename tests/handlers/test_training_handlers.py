"""Tests of bundle/handlers: each training handler on a small Ignite engine (one concern each)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from bundle.engine.checkpoint import TrainingState
from bundle.engine.errors import NonFiniteLossError
from bundle.engine.files import safe_load
from bundle.handlers.checkpoint import BestCheckpointSaver, ModelExporter, TrainingCheckpointSaver
from bundle.handlers.nan_guard import NonFiniteLossGuard
from bundle.handlers.resume import ResumeTraining
from bundle.handlers.run_log import RunLog, ValidationLog
from bundle.handlers.terms import loss_terms


def _trainer(losses: list[float]) -> Engine:
    """An engine whose iteration ``i`` outputs the loss terms ``losses[i - 1]``."""

    def step(engine: Engine, batch) -> dict:
        value = losses[engine.state.iteration - 1]
        return {"loss": torch.tensor(value), "loss_sup": torch.tensor(value / 2), "lambda": torch.tensor(0.5)}

    return Engine(step)


def _evaluator(values: list[float]) -> Engine:
    """An engine standing for the validation: each run sets ``val_mean_dice`` to the next value."""
    evaluator = Engine(lambda engine, batch: None)
    it = iter(values)

    @evaluator.on(Events.STARTED)
    def _metric(engine: Engine) -> None:
        engine.state.metrics = {"val_mean_dice": next(it)}

    return evaluator


def test_loss_terms_are_floats() -> None:
    terms = loss_terms({"loss": torch.tensor(1.5), "loss_sharp": torch.tensor(0.25), "image": torch.zeros(2)})
    assert terms == {"loss": 1.5, "loss_sharp": 0.25}


def test_nan_guard_names_the_term_and_the_iteration() -> None:
    engine = _trainer([1.0, math.nan])
    NonFiniteLossGuard().attach(engine)
    with pytest.raises(NonFiniteLossError, match="non-finite loss term loss_sup = nan at iteration 2; all terms"):
        engine.run([0, 0], max_epochs=1)


def test_run_log_and_validation_log(tmp_path: Path) -> None:
    state = TrainingState(tmp_path, torch.nn.Linear(2, 2))
    engine = _trainer([1.0, 2.0, 3.0])
    evaluator = _evaluator([0.5])
    optimizer = torch.optim.SGD(state.network.parameters(), lr=0.1)
    ResumeTraining(state).attach(engine)
    RunLog(str(tmp_path), optimizer=optimizer).attach(engine)
    ValidationLog(str(tmp_path), state).attach(evaluator)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), lambda e: evaluator.run([0]))
    engine.run([0, 0, 0], max_epochs=1)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert records[0] == {"iteration": 1, "loss": 1.0, "loss_sup": 0.5, "lambda": 0.5, "lr": 0.1}
    assert [r["iteration"] for r in records] == [1, 2, 2, 3] and records[2] == {"iteration": 2, "val_dice": 0.5}


def test_savers_last_best_and_model(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    state = TrainingState(tmp_path / "run", net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                          model_file=tmp_path / "models" / "model.pt")  # fmt: skip
    engine = _trainer([1.0] * 4)
    evaluator = _evaluator([0.5, 0.4])
    BestCheckpointSaver(state).attach(evaluator)
    engine.add_event_handler(Events.ITERATION_COMPLETED(every=2), lambda e: evaluator.run([0]))
    ResumeTraining(state).attach(engine)
    TrainingCheckpointSaver(state, periodic_interval=3).attach(engine)
    ModelExporter(state).attach(engine)
    engine.run([0, 0], max_epochs=2)  # epochs of 2 iterations, validation after each
    best, last = safe_load(state.best_path), safe_load(state.last_path)
    assert (best["iteration"], best["best_metric"], best["best_iteration"]) == (2, 0.5, 2)  # 0.4 did not improve
    assert (last["iteration"], last["best_metric"]) == (4, 0.5)
    assert sorted(p.name for p in state.output_dir.iterdir()) == [
        "checkpoint_best.pt",
        "checkpoint_iter_3.pt",
        "checkpoint_last.pt",
    ]
    model = safe_load(tmp_path / "models" / "model.pt")
    assert set(model) == {"weight", "bias"}


def test_model_exporter_without_validation(tmp_path: Path) -> None:
    state = TrainingState(tmp_path, torch.nn.Linear(2, 2), model_file=tmp_path / "model.pt")
    engine = _trainer([1.0])
    ModelExporter(state).attach(engine)
    engine.run([0], max_epochs=1)
    assert set(safe_load(tmp_path / "model.pt")) == {"weight", "bias"}


def test_resume_restores_the_state_and_position(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    state = TrainingState(tmp_path, net)
    engine = _trainer([1.0] * 4)
    ResumeTraining(state).attach(engine)
    TrainingCheckpointSaver(state).attach(engine)
    engine.run([0, 0], max_epochs=1)
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    torch.nn.init.zeros_(net.weight)
    resumed = _trainer([1.0] * 4)
    ResumeTraining(TrainingState(tmp_path, net), resume=True).attach(resumed)
    seen = []
    resumed.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
    resumed.run([0, 0], max_epochs=2)
    assert seen == [3, 4]  # continues after the saved iteration 2
    assert torch.equal(net.weight, saved["weight"])
