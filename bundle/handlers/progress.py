"""Console progress of training: loss terms, rate and ETA every few iterations."""

from __future__ import annotations

import logging
import time

from ignite.engine import Engine, Events

from bundle.engine.distributed import is_rank0
from bundle.handlers.terms import iteration_terms

__all__ = ["ProgressLogger"]

logger = logging.getLogger("plgdf")


class ProgressLogger:
    """Log ``iteration N/T loss=... <terms> lr=... (s/it, ETA)`` every ``print_interval`` iterations (rank 0 only).

    The rate counts from the iteration the run started at (a resumed run's own speed): attach it after the resume
    handler.

    Args:
        print_interval: iterations between lines. Defaults to 10.
        optimizer: its first param group's lr is shown. Defaults to None.
    """

    def __init__(self, print_interval: int = 10, optimizer=None):
        self.print_interval = max(1, int(print_interval))
        self.optimizer = optimizer
        self._t0 = 0.0
        self._it0 = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _started(self, engine: Engine) -> None:
        self._t0, self._it0 = time.perf_counter(), engine.state.iteration

    def _iteration(self, engine: Engine) -> None:
        it = engine.state.iteration
        if it % self.print_interval or not is_rank0():
            return
        values = iteration_terms(engine)
        if self.optimizer is not None:
            values["lr"] = float(self.optimizer.param_groups[0]["lr"])
        total = engine.state.max_epochs * engine.state.epoch_length
        rate = (time.perf_counter() - self._t0) / max(it - self._it0, 1)
        eta = rate * (total - it)
        terms = " ".join(f"{k}={v:.4f}" for k, v in values.items() if k != "loss")
        logger.info(
            f"iteration {it}/{total} loss={values['loss']:.4f} {terms} "
            f"({rate:.2f} s/it, ETA {time.strftime('%H:%M:%S', time.gmtime(eta))})"
        )
