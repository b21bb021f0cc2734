"""Continue an interrupted training run from ``checkpoint_last.pt``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ignite.engine import Engine, Events

from bundle.engine.checkpoint import TrainingState
from bundle.engine.rng import set_rng_state

__all__ = ["ResumeTraining"]

logger = logging.getLogger("plgdf")


class ResumeTraining:
    """At ``STARTED``: create the output folder, remove temporary files of an interrupted save and, with ``resume``,
    restore the training state of ``checkpoint_last.pt`` (also one written mid-epoch) and the engine's position.

    The resumed run continues the same data order and random draws (global RNGs, the MONAI random transforms' own
    states, the labelled sampler and unlabelled stream positions): with ``num_workers=0`` it computes the same losses
    as an uninterrupted run. List it before the handlers that read the iteration at ``STARTED`` (log, progress).

    Args:
        state: the run's :class:`TrainingState`.
        resume: continue from ``checkpoint_last.pt`` when it exists. Defaults to False.
    """

    def __init__(self, state: TrainingState, resume: bool = False):
        self.state = state
        self.resume = bool(resume)
        self._pending_rng: Mapping | None = None

    def attach(self, engine: Engine) -> None:
        self.state.trainer = engine
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._first_batch)

    def _started(self, engine: Engine) -> None:
        self.state.output_dir.mkdir(parents=True, exist_ok=True)
        self.state.remove_stale_temporaries()
        last = self.state.last_path
        if self.resume and last.exists():
            saved = self.state.load(last)
            self._position(engine, int(saved["iteration"]), saved["rng"])
            logger.info(f"resumed from {last} at iteration {engine.state.iteration}")
        elif self.resume:
            logger.info(f"nothing to resume in {self.state.output_dir}: starting a new run")

    def _position(self, engine: Engine, iteration: int, rng: Mapping) -> None:
        """Put the engine (and the labelled sampler) where the checkpointed run stood.

        ``epoch`` is the number of *completed* epochs, so that a checkpoint written mid-epoch (on a signal)
        continues that epoch: Ignite starts epoch ``epoch + 1`` at its ``iteration % epoch_length``-th batch. The
        labelled sampler skips the batches already used in that epoch, and the RNG states are applied again
        once the first batch is loaded, because creating the data-loader iterator draws a random seed that the
        uninterrupted run did not draw at that point.
        """
        engine.state.iteration = iteration
        length = engine.state.epoch_length
        engine.state.epoch = iteration // length if length else engine.state.epoch
        within = iteration % length if length else 0
        if within:
            loader = getattr(engine, "data_loader", None)
            sampler = getattr(loader, "sampler", None)
            if hasattr(sampler, "skip_next"):
                sampler.skip_next = within * int(getattr(loader, "batch_size", 1) or 1)
            self._pending_rng = rng

    def _first_batch(self, engine: Engine) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
