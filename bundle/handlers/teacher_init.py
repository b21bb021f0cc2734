"""Start the EMA teacher from a student that a handler has just loaded (MONAI Label, fine-tuning)."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

from bundle.engine.distributed import unwrap_model

__all__ = ["TeacherFromStudent"]


class TeacherFromStudent:
    """Copy the student's weights into the EMA teacher when a fresh run starts (``STARTED``, iteration 0).

    MONAI Label (and any fine-tuning set-up) inserts a ``CheckpointLoader`` that loads ``model.pt`` into the student
    when the trainer starts, after the teacher was copied from the randomly initialised student. Without this, the
    teacher would average the pretrained student with random weights. A resumed run (iteration > 0 once
    :class:`bundle.handlers.resume.ResumeTraining` restored it) keeps the teacher of its checkpoint; when this
    handler runs before the resume handler, that one overwrites the teacher anyway.

    Args:
        teacher: the :class:`bundle.method.teacher.EMATeacher`.
        network: the student (possibly DDP-wrapped).
    """

    def __init__(self, teacher: Any, network: Any):
        self.teacher = teacher
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.teacher is None or engine.state.iteration > 0:
            return
        self.teacher.load_state_dict(unwrap_model(self.network).state_dict())
