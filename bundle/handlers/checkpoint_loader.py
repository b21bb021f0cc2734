"""MONAI's ``CheckpointLoader`` with the bundle's readable checkpoint errors (``configs/inference.json``)."""

from __future__ import annotations

from ignite.engine import Engine
from monai.handlers import CheckpointLoader

from bundle.engine.files import check_checkpoint

__all__ = ["CheckedCheckpointLoader"]


class CheckedCheckpointLoader(CheckpointLoader):
    """``monai.handlers.CheckpointLoader`` that first checks the file (:func:`bundle.engine.files.check_checkpoint`):
    a missing, empty, truncated, foreign or unsafe file, or a checkpoint of other network settings (``n_filters``,
    ``num_classes``, ``in_channels``) stops the run with one :class:`bundle.engine.errors.CheckpointError` line
    before anything is loaded. Arguments are ``CheckpointLoader``'s; the checked network is ``load_dict``'s only
    entry."""

    def __call__(self, engine: Engine) -> None:
        if len(self.load_dict) == 1:
            check_checkpoint(self.load_path, next(iter(self.load_dict.values())))
        super().__call__(engine)
