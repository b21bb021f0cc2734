"""Tests of bundle.inference.inferers: the paper's strided sliding window (UA-MT / MC-Net ``test_single_case``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.inferers import Inferer

from bundle.inference.inferers import StridedSlidingWindowInferer, count_windows, lattice_windows, window_starts


def _reference_loop(net, image: np.ndarray, patch: tuple[int, int, int], stride: tuple[int, int, int]) -> np.ndarray:
    """A transcription of the reference ``test_single_case`` (one image (H, W, D), num_classes from the net)."""
    w, h, d = image.shape
    pads = [max(p - s, 0) for s, p in zip((w, h, d), patch)]
    lr = [(p // 2, p - p // 2) for p in pads]
    if any(pads):
        image = np.pad(image, lr, mode="constant", constant_values=0)
    ww, hh, dd = image.shape
    sx, sy, sz = (math.ceil((n - p) / s) + 1 for n, p, s in zip((ww, hh, dd), patch, stride))
    score_map = None
    cnt = np.zeros(image.shape, dtype=np.float32)
    for x in range(sx):
        xs = min(stride[0] * x, ww - patch[0])
        for y in range(sy):
            ys = min(stride[1] * y, hh - patch[1])
            for z in range(sz):
                zs = min(stride[2] * z, dd - patch[2])
                tile = image[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]]
                with torch.no_grad():
                    y1 = net(torch.from_numpy(np.ascontiguousarray(tile))[None, None].float())
                prob = torch.softmax(y1, dim=1)[0].numpy()
                if score_map is None:
                    score_map = np.zeros((prob.shape[0], *image.shape), dtype=np.float32)
                score_map[:, xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += prob
                cnt[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]] += 1
    score_map = score_map / cnt[None]
    (wl, _), (hl, _), (dl, _) = lr
    return score_map[:, wl : wl + w, hl : hl + h, dl : dl + d]


def _conv_net(out_channels: int = 3, in_channels: int = 1) -> torch.nn.Module:
    """Position-dependent output (zero padding makes window borders differ), so the averaging is exercised."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, out_channels, 3, padding=1)
    ).eval()


def test_window_starts_paper_la_stride():
    assert window_starts(215, 112, 18) == [0, 18, 36, 54, 72, 90, 103]
    assert window_starts(140, 112, 18) == [0, 18, 28]
    assert window_starts(88, 80, 4) == [0, 4, 8]
    assert window_starts(80, 80, 4) == [0]
    assert window_starts(96, 80, 16) == [0, 16]  # exact fit: no duplicate last window
    with pytest.raises(ValueError, match="size"):
        window_starts(70, 80, 4)
    with pytest.raises(ValueError, match="stride"):
        window_starts(100, 80, 0)


def test_count_windows():
    assert count_windows((215, 140, 88), (112, 112, 80), (18, 18, 4)) == 7 * 3 * 3
    inferer = StridedSlidingWindowInferer((112, 112, 80), (18, 18, 4))
    assert inferer.count_windows((215, 140, 88)) == 63
    assert inferer.count_windows((100, 100, 60)) == 1  # smaller than the window: padded to one window
    assert StridedSlidingWindowInferer((96, 96, 96), 16).count_windows((200, 96, 100)) == 8 * 1 * 2


def test_is_a_monai_inferer_and_validates_arguments():
    assert isinstance(StridedSlidingWindowInferer((8, 8, 8), 4), Inferer)
    with pytest.raises(ValueError, match="stride"):
        StridedSlidingWindowInferer((8, 8, 8), (4, 9, 4))
    with pytest.raises(ValueError, match="one value per axis"):
        StridedSlidingWindowInferer((8, 8, 8), (4, 4))
    with pytest.raises(ValueError, match="sw_batch_size"):
        StridedSlidingWindowInferer((8, 8, 8), 4, sw_batch_size=0)
    with pytest.raises(ValueError, match="pad_mode"):
        StridedSlidingWindowInferer((8, 8, 8), 4, pad_mode="edge")


@pytest.mark.parametrize("shape", [(20, 17, 13), (5, 9, 4), (8, 20, 6)])
def test_equals_reference_loop(shape):
    """Uniform averaging of window softmaxes, incl. volumes smaller than the window (padded, then cropped back)."""
    net = _conv_net()
    roi, stride = (8, 8, 6), (3, 5, 2)
    image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    expected = _reference_loop(net, image, roi, stride)
    with torch.no_grad():
        out = StridedSlidingWindowInferer(roi, stride)(torch.from_numpy(image)[None, None], net)
    assert out.shape == (1, 3, *shape)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.sum(dim=1).numpy(), 1.0, atol=1e-6)


