"""Re-estimate the student's BatchNorm statistics on clean patches before each validation and before it is saved.

The student trains on batches in which most rows are noisy copies or mixes of two images, and its running
statistics follow those batches; validation, ``checkpoint_best.pt`` and ``models/model.pt`` use the running
statistics. With few labels they can be far from clean scans': after a MONAI Label round from two labels the
student segmented nothing in eval mode while it segmented the organ in train mode (batch statistics); re-estimated
on clean patches, its masks were right again (``docs/README.md``, MONAI Label).

Training is not changed: the student's train-mode forwards use batch statistics, the patches come from a generator
of this handler (seeded by ``seed`` and the iteration, so a resumed run re-estimates the same way), and the forward
passes run under a forked torch RNG, so that dropout draws leave the training's random stream as it was. The EMA
teacher follows the student's buffers (:class:`bundle.method.teacher.EMATeacher`), which matters only where the
teacher runs in eval mode (``teacher#train_mode`` false, teacher validation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events

from bundle.engine.distributed import unwrap_model
from bundle.method.bn_recalibration import reestimate_batchnorm

__all__ = ["ReestimateBatchNorm"]

logger = logging.getLogger("plgdf")


class ReestimateBatchNorm:
    """Every ``interval`` iterations and when training completes, replace the student's BatchNorm running statistics
    by their average over ``batches`` batches of clean random patches (:func:`bundle.method.bn_recalibration.
    reestimate_batchnorm`).

    Attach it before the ``ValidationHandler`` (handlers of one event run in the order they were attached), so that
    validation, the best checkpoint and ``model.pt`` see the re-estimated statistics.

    Args:
        network: the student (possibly DDP-wrapped).
        labeled_data, unlabeled_data: the training items (dicts with ``"image"``); all labelled ones and the first
            unlabelled ones up to ``max_volumes`` in all are used.
        preprocessing: the deterministic preprocessing of a training item (no augmentation), giving ``"image"``
            ``(C, H, W, D)`` at least ``patch_size`` large (``train.json``'s ends with ``SpatialPadd``); applied once
            per volume, on first use.
        patch_size: the training patch.
        batches: batches to average; 0 switches the handler off. Default 32.
        batch_size: patches per batch. Default 4.
        interval: iterations between re-estimations (the validation interval). Default 50.
        max_volumes: most volumes kept for the patches. Default 16.
        seed: seed of the patch positions. Default 0.
        also: other networks whose statistics are re-estimated the same way, on the same patches (the average model
            of ``average_model``: an average of weights over many iterations needs statistics of its own, which an
            average of the student's running statistics is not). Default none.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        labeled_data: Sequence[dict],
        unlabeled_data: Sequence[dict] | None,
        preprocessing: Callable[[dict], dict],
        patch_size: Sequence[int],
        batches: int = 32,
        batch_size: int = 4,
        interval: int = 50,
        max_volumes: int = 16,
        seed: int = 0,
        also: Sequence[torch.nn.Module] = (),
    ) -> None:
        if batches < 0 or batch_size < 1 or interval < 1 or max_volumes < 1:
            raise ValueError(
                f"bn_reestimate needs batches >= 0, batch_size >= 1, interval >= 1 and max_volumes >= 1; got "
                f"{batches}, {batch_size}, {interval}, {max_volumes}."
            )
        self.network = network
        self.also = [n for n in also if n is not None]
        items = list(labeled_data) + list(unlabeled_data or [])
        self.items = items[: max(max_volumes, len(labeled_data))]
        self.preprocessing = preprocessing
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batches, self.batch_size, self.interval, self.seed = int(batches), int(batch_size), int(interval), seed
        self._volumes: list[torch.Tensor] | None = None
        self._done_at: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.batches == 0 or not self.items:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def _load(self) -> list[torch.Tensor]:
        if self._volumes is None:
            start = time.perf_counter()
            volumes = []
            for item in self.items:
                image = self.preprocessing(dict(item))["image"]
                volumes.append((image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)).float())
            self._volumes = volumes
            logger.info(
                "bn_reestimate: %d volume(s) prepared for BatchNorm re-estimation in %.1f s",
                len(volumes),
                time.perf_counter() - start,
            )
        return self._volumes

    def patches(self, iteration: int) -> Iterator[torch.Tensor]:
        """``batches`` batches ``(batch_size, C, *patch_size)`` of random crops of the volumes, reproducible from
        ``seed`` and ``iteration``."""
        volumes = self._load()
        rng = np.random.default_rng([int(self.seed), int(iteration)])
        device = next(unwrap_model(self.network).parameters()).device
        for _ in range(self.batches):
            crops = []
            for _ in range(self.batch_size):
                volume = volumes[int(rng.integers(len(volumes)))]
                start = [int(rng.integers(0, s - p + 1)) for s, p in zip(volume.shape[1:], self.patch_size)]
                crops.append(volume[(slice(None), *(slice(a, a + p) for a, p in zip(start, self.patch_size)))])
            yield torch.stack(crops).to(device)

    def __call__(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        if self._done_at == iteration:  # the last iteration was also a multiple of the interval
            return
        network = unwrap_model(self.network)
        device = next(network.parameters()).device
        devices = [device] if device.type == "cuda" else []
        start = time.perf_counter()
        for net in (network, *self.also):
            with torch.random.fork_rng(devices=devices):
                used = reestimate_batchnorm(unwrap_model(net), self.patches(iteration))
        self._done_at = iteration
        logger.debug(
            "bn_reestimate at iteration %d: %d batches of %d clean patches, %.1f s",
            iteration,
            used,
            self.batch_size,
            time.perf_counter() - start,
        )
