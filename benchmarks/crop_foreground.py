"""The true foreground fraction of random training crops, per part of an LA-lite data list: the reference that the
campaign's logged pseudo-label foreground fraction (``pseudo_fg``, the teacher's pseudo-labels on unlabelled crops)
is read against (issue #13's diagnosis). The LA h5 files hold the labels of every case, so the fraction the
pseudo-labels should have is known for the unlabelled cases too.

Crops are drawn uniformly inside each volume (as ``RandSpatialCropd`` does) at the full 0.625 mm resolution with a
size of ``patch / resample_factor`` voxels: LA-lite's 48x48x32 patch at 1.25 mm is 96x96x64 here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bundle.data.datalist import load_datalist
from bundle.data.readers import VolumeProblemError, read_volume

PARTS = ("training", "unlabeled", "validation")


def case_fractions(
    path: str | os.PathLike, crop: Sequence[int], n_crops: int, rng: np.random.Generator
) -> tuple[float, float]:
    """``(foreground fraction of the whole label volume, mean over n_crops random crops of size crop)``.

    Raises:
        ValueError: the label cannot be read (:func:`bundle.data.readers.read_volume`'s message, with the file).
    """
    try:
        _, data = read_volume(str(path), key="label")
    except VolumeProblemError as err:
        raise ValueError(f"{path}: {err}") from None
    label = np.asarray(data) > 0
    fractions = []
    for _ in range(n_crops):
        start = [int(rng.integers(0, max(1, s - c + 1))) for s, c in zip(label.shape, crop)]
        box = tuple(slice(a, a + c) for a, c in zip(start, crop))
        fractions.append(float(label[box].mean()))
    return float(label.mean()), float(np.mean(fractions))


def crop_foreground(
    datalist: str | os.PathLike,
    patch_size: Sequence[int] = (48, 48, 32),
    resample_factor: float = 0.5,
    n_crops: int = 200,
    seed: int = 0,
    parts: Sequence[str] = PARTS,
) -> dict[str, Any]:
    """Per part of ``datalist`` (labelled ``training``, ``unlabeled``, ``validation``): the number of cases and the
    mean over cases (and sd) of the whole-volume and the random-crop foreground fractions.

    Raises:
        ValueError: a requested part is empty (the message names it and the data list).
    """
    lists = load_datalist(datalist)
    crop = [int(round(p / resample_factor)) for p in patch_size]
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "datalist": str(datalist),
        "crop_voxels": crop,
        "patch_size": list(patch_size),
        "resample_factor": resample_factor,
        "crops_per_case": n_crops,
        "seed": seed,
        "parts": {},
    }
    for part in parts:
        entries = lists.get(part, [])
        if not entries:
            raise ValueError(f"{datalist}: no cases in {part!r}")
        per_case = {
            e.get("case_id", e["image"]): case_fractions(e.get("label", e["image"]), crop, n_crops, rng)
            for e in entries
        }
        volume = np.array([v for v, _ in per_case.values()])
        crops = np.array([c for _, c in per_case.values()])
        out["parts"][part] = {
            "cases": len(per_case),
            "volume_fg": float(volume.mean()),
            "volume_fg_sd": float(volume.std()),
            "crop_fg": float(crops.mean()),
            "crop_fg_sd": float(crops.std()),
        }
    return out
