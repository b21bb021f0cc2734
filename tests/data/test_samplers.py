"""Samplers and the endless unlabelled stream."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from bundle.data.samplers import EndlessLoader, RepeatedShuffleSampler, unlabeled_stream


def test_repeated_shuffle_sampler_len_and_coverage():
    s = RepeatedShuffleSampler(range(3), num_samples=10, seed=0)
    assert isinstance(s, DistributedSampler)  # MONAI's workflow calls set_epoch on it
    idx = list(s)
    assert len(idx) == len(s) == 10
    assert sorted(idx[:3]) == [0, 1, 2] and sorted(idx[3:6]) == [0, 1, 2]  # whole permutations
    s.set_epoch(1)
    assert list(s) != idx
    s.set_epoch(0)
    assert list(s) == idx  # seeded by seed + epoch


def test_repeated_shuffle_sampler_ranks_partition():
    per_rank = [list(RepeatedShuffleSampler(range(5), num_samples=5, num_replicas=2, rank=r)) for r in (0, 1)]
    full = list(RepeatedShuffleSampler(range(5), num_samples=10, num_replicas=1, rank=0))
    assert sorted(per_rank[0] + per_rank[1]) == sorted(full)
    assert per_rank[0] == full[0::2] and per_rank[1] == full[1::2]


def test_repeated_shuffle_sampler_errors():
    with pytest.raises(ValueError, match="empty"):
        RepeatedShuffleSampler([], num_samples=1)
    with pytest.raises(ValueError, match="num_samples"):
        RepeatedShuffleSampler(range(2), num_samples=0)


def test_endless_loader_reshuffles_every_pass():
    data = torch.arange(4)
    loader = DataLoader(data, batch_size=2, sampler=RepeatedShuffleSampler(data, seed=3))
    stream = EndlessLoader(loader)
    batches = [next(stream).tolist() for _ in range(8)]  # 4 passes
    passes = [sorted(batches[2 * i] + batches[2 * i + 1]) for i in range(4)]
    assert all(p == [0, 1, 2, 3] for p in passes)
    orders = [batches[2 * i] + batches[2 * i + 1] for i in range(4)]
    assert len({tuple(o) for o in orders}) > 1
    assert stream.state_dict()["passes"] == 4
    # a restored stream continues with the same pass numbering (same permutations)
    again = EndlessLoader(loader)
    again.load_state_dict({"passes": 2})
    assert [next(again).tolist() for _ in range(2)] == batches[4:6]


def test_unlabeled_stream_fallbacks(caplog):
    assert unlabeled_stream([], batch_size=2) is None
    assert "empty" in caplog.text
    assert unlabeled_stream([{"image": torch.zeros(1)}], enabled=False) is None
    stream = unlabeled_stream([{"image": torch.zeros(1, 2)}], batch_size=2)  # one case, batch of 2
    assert next(stream)["image"].shape == (2, 1, 2)
