"""Stop training cleanly on SIGINT/SIGTERM, and never save after an error."""

from __future__ import annotations

import logging
import signal
import threading

from ignite.engine import Engine, Events

from bundle.engine.checkpoint import TrainingState
from bundle.engine.errors import NonFiniteLossError
from bundle.handlers.terms import finite_output

__all__ = ["StopOnSignal"]

logger = logging.getLogger("plgdf")


class StopOnSignal:
    """The first SIGINT/SIGTERM lets the current iteration finish (and, at the end of an engine epoch, its
    validation), saves ``checkpoint_last.pt`` and ends the process with status ``128 + signal``; a second one stops
    at once without saving. On any error nothing is saved (the state of a failed iteration may be half updated: NaN
    weights, an optimizer step without its EMA update) and the error names the last good checkpoint.

    The stop is recorded as ``engine.state.stop_signal`` so that the checkpoint savers do not save again. List it
    before :class:`bundle.handlers.checkpoint.TrainingCheckpointSaver`.

    Args:
        state: the run's :class:`TrainingState`.
    """

    def __init__(self, state: TrainingState):
        self.state = state
        self._signal: int | None = None
        self._old_handlers: dict = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception)

    def _iteration_completed(self, engine: Engine) -> None:
        length = engine.state.epoch_length
        # a signal during an epoch's last iteration: validation and the epoch checkpoint run first
        if self._signal is not None and not (length and engine.state.iteration % length == 0):
            self._stop(engine)

    def _epoch_completed(self, engine: Engine) -> None:
        if self._signal is not None:
            self._stop(engine)

    def _stop(self, engine: Engine) -> None:
        it = engine.state.iteration
        engine.state.stop_signal = self._signal
        if finite_output(engine.state.output):
            self.state.save()
            logger.warning(f"received signal {self._signal}: saved {self.state.last_path} at iteration {it}, stopping")
        else:  # the NaN guard stops the run with the error; the last checkpoint stays the last good state
            logger.warning(f"received signal {self._signal} at iteration {it} with a non-finite loss: not saved")
        engine.terminate()

    def _completed(self, engine: Engine) -> None:
        self._restore()
        if self._signal is not None:  # stopped by a signal: saved already, the run is not finished
            sig, self._signal = self._signal, None
            raise SystemExit(128 + sig)

    def _exception(self, engine: Engine, e: Exception) -> None:
        self._restore()
        last = self.state.last_path
        last = f"{last} (not overwritten)" if last.exists() else "none (no checkpoint saved yet)"
        if isinstance(e, NonFiniteLossError):
            logger.error(f"{e}. The last good state is {last}.")
        elif isinstance(e, KeyboardInterrupt):
            logger.warning(f"interrupted at iteration {engine.state.iteration} without saving; last checkpoint: {last}")
        raise e

    def _install(self, engine: Engine) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def _handler(signum, frame):
            if self._signal is not None:
                self._restore()
                raise KeyboardInterrupt(f"second signal {signum}: stopping without saving")
            self._signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, _handler)

    def _restore(self) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}
