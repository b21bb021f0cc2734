"""PseudoLabelMonitor: a warning when the pseudo-labels collapse to background, a line when they recover."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from bundle.handlers.pseudo_label_monitor import PseudoLabelMonitor


def _feed(monitor: PseudoLabelMonitor, pseudo: list[float], label: float = 0.05, start: int = 1):
    engine = types.SimpleNamespace(state=types.SimpleNamespace(iteration=0, output={}))
    for i, p in enumerate(pseudo, start=start):
        engine.state.iteration = i
        engine.state.output = {"loss": torch.tensor(1.0), "pseudo_fg": torch.tensor(p), "label_fg": torch.tensor(label)}
        monitor(engine)


def test_warns_once_on_collapse_and_logs_recovery(caplog):
    monitor = PseudoLabelMonitor(window=10, ratio=0.05)
    with caplog.at_level(logging.INFO, logger="plgdf"):
        _feed(monitor, [0.05] * 10 + [0.0] * 30 + [0.04] * 20)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per episode, not every iteration
    text = warnings[0].getMessage()
    assert "collapsed to background" in text and "--semi_warmup rampup" in text and "5.00 %" in text
    # the window's mean falls below 5 % of label_fg only once 10 iterations averaging ~0 have passed
    assert monitor.episodes[0][0] == 20
    assert monitor.episodes[0][1] is not None and monitor.episodes[0][1] > 40
    assert any("recovered" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_quiet_when_pseudo_labels_track_the_labels_or_are_absent(caplog):
    monitor = PseudoLabelMonitor(window=10)
    with caplog.at_level(logging.INFO, logger="plgdf"):
        _feed(monitor, [0.03, 0.06, 0.01, 0.02] * 20)  # noisy but not collapsed
        engine = types.SimpleNamespace(state=types.SimpleNamespace(iteration=99, output={"loss": torch.tensor(1.0)}))
        monitor(engine)  # supervised run: no pseudo_fg
        _feed(PseudoLabelMonitor(window=10), [0.0] * 30, label=0.0)  # no foreground anywhere: nothing to say
    assert not caplog.records and monitor.episodes == []


def test_advice_follows_semi_warmup(caplog):
    with caplog.at_level(logging.WARNING, logger="plgdf"):
        _feed(PseudoLabelMonitor(window=5, semi_warmup="rampup"), [0.0] * 10)
    assert "semi_warmup is 'rampup' already" in caplog.records[0].getMessage()


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="window"):
        PseudoLabelMonitor(window=0)
    with pytest.raises(ValueError, match="ratio"):
        PseudoLabelMonitor(ratio=0.7)
