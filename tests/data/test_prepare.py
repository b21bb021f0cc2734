"""Tests of bundle.data.prepare* and the scripts.prepare_* commands: LA lists, Pancreas-CT (DICOM), BraTS FLAIR."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from bundle.data.datalist import load_datalist
from bundle.data.prepare import la_entries, prepare_la, read_dicom_series, read_list, split_cases
from bundle.data.prepare_brats import find_brats_cases, prepare_brats
from bundle.data.prepare_pancreas import prepare_pancreas
from scripts.prepare_pancreas import main as prepare_pancreas_cli
from tests.conftest import REPO_ROOT, shared_path


# -- lists and splits ---------------------------------------------------------------------------------------------
def test_read_list(tmp_path):
    f = tmp_path / "x.list"
    f.write_text("A\n\n# comment\nB  # trailing\nC\n")
    assert read_list(f) == ["A", "B", "C"]
    f.write_text("A\nA\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_list(f)
    with pytest.raises(FileNotFoundError, match="nope.list"):
        read_list(tmp_path / "nope.list")


def test_split_cases():
    ids = [f"c{i}" for i in range(10)]
    s = split_cases(ids, n_labelled=3, n_val=2, n_test=2)
    assert s == {"training": ids[:3], "unlabeled": ids[3:6], "validation": ids[6:8], "test": ids[8:]}
    s = split_cases(ids, n_labelled=2, test_ids=["c0", "c5"], val_ids=["c1"])
    assert s["test"] == ["c0", "c5"] and s["validation"] == ["c1"] and s["training"] == ["c2", "c3"]
    seeded = split_cases(ids, n_labelled=2, n_val=1, n_test=1, seed=0)
    assert sorted(sum(seeded.values(), [])) == sorted(ids) and seeded == split_cases(ids, 2, 1, 1, seed=0)
    with pytest.raises(ValueError, match="cannot label 9"):
        split_cases(ids, n_labelled=9, n_test=2)
    with pytest.raises(ValueError, match="not among"):
        split_cases(ids, n_labelled=1, test_ids=["zz"])


# -- LA -----------------------------------------------------------------------------------------------------------
def _fake_la(root: Path, ids: list[str]) -> Path:
    cases = root / "2018LA_Seg_Training Set"
    for i in ids:
        (cases / i).mkdir(parents=True)
        with h5py.File(cases / i / "mri_norm2.h5", "w") as f:
            f["image"] = np.zeros((4, 4, 4), np.float32)
            f["label"] = np.zeros((4, 4, 4), np.uint8)
    return cases


def test_prepare_la_synthetic(tmp_path):
    ids = [f"ID{i:02d}" for i in range(12)]
    _fake_la(tmp_path / "LA", ids)
    (tmp_path / "LA" / "train.list").write_text("\n".join(ids[:10]) + "\n")
    (tmp_path / "LA" / "test.list").write_text(
        "\n".join(f"../data/2018LA_Seg_Training Set/{i}/mri_norm2.h5" for i in ids[10:]) + "\n"
    )  # UA-MT style paths
    out = tmp_path / "lists" / "la_4.json"
    prepare_la(tmp_path / "LA", out, n_labelled=4, n_val=3)
    d = load_datalist(out, check_files=True)
    case_id = lambda section: [e["case_id"] for e in d[section]]  # noqa: E731
    assert case_id("training") == ids[:4]
    assert case_id("unlabeled") == ids[4:7] and all("label" not in e for e in d["unlabeled"])
    assert case_id("validation") == ids[7:10]
    assert case_id("test") == ids[10:]
    assert d["training"][0]["image"] == d["training"][0]["label"]
    assert d["training"][0]["image"].endswith("ID00/mri_norm2.h5")
    assert not Path(json.loads(out.read_text())["training"][0]["image"]).is_absolute()
    with pytest.raises(ValueError, match="cannot give"):
        prepare_la(tmp_path / "LA", out, n_labelled=8, n_val=3)
    (tmp_path / "LA" / "train.list").write_text("ID00\nMISSING\n")
    with pytest.raises(FileNotFoundError, match="MISSING"):
        prepare_la(tmp_path / "LA", out, n_labelled=1, n_val=0)


@pytest.mark.parametrize("n_labelled", [4, 8, 16])
def test_prepare_la_shared_split(tmp_path, n_labelled):
    root = shared_path("LA")
    ids = read_list(root / "train.list")
    out = tmp_path / "la.json"
    if n_labelled == 8:  # the command once, the function for the other budgets
        cmd = [sys.executable, "-m", "scripts.prepare_la", "--data-dir", str(root), "--out", str(out), "--n-val", "8"]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        prepare_la(root, out, n_labelled=n_labelled, n_val=8)
    d = load_datalist(out, check_files=True)
    assert [e["case_id"] for e in d["training"]] == ids[:n_labelled]
    assert [e["case_id"] for e in d["validation"]] == ids[-8:]
    assert [e["case_id"] for e in d["unlabeled"]] == ids[n_labelled:-8]
    assert len(d["unlabeled"]) == 72 - n_labelled and d["test"] == []
    assert all(Path(e["image"]).name == "mri_norm2.h5" for s in d.values() for e in s)
    # the evaluation's list-file path finds the same files
    assert la_entries(root, root / "train.list")[0]["image"] == d["training"][0]["image"]


# -- Pancreas-CT --------------------------------------------------------------------------------------------------
def _write_dicom_series(volume_zyx: np.ndarray, spacing, origin, folder: Path) -> None:
    """A minimal CT series (one file per slice) that GDCM sorts by ImagePositionPatient."""
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.42"
    for k in range(volume_zyx.shape[0]):
        sl = sitk.GetImageFromArray(volume_zyx[k : k + 1].astype(np.int16))
        sl.SetSpacing(tuple(float(s) for s in spacing))
        z = origin[2] + k * spacing[2]
        for tag, value in {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0020|000e": series,
            "0020|0013": str(k + 1),
            "0020|0032": f"{origin[0]}\\{origin[1]}\\{z}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_prepare_pancreas_dicom(tmp_path, capsys):
    shape_xyz, spacing, origin = (60, 50, 12), (0.7, 0.7, 2.5), (-20.0, -15.0, 30.0)
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape_xyz], indexing="ij")
    label = ((x - 35) ** 2 / 36 + (y - 22) ** 2 / 16 + (z - 6) ** 2 / 4) <= 1  # the "pancreas"
    hu = np.where(label, 100.0, -40.0) + np.where(x < 8, -1000.0, 0.0)  # air column at low x
    # SimpleITK arrays are (z, y, x); DICOM/ITK geometry is LPS
    _write_dicom_series(
        np.transpose(hu, (2, 1, 0)), spacing, origin, tmp_path / "Pancreas-CT" / "PANCREAS_0007" / "study" / "series"
    )
    ras = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    ras[:3, 3] = [-origin[0], -origin[1], origin[2]]
    (tmp_path / "labels").mkdir()
    nib.save(nib.Nifti1Image(label.astype(np.uint8), ras), str(tmp_path / "labels" / "label0007.nii.gz"))

    ct = read_dicom_series(tmp_path / "Pancreas-CT")
    assert tuple(ct.shape) == (1, *shape_xyz)
    np.testing.assert_allclose(np.asarray(ct.affine), ras, atol=1e-4)
    np.testing.assert_allclose(np.asarray(ct[0]), hu, atol=0.5)

    d = prepare_pancreas(
        tmp_path / "Pancreas-CT", tmp_path / "labels", tmp_path / "out", n_labelled=1, n_test=0, margin=5, log=None
    )
    assert [e["case_id"] for e in d["training"]] == ["pancreas_0007"]
    img = nib.load(d["training"][0]["image"])
    lab = nib.load(d["training"][0]["label"])
    np.testing.assert_allclose(np.abs(np.diag(img.affine)[:3]), [1.0, 1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(img.affine, lab.affine)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    a, m = img.get_fdata(), np.asarray(lab.dataobj)
    assert lab.get_data_dtype() == np.uint8 and set(np.unique(m)) == {0, 1}
    assert abs(a.mean()) < 1e-4 and abs(a.std() - 1.0) < 1e-3  # z-scored
    # x/y cropped to the label box + 5 voxels (at 1 mm), all slices kept (12 * 2.5 mm -> about 28-30 slices)
    idx = np.nonzero(m)
    for axis in (0, 1):
        assert idx[axis].min() == 5 and a.shape[axis] - 1 - idx[axis].max() == 5
    assert a.shape[2] >= 28
    # the label's world centroid is preserved (geometry handled through the affines)
    world = lambda aff, ijk: (aff[:3, :3] @ np.mean(ijk, axis=1) + aff[:3, 3])  # noqa: E731
    np.testing.assert_allclose(world(lab.affine, np.nonzero(m)), world(ras, np.nonzero(label)), atol=0.6)
    # the HU window was applied before the z-score: air (-1000) and -125 HU map to the same value
    assert np.isclose(a.min(), a[~m.astype(bool)].min())
    # the command line gives the same data list and volumes, and prints the counts
    cli = prepare_pancreas_cli(
        [
            "--images",
            str(tmp_path / "Pancreas-CT"),
            "--labels",
            str(tmp_path / "labels"),
            "--out",
            str(tmp_path / "cli"),
        ]
        + ["--n-labelled", "1", "--n-test", "0", "--margin", "5"]
    )
    assert [e["case_id"] for e in cli["training"]] == ["pancreas_0007"]
    np.testing.assert_array_equal(nib.load(cli["training"][0]["image"]).get_fdata(), a)
    assert "training 1" in capsys.readouterr().out

    (tmp_path / "Pancreas-CT" / "PANCREAS_0008").mkdir()
    with pytest.raises(FileNotFoundError, match="no label"):
        prepare_pancreas(tmp_path / "Pancreas-CT", tmp_path / "labels", tmp_path / "out", n_labelled=1, n_test=0)


# -- BraTS --------------------------------------------------------------------------------------------------------
def test_prepare_brats_2019_layout(tmp_path):
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    for k in range(3):
        case = f"BraTS19_X_{k}"
        folder = tmp_path / "src" / "HGG" / case
        folder.mkdir(parents=True)
        flair = np.zeros((30, 32, 20), np.float32)
        flair[5:25, 6:28, 3:17] = rng.uniform(100, 500, size=(20, 22, 14))
        flair[10, 10, 10] = 10000.0  # an outlier the 99.9th percentile clip removes
        seg = np.zeros(flair.shape, np.uint8)
        seg[12:16, 12:18, 8:12] = [1, 2, 4][k]
        nib.save(nib.Nifti1Image(flair, affine), str(folder / f"{case}_flair.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), str(folder / f"{case}_seg.nii.gz"))
    found = find_brats_cases(tmp_path / "src")
    assert sorted(found) == [f"BraTS19_X_{k}" for k in range(3)] and found["BraTS19_X_0"][2] is None
    d = prepare_brats(tmp_path / "src", tmp_path / "out", n_labelled=1, n_val=1, n_test=1, log=None)
    assert {k: len(v) for k, v in d.items()} == {"training": 1, "unlabeled": 0, "validation": 1, "test": 1}
    img = nib.load(d["training"][0]["image"])
    a = img.get_fdata()
    assert a.shape == (20, 22, 14)  # the brain's bounding box
    np.testing.assert_allclose(img.affine[:3, 3], [-5.0, -6.0, 3.0])
    assert abs(a.mean()) < 1e-4 and abs(a.std() - 1.0) < 1e-3 and a.max() < 5.0
    lab = np.asarray(nib.load(d["training"][0]["label"]).dataobj)
    assert set(np.unique(lab)) == {0, 1} and lab.sum() == 4 * 6 * 4


def test_prepare_brats_shared(tmp_path):
    src = shared_path("brats_flair")
    cases = ["brats_2013_pat0001_1", "brats_2013_pat0002_1"]
    out = tmp_path / "brats"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.prepare_brats",
            "--src",
            str(src),
            "--out",
            str(out),
            "--n-labelled",
            "1",
            "--n-val",
            "0",
            "--n-test",
            "1",
            "--cases",
            *cases,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    d = load_datalist(out / "datalist.json", check_files=True)
    assert len(d["training"]) == 1 and len(d["test"]) == 1
    for entry in d["training"] + d["test"]:
        case = Path(entry["image"]).name[: -len(".nii.gz")]
        brain = np.asarray(nib.load(str(src / case / "brainmask.nii.gz")).dataobj) > 0
        ot = np.asarray(nib.load(str(src / case / "OTMultiClass.nii.gz")).dataobj)
        idx = np.nonzero(brain)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        img, lab = nib.load(entry["image"]), nib.load(entry["label"])
        a, m = img.get_fdata(), np.asarray(lab.dataobj)
        assert a.shape == brain[box].shape == m.shape
        np.testing.assert_array_equal(m, (ot[box] > 0).astype(np.uint8))  # whole tumour
        inside = brain[box]
        assert abs(a[inside].mean()) < 1e-3 and abs(a[inside].std() - 1.0) < 1e-3 and np.all(a[~inside] == 0)
        src_affine = nib.load(str(src / case / "OTMultiClass.nii.gz")).affine
        np.testing.assert_allclose(img.affine[:3, 3], src_affine[:3, :3] @ [b.start for b in box] + src_affine[:3, 3])
