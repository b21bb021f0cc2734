"""Dictionary transforms of the bundle: volume loading (NIfTI/NRRD/MHA and the legacy LA ``.h5``), intensity
handling by modality, and the deterministic preprocessing / random augmentation pipelines.

Tensors are channel-first ``monai.data.MetaTensor`` of shape ``(C, H, W, D)`` carrying their affine, so
``Orientationd``, ``Spacingd`` and ``Invertd`` work the same for every input format.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import SimpleITK as sitk
import torch
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.transforms import (
    CropForegroundd,
    EnsureTyped,
    LoadImage,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import ensure_tuple, ensure_tuple_rep
from monai.utils.type_conversion import convert_to_dst_type, convert_to_tensor

__all__ = [
    "H5VolumeReader",
    "SimpleITKVolumeReader",
    "LoadVolumed",
    "ScaleIntensityByModalityd",
    "AboveThreshold",
    "MODALITIES",
    "DEFAULT_FOREGROUND_THRESHOLD",
    "preprocessing_transforms",
    "augmentation_transforms",
]

MODALITIES = ("ct", "mr", "flair", "none")
#: ``CropForegroundd`` keeps voxels with ``image > threshold`` (raw intensities, before scaling).
DEFAULT_FOREGROUND_THRESHOLD = {"ct": -500.0, "mr": 0.0, "flair": 0.0, "none": 0.0}


class H5VolumeReader(ImageReader):
    """Reader of the legacy UA-MT/MC-Net LA ``.h5`` layout (datasets ``image`` float32 and ``label`` uint8,
    axes x, y, z; no geometry stored).

    The array gets the RAS affine ``diag(spacing, spacing, spacing, 1)`` (origin 0) and no channel dimension
    (``original_channel_dim = nan``), so ``LoadImage(ensure_channel_first=True)`` returns ``(1, H, W, D)``.

    Args:
        dataset: name of the h5 dataset to read. Default ``"image"``.
        spacing: isotropic voxel size in mm (or three sizes). Default 0.625 (the LA data).
    """

    suffixes = ("h5", "hdf5")

    def __init__(self, dataset: str = "image", spacing: float | Sequence[float] = 0.625) -> None:
        super().__init__()
        self.dataset = dataset
        self.spacing = np.asarray(ensure_tuple_rep(spacing, 3), dtype=np.float64)
        if np.any(self.spacing <= 0):
            raise ValueError(f"H5VolumeReader spacing must be positive, got {spacing}.")

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return is_supported_format(filename, self.suffixes)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> tuple[np.ndarray, str]:
        """Read dataset ``self.dataset`` of one file into memory. Returns ``(array, filename)``."""
        files = ensure_tuple(data)
        if len(files) != 1:
            raise ValueError(f"H5VolumeReader reads one file at a time, got {files}.")
        filename = str(files[0])
        with h5py.File(filename, "r") as f:
            if self.dataset not in f:
                raise KeyError(f"{filename} has no dataset '{self.dataset}' (has {sorted(f.keys())}).")
            array = np.asarray(f[self.dataset][()])
        if array.ndim != 3:
            raise ValueError(f"{filename}: dataset '{self.dataset}' must be 3D (x, y, z), got shape {array.shape}.")
        return array, filename

    def get_data(self, img: tuple[np.ndarray, str]) -> tuple[np.ndarray, dict]:
        array, _ = img
        affine = np.diag([*self.spacing, 1.0])
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(array.shape),
            "space": "RAS",
            "original_channel_dim": float("nan"),
            "pixdim": np.array([1.0, *self.spacing, 1.0, 1.0, 1.0, 1.0]),
        }
        return array, meta


class SimpleITKVolumeReader(ImageReader):
    """Reader of NRRD/MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through SimpleITK, for installs without
    the ``itk`` package that MONAI's ``ITKReader`` needs.

    ITK geometry is LPS: a voxel index ``i`` (x, y, z order) maps to ``p_LPS = origin + direction @ (spacing * i)``.
    The RAS affine is therefore ``diag(-1, -1, 1, 1) @ [[direction * spacing, origin], [0, 1]]``, and the array is
    transposed from SimpleITK's ``(z, y, x)`` to ``(x, y, z)``. Multi-component pixels become the last axis
    (``original_channel_dim = -1``).

    Args:
        suffixes: accepted file suffixes. Default ``("nrrd", "nhdr", "mha", "mhd")``.
    """

    def __init__(self, suffixes: Sequence[str] = ("nrrd", "nhdr", "mha", "mhd")) -> None:
        super().__init__()
        self.suffixes = tuple(suffixes)

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return is_supported_format(filename, self.suffixes)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read one file with ``SimpleITK.ReadImage``."""
        files = ensure_tuple(data)
        if len(files) != 1:
            raise ValueError(f"SimpleITKVolumeReader reads one file at a time, got {files}.")
        return sitk.ReadImage(str(files[0]))

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        ndim = img.GetDimension()
        if ndim != 3:
            raise ValueError(f"SimpleITKVolumeReader expects a 3D image, got {ndim}D.")
        array = sitk.GetArrayFromImage(img)  # (z, y, x[, c])
        channels = img.GetNumberOfComponentsPerPixel() > 1
        array = np.transpose(array, (2, 1, 0, 3) if channels else (2, 1, 0))
        direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = direction * np.asarray(img.GetSpacing(), dtype=np.float64)
        affine[:3, 3] = img.GetOrigin()
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(array.shape[:3]),
            "space": "RAS",
            "original_channel_dim": -1 if channels else float("nan"),
        }
        return array, meta


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


