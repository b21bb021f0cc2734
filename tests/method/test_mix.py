"""Tests of bundle.method.mix: bounded noise and the Mix module."""

from __future__ import annotations

import pytest
import torch

from bundle.method.mix import MixModule, add_noise


def test_noise_bounds_and_std():
    torch.manual_seed(0)
    x = torch.full((4, 1, 32, 32, 25), 3.0)
    noise = add_noise(x) - x
    assert noise.abs().max().item() <= 0.2 + 1e-6
    # N(0, 0.1^2) clipped at +-2 std: std = 0.1 * sqrt(0.9205) = 0.0959, 4.55 % of the draws land on the clip
    assert 0.093 < noise.std().item() < 0.099
    assert abs(noise.mean().item()) < 2e-3
    on_clip = (noise.abs() > 0.2 - 1e-6).float().mean().item()
    assert 0.035 < on_clip < 0.056
    # independent per voxel: no two neighbouring voxels share a draw
    assert (noise[..., 1:] != noise[..., :-1]).float().mean().item() > 0.95


def test_noise_generator_and_copies():
    x = torch.zeros(2, 1, 4, 4, 4)
    a = add_noise(x, generator=torch.Generator().manual_seed(3))
    b = add_noise(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(add_noise(x), add_noise(x))  # each call is a new copy
    wide = add_noise(x, std=1.0, clip=0.5)
    assert wide.abs().max().item() <= 0.5
    assert torch.equal(add_noise(x, std=0.0), x)
    with pytest.raises(ValueError, match="std"):
        add_noise(x, std=-0.1)
    with pytest.raises(ValueError, match="clip"):
        add_noise(x, clip=-1.0)


def test_mix_formula_per_row():
    torch.manual_seed(0)
    n, m = 6, 3
    x_u = torch.rand(n, 1, 4, 4, 4) + 10.0
    x_l = torch.arange(m, dtype=torch.float32).view(m, 1, 1, 1, 1).expand(m, 1, 4, 4, 4) * 100.0  # row j = 100 j
    x_mix, lam = MixModule()(x_u, x_l)
    assert x_mix.shape == x_u.shape and lam.shape == (n,)
    assert (lam >= 0.5).all() and (lam <= 1.0).all()
    for i in range(n):
        # recover the partner from the constant labelled image, then check the formula exactly
        candidates = [lam[i] * x_u[i] + (1 - lam[i]) * x_l[j] for j in range(m)]
        assert sum(torch.allclose(x_mix[i], c, atol=1e-5) for c in candidates) == 1


def test_mix_hand_values_and_reproducible():
    x_u = torch.ones(2, 1, 2, 2, 2)
    x_l = torch.zeros(1, 1, 2, 2, 2)
    torch.manual_seed(7)
    x_mix, lam = MixModule(alpha=0.75)(x_u, x_l)
    # 1 * lam + 0 * (1 - lam): the mixed image is lambda' everywhere
    assert torch.allclose(x_mix, lam.view(2, 1, 1, 1, 1).expand_as(x_mix))
    torch.manual_seed(7)
    x_mix2, lam2 = MixModule(alpha=0.75)(x_u, x_l)
    assert torch.equal(lam, lam2) and torch.equal(x_mix, x_mix2)


def test_mix_draws_cover_partners_and_weights():
    torch.manual_seed(1)
    n, m = 400, 4
    x_u = torch.zeros(n, 1, 1)
    x_l = torch.arange(1, m + 1, dtype=torch.float32).view(m, 1, 1)
    x_mix, lam = MixModule()(x_u, x_l)
    partner = torch.round(x_mix.view(n) / (1 - lam)).long() - 1  # x_mix = (1 - lam) * (j + 1)
    valid = lam < 0.99  # avoid dividing by ~0
    counts = torch.bincount(partner[valid], minlength=m)
    assert (counts > 0.15 * valid.sum()).all()
    # E[max(L, 1 - L)] for L ~ Beta(0.75, 0.75) is about 0.778; a one-sided draw would sit near 0.5 or 1
    assert 0.72 < lam.mean().item() < 0.82


def test_mix_errors():
    with pytest.raises(ValueError, match="alpha"):
        MixModule(alpha=0.0)
    with pytest.raises(ValueError, match="batch size"):
        MixModule()(torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="at least one row"):
        MixModule()(torch.zeros(2, 1, 4), torch.zeros(0, 1, 4))
