"""Tests of bundle.method.losses against hand-computed values and the authors' reference test vectors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.method.losses import (
    PyramidConsistencyLoss,
    PyramidSupervisedLoss,
    SharpeningLoss,
    SoftmaxPyramid,
    one_hot,
    soft_dice_loss,
)
from bundle.method.rampup import ConsistencyRampUp

try:
    from tests.conftest import SHARED_FIXTURES
except ImportError:  # pragma: no cover - tests/ not importable as a package
    _data = Path(os.environ.get("PLGDF_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    SHARED_FIXTURES = _data.parent / "fixtures"

FIXTURE = SHARED_FIXTURES / "plgdf_reference_losses.npz"


def logits_from_probs(*voxels: tuple[float, ...]) -> torch.Tensor:
    """(1, C, V) logits whose softmax over C is the given per-voxel probabilities."""
    return torch.log(torch.tensor(voxels, dtype=torch.float64)).T.unsqueeze(0).float()


# --------------------------------------------------------------------------------------------------- Dice
# one sample, 2 classes, 2 voxels: p = [[0.8, 0.4], [0.2, 0.6]], g = [[1, 0], [0, 1]]
# class 0: sum pg = 0.8, sum p^2 = 0.8, sum g^2 = 1; class 1: sum pg = 0.6, sum p^2 = 0.4, sum g^2 = 1
P_SMALL = torch.tensor([[[0.8, 0.4], [0.2, 0.6]]])
G_SMALL = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])


def test_dice_paper_by_hand():
    # (1 - 1.6 / 1.8 + 1 - 1.2 / 1.4) / 2 = (1/9 + 1/7) / 2 = 8/63
    assert soft_dice_loss(P_SMALL, G_SMALL).item() == pytest.approx(8 / 63, rel=1e-6)


def test_dice_reference_by_hand():
    # (1 - 0.8 / 1.8 + 1 - 0.6 / 1.4) / 2 = (5/9 + 4/7) / 2 = 71/126
    assert soft_dice_loss(P_SMALL, G_SMALL, form="reference").item() == pytest.approx(71 / 126, rel=1e-6)


def test_dice_pools_the_batch():
    # sample 0: p = g = (1, 0); sample 1: p = (0.5, 0.5), g = (0, 1), one voxel each
    # pooled class 0: 1 - 2 * 1 / (1.25 + 1) = 1/9; class 1: 1 - 2 * 0.5 / (0.25 + 1) = 1/5 -> 7/45
    # (the mean of per-sample Dice would be (0 + 0.6333...) / 2 instead)
    p = torch.tensor([[[1.0], [0.0]], [[0.5], [0.5]]])
    g = torch.tensor([[[1.0], [0.0]], [[0.0], [1.0]]])
    assert soft_dice_loss(p, g).item() == pytest.approx(7 / 45, rel=1e-6)


def test_dice_eps_only_in_denominator():
    # an empty class in both p and g: 1 - 0 / (0 + eps) = 1
    p = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    g = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert soft_dice_loss(p, g).item() == pytest.approx((0.0 + 1.0) / 2)


def test_dice_errors():
    with pytest.raises(ValueError, match="form"):
        soft_dice_loss(P_SMALL, G_SMALL, form="mcnet")
    with pytest.raises(ValueError, match="same shape"):
        soft_dice_loss(P_SMALL, G_SMALL[..., :1])


def test_one_hot():
    y = torch.tensor([[0, 2, 1]])
    expected = torch.tensor([[[1.0, 0, 0], [0, 0, 1], [0, 1, 0]]])
    assert torch.equal(one_hot(y, 3), expected)


# --------------------------------------------------------------------------------------------------- CE + Dice
def test_pyramid_supervised_by_hand():
    # voxel 0: p = (0.8, 0.2), label 0; voxel 1: p = (0.4, 0.6), label 1 (the Dice example above)
    z = logits_from_probs((0.8, 0.2), (0.4, 0.6))
    y = torch.tensor([[0, 1]])
    ce = -(math.log(0.8) + math.log(0.6)) / 2
    loss, parts = PyramidSupervisedLoss()([z, z], y)
    assert parts["ce"].item() == pytest.approx(2 * ce, rel=1e-6)
    assert parts["dice"].item() == pytest.approx(2 * 8 / 63, rel=1e-6)
    assert loss.item() == pytest.approx(0.5 * 2 * (ce + 8 / 63), rel=1e-6)
    # reference Dice, weight 1, target with a channel dim
    loss_ref, parts_ref = PyramidSupervisedLoss(dice_form="reference", weight=1.0)([z], y.unsqueeze(1))
    assert parts_ref["dice"].item() == pytest.approx(71 / 126, rel=1e-6)
    assert loss_ref.item() == pytest.approx(ce + 71 / 126, rel=1e-6)
    assert not parts["ce"].requires_grad


def test_pyramid_supervised_errors_and_grad():
    z = torch.zeros(2, 3, 4, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="target"):
        PyramidSupervisedLoss()([z], torch.zeros(2, 4, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="share one shape"):
        PyramidSupervisedLoss()([z, z[:1]], torch.zeros(2, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        PyramidSupervisedLoss()([], torch.zeros(2, 4, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="dice_form"):
        PyramidSupervisedLoss(dice_form="x")
    loss, _ = PyramidSupervisedLoss()([z, 2 * z], torch.ones(2, 4, 4, 4, dtype=torch.long))
    loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_losses_float32_under_autocast():
    z = torch.randn(2, 2, 4, 4, 4).bfloat16()
    y = torch.randint(0, 2, (2, 4, 4, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [PyramidSupervisedLoss()([z, z], y)[0], PyramidConsistencyLoss()([z, z.flip(2)]), SharpeningLoss()([z])]
    for out in outs:
        assert out.dtype == torch.float32 and out.dim() == 0 and torch.isfinite(out)


# --------------------------------------------------------------------------------------------------- consistency
def _kl(pm, pk):
    return sum(a * math.log(a / b) for a, b in zip(pm, pk))


def test_consistency_two_classes_by_hand():
    # two outputs, two voxels. voxel a: p1 = (0.8, 0.2), p2 = (0.4, 0.6), mean (0.6, 0.4), ||p_k - p_mean||^2 = 0.08
    # voxel b: p1 = p2 = (0.5, 0.5): D = 0, distance 0, exp(-D) = 1
    z1 = logits_from_probs((0.8, 0.2), (0.5, 0.5))
    z2 = logits_from_probs((0.4, 0.6), (0.5, 0.5))
    d1, d2 = _kl((0.6, 0.4), (0.8, 0.2)), _kl((0.6, 0.4), (0.4, 0.6))
    # sum_i over the two voxels: (0.08 e^-D + 0) / (e^-D + 1), plus mean_i D = D / 2
    expected = sum(0.08 * math.exp(-d) / (math.exp(-d) + 1) + d / 2 for d in (d1, d2)) / 2
    assert expected == pytest.approx(0.0845796, rel=1e-5)  # D1 = 0.104650, D2 = 0.081093
    assert PyramidConsistencyLoss()([z1, z2]).item() == pytest.approx(expected, rel=1e-5)
    # reference form, 2 classes: the cubed difference cancels, only the KL term is left
    kl_only = (d1 + d2) / 2 / 2
    for detach in (True, False):
        out = PyramidConsistencyLoss(form="reference", detach_mean=detach)([z1, z2])
        assert out.item() == pytest.approx(kl_only, rel=1e-5)


def test_consistency_sums_over_the_whole_batch():
    # the same two voxels as above, but as two batch rows of one voxel each: identical value (i pools the batch)
    z1 = logits_from_probs((0.8, 0.2), (0.5, 0.5))
    z2 = logits_from_probs((0.4, 0.6), (0.5, 0.5))
    as_batch = [z.permute(2, 1, 0) for z in (z1, z2)]  # (2, C, 1)
    loss = PyramidConsistencyLoss()
    assert loss(as_batch).item() == pytest.approx(loss([z1, z2]).item(), rel=1e-6)


def test_consistency_three_classes_by_hand():
    # three outputs, one voxel; p_mean = (0.4, 0.3, 0.3)
    probs = [(0.7, 0.2, 0.1), (0.2, 0.2, 0.6), (0.3, 0.5, 0.2)]
    zs = [logits_from_probs(p) for p in probs]
    mean_kl = sum(_kl((0.4, 0.3, 0.3), p) for p in probs) / 3
    # paper: ||p_k - p_mean||^2 = 0.14, 0.14, 0.06 (one voxel, so the exp(-D) weights cancel)
    assert PyramidConsistencyLoss()(zs).item() == pytest.approx(0.34 / 3 + mean_kl, rel=1e-5)
    # reference: sum_c (p_mean - p_k)^3 = -0.018, -0.018, -0.006, each averaged over the 3 classes
    expected_ref = -0.042 / 9 + mean_kl
    assert PyramidConsistencyLoss(form="reference")(zs).item() == pytest.approx(expected_ref, rel=1e-5)
    assert expected_ref != pytest.approx(mean_kl, rel=1e-3)


def test_consistency_zero_when_outputs_agree_and_finite_for_extreme_logits():
    z = torch.randn(2, 3, 4, 4, 4)
    assert PyramidConsistencyLoss()([z, z, z]).item() == pytest.approx(0.0, abs=1e-6)
    extreme = torch.zeros(1, 2, 2, requires_grad=True)
    with torch.no_grad():
        extreme[0, 0, 0] = 200.0
    loss = PyramidConsistencyLoss(detach_mean=False)([extreme, -extreme])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(extreme.grad).all()


def test_consistency_detach_mean_changes_gradient_only():
    torch.manual_seed(0)
    z1, z2 = torch.randn(1, 3, 5), torch.randn(1, 3, 5)
    grads, values = [], []
    for detach in (True, False):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = PyramidConsistencyLoss(detach_mean=detach)([a, b])
        loss.backward()
        values.append(loss.item())
        grads.append(a.grad.clone())
    assert values[0] == pytest.approx(values[1])
    assert not torch.allclose(grads[0], grads[1])


def test_consistency_errors():
    with pytest.raises(ValueError, match="form"):
        PyramidConsistencyLoss(form="urpc")
    with pytest.raises(ValueError, match="at least 2 classes"):
        PyramidConsistencyLoss()([torch.zeros(1, 1, 4)])


# --------------------------------------------------------------------------------------------------- sharpening
def _sharp(p, t=0.1):
    return p ** (1 / t) / (p ** (1 / t) + (1 - p) ** (1 / t))


def test_sharpening_by_hand():
    # p = (0.6, 0.4): s(0.6) = 1 / (1 + (2/3)^10) = 0.982954, s(0.4) = 0.017046; loss = 0.382954^2
    z = logits_from_probs((0.6, 0.4))
    assert _sharp(0.6) == pytest.approx(0.9829540, rel=1e-6)
    assert SharpeningLoss()([z]).item() == pytest.approx(0.3829540**2, rel=1e-5)
    # 3 classes, p = (0.5, 0.3, 0.2); two identical levels -> same mean
    z3 = logits_from_probs((0.5, 0.3, 0.2))
    expected = sum((p - _sharp(p)) ** 2 for p in (0.5, 0.3, 0.2)) / 3
    assert SharpeningLoss()([z3, z3]).item() == pytest.approx(expected, rel=1e-5)
    # another temperature
    assert SharpeningLoss(temperature=0.5)([z]).item() == pytest.approx((0.6 - _sharp(0.6, 0.5)) ** 2, rel=1e-5)


def test_sharpening_safe_and_detach():
    z = torch.tensor([[[300.0, 0.0, -300.0], [-300.0, 0.0, 300.0]]], requires_grad=True)
    loss = SharpeningLoss(detach_target=False)([z])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    # at p = 0.5 the target is 0.5 too; the detached and non-detached gradients differ elsewhere
    torch.manual_seed(0)
    w = torch.randn(1, 3, 6)
    g = []
    for detach in (True, False):
        a = w.clone().requires_grad_()
        SharpeningLoss(detach_target=detach)([a]).backward()
        g.append(a.grad)
    assert not torch.allclose(g[0], g[1])
    with pytest.raises(ValueError, match="temperature"):
        SharpeningLoss(temperature=0.0)


# --------------------------------------------------------------------------------------------------- shared softmax
def test_softmax_pyramid_rows_are_views_of_one_log_softmax():
    torch.manual_seed(0)
    logits = [torch.randn(6, 3, 4, 4, 2, dtype=torch.bfloat16) for _ in range(2)]
    pyramid = SoftmaxPyramid.from_logits(logits)
    assert len(pyramid) == 2 and pyramid.shape == (6, 3, 4, 4, 2)
    for log_p, p, z in zip(pyramid.log_probs, pyramid.probs, logits):
        assert log_p.dtype == torch.float32 and torch.equal(log_p, torch.log_softmax(z.float(), dim=1))
        assert torch.allclose(p, torch.softmax(z.float(), dim=1), atol=1e-7) and torch.equal(p, log_p.exp())
    rows = pyramid.rows(2, 5)
    assert rows.shape == (3, 3, 4, 4, 2)
    assert rows.probs[1].data_ptr() == pyramid.probs[1][2:].data_ptr()  # a view, no copy
    with pytest.raises(ValueError, match="same shape"):
        SoftmaxPyramid(pyramid.log_probs, pyramid.probs[:1])


@pytest.mark.parametrize("n_classes", [2, 3])
def test_terms_on_one_shared_pyramid_equal_each_term_on_its_own_rows(n_classes):
    """What the trainer does (one pyramid over all rows, each term on its rows) equals each loss on its rows' logits,
    values and gradients."""
    torch.manual_seed(n_classes)
    logits = [torch.randn(8, n_classes, 6, 6, 4) * 3 for _ in range(4)]
    y_l, y_hat = torch.randint(0, n_classes, (2, 6, 6, 4)), torch.randint(0, n_classes, (4, 6, 6, 4))
    sup, consis, sharp = PyramidSupervisedLoss(), PyramidConsistencyLoss(), SharpeningLoss()
    results = []
    for shared in (False, True):
        outs = [z.clone().requires_grad_() for z in logits]
        if shared:
            pyramid = SoftmaxPyramid.from_logits(outs)
            terms = [
                sup.from_probs(pyramid.rows(0, 2), y_l)[0],
                sup.from_probs(pyramid.rows(2, 6), y_hat)[0],
                consis.from_probs(pyramid.rows(2)),
                sharp.from_probs(pyramid.rows(6)),
            ]
        else:
            terms = [
                sup([o[:2] for o in outs], y_l)[0],
                sup([o[2:6] for o in outs], y_hat)[0],
                consis([o[2:] for o in outs]),
                sharp([o[6:] for o in outs]),
            ]
        sum(terms).backward()
        results.append(([t.item() for t in terms], [o.grad for o in outs]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    for a, b in zip(results[0][1], results[1][1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-9)


def test_two_class_sharpening_equals_the_general_form():
    torch.manual_seed(0)
    z = torch.randn(2, 2, 5, 5) * 10
    mask = torch.tensor([[-math.inf, 0.0], [0.0, -math.inf]]).view(1, 2, 2, 1, 1)  # logsumexp over the other class
    general = torch.sigmoid((z - torch.logsumexp(z.unsqueeze(1) + mask, dim=2)) / 0.1)
    assert torch.equal(SharpeningLoss().sharpen(z), general)
    assert torch.allclose(SharpeningLoss().sharpen(torch.log_softmax(z, 1)), general, atol=1e-6)  # shift-invariant


# --------------------------------------------------------------------------------------------------- reference vectors
@pytest.fixture(scope="module")
def reference_vectors():
    if not FIXTURE.exists():
        pytest.skip(f"reference test vectors not available: {FIXTURE}")
    return dict(np.load(FIXTURE))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_reference_preset_reproduces_authors_code(reference_vectors, n_classes):
    ref = {k[3:]: v for k, v in reference_vectors.items() if k.startswith(f"c{n_classes}_")}
    outs = [torch.from_numpy(ref["logits"][k]) for k in range(4)]  # 4 x (8, C, 8, 8, 8)
    sup = PyramidSupervisedLoss(dice_form="reference", weight=0.5)
    l_sup, parts_lab = sup([o[0:2] for o in outs], torch.from_numpy(ref["label"]))
    l_semi, parts_unl = sup([o[2:6] for o in outs], torch.from_numpy(ref["pseudo"]))
    l_consis = PyramidConsistencyLoss(form="reference", detach_mean=False)([o[2:8] for o in outs])
    l_sharp = SharpeningLoss(temperature=0.1, detach_target=False)([o[6:8] for o in outs])
    w = ConsistencyRampUp(weight=1.0, length=6000, step=150)(3000)
    got = {
        "ce_lab": parts_lab["ce"],
        "dice_lab_mcnet": parts_lab["dice"],
        "ce_unl": parts_unl["ce"],
        "dice_unl_mcnet": parts_unl["dice"],
        "L_sup": l_sup,
        "L_semi": l_semi,
        "L_consis_reference": l_consis,
        "L_sharp": l_sharp,
        "total_at_t3000": l_sup + l_semi + w * (l_consis + l_sharp),
    }
    for name, value in got.items():
        assert value.item() == pytest.approx(float(ref[name]), rel=1e-5), name
    kl_only = PyramidConsistencyLoss(form="reference")([o[2:8] for o in outs])
    if n_classes == 2:
        assert kl_only.item() == pytest.approx(float(ref["L_consis_kl_only"]), rel=1e-5)
    else:  # the cubed term does not cancel for 3 classes
        assert float(ref["L_consis_kl_only"]) != pytest.approx(float(ref["L_consis_reference"]), rel=1e-4)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_reference_kl_only_term(reference_vectors, n_classes):
    """``L_consis_kl_only`` = mean_k mean_i D_k,i, rebuilt independently from the consistency loss."""
    logits = torch.from_numpy(reference_vectors[f"c{n_classes}_logits"][:, 2:8]).double()
    probs = torch.softmax(logits, dim=2)
    p_mean = probs.mean(0, keepdim=True)
    kl = (p_mean * (p_mean.log() - probs.log())).sum(2).mean()
    assert kl.item() == pytest.approx(float(reference_vectors[f"c{n_classes}_L_consis_kl_only"]), rel=1e-5)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_paper_form_differs_from_reference(reference_vectors, n_classes):
    outs = [torch.from_numpy(reference_vectors[f"c{n_classes}_logits"][k]) for k in range(4)]
    label = torch.from_numpy(reference_vectors[f"c{n_classes}_label"])
    _, parts = PyramidSupervisedLoss()([o[0:2] for o in outs], label)
    assert parts["dice"].item() != pytest.approx(float(reference_vectors[f"c{n_classes}_dice_lab_mcnet"]), rel=1e-2)
    paper = PyramidConsistencyLoss()([o[2:8] for o in outs]).item()
    assert paper > float(reference_vectors[f"c{n_classes}_L_consis_kl_only"])  # adds a positive rectified term


# --------------------------------------------------------------------------------------------------- two-class closed forms
def _general_pyramid(logits):
    """The general (C-class) pyramid of two-class logits: what ``from_logits`` builds for C > 2."""
    log_probs = [torch.log_softmax(z.float(), dim=1) for z in logits]
    return SoftmaxPyramid(log_probs, [lp.exp() for lp in log_probs])


def _terms_and_grads(make_pyramid, logits, y_l, y_hat, sup, consis, sharp):
    """Each term on its rows of one pyramid (as the trainer), with the gradient of each term on the logits."""
    leaves = [z.clone().requires_grad_() for z in logits]
    pyramid = make_pyramid(leaves)
    terms = [
        sup.from_probs(pyramid.rows(0, 2), y_l)[0],
        sup.from_probs(pyramid.rows(2, 6), y_hat)[0],
        consis.from_probs(pyramid.rows(2)),
        sharp.from_probs(pyramid.rows(6)),
    ]
    grads = [torch.autograd.grad(term, leaves, retain_graph=True) for term in terms]
    return [t.item() for t in terms], grads


def _two_class_logits(kind: str, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = [torch.randn(8, 2, 5, 4, 3, generator=generator) * 3 for _ in range(4)]
    if kind == "extreme":  # +-30 logits (d in {-60, 0, 60}) on every level, ordinary values on part of one
        logits = [torch.sign(z) * 30.0 for z in logits]
        logits[1][:, :, :2] = torch.randn(8, 2, 2, 4, 3, generator=generator)
    return logits


@pytest.mark.parametrize("kind", ["ordinary", "extreme"])
@pytest.mark.parametrize(
    "dice_form, form, detach",
    [
        ("paper", "paper", True),
        ("reference", "reference", False),
        ("paper", "paper", False),
        ("reference", "reference", True),
    ],
)
def test_two_class_closed_forms_equal_the_general_form(kind, dice_form, form, detach):
    """C == 2: the one-channel closed forms (what ``from_logits`` picks) give the general form's values and logit
    gradients, term by term, within float32 rounding, for every variant, also at +-30 logits."""
    logits = _two_class_logits(kind)
    generator = torch.Generator().manual_seed(1)
    y_l, y_hat = torch.randint(0, 2, (2, 5, 4, 3), generator=generator), torch.randint(
        0, 2, (4, 5, 4, 3), generator=generator
    )
    losses = (
        PyramidSupervisedLoss(dice_form=dice_form),
        PyramidConsistencyLoss(form=form, detach_mean=detach),
        SharpeningLoss(detach_target=detach),
    )
    assert SoftmaxPyramid.from_logits(logits).logit_diff is not None  # the closed form is the one picked
    fast, fast_grads = _terms_and_grads(SoftmaxPyramid.from_logits, logits, y_l, y_hat, *losses)
    general, general_grads = _terms_and_grads(_general_pyramid, logits, y_l, y_hat, *losses)
    assert fast == pytest.approx(general, rel=1e-5, abs=1e-7)
    for term_fast, term_general in zip(fast_grads, general_grads):
        scale = max(float(g.abs().max()) for g in term_general)
        for a, b in zip(term_fast, term_general):
            assert torch.isfinite(a).all()
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale), float((a - b).abs().max())


@pytest.mark.parametrize("detach", [True, False])
def test_two_class_closed_forms_finite_for_huge_logits(detach):
    """Logits of +-200 (the probabilities underflow to 0 and 1 in float32): values and gradients stay finite."""
    z = torch.tensor([[[200.0, -200.0, 0.0, 200.0], [-200.0, 200.0, 0.0, 200.0]]]).expand(4, 2, 4).contiguous()
    leaves = [z.clone().requires_grad_(), z.flip(1).clone().requires_grad_()]
    y = torch.tensor([[0, 1, 1, 0]] * 4)
    loss = (
        PyramidSupervisedLoss()(leaves, y)[0]
        + PyramidConsistencyLoss(detach_mean=detach)(leaves)
        + PyramidConsistencyLoss(form="reference", detach_mean=detach)(leaves)
        + SharpeningLoss(detach_target=detach)(leaves)
    )
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(z.grad).all() for z in leaves)


def test_two_class_pyramid_rows_are_views_and_keeps_the_softmax_api():
    torch.manual_seed(0)
    logits = [torch.randn(6, 2, 4, 4, 2, dtype=torch.bfloat16) for _ in range(2)]
    pyramid = SoftmaxPyramid.from_logits(logits)
    assert len(pyramid) == 2 and pyramid.shape == (6, 2, 4, 4, 2)
    for d, z in zip(pyramid.logit_diff, logits):
        assert d.shape == (6, 1, 4, 4, 2) and d.dtype == torch.float32
        assert torch.equal(d, z[:, 1:2].float() - z[:, 0:1].float())
    for log_p, p, z in zip(pyramid.log_probs, pyramid.probs, logits):  # built from d, for any other caller
        assert torch.allclose(log_p, torch.log_softmax(z.float(), dim=1), atol=1e-6)
        assert torch.allclose(p, torch.softmax(z.float(), dim=1), atol=1e-7)
    rows = pyramid.rows(2, 5)
    assert rows.shape == (3, 2, 4, 4, 2) and rows.rows(1).shape == (2, 2, 4, 4, 2)
    assert rows.logit_diff[1].data_ptr() == pyramid.logit_diff[1][2:].data_ptr()  # a view, no copy
    assert torch.equal(rows.probs[0], pyramid.probs[0][2:5])
    with pytest.raises(ValueError, match="logit_diff"):
        SoftmaxPyramid.two_class([torch.zeros(2, 2, 4)])


def test_two_class_gradient_keeps_the_logits_dtype_and_layout_under_autocast():
    torch.manual_seed(0)
    logits = [torch.randn(4, 2, 4, 4, 2).bfloat16().contiguous(memory_format=torch.channels_last_3d).requires_grad_()]
    y = torch.randint(0, 2, (2, 4, 4, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pyramid = SoftmaxPyramid.from_logits(logits)
        loss = PyramidSupervisedLoss().from_probs(pyramid.rows(0, 2), y)[0] + SharpeningLoss().from_probs(
            pyramid.rows(2)
        )
    loss.backward()
    grad = logits[0].grad
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert grad.is_contiguous(memory_format=torch.channels_last_3d) and torch.isfinite(grad).all()


def test_two_class_supervised_ignores_labels_as_nll_loss():
    """A label of -100 (``nll_loss``'s ``ignore_index``) is left out of the CE and of both classes, as in the
    general form."""
    torch.manual_seed(0)
    z = torch.randn(2, 2, 3, 4)
    y = torch.randint(0, 2, (2, 3, 4))
    y[0, 0] = -100
    fast = PyramidSupervisedLoss()([z], y)[1]
    general = PyramidSupervisedLoss().from_probs(_general_pyramid([z]), y)[1]
    assert fast["ce"].item() == pytest.approx(general["ce"].item(), rel=1e-6)
    assert fast["dice"].item() == pytest.approx(general["dice"].item(), rel=1e-6)
