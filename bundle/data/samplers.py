"""Samplers and loaders for semi-supervised training.

- :class:`RepeatedShuffleSampler`: a ``DistributedSampler`` that yields a fixed number of indices per
  epoch by concatenating fresh seeded permutations of a (possibly tiny) dataset. The labelled
  loader uses it so that one engine epoch is ``epoch_length`` iterations however few labelled cases
  there are; MONAI's workflow calls its ``set_epoch`` at every epoch (it is a DistributedSampler).
- :class:`EndlessLoader`: an endless, re-shuffling stream of batches over a DataLoader, for the
  unlabelled data. Each pass over the data calls ``sampler.set_epoch(pass)``, so the order changes
  every pass and stays consistent across DDP ranks. Unlike ``itertools.cycle`` it keeps nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, DistributedSampler

from bundle.engine.distributed import rank, world_size

__all__ = ["RepeatedShuffleSampler", "EndlessLoader", "dist_info"]


def dist_info() -> tuple[int, int]:
    """``(world_size, rank)`` of the default process group, ``(1, 0)`` when not distributed."""
    world = world_size()
    return world, (rank() if world > 1 else 0)


class RepeatedShuffleSampler(DistributedSampler):
    """Yields ``num_samples`` indices per epoch (per rank) from repeated seeded permutations.

    Args:
        data_source: the dataset (only its length is used).
        num_samples: indices per epoch and per rank. Defaults to ``len(data_source)`` split over ranks.
        shuffle: permute (seeded by ``seed + epoch``) or repeat ``0..n-1`` in order. Defaults to True.
        seed: base seed, identical on all ranks. Defaults to 0.
        num_replicas, rank: DDP layout; default to the initialised process group, else ``(1, 0)``.
    """

    def __init__(
        self,
        data_source: Sized,
        num_samples: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        world, this_rank = dist_info()
        num_replicas = world if num_replicas is None else num_replicas
        rank = this_rank if rank is None else rank
        n = len(data_source)
        if n == 0:
            raise ValueError("RepeatedShuffleSampler got an empty dataset")
        super().__init__(data_source, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.n = n
        self.num_samples = math.ceil(n / num_replicas) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.total_size = self.num_samples * num_replicas
        self.skip_next = 0

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        chunks, count = [], 0
        while count < self.total_size:
            chunk = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
            chunks.append(chunk)
            count += self.n
        indices = torch.cat(chunks)[: self.total_size]
        skip, self.skip_next = int(self.skip_next), 0
        return iter(indices[self.rank :: self.num_replicas][skip:].tolist())

    def __len__(self) -> int:
        return self.num_samples


class EndlessLoader:
    """Endless iterator of batches over ``loader``; every new pass calls ``loader.sampler.set_epoch``.

    Args:
        loader: a finite DataLoader (typically with a :class:`RepeatedShuffleSampler`).
        start_pass: number of the first pass (restored on resume so the stream continues). Defaults to 0.

    ``state_dict`` holds the pass number and the batches already taken from the current pass; with a sampler
    that has ``skip_next`` (:class:`RepeatedShuffleSampler`), ``load_state_dict`` continues that pass at the
    next batch without loading the skipped ones.
    """

    def __init__(self, loader: DataLoader, start_pass: int = 0):
        if isinstance(loader, Sized) and len(loader) == 0:
            raise ValueError("EndlessLoader got an empty loader")
        self.loader = loader
        self.passes = start_pass
        self.consumed = 0  # batches taken from the current pass
        self._iter: Iterator | None = None

    def _new_pass(self, skip_batches: int = 0) -> Iterator:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.passes)
        if skip_batches:
            sampler.skip_next = skip_batches * int(self.loader.batch_size or 1)
        self.passes += 1
        self.consumed = skip_batches
        return iter(self.loader)

    def __iter__(self) -> EndlessLoader:
        return self

    def __next__(self):
        if self._iter is None:
            self._iter = self._new_pass()
        try:
            batch = next(self._iter)
        except StopIteration:
            self._iter = self._new_pass()
            batch = next(self._iter)
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"passes": self.passes, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.passes = int(state["passes"])
        consumed = int(state.get("consumed", 0))
        self._iter, self.consumed = None, 0
        sampler = getattr(self.loader, "sampler", None)
        if self.passes > 0 and consumed > 0 and hasattr(sampler, "skip_next"):
            self.passes -= 1  # continue the interrupted pass (its iterator is made now, before RNGs are restored)
            self._iter = self._new_pass(skip_batches=consumed)


def unlabeled_stream(
    dataset, batch_size: int = 2, seed: int = 0, num_workers: int = 0, enabled: bool = True
) -> EndlessLoader | None:
    """The endless unlabelled stream for :class:`bundle.method.trainer.PLGDFTrainer`, or ``None``.

    ``None`` (the trainer then optimises L_sup alone) when ``enabled`` is False, or, with a warning,
    when the unlabelled set is empty: a documented fallback to supervised training, never a crash.
    Batches smaller than ``batch_size`` are dropped; with fewer cases than ``batch_size`` the
    sampler repeats cases so that every batch is full.
    """
    import logging

    from monai.data import DataLoader

    if not enabled:
        return None
    if len(dataset) == 0:
        logging.getLogger("plgdf").warning(
            "the unlabelled set is empty: training falls back to the supervised loss on the labelled cases"
        )
        return None
    world, _ = dist_info()
    per_rank = max(batch_size, math.ceil(len(dataset) / world))
    per_rank = batch_size * math.ceil(per_rank / batch_size)
    sampler = RepeatedShuffleSampler(dataset, num_samples=per_rank, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, num_workers=num_workers)
    return EndlessLoader(loader)
