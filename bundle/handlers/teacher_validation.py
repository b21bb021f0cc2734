"""Validation of the EMA teacher during training, beside the student's (``validate_teacher`` in ``train.json``),
and of the average model (``average_model``: a slower EMA of the student, kept for deployment only).

The teacher is a smoothed copy of the student and often scores higher; scoring it at every validation lets a
run keep the teacher's own best-on-validation weights (``teacher_best.pt``) and log its curve
(``val_dice_teacher`` in ``log.jsonl``), so that the deployed model can be chosen on validation. The same handler,
``name="average"``, does this for the average model (``average_best.pt``, ``val_dice_average``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from bundle.engine.distributed import is_rank0
from bundle.engine.files import save_atomic, write_json_atomic
from bundle.engine.rng import rng_state, set_rng_state
from bundle.handlers.run_log import append_record

__all__ = ["TeacherValidation"]

logger = logging.getLogger(__name__)


class TeacherValidation:
    """After every run of the student's validator, run ``teacher_evaluator`` (the same data, inferer and metric on
    the teacher's network), log its key metric and keep the teacher's best weights. The global random states
    (Python, NumPy, torch) are restored after that evaluation, so validating the teacher (or the average model)
    leaves the training's random stream, and so its losses and weights, as they are without it.

    Files in ``output_dir`` (rank 0 only, atomic): ``<name>_best.pt`` (the network's flat state_dict, plain
    tensors) and ``<name>_best.json`` (``{"metric", "iteration"}``) whenever its metric improves; a line
    ``{"iteration": t, "val_dice_<name>": d}`` appended to ``log_file`` after every validation. A resumed run
    (iteration > 0 when the trainer starts, so list this handler after ``ResumeTraining``) continues from
    the best metric in ``<name>_best.json``; a new run starts from minus infinity.

    Args:
        validator: the student's evaluator; the teacher is scored when it completes.
        teacher_evaluator: an evaluator whose network is the teacher's (``@teacher.model``).
        teacher: the :class:`bundle.method.teacher.EMATeacher`; its train/eval mode is restored after the
            evaluation.
        output_dir: folder of the files above.
        enabled: ``False`` makes the handler do nothing. Defaults to True.
        metric_name: the evaluator's key metric. Defaults to ``"val_mean_dice"``.
        log_file: JSON-lines log in ``output_dir``. Defaults to ``"log.jsonl"`` (the run log).
        state: the run's :class:`bundle.engine.checkpoint.TrainingState`; needed with ``deploy``.
        deploy: deploy the best of the validated networks (``deploy_model: "best_of_both"``): when this one's
            metric beats the best so far of any, ``checkpoint_best.pt`` (recording ``deployed: <name>``) and
            ``model.pt`` (its weights) are written; the student's best-model saver does the same the other
            way round. Defaults to False (``model.pt`` is always the student).
        name: ``"teacher"`` or ``"average"`` (the :class:`bundle.engine.checkpoint.TrainingState` member, and the
            stem of the files and of the log key above). Defaults to ``"teacher"``.
    """

    #: the train.json setting that switches each validation on
    SETTINGS = {"teacher": "validate_teacher", "average": "average_model"}

    def __init__(
        self,
        validator: Engine,
        teacher_evaluator: Engine,
        teacher: Any,
        output_dir: str | os.PathLike,
        enabled: bool = True,
        metric_name: str = "val_mean_dice",
        log_file: str = "log.jsonl",
        state: Any = None,
        deploy: bool = False,
        name: str = "teacher",
    ) -> None:
        if name not in self.SETTINGS:
            raise ValueError(f"name must be one of {list(self.SETTINGS)}, got {name!r}.")
        self.name, self.setting = name, self.SETTINGS[name]
        if deploy and not enabled:
            raise ValueError(f"deploy_model 'best_of_both' needs the {name} validated: set {self.setting} True.")
        if deploy and state is None:
            raise ValueError(f"deploying the {name} needs the run's TrainingState (state).")
        self.state, self.deploy = state, bool(deploy)
        self.validator, self.teacher_evaluator, self.teacher = validator, teacher_evaluator, teacher
        self.output_dir = Path(output_dir)
        self.enabled = bool(enabled)
        self.metric_name = metric_name
        self.log_path = self.output_dir / log_file
        self.best_metric = -math.inf
        self.best_iteration = -1
        self.trainer: Engine | None = None

    @property
    def best_path(self) -> Path:
        return self.output_dir / f"{self.name}_best.pt"

    @property
    def record_path(self) -> Path:
        return self.output_dir / f"{self.name}_best.json"

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if self.teacher is None:
            raise ValueError(f"{self.setting} is on but the run has no {self.name} network.")
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        self.validator.add_event_handler(Events.COMPLETED, self._validate_teacher)

    def _started(self, engine: Engine) -> None:
        self.best_metric, self.best_iteration = -math.inf, -1
        if engine.state.iteration > 0 and self.record_path.is_file():  # resumed: keep the earlier best
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
            self.best_metric, self.best_iteration = float(record["metric"]), int(record["iteration"])

    def _validate_teacher(self, _: Engine) -> None:
        model = self.teacher.model
        was_training = model.training
        saved = rng_state()  # the evaluation draws random numbers (its data loader's seed): training must not see it
        try:
            self.teacher_evaluator.run()
        finally:
            model.train(was_training)
            set_rng_state(saved)
        value = self.teacher_evaluator.state.metrics.get(self.metric_name)
        if value is None:
            return
        value = float(value)
        it = self.trainer.state.iteration if self.trainer is not None else -1
        if self.deploy and math.isfinite(value) and value > self.state.best_metric:
            self.state.best_metric, self.state.best_iteration, self.state.deployed = value, it, self.name
            self.state.save(self.state.best_path)
            self.state.export_model(self.name)  # (saving: rank 0 only)
        if not is_rank0():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        append_record(self.log_path, {"iteration": it, f"val_dice_{self.name}": value})
        improved = math.isfinite(value) and value > self.best_metric
        if improved:
            self.best_metric, self.best_iteration = value, it
            save_atomic({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, self.best_path)
            write_json_atomic(self.record_path, {"metric": value, "iteration": it}, indent=None)
        logger.info(
            f"iteration {it}: {self.name} validation {self.metric_name} {value:.4f} "
            f"(best {self.best_metric:.4f} at {self.best_iteration})"
        )
