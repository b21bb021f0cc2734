"""Tests of bundle/engine/errors.py: the bundle's errors are printed as one readable last line."""

from __future__ import annotations

import io
import sys

import pytest

from bundle.engine.errors import CheckpointError, DataValidationError, NonFiniteLossError, _excepthook


@pytest.mark.parametrize(
    "error",
    [
        DataValidationError("/x/a.nii.gz: bad"),
        NonFiniteLossError("nan at 3"),
        CheckpointError("cannot read /x/c.pt"),
        FileNotFoundError("data list not found: /x/datalist.json (its folder /x does not exist: check dataset_dir)"),
    ],
)
def test_error_hook_prints_the_message_last(error: Exception, monkeypatch) -> None:
    try:
        try:
            raise error
        except Exception as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from e
    except RuntimeError as wrapped:
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        _excepthook(type(wrapped), wrapped, wrapped.__traceback__, sys.__excepthook__)
    lines = stderr.getvalue().strip().splitlines()
    assert lines[-1] == f"{type(error).__name__}: {error}"
    assert "Traceback" not in stderr.getvalue()


def test_error_hook_keeps_tracebacks_of_other_errors(monkeypatch) -> None:
    try:
        try:
            raise KeyError("x")
        except KeyError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: ...") from e
    except RuntimeError as wrapped:
        stderr = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stderr)
        _excepthook(type(wrapped), wrapped, wrapped.__traceback__, lambda *a: print("TRACEBACK", file=sys.stderr))
    assert stderr.getvalue().strip().splitlines()[-1] == "root cause: KeyError: 'x'"