def preprocessing_transforms(
    keys: Sequence[str] = ("image", "label"),
    spacing: Sequence[float] | None = (2.0, 2.0, 2.0),
    modality: str = "ct",
    patch_size: Sequence[int] = (32, 32, 32),
    crop_foreground: bool = True,
    foreground_threshold: float | None = None,
    margin: Sequence[int] | int = 0,
    ct_window: Sequence[float] = (-125.0, 275.0),
    h5_spacing: float = 0.625,
    image_only: bool = False,
    label_dtype: torch.dtype = torch.uint8,
) -> list[MapTransform]:
    """The deterministic preprocessing shared by labelled and unlabelled cases (``label`` may be missing).

    ``LoadVolumed -> Orientationd("RAS") -> Spacingd(spacing) -> CropForegroundd(image > threshold, margin)
    -> ScaleIntensityByModalityd(modality) -> SpatialPadd(patch_size) -> EnsureTyped``. The first key is the
    image (bilinear resampling, float32), the others are labels (nearest, ``label_dtype``). The foreground crop
    runs on raw intensities, before scaling. Spatial steps are invertible (``Invertd``).

    Args:
        keys: image key first, then label keys. Default ``("image", "label")``.
        spacing: target voxel size in mm; ``None`` keeps the input spacing. Default ``(2.0, 2.0, 2.0)``.
        modality: ``"ct"``, ``"mr"``, ``"flair"`` or ``"none"`` (see :class:`ScaleIntensityByModalityd`).
            Default ``"ct"``.
        patch_size: minimal spatial size after padding. Default ``(32, 32, 32)``.
        crop_foreground: crop to the bounding box of ``image > threshold``. Default True.
        foreground_threshold: that threshold; ``None``: -500 HU for ``"ct"``, 0 otherwise. Default ``None``.
        margin: voxels kept around the foreground box. Default 0.
        ct_window: HU window for ``"ct"``. Default ``(-125.0, 275.0)``.
        h5_spacing: voxel size of legacy ``.h5`` inputs. Default 0.625.
        image_only: passed to :class:`LoadVolumed`. Default False.
        label_dtype: dtype of the label keys. Default ``torch.uint8``.

    Returns:
        The list of transforms (wrap in ``monai.transforms.Compose``).
    """
    keys = list(keys)
    if not keys:
        raise ValueError("preprocessing_transforms needs at least the image key.")
    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality '{modality}'; expected one of {MODALITIES}.")
    image_key, label_keys = keys[0], keys[1:]
    modes = ["bilinear"] + ["nearest"] * len(label_keys)
    xforms: list[MapTransform] = [
        LoadVolumed(keys, allow_missing_keys=True, h5_spacing=h5_spacing, image_only=image_only),
        Orientationd(keys, axcodes="RAS", labels=None, allow_missing_keys=True),
    ]
    if spacing is not None:
        xforms.append(Spacingd(keys, pixdim=tuple(spacing), mode=modes, allow_missing_keys=True))
    if crop_foreground:
        threshold = DEFAULT_FOREGROUND_THRESHOLD[modality] if foreground_threshold is None else foreground_threshold
        xforms.append(
            CropForegroundd(
                keys,
                source_key=image_key,
                select_fn=AboveThreshold(threshold),
                margin=margin,
                allow_smaller=True,
                allow_missing_keys=True,
            )
        )
    xforms += [
        ScaleIntensityByModalityd(image_key, modality=modality, ct_window=ct_window),
        SpatialPadd(keys, spatial_size=tuple(patch_size), allow_missing_keys=True),
        EnsureTyped(image_key, dtype=torch.float32),
    ]
    if label_keys:
        xforms.append(EnsureTyped(label_keys, dtype=label_dtype, allow_missing_keys=True))
    return xforms


def augmentation_transforms(
    keys: Sequence[str] = ("image", "label"),
    patch_size: Sequence[int] = (32, 32, 32),
    flip: bool = False,
    rotate90: bool = False,
    prob: float = 0.5,
) -> list[MapTransform]:
    """The random part: ``RandSpatialCropd(roi_size=patch_size, random_size=False)``, then optionally
    ``RandFlipd`` along each spatial axis and ``RandRotate90d`` in the axial plane (``spatial_axes=(0, 1)``).

    Args:
        keys: keys cropped/flipped/rotated together (missing keys allowed). Default ``("image", "label")``.
        patch_size: crop size ``(H, W, D)``. Default ``(32, 32, 32)``.
        flip: add ``RandFlipd(prob, spatial_axis=a)`` for ``a`` in 0, 1, 2. Default False.
        rotate90: add ``RandRotate90d(prob, max_k=3, spatial_axes=(0, 1))``. Default False.
        prob: probability of each flip / rotation. Default 0.5.

    Returns:
        The list of transforms.
    """
    keys = list(keys)
    xforms: list[MapTransform] = [
        RandSpatialCropd(keys, roi_size=tuple(patch_size), random_size=False, allow_missing_keys=True)
    ]
    if flip:
        xforms += [RandFlipd(keys, prob=prob, spatial_axis=axis, allow_missing_keys=True) for axis in range(3)]
    if rotate90:
        xforms.append(RandRotate90d(keys, prob=prob, max_k=3, spatial_axes=(0, 1), allow_missing_keys=True))
    return xforms
