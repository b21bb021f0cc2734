"""Console progress of inference: one line per case."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["InferenceProgress"]


class InferenceProgress:
    """Ignite handler: one line per case, ``[k/N] <case> <seconds> s [-> <written mask>]``, and a total at the end.

    Args:
        total: number of cases (for the ``N``); ``None`` reads ``len`` of the engine's data. Default ``None``.
        pred_file_key: output key holding the written path (set by :class:`bundle.inference.writers.SaveMaskd`).
            Default ``"pred_file"``.
        report: an object with ``record_output(path)`` (the run's ``CaseReport``) told of every written mask, so
            that ``summary.json`` lists the outputs. Default ``None``.
    """

    def __init__(self, total: int | None = None, pred_file_key: str = "pred_file", report: Any = None) -> None:
        self.total = total
        self.pred_file_key = pred_file_key
        self.report = report
        self._t0 = self._t = 0.0
        self._n = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._t0 = self._t = time.perf_counter()
        self._n = 0
        if self.total is None:
            try:
                self.total = len(engine.state.dataloader.dataset)
            except (AttributeError, TypeError):
                self.total = None

    def _iteration(self, engine: Engine) -> None:
        now = time.perf_counter()
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        seconds = (now - self._t) / max(len(batch), 1)
        for item, out in zip(batch, outputs):
            self._n += 1
            name = item.get("case_id") if isinstance(item, Mapping) else None
            if not isinstance(name, str):
                meta = getattr(item.get("image"), "meta", {}) if isinstance(item, Mapping) else {}
                name = Path(str(meta.get("filename_or_obj", f"case {self._n}"))).name
            written = out.get(self.pred_file_key) if isinstance(out, Mapping) else None
            if written and self.report is not None:
                self.report.record_output(written)
            total = self.total if self.total is not None else "?"
            print(f"[{self._n}/{total}] {name}: {seconds:.1f} s" + (f" -> {written}" if written else ""), flush=True)
        self._t = now

    def _completed(self, engine: Engine) -> None:
        print(f"inference done: {self._n} case(s) in {time.perf_counter() - self._t0:.1f} s", flush=True)
