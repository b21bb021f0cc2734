"""Per-case bookkeeping of folder inference: one corrupt scan does not stop the others."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from bundle.data.checks import check_image_file, entry_files
from bundle.engine.errors import DataValidationError
from bundle.engine.files import write_json_atomic

__all__ = ["CaseReport"]

logger = logging.getLogger("plgdf")


class CaseReport:
    """Per-case bookkeeping for folder inference: failures are recorded, the other cases go on.

    Typical use from ``configs/inference.json``::

        "report": {"_target_": "bundle.inference.case_report.CaseReport",
                   "summary_file": "$@output_dir + '/summary.json'"}
        "dataset#data": "$@report.filter(@datalist)"             # readable cases only; failures recorded
        "finalize": ["$@report.finish()"]                        # summary.json; exit status 1 on failures

    A case that fails later (while being processed) is recorded with :meth:`record_failure` (for example from
    an Ignite ``EXCEPTION_RAISED`` handler), and a written output with :meth:`record_output`.

    Args:
        summary_file: where :meth:`finish` writes the JSON summary; ``None`` writes nothing. Default None.
        in_channels: channels the network expects (checked per file). Default 1.
        check_voxels: read the voxel data of every input (finds truncated files and NaN/Inf). Default True.
        exit_on_failure: :meth:`finish` ends the process with status 1 when a case failed. Default True.
    """

    def __init__(
        self,
        summary_file: str | os.PathLike | None = None,
        in_channels: int | None = 1,
        check_voxels: bool = True,
        exit_on_failure: bool = True,
    ):
        self.summary_file = Path(summary_file) if summary_file else None
        self.in_channels, self.check_voxels, self.exit_on_failure = in_channels, check_voxels, exit_on_failure
        self.total = 0
        self.failures: list[dict[str, str]] = []
        self.outputs: list[str] = []

    def filter(self, cases: Iterable[Mapping | str], key: str = "image") -> list[dict]:
        """The cases whose ``key`` file(s) pass :func:`check_image_file`; the others are recorded as failures.

        Args:
            cases: data-list entries (``{"image": path, ...}``) or plain paths.
            key: the entry key of the input file. Default ``"image"``.
        """
        good = []
        for case in cases:
            entry = dict(case) if isinstance(case, Mapping) else {key: os.fspath(case)}
            self.total += 1
            files = entry_files(entry.get(key))
            try:
                if not files:
                    raise DataValidationError(f"entry {entry!r} has no '{key}' file")
                channels = self.in_channels if len(files) == 1 else None
                for f in files:
                    check_image_file(f, "image", channels, None, self.check_voxels)
            except DataValidationError as e:
                self.record_failure(files[0] if files else repr(entry), e)
                continue
            good.append(entry)
        return good

    def record_failure(self, case: str, error: BaseException | str) -> None:
        """Record a failed case and log it (the run goes on)."""
        message = str(error) if isinstance(error, BaseException) else error
        self.failures.append({"case": os.fspath(case), "error": message})
        logger.error(f"case failed, skipped: {message}")

    def record_output(self, path: str | os.PathLike) -> None:
        self.outputs.append(os.fspath(path))

    @property
    def failed(self) -> int:
        return len(self.failures)

    def summary(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "succeeded": self.total - self.failed,
            "failed": self.failed,
            "failures": list(self.failures),
            "outputs": list(self.outputs),
        }

    def finish(self) -> dict[str, Any]:
        """Write the summary (atomically), log it, and end the process with status 1 when a case failed."""
        summary = self.summary()
        if self.summary_file is not None:
            write_json_atomic(self.summary_file, summary)
        where = f" (summary: {self.summary_file})" if self.summary_file else ""
        if self.failures:
            lines = "\n".join(f"  - {f['error']}" for f in self.failures)
            logger.error(f"{self.failed} of {self.total} case(s) failed{where}:\n{lines}")
            if self.exit_on_failure:
                print(f"{self.failed} of {self.total} case(s) failed{where}", file=sys.stderr)
                raise SystemExit(1)
        else:
            logger.info(f"all {self.total} case(s) succeeded{where}")
        return summary
