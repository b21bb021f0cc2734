"""Tests of bundle/data/demo.py: determinism, size, geometry, content, and the preprocessing round trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Invertd
from scipy import ndimage

from bundle.data.datalist import load_datalist
from bundle.data.demo import ensure_demo_dataset, generate_demo_dataset
from tests.conftest import config_content

TINY = dict(n_labelled=1, n_unlabelled=1, n_val=1, n_test=1, shape=(24, 24, 8), spacing=(1.5, 1.5, 4.0))


@pytest.fixture(scope="module")
def demo_datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The full default demo dataset (about 10 s on 2 cores), generated once for this module."""
    return ensure_demo_dataset(tmp_path_factory.mktemp("demo") / "demo")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    generate_demo_dataset(tmp_path / "a", seed=3, **TINY)
    generate_demo_dataset(tmp_path / "b", seed=3, **TINY)
    generate_demo_dataset(tmp_path / "c", seed=4, **TINY)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(a) == 4 + 3 + 2 and a == b
    assert a["imagesTr/demo_000.nii.gz"] != c["imagesTr/demo_000.nii.gz"]


def test_layout_size_and_datalist(demo_datalist: Path) -> None:
    root = demo_datalist.parent
    size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20
    assert size_mb < 20.0, f"demo dataset is {size_mb:.1f} MB"
    dl = load_datalist(demo_datalist, check_files=True)
    assert [len(dl[s]) for s in ("training", "unlabeled", "validation", "test")] == [4, 16, 4, 4]
    assert all("label" not in e for e in dl["unlabeled"]) and all("label" in e for e in dl["test"])
    assert (root / "README.txt").is_file()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".demo.tmp")]


def test_geometry_and_content(demo_datalist: Path) -> None:
    dl = load_datalist(demo_datalist)
    labels, images = [], []
    for case in dl["training"] + dl["validation"]:
        img, lab = nib.load(case["image"]), nib.load(case["label"])
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        np.testing.assert_array_equal(img.affine, lab.affine)
        np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 3.0))
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        hu, seg = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert set(np.unique(seg)) == {0, 1}
        assert 0.002 < seg.mean() < 0.1  # a few percent of the volume
        assert hu.min() < -900 and hu.max() > 500  # air and bone
        assert abs(hu[seg > 0].mean() - 130) < 20
        ring = np.logical_xor(np.asarray(seg > 0), ndimage.binary_dilation(seg > 0, iterations=3))
        assert 60 < hu[seg > 0].mean() - hu[ring].mean() < 130  # contrast to the surroundings (~90 HU)
        labels.append(seg)
        images.append(hu)
    assert len({lab.tobytes() for lab in labels}) == len(labels)
    assert len({int(lab.sum()) for lab in labels}) > len(labels) // 2  # sizes vary


def test_preprocessing_round_trip(demo_datalist: Path) -> None:
    case = load_datalist(demo_datalist)["training"][0]
    pre = config_content("preprocessing", spacing=[1.2, 1.2, 2.5], modality="ct", patch_size=[32, 32, 32])
    out = pre(case)
    assert nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(out["image"].pixdim, (1.2, 1.2, 2.5))
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0

    original = nib.load(case["label"])
    ref = np.asarray(original.dataobj) > 0
    out["pred"] = out["label"].clone()  # a stand-in prediction, inverted with the label's transforms
    by_invertd = Invertd(keys="pred", transform=pre, orig_keys="label", nearest_interp=True)(out)["pred"]
    inverted = pre.inverse(out)  # (pops the applied operations of out's tensors)
    for back in (inverted["label"], by_invertd):
        assert tuple(back.shape[1:]) == original.shape
        np.testing.assert_allclose(back.affine.numpy(), original.affine, atol=1e-5)
        seg = back[0].numpy() > 0.5
        dice = 2.0 * (seg & ref).sum() / (seg.sum() + ref.sum())
        assert dice >= 0.95, f"round-trip Dice {dice:.3f}"


def test_ensure_skips_existing_and_refuses_foreign_folder(
    demo_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert ensure_demo_dataset(demo_datalist.parent) == demo_datalist
    assert capsys.readouterr().out == ""
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="busy"):
        ensure_demo_dataset(tmp_path / "busy", **TINY)


def test_cli(tmp_path: Path, repo_root: Path) -> None:
    cmd = [sys.executable, "-m", "scripts.make_demo_data", "--out", str(tmp_path / "d")]
    cmd += ["--seed", "1", "--n-unlabelled", "1", "--n-val", "0", "--n-test", "0", "--shape", "16", "16", "6"]
    res = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Generated" in res.stdout
    assert len(load_datalist(tmp_path / "d" / "datalist.json")["training"]) == 4


def test_organ_scale_makes_a_small_structure_from_the_same_draws() -> None:
    from bundle.data.demo import synthesize_case

    shape = (64, 64, 20)
    image, label = synthesize_case(np.random.default_rng([0, 3]), shape)
    small_image, small_label = synthesize_case(np.random.default_rng([0, 3]), shape, organ_scale=0.65)
    body = image > -500
    assert (small_image > -500).sum() == body.sum()  # same body: only the organ's diameter changed
    assert 0 < small_label.sum() < 0.5 * label.sum()
    assert small_label.sum() / body.sum() < 0.08
    assert np.array_equal(
        synthesize_case(np.random.default_rng([0, 3]), shape, organ_scale=1.0)[1], label
    )  # 1.0 is the demo itself
    with pytest.raises(ValueError, match="organ_scale"):
        synthesize_case(np.random.default_rng(0), shape, organ_scale=0.0)
