"""A data list that mixes NIfTI, NRRD and MetaImage cases in every role trains (several seeds), validates and infers.

Before the fix, NIfTI's reader-specific header fields (``sizeof_hdr``, ...) made a batch holding a NIfTI and an
NRRD case fail to collate at a random iteration (``KeyError: 'sizeof_hdr'``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
from conftest import TINY_TRAIN, TRAIN_CONFIG, read_log, run_bundle
from monai.data import list_data_collate

from bundle.data.demo import generate_demo_dataset
from bundle.data.transforms import COMMON_META_KEYS, LoadVolumed

SUFFIXES = (".nii.gz", ".nrrd", ".mha")


def _convert(src: Path, suffix: str) -> Path:
    """The same volume (voxels and geometry) in another format."""
    if suffix == ".nii.gz":
        return src
    dst = src.with_name(src.name.replace(".nii.gz", suffix))
    sitk.WriteImage(sitk.ReadImage(str(src)), str(dst))
    return dst


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A demo data set whose cases cycle through NIfTI, NRRD and MetaImage in every section."""
    root = tmp_path_factory.mktemp("mixed")
    generate_demo_dataset(root, n_labelled=3, n_unlabelled=3, n_val=3, n_test=3, shape=(40, 40, 12))
    datalist = json.loads((root / "datalist.json").read_text())
    for entries in datalist.values():
        for i, entry in enumerate(entries):
            suffix = SUFFIXES[i % len(SUFFIXES)]
            for key in ("image", "label"):
                if key in entry:
                    entry[key] = str(_convert(root / entry[key], suffix).relative_to(root))
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return root


def test_every_format_has_the_same_meta_keys_and_collates(mixed):
    datalist = json.loads((mixed / "datalist.json").read_text())
    load = LoadVolumed(keys=["image", "label"])
    items = [load({k: str(mixed / v) for k, v in e.items() if k in ("image", "label")}) for e in datalist["training"]]
    assert {Path(i["image"].meta["filename_or_obj"]).suffix for i in items} == {".gz", ".nrrd", ".mha"}
    for item in items:
        assert sorted(map(str, item["image"].meta)) == sorted(COMMON_META_KEYS)
        assert sorted(map(str, item["image_meta_dict"])) == sorted(COMMON_META_KEYS)
    batch = list_data_collate(items)
    assert batch["image"].shape[0] == 3


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_formats_train_validate_and_infer(mixed, tmp_path, seed):
    out = tmp_path / "run"
    args = [*TINY_TRAIN, "--labeled_batch_size", "2", "--unlabeled_batch_size", "2", "--seed", str(seed)]
    args += ["--dataset_dir", str(mixed), "--output_dir", str(out), "--ckpt_dir", str(out / "models")]
    run_bundle(TRAIN_CONFIG, *args, "--num_iterations", "6", "--val_interval", "3")
    log = read_log(out / "log.jsonl")
    assert [r["iteration"] for r in log if "val_dice" in r] == [3, 6]
    if seed == 0:  # inference over the mixed test section, masks in each scan's own grid and format
        infer = tmp_path / "infer"
        run_bundle(
            "configs/inference.json",
            "--dataset_dir",
            str(mixed),
            "--output_dir",
            str(infer),
            "--ckpt_path",
            str(out / "models" / "model.pt"),
            "--n_filters",
            "2",
            "--patch_size",
            "[16,16,16]",
            "--spacing",
            "[3.0,3.0,3.0]",
        )
        masks = sorted(p.name for p in infer.rglob("*_seg*") if p.is_file())
        assert len(masks) == 3, masks
        for entry in json.loads((mixed / "datalist.json").read_text())["test"]:
            scan = sitk.ReadImage(str(mixed / entry["image"]))
            stem = Path(entry["image"]).name.split(".")[0]
            mask_file = next(p for p in infer.rglob(f"{stem}_seg*") if p.is_file())
            mask = sitk.ReadImage(str(mask_file))
            assert mask.GetSize() == scan.GetSize()
            assert np.allclose(mask.GetOrigin(), scan.GetOrigin(), atol=1e-3)
