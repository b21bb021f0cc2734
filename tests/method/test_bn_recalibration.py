"""BatchNorm re-estimation on clean patches (PLGDF+ candidate)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bundle.method.bn_recalibration import reestimate_batchnorm
from bundle.method.networks import PLGDFVNet


def test_running_statistics_become_the_average_over_the_batches():
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 3, 3, padding=1)
    net = nn.Sequential(conv, nn.BatchNorm3d(3))
    net.eval()
    batches = [torch.randn(2, 1, 6, 6, 6) + k for k in range(3)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert reestimate_batchnorm(net, batches) == 3
    with torch.no_grad():
        feats = [conv(b) for b in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3, 4)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3, 4), unbiased=True) for f in feats]).mean(0)
    bn = net[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, atol=1e-4)
    assert bn.momentum == 0.1 and not net.training  # restored
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())  # weights untouched


def test_the_plgdf_network_and_errors():
    net = PLGDFVNet(1, 2, n_filters=2).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reestimate_batchnorm(net, [torch.randn(2, 1, 16, 16, 16)])
    changed = [k for k in before if "running_mean" in k and not torch.equal(before[k], net.state_dict()[k])]
    assert changed and not net.training
    with pytest.raises(ValueError, match="no batches"):
        reestimate_batchnorm(net, [])
    with pytest.raises(ValueError, match="no BatchNorm"):
        reestimate_batchnorm(nn.Conv3d(1, 1, 1), [torch.randn(1, 1, 2, 2, 2)])
