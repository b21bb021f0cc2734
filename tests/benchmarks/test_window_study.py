"""Window-setting study: every setting runs on the same preprocessed cases, windows are counted, Dice is right."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from benchmarks.window_study import WINDOW_SETTINGS, build_inferer, compare_windows, markdown
from bundle.inference.inferers import count_windows


class ThresholdNet(torch.nn.Module):
    """Logits (-x, x): the prediction is ``image > 0`` whatever the window, so every setting scores Dice 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], 1) * 10.0


@pytest.fixture
def cases(tmp_path):
    rng = np.random.default_rng(0)
    entries = []
    for k in range(2):
        shape = (40, 30, 20)
        label = np.zeros(shape, np.uint8)
        label[8 + k : 28, 6:24, 4:16] = 1
        image = np.where(label > 0, 1.0, -1.0) + 0.1 * rng.normal(size=shape)
        for name, arr in (("img", image.astype(np.float32)), ("lab", label)):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{name}{k}.nii.gz")
        entries.append({"image": str(tmp_path / f"img{k}.nii.gz"), "label": str(tmp_path / f"lab{k}.nii.gz")})
    preset = tmp_path / "preset.json"
    preset.write_text(
        json.dumps(
            {
                "modality": "none",
                "spacing": None,
                "crop_foreground": False,
                "patch_size": [16, 16, 16],
                "network_def": {"_target_": "test_window_study.ThresholdNet"},
            }
        )
    )
    ckpt = tmp_path / "model.pt"
    torch.save({}, ckpt)
    return entries, [str(REPO_ROOT / "configs" / "inference.json"), str(preset)], ckpt


def test_compare_windows_counts_windows_and_scores_each_setting(cases):
    entries, configs, ckpt = cases
    settings = {
        "default": {"overlap": 0.5, "mode": "gaussian"},
        "tta": {"overlap": 0.5, "mode": "gaussian", "tta": [[0], [2]]},
        "big": {"roi": [32, 32, 16], "overlap": 0.0, "mode": "constant"},
        "paper": {"stride": [4, 4, 4]},
    }
    res = compare_windows(ckpt, entries, configs, settings, overrides={"bundle_root": str(REPO_ROOT)})
    rows = res["settings"]
    assert res["reference"] == "paper" and res["n_cases"] == 2
    for row in rows.values():
        assert row["dice_per_case"] == pytest.approx([1.0, 1.0]) and row["seconds_per_volume"] > 0
    # overlap 0.5 on 40x30x20 with 16^3: x 0,8,16,24 (4), y 0,8,14 (3), z 0,4 (2); TTA runs it three times
    assert rows["default"]["windows_per_volume"] == 24 and rows["tta"]["windows_per_volume"] == 72
    assert rows["big"]["windows_per_volume"] == 2 * 1 * 2  # 32x32x16 tiles 40x30x20 (y padded to 32)
    assert rows["paper"]["windows_per_volume"] == count_windows((40, 30, 20), (16, 16, 16), (4, 4, 4))
    assert rows["paper"]["dice_minus_reference"] == 0 and rows["paper"]["speedup_vs_reference"] == 1
    table = markdown({"net": res})
    assert table.count("| net |") == 4 and "paper (reference)" in table


def test_settings_are_checked():
    assert list(WINDOW_SETTINGS)[0].startswith("default") and "stride" in list(WINDOW_SETTINGS.values())[-1]
    for setting in WINDOW_SETTINGS.values():
        assert build_inferer(setting, (48, 48, 32)) is not None
    with pytest.raises(ValueError, match="unknown window setting"):
        build_inferer({"overlap": 0.5, "blend": "x"}, (16, 16, 16))
    with pytest.raises(ValueError, match="only 'roi'"):
        build_inferer({"stride": [4, 4, 4], "overlap": 0.5}, (16, 16, 16))
    with pytest.raises(ValueError, match="'keep' needs a 'stride'"):
        build_inferer({"overlap": 0.5, "keep": 7}, (16, 16, 16))
    lattice = build_inferer({"stride": [3, 3, 1], "keep": 7, "sigma": 0.5}, (16, 16, 16)).inferer
    assert (lattice.keep, lattice.sigma_scale, lattice.stride) == (7, (0.5, 0.5, 0.5), (3, 3, 1))
    tta = build_inferer({"stride": [3, 3, 1], "keep": 7, "tta": [[0, 1, 2]]}, (16, 16, 16))
    assert tta.flip_axes == [(0, 1, 2)] and tta.inferer.keep == 7
    assert build_inferer({"stride": [3, 3, 1]}, (16, 16, 16)).flip_axes == []


def test_compare_windows_rejects_empty_input(cases):
    entries, configs, ckpt = cases
    with pytest.raises(ValueError, match="no cases"):
        compare_windows(ckpt, [], configs)
    with pytest.raises(ValueError, match="reference"):
        compare_windows(ckpt, entries, configs, {"a": {"overlap": 0.5}}, reference="b")
