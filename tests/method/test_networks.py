"""Shapes, parameter count and train/eval behaviour of the four-output V-Net."""

from __future__ import annotations

import pytest
import torch

from bundle.method.networks import PLGDFVNet, count_parameters


def _expected_parameters(cin: int, ncls: int, f: int) -> int:
    """Parameter count derived from the architecture in docs/method_notes.md, layer by layer."""

    def conv(i, o, k):  # weight + bias
        return i * o * k**3 + o

    def bn(c):
        return 2 * c

    def stage(n, i, o):
        return sum(conv(i if j == 0 else o, o, 3) + bn(o) for j in range(n))

    def resample(i, o):  # 2x2x2 (transposed) conv + BN
        return conv(i, o, 2) + bn(o)

    enc = stage(1, cin, f) + stage(2, 2 * f, 2 * f) + stage(3, 4 * f, 4 * f) + stage(3, 8 * f, 8 * f)
    enc += stage(3, 16 * f, 16 * f)
    down = resample(f, 2 * f) + resample(2 * f, 4 * f) + resample(4 * f, 8 * f) + resample(8 * f, 16 * f)
    dec = stage(3, 8 * f, 8 * f) + stage(3, 4 * f, 4 * f) + stage(2, 2 * f, 2 * f) + stage(1, f, f)
    up = resample(16 * f, 8 * f) + resample(8 * f, 4 * f) + resample(4 * f, 2 * f) + resample(2 * f, f)
    heads = conv(f, ncls, 1) + conv(2 * f, ncls, 1) + conv(4 * f, ncls, 1) + conv(8 * f, ncls, 1)
    return enc + down + dec + up + heads


def test_parameter_count_width16_two_classes():
    net = PLGDFVNet(in_channels=1, out_channels=2, n_filters=16)
    n = count_parameters(net)
    assert n == _expected_parameters(1, 2, 16)
    assert n == 9_449_320  # "9,449,320 parameters at width 16" (method_notes.md)


@pytest.mark.parametrize("shape", [(16, 16, 16), (32, 16, 48), (48, 32, 16)])
@pytest.mark.parametrize("cin,ncls", [(1, 2), (2, 3)])
def test_output_shapes(shape, cin, ncls):
    net = PLGDFVNet(in_channels=cin, out_channels=ncls, n_filters=2).train()
    x = torch.randn(2, cin, *shape)
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == 4
    for o in outs:
        assert o.shape == (2, ncls, *shape)
    net.eval()
    with torch.no_grad():
        p1 = net(x)
    assert isinstance(p1, torch.Tensor) and p1.shape == (2, ncls, *shape)


def test_eval_output_equals_train_p1_without_dropout():
    torch.manual_seed(0)
    net = PLGDFVNet(n_filters=4, dropout=False)
    x = torch.randn(2, 1, 32, 32, 16)
    net.eval()  # freeze BN statistics so both modes normalise alike
    with torch.no_grad():
        p1_eval = net(x)
    # train-mode forward with BN in eval mode: only the return type differs
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.eval()
    with torch.no_grad():
        outs = net(x)
    torch.testing.assert_close(outs[0], p1_eval, rtol=0, atol=0)


def test_dropout_switch():
    net = PLGDFVNet(n_filters=2, dropout=True).train()
    x = torch.randn(2, 1, 16, 16, 16)
    torch.manual_seed(1)
    a = net(x)[0]
    torch.manual_seed(2)
    b = net(x)[0]
    assert not torch.allclose(a, b)
    net = PLGDFVNet(n_filters=2, dropout=False).train()
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout3d):
            assert m.p == 0.0


def test_aux_heads_upsampling_modes():
    """P3 and P4 are nearest up-sampled: constant over 4^3 / 8^3 blocks; P2 is trilinear (not blocky)."""
    torch.manual_seed(0)
    net = PLGDFVNet(n_filters=2, dropout=False).train()
    _, p2, p3, p4 = net(torch.randn(2, 1, 32, 32, 32))
    for p, k in ((p3, 4), (p4, 8)):
        blocks = p.unfold(2, k, k).unfold(3, k, k).unfold(4, k, k)
        assert torch.equal(blocks.amax(dim=(-1, -2, -3)), blocks.amin(dim=(-1, -2, -3)))
    b2 = p2.unfold(2, 2, 2).unfold(3, 2, 2).unfold(4, 2, 2)
    assert not torch.equal(b2.amax(dim=(-1, -2, -3)), b2.amin(dim=(-1, -2, -3)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="out_channels"):
        PLGDFVNet(out_channels=1)
