"""Tests of bundle.method.teacher.EMATeacher: EMA by hand, pseudo-labels from a stub network, gradient isolation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from bundle.engine.distributed import unwrap_model
from bundle.method.losses import PyramidSupervisedLoss
from bundle.method.networks import PLGDFVNet
from bundle.method.teacher import EMATeacher


def tiny_net(weight: float, bias: float, mean: float, var: float, tracked: int) -> nn.Module:
    net = nn.Sequential(nn.Conv3d(1, 1, 1), nn.BatchNorm3d(1))
    with torch.no_grad():
        net[0].weight.fill_(weight)
        net[0].bias.fill_(bias)
        net[1].weight.fill_(1.0)
        net[1].bias.fill_(0.0)
        net[1].running_mean.fill_(mean)
        net[1].running_var.fill_(var)
        net[1].num_batches_tracked.fill_(tracked)
    return net


def values(net: nn.Module) -> tuple[float, float, float, float, int]:
    return (
        net[0].weight.item(),
        net[0].bias.item(),
        net[1].running_mean.item(),
        net[1].running_var.item(),
        int(net[1].num_batches_tracked.item()),
    )


def test_one_ema_step_by_hand():
    teacher = EMATeacher(tiny_net(1.0, 2.0, 0.0, 1.0, 0))
    assert all(not p.requires_grad for p in teacher.model.parameters())
    student = tiny_net(3.0, -2.0, 4.0, 5.0, 7)
    teacher.update(student, iteration=1)  # a = min(1 - 1/2, 0.99) = 0.5
    assert values(teacher.model) == pytest.approx((2.0, 0.0, 2.0, 3.0, 7))
    teacher.update(student, iteration=1000)  # a = 0.99
    assert values(teacher.model) == pytest.approx((2.01, -0.02, 2.02, 3.02, 7))
    teacher.update(student, iteration=0)  # a = 0: a copy of the student
    assert values(teacher.model) == pytest.approx((3.0, -2.0, 4.0, 5.0, 7))
    assert values(student) == pytest.approx((3.0, -2.0, 4.0, 5.0, 7))  # the student is untouched


def test_decay_cap():
    teacher = EMATeacher(tiny_net(0.0, 0.0, 0.0, 1.0, 0), decay=0.9)
    teacher.update(tiny_net(1.0, 1.0, 1.0, 1.0, 0), iteration=100)  # a = min(0.990, 0.9) = 0.9
    assert values(teacher.model)[:2] == pytest.approx((0.1, 0.1))


def test_reference_double_update_by_hand():
    teacher = EMATeacher(tiny_net(1.0, 1.0, 1.0, 1.0, 0), reference_double_update=True)
    student = tiny_net(3.0, 3.0, 3.0, 3.0, 2)
    teacher.update(student, iteration=1)
    # 1) teacher: 0.99 * 1 + 0.01 * 3 = 1.02 (parameters and BN buffers); student * (1 - 2e-4) = 2.9994
    # 2) standard, a = 0.5: 0.5 * 1.02 + 0.5 * 2.9994 = 2.0097
    assert values(teacher.model) == pytest.approx((2.0097, 2.0097, 2.0097, 2.0097, 2), rel=1e-6)
    assert values(student) == pytest.approx((2.9994, 2.9994, 2.9994, 2.9994, 2), rel=1e-6)


def test_unwraps_data_parallel_and_checks_structure():
    student = nn.DataParallel(tiny_net(1.0, 0.0, 0.0, 1.0, 0))
    teacher = EMATeacher(student)
    assert not isinstance(teacher.model, nn.DataParallel)
    assert unwrap_model(student) is student.module
    teacher.update(student, iteration=5)
    with pytest.raises(ValueError, match="does not match"):
        teacher.update(nn.Conv3d(1, 1, 1), iteration=5)
    with pytest.raises(ValueError, match="iteration"):
        teacher.update(student, iteration=-1)


def test_state_dict_roundtrip():
    teacher = EMATeacher(tiny_net(1.0, 2.0, 3.0, 4.0, 5))
    other = EMATeacher(tiny_net(0.0, 0.0, 0.0, 1.0, 0))
    state = teacher.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other.load_state_dict(state)
    assert values(other.model) == values(teacher.model)


class StubNet(nn.Module):
    """Returns its input as logits: P1 = x * scale; the auxiliary outputs point the other way (-x)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        p1 = x * self.scale
        return [p1, -p1, -p1, -p1] if self.training else p1


def probs_to_logits(*ps: tuple[float, ...]) -> torch.Tensor:
    """(len(ps), C, 1, 1, 1) logits whose softmax is ps."""
    return torch.log(torch.tensor(ps)).view(len(ps), -1, 1, 1, 1)


