"""Stop training at the first non-finite loss term."""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

from bundle.engine.errors import NonFiniteLossError
from bundle.handlers.terms import iteration_terms

__all__ = ["NonFiniteLossGuard"]


class NonFiniteLossGuard:
    """Raise :class:`bundle.engine.errors.NonFiniteLossError` naming the iteration and the term when a loss term of
    the iteration output is NaN/Inf (``ITERATION_COMPLETED``). List it before the handlers that log the terms."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        values = iteration_terms(engine)
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            culprits = [k for k in bad if k != "loss"] or bad  # name the term, not only the total
            raise NonFiniteLossError(
                f"non-finite loss term {', '.join(f'{k} = {values[k]}' for k in culprits)} at iteration "
                f"{engine.state.iteration}; all terms: {', '.join(f'{k}={v:.4g}' for k, v in values.items())}"
            )
