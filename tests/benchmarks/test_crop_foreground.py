"""Tests of benchmarks.crop_foreground: the true foreground fraction of random crops per part of a data list."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from benchmarks.crop_foreground import crop_foreground


def _case(path, fg_slices: int):
    """A 20x20x10 LA-style h5 whose label is foreground in its first ``fg_slices`` x-slices."""
    path.parent.mkdir(parents=True)
    label = np.zeros((20, 20, 10), np.uint8)
    label[:fg_slices] = 1
    with h5py.File(path, "w") as f:
        f["image"] = np.random.default_rng(0).normal(size=label.shape).astype(np.float32)
        f["label"] = label


def test_crop_foreground_per_part(tmp_path):
    for name, fg in (("a", 5), ("b", 10), ("u", 20), ("v", 0)):
        _case(tmp_path / name / "mri_norm2.h5", fg)
    entry = lambda n: {"image": f"{n}/mri_norm2.h5", "case_id": n}  # noqa: E731
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        json.dumps(
            {
                "training": [{**entry("a"), "label": "a/mri_norm2.h5"}, {**entry("b"), "label": "b/mri_norm2.h5"}],
                "unlabeled": [entry("u")],  # no label key: the h5 holds it
                "validation": [{**entry("v"), "label": "v/mri_norm2.h5"}],
            }
        )
    )
    # a crop as large as the volume (patch 10x10x5 at resample 0.5) sees the whole volume every time
    out = crop_foreground(datalist, patch_size=(10, 10, 5), n_crops=3)
    assert out["crop_voxels"] == [20, 20, 10]
    parts = out["parts"]
    assert parts["training"]["cases"] == 2
    assert parts["training"]["volume_fg"] == pytest.approx(0.375) and parts["training"]["crop_fg"] == pytest.approx(
        0.375
    )
    assert parts["unlabeled"]["volume_fg"] == 1.0 and parts["validation"]["crop_fg"] == 0.0
    # 4-voxel crops in x: the fraction varies from crop to crop; uniform starts give a mean of 14/68 (case a) and
    # 34/68 (case b), 0.353 together
    small = crop_foreground(datalist, patch_size=(2, 10, 5), n_crops=400, parts=("training",))
    per_crop = small["parts"]["training"]
    assert per_crop["crop_fg"] == pytest.approx(0.353, abs=0.03) and per_crop["crop_fg_sd"] > 0
    with pytest.raises(ValueError, match="no cases in 'test'"):
        crop_foreground(datalist, parts=("test",))
    with h5py.File(tmp_path / "u" / "mri_norm2.h5", "w") as f:  # a case without its label: named in the error
        f["image"] = np.zeros((20, 20, 10), np.float32)
    with pytest.raises(ValueError, match=r"u/mri_norm2.h5: has no dataset 'label'"):
        crop_foreground(datalist, parts=("unlabeled",))
