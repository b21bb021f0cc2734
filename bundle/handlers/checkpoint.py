"""Checkpoint savers of the training run, around one shared :class:`bundle.engine.checkpoint.TrainingState`.

- :class:`TrainingCheckpointSaver` (trainer): ``checkpoint_last.pt`` at the end of every engine epoch (after
  validation) and of the run, and ``checkpoint_iter_<N>.pt`` every ``periodic_interval`` iterations;
- :class:`BestCheckpointSaver` (``validate#handlers``, as the Model Zoo's ``CheckpointSaver`` with
  ``save_key_metric``): ``checkpoint_best.pt`` and ``model.pt`` when the validation metric improves;
- :class:`ModelExporter` (trainer): ``model.pt`` from the last student when no validation ran.

Nothing is saved after a run stopped by a signal (:class:`bundle.handlers.signals.StopOnSignal` saved it) and
nothing on an error: the last checkpoint stays the last good state.
"""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

from bundle.engine.checkpoint import TrainingState
from bundle.handlers.terms import finite_output

__all__ = ["TrainingCheckpointSaver", "BestCheckpointSaver", "ModelExporter"]


def _stopped_by_signal(engine: Engine) -> bool:
    return getattr(engine.state, "stop_signal", None) is not None


class TrainingCheckpointSaver:
    """Save the full training state: ``checkpoint_last.pt`` after every engine epoch (list it after MONAI's
    ``ValidationHandler`` so that the saved state knows the best metric) and at the end of the run, and
    ``checkpoint_iter_<N>.pt`` every ``periodic_interval`` iterations (when the loss is finite).

    Args:
        state: the run's :class:`TrainingState`.
        periodic_interval: iterations between kept ``checkpoint_iter_<N>.pt``; 0 disables. Defaults to 0.
    """

    def __init__(self, state: TrainingState, periodic_interval: int = 0):
        self.state = state
        self.periodic_interval = int(periodic_interval)

    def attach(self, engine: Engine) -> None:
        self.state.trainer = engine
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._save)
        engine.add_event_handler(Events.COMPLETED, self._save)

    def _iteration_completed(self, engine: Engine) -> None:
        it = engine.state.iteration
        if _stopped_by_signal(engine) or self.periodic_interval <= 0 or it % self.periodic_interval:
            return
        if finite_output(engine.state.output):
            self.state.save(self.state.iteration_path(it))

    def _save(self, engine: Engine) -> None:
        if not _stopped_by_signal(engine):
            self.state.save()


class BestCheckpointSaver:
    """In ``validate#handlers``: when the validation metric improves, record it in the training state and save
    ``checkpoint_best.pt`` (the full state) and ``model.pt`` (the student for inference).

    Args:
        state: the run's :class:`TrainingState` (its ``best_metric`` survives a resume).
        metric_name: the evaluator's metric that defines "best" (higher is better). Defaults to ``"val_mean_dice"``.
    """

    def __init__(self, state: TrainingState, metric_name: str = "val_mean_dice"):
        self.state = state
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, evaluator: Engine) -> None:
        value = evaluator.state.metrics.get(self.metric_name)
        if value is None or not math.isfinite(float(value)) or float(value) <= self.state.best_metric:
            return
        self.state.best_metric = float(value)
        trainer = self.state.trainer
        self.state.best_iteration = trainer.state.iteration if trainer else -1
        self.state.deployed = "student"
        self.state.save(self.state.best_path)
        self.state.export_model("student")


class ModelExporter:
    """At the end of a run in which no validation ran (no best model), write ``model.pt`` from the last student.

    Args:
        state: the run's :class:`TrainingState`.
    """

    def __init__(self, state: TrainingState):
        self.state = state

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not _stopped_by_signal(engine) and self.state.best_iteration < 0:
            self.state.export_model()
