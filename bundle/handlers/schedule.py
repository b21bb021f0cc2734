"""Continue lambda(t) and the learning-rate schedule when a training starts from an earlier training's model."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from bundle.engine.checkpoint import TrainingState
from bundle.engine.distributed import unwrap_model
from bundle.engine.files import safe_load
from bundle.engine.model_record import read_model_record, record_path

__all__ = ["ContinueSchedule"]

logger = logging.getLogger("plgdf")


def _holds(network: torch.nn.Module, model_file: Path) -> bool:
    """Whether ``network``'s weights are exactly those saved in ``model_file`` (a flat state_dict)."""
    saved = safe_load(model_file)
    current = network.state_dict()
    return (
        isinstance(saved, Mapping)
        and saved.keys() == current.keys()
        and all(torch.equal(v.cpu(), saved[k]) for k, v in current.items())
    )


class ContinueSchedule:
    """At ``STARTED``: when the student holds the weights of ``model.pt`` (MONAI Label's next training round: its
    ``CheckpointLoader``, listed first, has just loaded ``models/model.pt``), continue the schedule from the
    iterations that model had, read from its record ``models/model.json`` (:mod:`bundle.engine.model_record`).

    The trainer's ``schedule_start`` is set to those ``N`` iterations, so lambda(t), the L_semi warm-up and the EMA
    count from ``t = N``, and the lr scheduler is stepped ``N`` times, so the learning rate is that of iteration
    ``N`` of one continuous run. The SGD momentum and the teacher start afresh from the loaded weights. Nothing
    changes for a fresh training (the student does not hold ``model.pt``'s weights, or ``model.pt`` has no record)
    nor for a resumed one (iteration > 0: its checkpoint holds ``schedule_start``): list it after the resume
    handler.

    Args:
        state: the run's :class:`TrainingState` (its student, lr scheduler, optimizer and ``model_file``).
    """

    def __init__(self, state: TrainingState):
        self.state = state

    def attach(self, engine: Engine) -> None:
        self.state.trainer = engine
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        model_file = self.state.model_file
        if engine.state.iteration > 0 or model_file is None:
            return
        iterations = read_model_record(model_file)
        if not iterations or not _holds(unwrap_model(self.state.network), model_file):
            return
        engine.schedule_start = iterations
        scheduler = self.state.lr_scheduler
        if scheduler is not None:
            with warnings.catch_warnings():  # "lr_scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore", UserWarning)
                for _ in range(iterations):
                    scheduler.step()
        rampup = getattr(engine, "rampup", None)
        optimizer = self.state.optimizer
        lrs = [float(g["lr"]) for g in optimizer.param_groups] if optimizer is not None else []
        logger.info(
            f"training from {model_file}, which had {iterations} iterations ({record_path(model_file).name}): the "
            f"schedule continues at t = {iterations}"
            + (f", lambda {rampup(iterations):.4f}" if rampup is not None else "")
            + (f", lr {lrs[0]:.4g}" if lrs else "")
        )
        if lrs and all(lr == 0 for lr in lrs):
            logger.warning(
                f"the learning rate is 0 from iteration {iterations} on: the lr schedule ended (num_iterations); "
                "raise num_iterations in configs/train.json to train further"
            )
