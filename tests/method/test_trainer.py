"""Tests of bundle/method/trainer.py: one ``PLGDFTrainer._iteration`` on a small network.

The loss is ``L_sup + L_semi + lambda(t) (L_sharp + L_consis)`` with every term recomputed here from the loss modules
on the rows of the student batch ``[n(x_l), x_mix, x_u]`` that the paper assigns to it, and each ``use_*`` switch
zeroes exactly its own term.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bundle.method.losses import PyramidConsistencyLoss, PyramidSupervisedLoss, SharpeningLoss
from bundle.method.mix import MixModule
from bundle.method.networks import PLGDFVNet
from bundle.method.rampup import ConsistencyRampUp
from bundle.method.teacher import EMATeacher
from bundle.method.trainer import PLGDFTrainer

N_L, N_U, K, SIZE = 2, 1, 2, 16
TERMS = ("loss_sup", "loss_semi", "loss_consis", "loss_sharp")


def _batch() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x_l = torch.randn(N_L, 1, SIZE, SIZE, SIZE, generator=g)
    y_l = (x_l > 0.5).to(torch.uint8)
    x_u = torch.randn(N_U, 1, SIZE, SIZE, SIZE, generator=g)
    return {"image": x_l, "label": y_l}, x_u


def _step(
    semi: bool = True, consistency: bool = True, sharpening: bool = True, unlabeled: bool = True, **switches
) -> dict:
    """One iteration (the first: t = 0) from fixed weights and seeds; records what the student and teacher saw."""
    torch.manual_seed(0)
    network = PLGDFVNet(in_channels=1, out_channels=2, n_filters=2, dropout=False)
    teacher = EMATeacher(network, decay=0.99)
    batch, x_u = _batch()
    rampup = ConsistencyRampUp(weight=1.0, length=10)
    trainer = PLGDFTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[batch],
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.01),
        teacher=teacher,
        unlabeled_loader=itertools.repeat(x_u) if unlabeled else None,
        rampup=rampup,
        mix=MixModule(alpha=0.75),
        semi=semi,
        consistency=consistency,
        sharpening=sharpening,
        noise_labeled=False,  # so that the labelled rows of the student batch are x_l itself
        n_copies=K,
        channels_last=False,
        **switches,
    )
    seen: dict = {}

    def record(module, args, output):
        seen["inputs"] = args[0].detach().clone()
        seen["outputs"] = [o.detach().clone() for o in output]

    network.register_forward_hook(record)
    pseudo_labels = teacher.pseudo_labels

    def recording_pseudo_labels(x, n_copies):
        seen["y_hat"], seen["mean_probs"] = pseudo_labels(x, n_copies)
        return seen["y_hat"], seen["mean_probs"]

    teacher.pseudo_labels = recording_pseudo_labels
    trainer.state.iteration = 1  # Ignite counts from 1; the trainer's t is 0
    torch.manual_seed(2)
    out = trainer._iteration(trainer, batch)
    return {"out": out, "batch": batch, "x_u": x_u, "rampup": rampup, **seen}


@pytest.fixture(scope="module")
def full() -> dict:
    return _step()


def test_loss_is_the_sum_of_the_terms_recomputed_on_their_rows(full: dict) -> None:
    out, outputs, inputs = full["out"], full["outputs"], full["inputs"]
    n_semi = N_U * K
    assert inputs.shape[0] == N_L + n_semi + N_U
    # rows: labelled (no noise here), the K mixed noisy copies of each unlabelled patch, the clean unlabelled patch
    assert torch.equal(inputs[:N_L], full["batch"]["image"])
    assert torch.equal(inputs[N_L + n_semi :], full["x_u"])
    assert not torch.equal(inputs[N_L : N_L + n_semi], full["x_u"].repeat(K, 1, 1, 1, 1))
    y_l = full["batch"]["label"].long()
    y_hat = full["y_hat"].repeat(K, 1, 1, 1)  # every noisy copy's target is the pseudo-label of its source
    sup = PyramidSupervisedLoss()([o[:N_L] for o in outputs], y_l)[0]
    semi = PyramidSupervisedLoss()([o[N_L : N_L + n_semi] for o in outputs], y_hat)[0]
    consis = PyramidConsistencyLoss()([o[N_L:] for o in outputs])
    sharp = SharpeningLoss()([o[N_L + n_semi :] for o in outputs])
    lam = full["rampup"](0)
    assert float(out["lambda"]) == pytest.approx(lam) and 0.0 < lam < 1.0
    for key, value in zip(TERMS, (sup, semi, consis, sharp)):
        assert float(out[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-7), key
        assert float(out[key]) > 0.0, key
    assert float(out["loss"]) == pytest.approx(float(sup + semi + lam * (sharp + consis)), rel=1e-5)
    assert torch.equal(out["pred"], outputs[0][:N_L])
    assert float(out["pseudo_fg"]) == pytest.approx(float((y_hat > 0).float().mean()))


@pytest.mark.parametrize(
    "switch,term", [("semi", "loss_semi"), ("consistency", "loss_consis"), ("sharpening", "loss_sharp")]
)
def test_each_switch_zeroes_exactly_its_own_term(full: dict, switch: str, term: str) -> None:
    out = _step(**{switch: False})["out"]
    assert float(out[term]) == 0.0
    for other in TERMS:
        if other != term:
            assert float(out[other]) == pytest.approx(float(full["out"][other]), rel=1e-6), other
    lam = float(out["lambda"])
    expected = out["loss_sup"] + out["loss_semi"] + lam * (out["loss_sharp"] + out["loss_consis"])
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_without_unlabelled_data_only_the_supervised_term_is_left() -> None:
    step = _step(unlabeled=False)
    out = step["out"]
    assert step["inputs"].shape[0] == N_L and "y_hat" not in step
    assert all(float(out[k]) == 0.0 for k in ("loss_semi", "loss_consis", "loss_sharp")) and float(out["lambda"]) == 0
    sup = PyramidSupervisedLoss()(list(step["outputs"]), step["batch"]["label"].long())[0]
    assert float(out["loss"]) == pytest.approx(float(sup), rel=1e-6) == float(out["loss_sup"])


def test_semi_on_clean_adds_the_clean_rows_to_l_semi_only(full: dict) -> None:
    """PLGDF+ switch: L_semi over the mixed AND the clean unlabelled rows (the paper's Algorithm 1, line 14)."""
    step = _step(semi_on_clean=True)
    out, outputs = step["out"], step["outputs"]
    n_semi = N_U * K
    target = torch.cat([step["y_hat"].repeat(K, 1, 1, 1), step["y_hat"]], 0)  # clean rows: their own pseudo-label
    semi = PyramidSupervisedLoss()([o[N_L:] for o in outputs], target)[0]
    assert float(out["loss_semi"]) == pytest.approx(float(semi), rel=1e-5)
    assert float(out["loss_semi"]) != pytest.approx(float(full["out"]["loss_semi"]), rel=1e-3)
    assert outputs[0].shape[0] == N_L + n_semi + N_U  # the same student batch
    for other in ("loss_sup", "loss_consis", "loss_sharp"):
        assert float(out[other]) == pytest.approx(float(full["out"][other]), rel=1e-6), other


@pytest.mark.parametrize("warmup", ["rampup", "confidence"])
def test_semi_warmup_scales_l_semi_only(full: dict, warmup: str) -> None:
    """PLGDF+ switch: L_semi weighted by the ramp-up's shape or by the teacher's confidence early on."""
    step = _step(semi_warmup=warmup)
    out = step["out"]
    if warmup == "rampup":
        factor = full["rampup"](0) / full["rampup"].weight  # exp(-5) at t = 0
    else:
        conf = float(step["mean_probs"].max(dim=1).values.mean())
        factor = (conf - 0.5) / 0.5
    assert 0.0 < factor < 1.0
    assert float(out["loss_semi"]) == pytest.approx(factor * float(full["out"]["loss_semi"]), rel=1e-5)
    for other in ("loss_sup", "loss_consis", "loss_sharp"):
        assert float(out[other]) == pytest.approx(float(full["out"][other]), rel=1e-6), other
    with pytest.raises(ValueError, match="semi_warmup must be one of"):
        _step(semi_warmup="linear")


def test_a_loss_subclass_that_overrides_forward_is_called_not_bypassed():
    """The shared softmax is used only where ``forward`` is the ``from_probs`` class's own: a subclass that changes
    ``forward`` (a user's variant of a term) must be called, or its change would be silently ignored."""
    from bundle.method.losses import SharpeningLoss
    from bundle.method.trainer import _shares_softmax

    class Doubled(SharpeningLoss):
        def forward(self, logits):
            return 2 * super().forward(logits)

    class Renamed(SharpeningLoss):
        pass

    assert _shares_softmax(SharpeningLoss()) and _shares_softmax(Renamed())
    assert not _shares_softmax(Doubled()) and not _shares_softmax(lambda x: x)