@pytest.mark.parametrize("train_mode", [True, False])
def test_pseudo_labels_average_softmax_over_copies(train_mode):
    # K = 3 copies of N = 2 images, 2 classes, copy-major rows: [img0 c0, img1 c0, img0 c1, img1 c1, img0 c2, img1 c2]
    # image 0: (0.51, 0.49), (0.51, 0.49), (0.01, 0.99) -> mean (0.343, 0.657) -> label 1 (a vote would say 0)
    # image 1: (0.9, 0.1), (0.6, 0.4), (0.3, 0.7) -> mean (0.6, 0.4) -> label 0
    x = probs_to_logits((0.51, 0.49), (0.9, 0.1), (0.51, 0.49), (0.6, 0.4), (0.01, 0.99), (0.3, 0.7))
    teacher = EMATeacher(StubNet(), train_mode=train_mode)
    teacher.model.eval()
    labels, mean_probs = teacher.pseudo_labels(x, n_copies=3)
    assert labels.shape == (2, 1, 1, 1) and labels.dtype == torch.long
    assert labels.flatten().tolist() == [1, 0]
    expected = torch.tensor([[1.03 / 3, 1.97 / 3], [0.6, 0.4]]).view(2, 2, 1, 1, 1)
    assert torch.allclose(mean_probs, expected, atol=1e-6)
    assert teacher.model.modes == [train_mode]  # one batched forward, in the requested mode
    assert teacher.model.training is False  # mode restored
    # channels-last input (the trainer may use it) gives the same result
    labels_cl, mean_probs_cl = teacher.pseudo_labels(x.contiguous(memory_format=torch.channels_last_3d), n_copies=3)
    assert torch.equal(labels_cl, labels) and torch.allclose(mean_probs_cl, mean_probs)


def test_pseudo_labels_three_classes_two_copies():
    # K = 2 is independent of C = 3: (0.2, 0.5, 0.3) and (0.6, 0.1, 0.3) -> mean (0.4, 0.3, 0.3) -> 0
    x = probs_to_logits((0.2, 0.5, 0.3), (0.6, 0.1, 0.3))
    labels, mean_probs = EMATeacher(StubNet()).pseudo_labels(x, n_copies=2)
    assert labels.flatten().tolist() == [0]
    assert mean_probs.flatten().tolist() == pytest.approx([0.4, 0.3, 0.3], abs=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        EMATeacher(StubNet()).pseudo_labels(x, n_copies=3)
    with pytest.raises(ValueError, match="n_copies"):
        EMATeacher(StubNet()).pseudo_labels(x, n_copies=0)


def test_gradients_reach_the_student_only():
    torch.manual_seed(0)
    student = PLGDFVNet(in_channels=1, out_channels=2, n_filters=2).train()
    teacher = EMATeacher(student)
    frozen = {k: v.clone() for k, v in teacher.model.named_parameters()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    x = torch.randn(2, 1, 16, 16, 16)

    labels, mean_probs = teacher.pseudo_labels(torch.cat([x, x + 0.1]), n_copies=2)
    assert labels.shape == (2, 16, 16, 16) and mean_probs.shape == (2, 2, 16, 16, 16)
    assert torch.allclose(mean_probs.sum(1), torch.ones(2, 16, 16, 16), atol=1e-5)
    teacher_out = teacher.model(x)  # even a direct forward outside no_grad builds no graph into the teacher
    student_out = student(x)
    loss, _ = PyramidSupervisedLoss()(student_out, labels)
    loss = loss + sum(((s - t) ** 2).mean() for s, t in zip(student_out, teacher_out))
    loss.backward()
    assert all(p.grad is None for p in teacher.model.parameters())
    assert all(p.grad is not None for p in student.parameters())
    optimizer.step()
    for name, p in teacher.model.named_parameters():
        assert torch.equal(p, frozen[name]), name
    teacher.update(student, iteration=1)
    changed = [not torch.equal(p, frozen[name]) for name, p in teacher.model.named_parameters()]
    assert any(changed)
    s_params = dict(student.named_parameters())
    for name, p in teacher.model.named_parameters():  # a = 0.5
        assert torch.allclose(p, 0.5 * frozen[name] + 0.5 * s_params[name], atol=1e-6), name


def test_pseudo_labels_with_real_network_in_eval_mode():
    torch.manual_seed(0)
    teacher = EMATeacher(PLGDFVNet(n_filters=2), train_mode=False)
    x = torch.randn(4, 1, 16, 16, 16)
    labels, mean_probs = teacher.pseudo_labels(x, n_copies=2)
    assert labels.shape == (2, 16, 16, 16)
    assert not teacher.model.training  # the mode set at construction (train_mode=False) is kept
    with torch.no_grad():
        p = torch.softmax(teacher.model(x), 1)
    assert torch.allclose(mean_probs, (p[:2] + p[2:]) / 2, atol=1e-6)
    assert math.isclose(mean_probs.sum().item(), 2 * 16**3, rel_tol=1e-5)
