"""Tests of bundle/data/transforms.py on tiny synthetic volumes, plus real-data checks (skipped without ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import torch
from conftest import config_content, shared_path
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Orientationd,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    SpatialPadd,
)

from bundle.data.transforms import AboveThreshold, LoadVolumed, ScaleIntensityByModalityd, Spacingd


def preprocessing(**overrides) -> Compose:
    """The preprocessing of the bundle's configs (inference.json's copy, identical to train.json's)."""
    return config_content("preprocessing", **overrides)


@pytest.fixture
def h5_case(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Legacy LA layout: ``image`` float32 and ``label`` uint8, axes x, y, z."""
    rng = np.random.default_rng(0)
    image = rng.standard_normal((20, 16, 12)).astype(np.float32)
    label = np.zeros((20, 16, 12), np.uint8)
    label[5:15, 4:12, 3:9] = 1
    path = tmp_path / "case" / "mri_norm2.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=label)
    return path, image, label


@pytest.fixture
def nifti_case(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """LPS-stored CT-like volume (HU) with a cube label, spacing (1, 1, 3) mm."""
    affine = np.diag([-1.0, -1.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, -30.0)
    hu = np.full((24, 20, 8), -1000.0, np.float32)
    hu[2:22, 3:17, :] = 40.0
    label = np.zeros(hu.shape, np.uint8)
    label[8:16, 6:12, 2:6] = 1
    hu[label > 0] = 130.0
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lab.nii.gz")
    return tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz", affine


def test_load_h5_as_channel_first_metatensor(h5_case: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, image, label = h5_case
    d = LoadVolumed(["image", "label"])({"image": str(path), "label": str(path)})
    for key, ref in (("image", image), ("label", label)):
        assert isinstance(d[key], MetaTensor) and tuple(d[key].shape) == (1, *ref.shape)
        np.testing.assert_array_equal(d[key][0].numpy(), ref)
        np.testing.assert_allclose(d[key].affine.numpy(), np.diag([0.625, 0.625, 0.625, 1.0]))
        assert d[key].meta["filename_or_obj"] == str(path)
    assert "image_meta_dict" in d
    unlabelled = LoadVolumed(["image", "label"], image_only=True, h5_spacing=1.0)({"image": str(path)})
    assert set(unlabelled) == {"image"} and float(unlabelled["image"].pixdim[0]) == 1.0
    label_only = path.parent / "label_only.h5"
    with h5py.File(label_only, "w") as f:
        f.create_dataset("label", data=label)
    with pytest.raises(KeyError, match="label_only.h5 has no dataset 'image'"):  # "image" for keys but "label"
        LoadVolumed(["mask"])({"mask": str(label_only)})


def test_load_nifti(nifti_case: tuple[Path, Path, np.ndarray]) -> None:
    img, lab, affine = nifti_case
    d = LoadVolumed(["image", "label"])({"image": str(img), "label": str(lab)})
    assert tuple(d["image"].shape) == (1, 24, 20, 8) and tuple(d["label"].shape) == (1, 24, 20, 8)
    np.testing.assert_allclose(d["label"].affine.numpy(), affine)
    assert d["image"].meta["filename_or_obj"] == str(img)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_load_itk_formats_match_nifti(nifti_case: tuple[Path, Path, np.ndarray], suffix: str) -> None:
    img, _, affine = nifti_case
    other = img.parent / f"img{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(img)), str(other))
    d = LoadVolumed(["image", "other"])({"image": str(img), "other": str(other)})
    np.testing.assert_allclose(d["other"].affine.numpy(), affine, atol=1e-6)
    np.testing.assert_array_equal(d["other"].numpy(), d["image"].numpy())
    assert d["other"].meta["filename_or_obj"] == str(other)


def test_scale_intensity_by_modality() -> None:
    x = torch.tensor([[-500.0, -125.0, 75.0, 275.0, 1000.0]]).reshape(1, 5, 1, 1)
    ct = ScaleIntensityByModalityd("image", "ct")({"image": x})["image"]
    np.testing.assert_allclose(ct.flatten().numpy(), [0.0, 0.0, 0.5, 1.0, 1.0])
    mr = ScaleIntensityByModalityd("image", "mr")({"image": x})["image"]
    np.testing.assert_allclose(mr.flatten().numpy(), ((x - x.mean()) / x.std(unbiased=False)).flatten(), atol=1e-5)
    assert torch.equal(ScaleIntensityByModalityd("image", "none")({"image": x})["image"], x)

    brain = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0, 0.0]).reshape(1, 6, 1, 1)  # 100: outlier, 0: background
    out = ScaleIntensityByModalityd("image", "flair", upper_percentile=75.0)({"image": brain})["image"]
    clipped = np.clip([1.0, 2.0, 3.0, 100.0], None, np.percentile([1.0, 2.0, 3.0, 100.0], 75.0))
    expected = np.concatenate([[0.0], (clipped - clipped.mean()) / clipped.std(), [0.0]])
    np.testing.assert_allclose(out.flatten().numpy(), expected, atol=1e-5)
    mask = torch.tensor([0, 1, 1, 1, 0, 0]).reshape(1, 6, 1, 1)
    masked = ScaleIntensityByModalityd("image", "flair", mask_key="brain", upper_percentile=100.0)(
        {"image": brain, "brain": mask}
    )["image"]
    np.testing.assert_allclose(masked.flatten().numpy(), [0, -1.2247449, 0, 1.2247449, 0, 0], atol=1e-5)
    with pytest.raises(ValueError, match="'pet'"):
        ScaleIntensityByModalityd("image", "pet")


def test_preprocessing_pipeline_structure() -> None:
    xforms = preprocessing(spacing=[1.5, 1.5, 2.0], modality="ct").transforms
    types = [type(t) for t in xforms]
    assert types == [
        LoadVolumed,
        Orientationd,
        Spacingd,
        CropForegroundd,
        ScaleIntensityByModalityd,
        SpatialPadd,
        EnsureTyped,
    ]
    assert xforms[3].cropper.select_fn.threshold == -500.0
    short = preprocessing(spacing=None, modality="mr", crop_foreground=False).transforms
    assert [type(t) for t in short] == [LoadVolumed, Orientationd, ScaleIntensityByModalityd, SpatialPadd, EnsureTyped]
    assert AboveThreshold(0.0)(np.array([-1.0, 0.0, 2.0])).tolist() == [False, False, True]
    with pytest.raises(RuntimeError, match="ScaleIntensityByModalityd") as error:
        preprocessing(modality="xray")
    assert "'xray'" in str(error.value.__cause__)


def test_preprocessing_nifti(nifti_case: tuple[Path, Path, np.ndarray]) -> None:
    img, lab, _ = nifti_case
    pre = preprocessing(spacing=[2.0, 2.0, 2.0], patch_size=[16, 16, 16])
    out = pre({"image": str(img), "label": str(lab)})
    assert nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(out["image"].pixdim, (2.0, 2.0, 2.0))
    assert out["image"].dtype == torch.float32 and out["label"].dtype == torch.uint8
    assert out["image"].shape == out["label"].shape and min(out["image"].shape[1:]) >= 16
    # the body box (10, 7, 12) in 2 mm grown by the configs' margin of 4 voxels, clipped to the image
    assert tuple(out["foreground_end_coord"] - out["foreground_start_coord"]) == (12, 10, 12)
    assert abs(out["label"].sum().item() * 8.0 - 8 * 6 * 4 * 3.0) <= 0.25 * 8 * 6 * 4 * 3.0  # volume in mm^3
    assert float(out["image"][out["label"] > 0].mean()) == pytest.approx((130 + 125) / 400, abs=0.05)
    unlabelled = pre({"image": str(img)})
    assert set(unlabelled) >= {"image"} and "label" not in unlabelled


def test_augmentation_transforms() -> None:
    def augmentation(**overrides) -> Compose:
        return Compose(config_content("augmentation", "configs/train.json", patch_size=[8, 8, 4], **overrides))

    xforms = augmentation(rand_flip_prob=0.5, rand_rotate90_prob=0.5).set_random_state(seed=0)
    assert [type(t) for t in xforms.transforms] == [RandSpatialCropd, RandFlipd, RandRotate90d]
    vol = torch.arange(16 * 12 * 10, dtype=torch.float32).reshape(1, 16, 12, 10)
    outs = [xforms({"image": vol.clone(), "label": vol.clone()}) for _ in range(4)]
    for d in outs:
        assert tuple(d["image"].shape[1:]) in {(8, 8, 4)} and torch.equal(d["image"], d["label"])
    assert len({d["image"].sum().item() for d in outs}) > 1
    again = augmentation(rand_flip_prob=0.5, rand_rotate90_prob=0.5).set_random_state(seed=0)
    assert torch.equal(again({"image": vol.clone()})["image"], outs[0]["image"])


def test_real_spleen_ct() -> None:
    folder = shared_path("spleen_ct")
    case = {"image": str(folder / "spleen2_ct.nii.gz"), "label": str(folder / "spleen2_ct_seg-manual.nii.gz")}
    raw_img, raw_lab = nib.load(case["image"]), nib.load(case["label"])
    hu, seg = np.asarray(raw_img.dataobj, dtype=np.float32), np.asarray(raw_lab.dataobj) > 0
    spacing = (1.5, 1.5, 2.0)
    out = preprocessing(spacing=list(spacing), modality="ct", patch_size=[64, 64, 32])(case)
    image, label = out["image"], out["label"]
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    np.testing.assert_allclose(image.pixdim, spacing, atol=1e-6)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    expected = (np.clip(hu[seg], -125, 275).mean() + 125) / 400  # enhanced spleen, about 0.52
    assert float(image[label > 0].mean()) == pytest.approx(expected, abs=0.02)
    volume = seg.sum() * np.prod(raw_lab.header.get_zooms()[:3])
    assert label.sum().item() * np.prod(spacing) == pytest.approx(volume, rel=0.03)


def test_real_la_h5() -> None:
    ids = shared_path("LA", "train.list").read_text().split()
    path = shared_path("LA", "2018LA_Seg_Training Set", ids[0], "mri_norm2.h5")
    with h5py.File(path, "r") as f:
        image, label = f["image"][()], f["label"][()]
    pre = preprocessing(spacing=[1.25, 1.25, 1.25], modality="none", crop_foreground=False)
    out = pre({"image": str(path), "label": str(path)})
    np.testing.assert_allclose(out["image"].pixdim, (1.25, 1.25, 1.25))
    assert out["image"].shape == out["label"].shape
    for n_out, n_in in zip(out["image"].shape[1:], image.shape):
        assert abs(n_out - n_in / 2) <= 1
    assert out["label"].sum().item() * 1.25**3 == pytest.approx(label.sum() * 0.625**3, rel=0.03)
    # the label still covers the bright atrium (about 3.7 in z-score units), not its surroundings
    assert float(out["image"][out["label"] > 0].mean()) == pytest.approx(image[label > 0].mean(), abs=0.1)
