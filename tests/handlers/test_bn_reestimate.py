"""Tests of bundle/handlers/bn_reestimate.py: BatchNorm statistics re-estimated on clean patches, training untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from bundle.handlers.bn_reestimate import ReestimateBatchNorm


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Dropout3d(0.5))


def _handler(network: nn.Module, **kwargs) -> ReestimateBatchNorm:
    items = [{"image": np.full((1, 10, 9, 8), float(i), np.float32)} for i in range(3)]
    settings = {"patch_size": (8, 8, 8), "batches": 6, "batch_size": 2, "interval": 2, "seed": 0, **kwargs}
    return ReestimateBatchNorm(network, items[:1], items[1:], preprocessing=lambda d: d, **settings)


def test_statistics_come_from_the_clean_volumes_and_training_randomness_is_untouched() -> None:
    net = _network()
    bn = net[1]
    net.train()
    with torch.no_grad():  # "training" batches far from the clean volumes: the running mean drifts there
        for _ in range(50):
            net(torch.randn(2, 1, 8, 8, 8) * 5 + 40)
    drifted = bn.running_mean.clone()
    handler = _handler(net)
    torch.manual_seed(123)
    np.random.seed(7)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(7)
    handler(type("E", (), {"state": type("S", (), {"iteration": 2})()})())
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_numpy)
    # the clean volumes hold 0, 1 and 2 (conv of a constant patch): the mean is that of their conv responses
    conv = net[0]
    with torch.no_grad():
        responses = [conv(torch.full((1, 1, 8, 8, 8), float(v))).mean(dim=(0, 2, 3, 4)) for v in range(3)]
    lo, hi = torch.stack(responses).min(0).values, torch.stack(responses).max(0).values
    assert ((bn.running_mean >= lo - 1e-4) & (bn.running_mean <= hi + 1e-4)).all()
    assert not torch.allclose(bn.running_mean, drifted)
    assert bn.momentum == 0.1 and net.training  # momentum and mode restored


def test_reproducible_per_iteration_and_switch_off(monkeypatch) -> None:
    a, b = _network(), _network()
    ha, hb = _handler(a, patch_size=(10, 8, 8)), _handler(b, patch_size=(10, 8, 8))
    batches = list(ha.patches(4))
    assert len(batches) == 6 and batches[0].shape == (2, 1, 10, 8, 8)
    assert all(torch.equal(x, y) for x, y in zip(batches, hb.patches(4)))
    assert not all(torch.equal(x, y) for x, y in zip(batches, ha.patches(6)))

    engine = Engine(lambda e, b: None)
    _handler(a, batches=0).attach(engine)
    assert not engine.has_event_handler(ha, Events.COMPLETED)
    calls = []
    original = ReestimateBatchNorm.__call__
    monkeypatch.setattr(
        ReestimateBatchNorm, "__call__", lambda self, e: calls.append(e.state.iteration) or original(self, e)
    )
    engine = Engine(lambda e, b: None)
    _handler(a, interval=2).attach(engine)
    engine.run([0] * 5, max_epochs=1)
    assert calls == [2, 4, 5]  # every interval, and at the end


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="bn_reestimate"):
        _handler(_network(), batch_size=0)


def test_other_networks_are_re_estimated_on_the_same_patches() -> None:
    """``also`` (the average model): each network gets the statistics it would get on its own, from the same patches,
    and the training's random stream is untouched."""
    net, average, alone = _network(), _network(), _network()
    with torch.no_grad():
        average[0].weight.mul_(2.0)
        alone[0].weight.mul_(2.0)
    engine = type("E", (), {"state": type("S", (), {"iteration": 2})()})()
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    _handler(net, also=[average, None])(engine)
    assert torch.equal(torch.rand(2), expected)
    _handler(alone)(engine)
    assert torch.allclose(average[1].running_mean, alone[1].running_mean)
    assert torch.allclose(average[1].running_var, alone[1].running_var)
    assert not torch.allclose(average[1].running_mean, net[1].running_mean)
