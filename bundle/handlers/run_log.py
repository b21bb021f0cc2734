"""``<output_dir>/log.jsonl``: one JSON record per training iteration and per validation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ignite.engine import Engine, Events

from bundle.engine.checkpoint import TrainingState
from bundle.engine.distributed import is_rank0
from bundle.engine.files import write_text_atomic
from bundle.handlers.terms import iteration_terms

__all__ = ["RunLog", "ValidationLog", "append_record"]

logger = logging.getLogger("plgdf")


class RunLog:
    """Append every iteration's loss terms, lambda(t), pseudo-label foreground fraction and learning rate to a
    JSON-lines file (``{"iteration": N, "loss": ..., "lr": ...}``); rank 0 only.

    A new run starts an empty log; a resumed run drops the records after its checkpoint's iteration (which it
    repeats), so the log holds each iteration once. Attach it after the resume handler.

    Args:
        output_dir: folder of the log; ``None`` keeps no file.
        optimizer: its first param group's lr is logged. Defaults to None.
        log_file: file name. Defaults to ``"log.jsonl"``.
    """

    def __init__(self, output_dir: str | None = None, optimizer=None, log_file: str = "log.jsonl"):
        self.path = Path(output_dir) / log_file if output_dir else None
        self.optimizer = optimizer
        self.trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _started(self, engine: Engine) -> None:
        if self.path is not None and is_rank0():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate(engine.state.iteration)

    def _truncate(self, iteration: int) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        keep = []
        for line in lines:
            try:
                if int(json.loads(line).get("iteration", 0)) <= iteration:
                    keep.append(line)
            except (ValueError, AttributeError):  # a line cut by a kill: dropped
                continue
        if len(keep) != len(lines):
            write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        """Append one record (rank 0 only)."""
        append_record(self.path, record)

    def _iteration(self, engine: Engine) -> None:
        values = iteration_terms(engine)
        if self.optimizer is not None:
            values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.write({"iteration": engine.state.iteration, **values})


class ValidationLog:
    """In ``validate#handlers``: after every validation, append ``{"iteration": N, "val_dice": value}`` to the run's
    JSON-lines log (``N`` the trainer's iteration, read from the training state) and log the value with the best so
    far (rank 0 only).

    Args:
        output_dir: folder of the log; ``None`` keeps no file.
        state: the run's :class:`bundle.engine.checkpoint.TrainingState` (it knows the trainer).
        metric_name: the evaluator's key metric. Defaults to ``"val_mean_dice"``.
        log_file: file name, that of :class:`RunLog`. Defaults to ``"log.jsonl"``.
    """

    def __init__(
        self,
        output_dir: str | None,
        state: TrainingState,
        metric_name: str = "val_mean_dice",
        log_file: str = "log.jsonl",
    ):
        self.path = Path(output_dir) / log_file if output_dir else None
        self.state = state
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.metric_name)
        if value is None:
            return
        trainer = self.state.trainer
        it = trainer.state.iteration if trainer is not None else -1
        best = getattr(engine.state, "best_metric", float("nan"))
        append_record(self.path, {"iteration": it, "val_dice": float(value)})
        logger.info(f"iteration {it}: validation {self.metric_name} {float(value):.4f} (best {float(best):.4f})")


def append_record(path: Path | None, record: dict) -> None:
    """Append one JSON record to the log ``path`` (rank 0 only; nothing when ``path`` is None)."""
    if path is not None and is_rank0():
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