def test_window_batching_and_image_batch_do_not_change_the_result():
    net = _conv_net(out_channels=2, in_channels=2)
    x = torch.randn(2, 2, 19, 14, 11, generator=torch.Generator().manual_seed(3))
    roi, stride = (8, 8, 8), (4, 3, 2)
    with torch.no_grad():
        one = StridedSlidingWindowInferer(roi, stride, num_classes=2)(x, net)
        many = StridedSlidingWindowInferer(roi, stride, num_classes=2, sw_batch_size=5)(x, net)
        single = StridedSlidingWindowInferer(roi, stride)(x[1:], net)
    assert one.shape == (2, 2, 19, 14, 11)
    torch.testing.assert_close(many, one, rtol=0, atol=1e-6)
    torch.testing.assert_close(single[0], one[1], rtol=0, atol=1e-6)


class _ConstantNet(torch.nn.Module):
    """Returns the same logits at every voxel of every window."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0], len(self.logits), *x.shape[2:])
        return self.logits.view(1, -1, 1, 1, 1).expand(shape).clone()


def test_constant_network_gives_its_softmax():
    x = torch.zeros(1, 1, 23, 11, 9)
    out = StridedSlidingWindowInferer((8, 8, 4), (3, 3, 1))(x, _ConstantNet([0.0, 0.0, 0.0, 0.0]))
    assert torch.equal(out, torch.full_like(out, 0.25))  # exactly representable: exact after averaging
    logits = [0.3, -1.2, 2.0]
    out = StridedSlidingWindowInferer((8, 8, 4), (3, 3, 1), num_classes=3)(x, _ConstantNet(logits))
    expected = torch.softmax(torch.tensor(logits), dim=0).view(1, 3, 1, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-7)


def test_bad_network_outputs_raise():
    x = torch.zeros(1, 1, 10, 10, 10)
    inferer = StridedSlidingWindowInferer((8, 8, 8), 4, num_classes=3)
    with pytest.raises(ValueError, match="num_classes=3"):
        inferer(x, _ConstantNet([0.0, 1.0]))
    with pytest.raises(TypeError, match="eval"):
        inferer(x, lambda t: [t, t])
    with pytest.raises(ValueError, match="spatial"):
        inferer(torch.zeros(10, 10, 10), _ConstantNet([0.0, 1.0]))


def test_with_the_bundle_network_in_eval_mode():
    from bundle.method.networks import PLGDFVNet

    torch.manual_seed(0)
    net = PLGDFVNet(n_filters=2).eval()
    x = torch.randn(1, 1, 20, 18, 12)
    with torch.no_grad():
        out = StridedSlidingWindowInferer((16, 16, 16), (4, 4, 4), sw_batch_size=2)(x, net)
    assert out.shape == (1, 2, 20, 18, 12)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(1, 20, 18, 12))


def test_probability_average_of_monai_windows_equals_the_strided_protocol():
    """MONAI's windows with constant blending of probabilities = uniform averaging of window softmaxes (same starts);
    blending logits (the MONAI default) is a different, measurably different, estimate."""
    from monai.inferers import SlidingWindowInferer

    from bundle.inference.inferers import ProbabilityInferer

    net = _conv_net(out_channels=2)
    x = torch.randn(1, 1, 20, 14, 11)
    roi, overlap = (8, 8, 4), [0.5, 0.75, 0.5]  # intervals 4, 2, 2
    strided = ProbabilityInferer(StridedSlidingWindowInferer(roi, (4, 2, 2), sw_batch_size=3))
    monai_probs = ProbabilityInferer(
        SlidingWindowInferer(roi, overlap=overlap, mode="constant"), average="probabilities"
    )
    monai_logits = ProbabilityInferer(SlidingWindowInferer(roi, overlap=overlap, mode="constant"))
    with torch.no_grad():
        expected, probs, logits = strided(x, net), monai_probs(x, net), monai_logits(x, net)
    torch.testing.assert_close(probs, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(()), atol=1e-5)
    assert (logits - expected).abs().max() > 1e-4


def test_probability_average_with_gaussian_weights_is_a_weighted_mean_of_window_softmaxes():
    from monai.data.utils import compute_importance_map
    from monai.inferers import SlidingWindowInferer

    from bundle.inference.inferers import ProbabilityInferer

    net = _conv_net(out_channels=2)
    x = torch.randn(1, 1, 12, 8, 8)
    roi = (8, 8, 8)  # windows start at 0 and 4 along the first axis only
    inferer = ProbabilityInferer(
        SlidingWindowInferer(roi, overlap=0.5, mode="gaussian", sigma_scale=0.5), average="probabilities"
    )
    weight = compute_importance_map(roi, mode="gaussian", sigma_scale=0.5).float()
    with torch.no_grad():
        got = inferer(x, net)
        p0, p4 = (torch.softmax(net(x[..., s : s + 8, :, :]), 1)[0] for s in (0, 4))
    num = torch.zeros(2, 12, 8, 8)
    den = torch.zeros(1, 12, 8, 8)
    for start, prob in ((0, p0), (4, p4)):
        num[:, start : start + 8] += prob * weight
        den[:, start : start + 8] += weight
    torch.testing.assert_close(got[0], num / den, atol=1e-5, rtol=1e-4)


def test_probability_inferer_rejects_an_unknown_average():
    from monai.inferers import SlidingWindowInferer

    from bundle.inference.inferers import ProbabilityInferer

    with pytest.raises(ValueError, match="average must be"):
        ProbabilityInferer(SlidingWindowInferer((8, 8, 8)), average="votes")


def _grid(shape, roi, stride):
    axes = [window_starts(max(s, r), r, k) for s, r, k in zip(shape, roi, stride)]
    return [tuple(c) for c in np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes)).tolist()]


@pytest.mark.parametrize(
    "shape, roi, stride, keep",
    [
        ((108, 70, 44), (48, 48, 32), (9, 9, 2), 7),
        ((215, 140, 88), (112, 112, 80), (18, 18, 4), 10),
        ((20, 17, 13), (8, 8, 6), (3, 5, 2), 4),
        ((5, 9, 4), (8, 8, 6), (3, 5, 2), 3),
        ((30, 21), (12, 8), (3, 2), 4),
    ],
)
def test_lattice_windows_are_a_covering_subset_of_the_grid(shape, roi, stride, keep):
    corners = lattice_windows(shape, roi, stride, keep)
    grid = _grid(shape, roi, stride)
    assert set(corners) <= set(grid) and len(set(corners)) == len(corners)
    assert corners == [c for c in grid if c in set(corners)]  # grid order
    padded = [max(s, r) for s, r in zip(shape, roi)]
    covered = np.zeros(padded, dtype=bool)
    for c in corners:
        covered[tuple(slice(a, a + r) for a, r in zip(c, roi))] = True
    assert covered.all()
    axes = [window_starts(p, r, k) for p, r, k in zip(padded, roi, stride)]
    on_lattice = [c for c in corners if sum((d + 1) * a.index(v) for d, (a, v) in enumerate(zip(axes, c))) % keep == 0]
    all_on_lattice = [c for c in grid if sum((d + 1) * a.index(v) for d, (a, v) in enumerate(zip(axes, c))) % keep == 0]
    assert on_lattice == all_on_lattice  # every lattice window runs; the rest only fill gaps
    assert len(corners) < len(grid) or len(grid) <= keep


def test_lattice_windows_counts_and_keep_one_is_the_grid():
    assert len(lattice_windows((108, 70, 44), (48, 48, 32), (9, 9, 2), 1)) == 224
    assert lattice_windows((20, 17, 13), (8, 8, 6), (3, 5, 2), 1) == _grid((20, 17, 13), (8, 8, 6), (3, 5, 2))
    assert len(lattice_windows((108, 70, 44), (48, 48, 32), (9, 9, 2), 7)) == 40  # 32 on the lattice + 8 to cover
    assert len(lattice_windows((215, 140, 88), (112, 112, 80), (18, 18, 4), 10)) == 12  # of 63
    with pytest.raises(ValueError, match="keep"):
        lattice_windows((20, 17, 13), (8, 8, 6), (3, 5, 2), 0)


def _weighted_reference(net, x, roi, plan, weight):
    score = torch.zeros((x.shape[0], 2, *x.shape[2:]))
    count = torch.zeros(x.shape[2:])
    for c, filled in plan:
        w = weight * (1e-3 if filled else 1.0)
        sl = tuple(slice(a, a + r) for a, r in zip(c, roi))
        with torch.no_grad():
            score[(slice(None), slice(None), *sl)] += torch.softmax(net(x[(slice(None), slice(None), *sl)]), 1) * w
        count[sl] += w
    return score / count


def test_keep_and_gaussian_weights_match_a_direct_loop():
    from monai.data.utils import compute_importance_map

    net = _conv_net(out_channels=2)
    x = torch.randn(1, 1, 30, 21, 14, generator=torch.Generator().manual_seed(5))
    roi, stride = (12, 12, 8), (3, 3, 2)
    corners = lattice_windows((30, 21, 14), roi, stride, 5)
    plan = lattice_windows((30, 21, 14), roi, stride, 5, with_fill_flags=True)
    assert [c for c, _ in plan] == corners and 0 < sum(f for _, f in plan) < len(plan)  # some added to cover
    inferer = StridedSlidingWindowInferer(roi, stride, keep=5, sigma_scale=0.5, sw_batch_size=3)
    assert inferer.count_windows((30, 21, 14)) == len(corners) < count_windows((30, 21, 14), roi, stride)
    weight = compute_importance_map(roi, mode="gaussian", sigma_scale=0.5)
    with torch.no_grad():
        out = inferer(x, net)
    torch.testing.assert_close(out, _weighted_reference(net, x, roi, plan, weight), rtol=0, atol=1e-6)
    with torch.no_grad():  # uniform weights on the subset: the plain mean over the kept windows
        uniform = StridedSlidingWindowInferer(roi, stride, keep=5)(x, net)
    torch.testing.assert_close(uniform, _weighted_reference(net, x, roi, plan, 1.0), rtol=0, atol=1e-6)
    assert not torch.allclose(uniform, out, atol=1e-4)  # the weights change the blend


@pytest.mark.parametrize(
    "kwargs", [{"keep": 0}, {"keep": 2.5}, {"keep": True}, {"sigma_scale": 0}, {"sigma_scale": [1, 2]}]
)
def test_bad_keep_or_sigma_raise(kwargs):
    with pytest.raises(ValueError, match="keep|sigma_scale"):
        StridedSlidingWindowInferer((8, 8, 8), 4, **kwargs)


def test_window_flips_mirror_every_other_window_and_flip_its_output_back():
    """``window_flips=[[], [0, 1, 2]]``: window n of the plan is seen mirrored when n is odd, its softmax mirrored
    back before blending; with batching and an image batch the result is the same as a direct loop."""
    from bundle.inference.inferers import FILL_WEIGHT

    net = _conv_net(out_channels=2)  # position-dependent output: a mirrored window gives other probabilities
    x = torch.randn(2, 1, 30, 21, 14, generator=torch.Generator().manual_seed(6))
    roi, stride = (12, 12, 8), (3, 3, 2)
    plan = lattice_windows((30, 21, 14), roi, stride, 5, with_fill_flags=True)
    flips = [(), (0, 1, 2)]
    score = torch.zeros(2, 2, 30, 21, 14)
    count = torch.zeros(1, 1, 30, 21, 14)
    with torch.no_grad():
        for n, (corner, filled) in enumerate(plan):
            sl = (slice(None), slice(None), *(slice(c, c + r) for c, r in zip(corner, roi)))
            dims = [a + 2 for a in flips[n % 2]]
            prob = torch.softmax(net(x[sl].flip(dims) if dims else x[sl]), 1)
            w = FILL_WEIGHT if filled else 1.0
            score[sl] += (prob.flip(dims) if dims else prob) * w
            count[sl] += w
        for batch in (1, 4):
            out = StridedSlidingWindowInferer(roi, stride, keep=5, sw_batch_size=batch, window_flips=flips)(x, net)
            torch.testing.assert_close(out, score / count, rtol=0, atol=1e-6)
        plain = StridedSlidingWindowInferer(roi, stride, keep=5)(x, net)
        same = StridedSlidingWindowInferer(roi, stride, keep=5, window_flips=[[]])(x, net)
    torch.testing.assert_close(same, plain, rtol=0, atol=0)  # [[]] and () are no flipping
    assert not torch.allclose(plain, score / count, atol=1e-4)  # the flips change the blend


@pytest.mark.parametrize("flips", ["xyz", [[3]], [[0, 0]], [0, 1], [[True]], [["0"]]])
def test_bad_window_flips_raise(flips):
    with pytest.raises(ValueError, match="window_flips must be a list of lists of spatial axes 0..2"):
        StridedSlidingWindowInferer((8, 8, 8), 4, window_flips=flips)
