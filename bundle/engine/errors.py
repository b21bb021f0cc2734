"""The bundle's own errors, and a ``sys.excepthook`` that prints them as one readable line.

- :class:`DataValidationError`: bad input data (raised by ``bundle.data.checks``);
- :class:`NonFiniteLossError`: a loss term became NaN/Inf (``bundle.handlers.nan_guard``);
- :class:`CheckpointError`: a checkpoint is missing, corrupt or not plain tensors (``bundle.engine.files``).

:func:`install_error_hook` prints these as ``Type: message`` without a traceback, also when MONAI wrapped them in
``RuntimeError("Failed to evaluate ...")``; other errors keep their traceback, followed by the root cause.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["DataValidationError", "NonFiniteLossError", "CheckpointError", "install_error_hook"]


class DataValidationError(ValueError):
    """Bad input data: the message names every offending file and its problem.

    Args:
        message: the full message.
        problems: ``(file, problem)`` pairs behind the message. Defaults to ``[]``.
    """

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = ()):
        super().__init__(message, list(problems))  # all arguments, so that pickle and copy rebuild it
        self.problems = list(problems)

    def __str__(self) -> str:
        return str(self.args[0])


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or Inf."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or holds something other than plain tensors."""


# printed without a traceback: the bundle's own errors and a missing file or folder (its message names the path)
USER_ERRORS = (DataValidationError, NonFiniteLossError, CheckpointError, FileNotFoundError)


def _root_cause(exc: BaseException) -> BaseException:
    """The first bundle error in the ``raise ... from`` chain (MONAI wraps errors of config expressions in
    ``RuntimeError("Failed to evaluate ...")``), else the innermost cause."""
    seen = set()
    while not isinstance(exc, USER_ERRORS) and exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _excepthook(exc_type, exc, tb, previous) -> None:
    root = _root_cause(exc)
    if isinstance(root, USER_ERRORS) and not os.environ.get("PLGDF_TRACEBACK"):
        print("(set PLGDF_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        print(f"{type(root).__name__}: {root}", file=sys.stderr)
        return
    previous(exc_type, exc, tb)
    if root is not exc:
        print(f"\nroot cause: {type(root).__name__}: {root}", file=sys.stderr)


def install_error_hook() -> None:
    """Print the bundle's own errors readably when they end the process (idempotent).

    :class:`DataValidationError`, :class:`NonFiniteLossError` and :class:`CheckpointError` are printed as
    ``Type: message`` without a traceback (the message is the last line of stderr; set ``PLGDF_TRACEBACK=1`` for the
    traceback). Any other error keeps its full traceback, followed by its root cause when MONAI wrapped it
    (``Failed to evaluate ...``).
    """
    if getattr(sys.excepthook, "_plgdf", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        _excepthook(exc_type, exc, tb, previous)

    hook._plgdf = True  # type: ignore[attr-defined]
    sys.excepthook = hook
