"""The average model (``average_model`` in ``train.json``): a slower exponential moving average of the student than
the EMA teacher, kept for deployment only (a PLGDF+ candidate, issue #18).

The teacher's decay (0.99) averages the student over about the last 100 iterations; the average model's
(``average_decay``, 0.999) over about the last 1000, most of the low-learning-rate end of the polynomial schedule.
It never makes pseudo-labels and never feeds back into training: a run with it has the same losses, student and
teacher as one without. Its BatchNorm statistics are re-estimated on clean patches with the student's
(:class:`bundle.handlers.bn_reestimate.ReestimateBatchNorm`, ``also``), since the average of the student's running
statistics does not fit weights averaged over so many iterations. It is validated beside the student
(:class:`bundle.handlers.teacher_validation.TeacherValidation` with ``name="average"``) and can be deployed by
``deploy_model: best_of_both``.
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

__all__ = ["UpdateAverage"]


class UpdateAverage:
    """After every training iteration, one EMA step of ``average`` (an :class:`bundle.method.teacher.EMATeacher`)
    towards the student, at the same 1-based global iteration the trainer gives the teacher (so the first
    iterations are a plain running mean, then the decay caps it).

    Args:
        average: the average model (``None`` or ``enabled=False``: the handler does nothing).
        network: the student (possibly DDP-wrapped).
        enabled: ``False`` makes the handler do nothing. Defaults to True.
    """

    def __init__(self, average: Any, network: Any, enabled: bool = True) -> None:
        self.average, self.network, self.enabled = average, network, bool(enabled)

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        if self.average is None:
            raise ValueError("average_model is on but the run has no average network.")
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        t = int(getattr(engine, "schedule_start", 0)) + engine.state.iteration  # 1-based, as the teacher's update
        self.average.update(self.network, t)
