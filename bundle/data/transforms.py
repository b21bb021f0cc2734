"""Dictionary transforms of the bundle: volume loading (NIfTI/NRRD/MHA and the legacy LA ``.h5``), intensity
handling by modality, the foreground test of the crop, and a ``Spacingd`` that MONAI Label's inputs do not break.

Tensors are channel-first ``monai.data.MetaTensor`` of shape ``(C, H, W, D)`` carrying their affine, so
``Orientationd``, ``Spacingd`` and ``Invertd`` work the same for every input format. The pipelines themselves are
the ``preprocessing`` and ``augmentation`` lists of ``configs/train.json`` (``configs/inference.json`` repeats the
preprocessing verbatim).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform, NormalizeIntensityd, ScaleIntensityRanged
from monai.transforms import Spacingd as _MonaiSpacingd
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

from bundle.data.readers import H5VolumeReader, SimpleITKVolumeReader

__all__ = [
    "LoadVolumed",
    "ScaleIntensityByModalityd",
    "AboveThreshold",
    "Spacingd",
    "MODALITIES",
    "DEFAULT_FOREGROUND_THRESHOLD",
    "COMMON_META_KEYS",
]

MODALITIES = ("ct", "mr", "flair", "none")
#: ``CropForegroundd`` keeps voxels with ``image > threshold`` (raw intensities, before scaling).
DEFAULT_FOREGROUND_THRESHOLD = {"ct": -500.0, "mr": 0.0, "flair": 0.0, "none": 0.0}


# the meta-data every reader provides; reader-specific header fields (NIfTI's ``sizeof_hdr``, ...) are dropped, so that
# a batch may mix NIfTI, NRRD, MetaImage and h5 cases (collating dicts with different keys fails)
COMMON_META_KEYS = ("affine", "original_affine", "spatial_shape", "original_channel_dim", "space", "filename_or_obj")


class LoadVolumed(MapTransform):
    """Load volumes as channel-first ``MetaTensor`` ``(C, H, W, D)`` with MONAI ``LoadImage``: NIfTI (and other
    formats) with its default readers chosen by suffix, NRRD/MetaImage with :class:`SimpleITKVolumeReader`, and
    the legacy LA ``.h5``/``.hdf5`` with :class:`H5VolumeReader`.

    For an ``.h5`` path the dataset named like the key is read for ``"label"``, ``"image"`` for any other key;
    its affine is ``diag(h5_spacing, h5_spacing, h5_spacing, 1)`` (RAS). ``meta["filename_or_obj"]`` is the
    file path in both cases. The meta-data keep the keys of :data:`COMMON_META_KEYS` only, the same for every
    format, so that cases of different formats collate into one batch.

    Args:
        keys: keys of the paths to load.
        allow_missing_keys: skip absent keys (e.g. ``"label"`` of unlabelled cases). Default True.
        h5_spacing: voxel size in mm of ``.h5`` volumes. Default 0.625.
        image_only: as in ``LoadImaged``: when False a ``{key}_meta_dict`` is added too. Default False.
    """

    def __init__(
        self,
        keys: KeysCollection,
        allow_missing_keys: bool = True,
        h5_spacing: float | Sequence[float] = 0.625,
        image_only: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.image_only = image_only
        self.loader = LoadImage(image_only=True, ensure_channel_first=True)
        self.h5_readers = {name: H5VolumeReader(dataset=name, spacing=h5_spacing) for name in ("image", "label")}
        self.sitk_reader = SimpleITKVolumeReader()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            h5_reader = self.h5_readers["label" if key == "label" else "image"]
            reader = next((r for r in (h5_reader, self.sitk_reader) if r.verify_suffix(d[key])), None)
            d[key] = self.loader(d[key], reader=reader)
            for name in [k for k in d[key].meta if str(k) not in COMMON_META_KEYS]:
                del d[key].meta[name]
            if not self.image_only:
                d[f"{key}_meta_dict"] = dict(d[key].meta)
        return d


class AboveThreshold:
    """Picklable ``select_fn`` for ``CropForegroundd``: ``x > threshold``.

    Args:
        threshold: intensity threshold (raw units). Default 0.0.
    """

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        return x > self.threshold

    def __repr__(self) -> str:
        return f"AboveThreshold({self.threshold})"


class ScaleIntensityByModalityd(MapTransform):
    """Intensity normalisation by imaging modality.

    - ``"ct"``: clip to the HU window ``[lo, hi] = ct_window`` and scale to [0, 1]: ``(clip(x, lo, hi) - lo) /
      (hi - lo)`` (MONAI ``ScaleIntensityRanged``).
    - ``"mr"``: z-score per channel, ``(x - mean) / std``, over the whole volume or, with ``nonzero``, over
      the non-zero voxels only (MONAI ``NormalizeIntensityd``).
    - ``"flair"``: brain mask ``M`` = ``data[mask_key] > 0`` if given, else ``x != 0``; clip
      ``x <= percentile(x[M], upper_percentile)``, z-score with the mean and std of ``x[M]``, and 0 outside
      ``M``.
    - ``"none"``: identity.

    Args:
        keys: image keys. Default ``"image"``.
        modality: one of ``"ct"``, ``"mr"``, ``"flair"``, ``"none"``. Default ``"ct"``.
        ct_window: HU window ``(lo, hi)`` for ``"ct"``. Default ``(-125.0, 275.0)``.
        mask_key: key of a brain mask for ``"flair"``. Default ``None`` (non-zero voxels).
        upper_percentile: clipping percentile for ``"flair"``. Default 99.9.
        nonzero: ``"mr"`` statistics over non-zero voxels only. Default False.
        allow_missing_keys: skip absent keys. Default False.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        modality: str = "ct",
        ct_window: Sequence[float] = (-125.0, 275.0),
        mask_key: str | None = None,
        upper_percentile: float = 99.9,
        nonzero: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modality = str(modality).lower()
        if self.modality not in MODALITIES:
            raise ValueError(f"Unknown modality '{modality}'; expected one of {MODALITIES}.")
        lo, hi = (float(v) for v in ct_window)
        if not hi > lo:
            raise ValueError(f"ct_window must be (low, high) with high > low, got {tuple(ct_window)}.")
        if not 0.0 < upper_percentile <= 100.0:
            raise ValueError(f"upper_percentile must be in (0, 100], got {upper_percentile}.")
        self.mask_key = mask_key
        self.upper_percentile = float(upper_percentile)
        self._ct = ScaleIntensityRanged(
            self.keys, a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True, allow_missing_keys=allow_missing_keys
        )
        self._mr = NormalizeIntensityd(
            self.keys, nonzero=nonzero, channel_wise=True, allow_missing_keys=allow_missing_keys
        )

    def _flair(self, img: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = convert_to_tensor(img, track_meta=False).float()
        brain = (convert_to_tensor(mask, track_meta=False) > 0) if mask is not None else (x != 0)
        brain = brain.expand_as(x) if brain.shape[0] == 1 else brain
        if brain.shape != x.shape:
            raise ValueError(f"mask '{self.mask_key}' shape {tuple(brain.shape)} does not match {tuple(x.shape)}.")
        out = torch.zeros_like(x)
        for c in range(x.shape[0]):
            m = brain[c]
            values = x[c][m]
            if values.numel() == 0:
                continue
            upper = float(np.percentile(values.cpu().numpy(), self.upper_percentile))
            values = values.clamp(max=upper)
            std = values.std(unbiased=False)
            out[c][m] = (values - values.mean()) / (std if std > 0 else 1.0)
        return convert_to_dst_type(out, dst=img)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.modality == "ct":
            return self._ct(data)
        if self.modality == "mr":
            return self._mr(data)
        d = dict(data)
        if self.modality == "flair":
            for key in self.key_iterator(d):
                if self.mask_key is not None and self.mask_key not in d:
                    raise KeyError(f"mask_key '{self.mask_key}' not in the data (keys {list(d)}).")
                d[key] = self._flair(d[key], d[self.mask_key] if self.mask_key is not None else None)
        return d


class Spacingd(_MonaiSpacingd):
    """``monai.transforms.Spacingd`` that leaves the non-dictionary entries named ``<key>_*`` alone.

    After resampling a NIfTI image, MONAI 1.6's ``Spacingd`` updates every entry whose name starts with ``<key>_``
    as a meta-data dictionary. MONAI Label 0.8.5 puts the input file name in ``image_path``, so ``/infer`` failed
    with ``'str' object has no attribute 'update'``. Such entries (anything that is not a mapping) are set aside
    during the call and put back unchanged. Arguments, result and inverse are those of ``monai.transforms.Spacingd``.
    """

    def __call__(self, data: Mapping, lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {
            k: d.pop(k)
            for k in list(d)
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(d[k], Mapping)
        }
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d
