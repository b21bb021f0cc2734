"""The state a training checkpoint holds, and where checkpoints and ``model.pt`` go.

:class:`TrainingState` is shared by the checkpoint handlers of ``configs/train.json`` (``bundle.handlers``): the
resume handler loads it, the savers write it, the best-model saver in ``validate#handlers`` updates its best metric.
A checkpoint is a dict of plain tensors and numbers (it loads with ``weights_only=True``):

``network`` (student ``state_dict``), ``iteration``, ``epoch``, ``schedule_start`` (the iterations the student had
before this run: :class:`bundle.handlers.schedule.ContinueSchedule`), ``best_metric``, ``best_iteration``, ``deployed``
(``"student"``, ``"teacher"`` or ``"average"``: which network ``model.pt`` holds), ``rng`` (Python,
NumPy, torch), ``teacher``, ``average`` (with ``average_model``), ``optimizer``, ``lr_scheduler``,
``unlabeled_loader`` (the stream position) when present, and ``transforms_rng`` (the MONAI random transforms' own
states). ``model.pt`` is the deployed network's flat ``state_dict``; ``model.json`` beside it records its training
iterations (:mod:`bundle.engine.model_record`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine

from bundle.engine.distributed import is_rank0, unwrap_model
from bundle.engine.errors import CheckpointError
from bundle.engine.files import check_state_dict, remove_stale_temporaries, safe_load, save_atomic
from bundle.engine.model_record import record_path, write_model_record
from bundle.engine.rng import numpy_state, numpy_state_tuple, rng_state, set_rng_state, transform_random_states

__all__ = ["TrainingState"]

logger = logging.getLogger("plgdf")


def _dataset_transform(loader: Any) -> Any:
    """``loader.dataset.transform`` of a DataLoader, or of the DataLoader inside an ``EndlessLoader``."""
    loader = getattr(loader, "loader", loader)
    return getattr(getattr(loader, "dataset", None), "transform", None)


class TrainingState:
    """The full training state (student, teacher, optimizer, lr scheduler, engine position, unlabelled stream
    position, RNG states) and the best validation metric so far.

    Args:
        output_dir: folder of ``checkpoint_last.pt``, ``checkpoint_best.pt``, ``checkpoint_iter_<N>.pt``.
        network: the student (possibly DDP-wrapped).
        teacher: the :class:`bundle.method.teacher.EMATeacher`. Defaults to None.
        average: a slower EMA of the student kept for deployment only (``average_model``), saved and restored like
            the teacher. Defaults to None.
        optimizer: saved and restored. Defaults to None.
        lr_scheduler: saved and restored. Defaults to None.
        unlabeled_loader: object with ``state_dict``/``load_state_dict`` (the stream position). Defaults to None.
        model_file: where the flat student state_dict for inference goes. Defaults to None (not written).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        teacher: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        unlabeled_loader: Any = None,
        model_file: str | os.PathLike | None = None,
        average: Any = None,
    ):
        self.output_dir = Path(output_dir)
        self.network, self.teacher, self.optimizer, self.lr_scheduler = network, teacher, optimizer, lr_scheduler
        self.unlabeled_loader = unlabeled_loader
        self.average = average
        self.model_file = Path(model_file) if model_file else None
        self.best_metric, self.best_iteration = -math.inf, -1
        #: which network ``model.pt`` and ``checkpoint_best.pt`` deploy: "student", "teacher" or "average"
        self.deployed = "student"
        #: the trainer, set by the handlers that attach to it
        self.trainer: Engine | None = None

    @property
    def last_path(self) -> Path:
        return self.output_dir / "checkpoint_last.pt"

    @property
    def best_path(self) -> Path:
        return self.output_dir / "checkpoint_best.pt"

    def iteration_path(self, iteration: int) -> Path:
        return self.output_dir / f"checkpoint_iter_{iteration}.pt"

    @property
    def schedule_start(self) -> int:
        """The iterations the student had before this run (the trainer's ``schedule_start``; 0 for a fresh run)."""
        return int(getattr(self.trainer, "schedule_start", 0))

    def schedule_iteration(self) -> int:
        """The training iterations the current weights have had: ``schedule_start`` + the trainer's iteration."""
        return self.schedule_start + (self.trainer.state.iteration if self.trainer else 0)

    def state_dict(self) -> dict:
        trainer = self.trainer
        state = {
            "network": {k: v.detach().clone() for k, v in unwrap_model(self.network).state_dict().items()},
            "iteration": trainer.state.iteration if trainer else 0,
            "epoch": trainer.state.epoch if trainer else 0,
            "schedule_start": self.schedule_start,
            "best_metric": self.best_metric,
            "best_iteration": self.best_iteration,
            "deployed": self.deployed,
            "rng": rng_state(),
        }
        if self.teacher is not None:
            state["teacher"] = self.teacher.state_dict()
        if self.average is not None:
            state["average"] = self.average.state_dict()
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.unlabeled_loader is not None and hasattr(self.unlabeled_loader, "state_dict"):
            state["unlabeled_loader"] = self.unlabeled_loader.state_dict()
        state["transforms_rng"] = [numpy_state(rs.get_state()) for rs in self._transform_states()]
        return state

    def _transform_states(self) -> list[np.random.RandomState]:
        loaders = (getattr(self.trainer, "data_loader", None), self.unlabeled_loader)
        return transform_random_states(*(_dataset_transform(loader) for loader in loaders))

    def load_state_dict(self, state: Mapping, path: Path | str = "checkpoint") -> None:
        """Restore everything :meth:`state_dict` saved (the global RNG states last)."""
        missing = [k for k in ("network", "iteration", "epoch", "rng") if k not in state]
        if self.teacher is not None and "teacher" not in state:
            missing.append("teacher")
        if self.average is not None and "average" not in state:
            missing.append("average (the checkpoint was written with average_model off)")
        if self.optimizer is not None and "optimizer" not in state:
            missing.append("optimizer")
        if missing:
            raise CheckpointError(f"{path} is not a full training checkpoint: missing {missing}")
        check_state_dict(state["network"], unwrap_model(self.network), path)
        unwrap_model(self.network).load_state_dict(state["network"])
        if self.teacher is not None:
            self.teacher.load_state_dict(state["teacher"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.unlabeled_loader is not None and "unlabeled_loader" in state:
            self.unlabeled_loader.load_state_dict(state["unlabeled_loader"])
        self.best_metric = float(state.get("best_metric", -math.inf))
        self.best_iteration = int(state.get("best_iteration", -1))
        self.deployed = str(state.get("deployed", "student"))
        if self.trainer is not None and hasattr(self.trainer, "schedule_start"):
            self.trainer.schedule_start = int(state.get("schedule_start", 0))
        if "transforms_rng" in state:
            targets = self._transform_states()
            if len(targets) == len(state["transforms_rng"]):
                for rs, saved in zip(targets, state["transforms_rng"]):
                    rs.set_state(numpy_state_tuple(saved))
            else:
                logger.warning(
                    f"{path}: {len(state['transforms_rng'])} random-transform states saved but the pipeline has "
                    f"{len(targets)}: random augmentation does not continue the interrupted sequence"
                )
        set_rng_state(state["rng"])  # last: restoring the other parts may draw random numbers

    def load(self, path: Path | None = None) -> dict:
        """Load the checkpoint ``path`` (default ``checkpoint_last.pt``) into the objects; returns its contents."""
        path = path or self.last_path
        state = safe_load(path)
        self.load_state_dict(state, path)
        return state

    def save(self, path: Path | None = None) -> Path | None:
        """Write a checkpoint (default ``checkpoint_last.pt``) atomically; rank 0 only."""
        if not is_rank0():
            return None
        return save_atomic(self.state_dict(), path or self.last_path)

    def export_model(self, which: str = "student") -> None:
        """Write the flat state_dict (plain tensors) of the student (or, ``which="teacher"`` / ``"average"``, of the
        EMA teacher / the average model) to ``model_file``, then its record of training iterations (``model.json``);
        rank 0 only."""
        if self.model_file is None or not is_rank0():
            return
        models = {"student": self.network, "teacher": self.teacher, "average": self.average}
        if models.get(which) is None:
            raise ValueError(f"which must be one of {[k for k, v in models.items() if v is not None]}, got {which!r}.")
        sd = unwrap_model(self.network).state_dict() if which == "student" else models[which].state_dict()
        save_atomic({k: v.detach().cpu().clone() for k, v in sd.items()}, self.model_file)
        write_model_record(self.model_file, self.schedule_iteration())

    def remove_stale_temporaries(self) -> None:
        """Temporary files of an earlier process killed while saving (their targets are intact); rank 0 only."""
        if not is_rank0():
            return
        remove_stale_temporaries(self.output_dir)
        if self.model_file is not None:
            remove_stale_temporaries(self.model_file.parent, self.model_file.name)
            remove_stale_temporaries(self.model_file.parent, record_path(self.model_file).name)
