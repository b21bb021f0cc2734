"""``<output_dir>/log.jsonl``: one JSON record per training iteration and per validation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ignite.engine import Engine, Events

from bundle.engine.distributed import is_rank0
from bundle.engine.files import write_text_atomic
from bundle.handlers.terms import iteration_terms

__all__ = ["RunLog", "ValidationLog"]

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
        if self.path is not None and is_rank0():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _iteration(self, engine: Engine) -> None:
        values = iteration_terms(engine)
        if self.optimizer is not None:
            values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        self.write({"iteration": engine.state.iteration, **values})


class ValidationLog:
    """In ``validate#handlers``: after every validation, append ``{"iteration": N, "val_dice": value}`` to the
    training's :class:`RunLog` (``N`` the trainer's iteration) and log the value with the best so far.

    Args:
        run_log: the trainer's :class:`RunLog`.
        metric_name: the evaluator's key metric. Defaults to ``"val_mean_dice"``.
    """

    def __init__(self, run_log: RunLog, metric_name: str = "val_mean_dice"):
        self.run_log = run_log
        self.metric_name = metric_name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.metric_name)
        if value is None:
            return
        trainer = self.run_log.trainer
        it = trainer.state.iteration if trainer is not None else -1
        best = getattr(engine.state, "best_metric", float("nan"))
        self.run_log.write({"iteration": it, "val_dice": float(value)})
        logger.info(f"iteration {it}: validation {self.metric_name} {float(value):.4f} (best {float(best):.4f})")
