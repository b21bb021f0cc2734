"""Warn when the teacher's pseudo-labels have collapsed to background.

PLGDF trains the student on the teacher's hard pseudo-labels with L_semi at full weight from the first iteration,
when the teacher is still random. On a small structure the teacher can settle on "everything is background" and
L_semi then teaches the student the same: on the small-structure demo (``make_demo_data --organ-scale 0.65``, the
organ filling 2.7 % of the body) the pseudo-labels were all background from iteration 80 to 560 of 600 and the best
validation Dice was 0.15, against 0.83 with ``--semi_warmup rampup`` and 0.92 supervised (``docs/results.md``).
The training log shows it only as ``pseudo_fg=0.0000`` among other numbers; this handler says it in words, once per
episode, with what to do. Replayed over the logs of earlier runs (100-iteration window), it warned on the
small-structure demo (from iteration 123 on) and on two demo runs with a 48x32x32 patch whose validation Dice stayed
at 0 for 350 and 150 iterations, and not on the warm-up run (a brief dip at iterations 31-80 with L_semi's weight
still small), the LA-lite campaign's runs or the MONAI Label replays.
"""

from __future__ import annotations

import logging
from collections import deque

from ignite.engine import Engine, Events

from bundle.engine.distributed import is_rank0
from bundle.handlers.terms import iteration_terms

__all__ = ["PseudoLabelMonitor"]

logger = logging.getLogger("plgdf")


class PseudoLabelMonitor:
    """Log a warning when, over the last ``window`` iterations, the pseudo-labels' foreground fraction
    (``pseudo_fg``) averaged below ``ratio`` times the labelled patches' (``label_fg``), and a line when it recovers
    (rank 0; nothing when the run makes no pseudo-labels).

    Args:
        window: iterations averaged. Default 100.
        ratio: collapse threshold on ``mean pseudo_fg / mean label_fg``; recovery is at twice the ratio. Default 0.05.
        semi_warmup: the run's ``semi_warmup`` (the advice depends on it). Default ``"none"``.
    """

    def __init__(self, window: int = 100, ratio: float = 0.05, semi_warmup: str = "none") -> None:
        if int(window) < 1 or not 0.0 < float(ratio) < 0.5:
            raise ValueError(f"PseudoLabelMonitor needs window >= 1 and 0 < ratio < 0.5, got {window}, {ratio}.")
        self.window, self.ratio, self.semi_warmup = int(window), float(ratio), str(semi_warmup)
        self._pseudo: deque[float] = deque(maxlen=self.window)
        self._label: deque[float] = deque(maxlen=self.window)
        self.episodes: list[tuple[int, int | None]] = []  # (warned at, recovered at or None while collapsed)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        values = iteration_terms(engine)
        if "pseudo_fg" not in values or "label_fg" not in values:
            return
        self._pseudo.append(values["pseudo_fg"])
        self._label.append(values["label_fg"])
        if len(self._pseudo) < self.window:
            return
        pseudo = sum(self._pseudo) / self.window
        label = sum(self._label) / self.window
        if label <= 0.0:
            return  # no foreground in the labelled patches either: nothing to compare with
        it = engine.state.iteration
        collapsed = bool(self.episodes) and self.episodes[-1][1] is None
        if not collapsed and pseudo < self.ratio * label:
            self.episodes.append((it, None))
            if is_rank0():
                logger.warning(self._message(it, pseudo, label))
        elif collapsed and pseudo >= 2.0 * self.ratio * label:
            self.episodes[-1] = (self.episodes[-1][0], it)
            if is_rank0():
                logger.info(
                    "pseudo-labels recovered: %.2f %% foreground over iterations %d-%d (labelled patches %.2f %%)",
                    100.0 * pseudo,
                    it - self.window + 1,
                    it,
                    100.0 * label,
                )

    def _message(self, it: int, pseudo: float, label: float) -> str:
        advice = (
            "`--semi_warmup rampup` weights L_semi by the ramp-up while the teacher is poor (it prevented this on the "
            "small-structure demo); `--use_unlabeled False` trains supervised"
            if self.semi_warmup == "none"
            else f"semi_warmup is {self.semi_warmup!r} already; if it persists, `--use_unlabeled False` trains "
            "supervised"
        )
        return (
            f"pseudo-labels have collapsed to background: over iterations {it - self.window + 1}-{it} the teacher "
            f"marked {100.0 * pseudo:.2f} % of the unlabelled voxels as foreground against {100.0 * label:.2f} % in "
            f"the labelled patches, and L_semi teaches the student the same. Small structures are prone to this; "
            f"{advice} (docs/README.md, 'Pseudo-label collapse')."
        )
