"""PLGDF+ switches that are config presets: the authors' augmentation and the teacher in eval mode."""

from __future__ import annotations

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism

from bundle.method.networks import PLGDFVNet
from bundle.method.teacher import EMATeacher
from tests.conftest import REPO_ROOT

PRESETS = REPO_ROOT / "configs" / "presets"


def _augmentation(*presets: str):
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / "train.json"), *[str(PRESETS / p) for p in presets]])
    parser["patch_size"] = [4, 4, 2]
    parser["rand_flip_prob"], parser["rand_rotate90_prob"] = 0.5, 0.5  # the LA-lite preset's
    from monai.transforms import Compose

    return Compose(parser.get_parsed_content("augmentation"))


def _outcomes(transform, n: int = 400) -> set[bytes]:
    x = torch.arange(4 * 4 * 2, dtype=torch.float32).reshape(1, 4, 4, 2)  # no symmetry: every transform differs
    set_determinism(seed=0)
    transform.set_random_state(seed=0)
    return {np.asarray(transform({"image": x.clone(), "label": x.clone()})["image"]).tobytes() for _ in range(n)}


def _in_plane(x: np.ndarray, k: int, flip: bool) -> bytes:
    y = np.rot90(x, k, axes=(1, 2))
    return np.ascontiguousarray(np.flip(y, axis=1) if flip else y).tobytes()


def test_authors_augmentation_is_a_rotation_by_k_90_and_one_in_plane_mirror():
    x = np.arange(4 * 4 * 2, dtype=np.float32).reshape(1, 4, 4, 2)
    reflections = {_in_plane(x, k, True) for k in range(4)}  # the authors' rot90(k) + flip along axis 0 or 1
    assert len(reflections) == 4
    got = _outcomes(_augmentation("authors_augmentation.json"))
    assert got == reflections  # every in-plane mirror, never the identity, never a flip of the depth axis
    default = _outcomes(_augmentation())  # today's: all three axes flipped together, or rotations
    assert not default <= reflections and x.tobytes() in default


def test_teacher_eval_mode_gives_deterministic_pseudo_labels():
    torch.manual_seed(0)
    net = PLGDFVNet(1, 2, n_filters=4, dropout=True)
    x = torch.randn(2, 1, 16, 16, 16)
    train_mode, eval_mode = EMATeacher(net, train_mode=True), EMATeacher(net, train_mode=False)
    a, b = eval_mode.pseudo_labels(x, 2)[1], eval_mode.pseudo_labels(x, 2)[1]
    assert torch.equal(a, b)  # no dropout, running BatchNorm statistics
    c, d = train_mode.pseudo_labels(x, 2)[1], train_mode.pseudo_labels(x, 2)[1]
    assert not torch.equal(c, d)  # Dropout3d draws differ between calls
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / "train.json"), str(PRESETS / "teacher_eval.json")])
    assert parser["teacher"]["train_mode"] is False
