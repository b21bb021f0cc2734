"""Reading volumes: the supported file types, their geometry, and the readers behind ``LoadVolumed`` and the checks.

- :data:`SUPPORTED_SUFFIXES`: the one list of volume file types the bundle reads (NIfTI, NRRD/MetaImage through
  SimpleITK, the legacy LA ``.h5``); folders, data lists and inference inputs are scanned for these;
- :func:`ras_affine` (ITK's LPS geometry as a RAS affine) and :func:`spacing_from_affine`;
- :func:`read_volume`: the header (and optionally the voxels) of one file without MONAI's transforms, for the
  input checks (``bundle.data.checks``);
- :class:`H5VolumeReader`, :class:`SimpleITKVolumeReader`: MONAI ``ImageReader`` s used by
  ``bundle.data.transforms.LoadVolumed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import SimpleITK as sitk  # noqa: N813
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.utils import ensure_tuple, ensure_tuple_rep

__all__ = [
    "NIFTI_SUFFIXES",
    "H5_SUFFIXES",
    "SITK_SUFFIXES",
    "SUPPORTED_SUFFIXES",
    "ras_affine",
    "spacing_from_affine",
    "VolumeInfo",
    "VolumeProblemError",
    "read_volume",
    "H5VolumeReader",
    "SimpleITKVolumeReader",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
H5_SUFFIXES = (".h5", ".hdf5")
SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
#: every volume file type the bundle reads (longest suffix first where one ends another)
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES + H5_SUFFIXES


def ras_affine(image: Any) -> np.ndarray:
    """The 4x4 RAS voxel-to-world affine of a SimpleITK image or ``ImageFileReader`` (after
    ``ReadImageInformation``).

    ITK geometry is LPS: a voxel index ``i`` (x, y, z order) maps to ``p_LPS = origin + direction @ (spacing * i)``,
    so the RAS affine is ``diag(-1, -1, 1, 1) @ [[direction * spacing, origin], [0, 1]]``.
    """
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    """Voxel size per array axis: the norms of the first three columns of a 4x4 affine."""
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}.")
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


@dataclass
class VolumeInfo:
    """What :func:`read_volume` found in one file (header, and the voxels when asked).

    Attributes:
        path: the file. ``key``: ``"image"`` or ``"label"`` (the h5 dataset read).
        shape: spatial shape ``(H, W, D)``; ``channels``: number of channels (1 for a plain 3D volume).
        affine: 4x4 voxel-to-world (RAS, mm) matrix. ``dtype``: stored data type.
        minimum, maximum: voxel value range (``None`` when voxels were not read).
        distinct: number of distinct voxel values, counted up to 3 (``None`` when voxels were not read).
        digest: a hash of the voxel values as float32 (``None`` when voxels were not read): equal digests mean
            identical images, whatever the file format.
    """

    path: str
    key: str
    shape: tuple[int, int, int]
    channels: int
    affine: np.ndarray
    dtype: str
    minimum: float | None = None
    maximum: float | None = None
    distinct: int | None = None
    digest: str | None = None

    @property
    def spacing(self) -> np.ndarray:
        return np.asarray(spacing_from_affine(self.affine))


class VolumeProblemError(Exception):
    """A problem with one file: the message completes ``"<path> ..."`` (``bundle.data.checks`` collects them)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _has_suffix(path: str, suffixes: Sequence[str]) -> bool:
    name = path.lower()
    return any(name.endswith(s) for s in suffixes)


def _spatial(shape: Sequence[int], in_channels: int | None, label: bool) -> tuple[tuple[int, int, int], int]:
    """``(spatial shape, channels)`` of a stored array shape, or a :class:`VolumeProblemError` for 2D/4D/5D input."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 3:
        raise VolumeProblemError(f"is {len(shape)}D {shape}; the network is 3D and needs (H, W, D) volumes")
    if len(shape) == 3:
        spatial, channels = shape, 1
    elif len(shape) == 4:
        expected = 1 if label else (in_channels or 1)
        if shape[3] != expected:
            what = "a label must have one channel" if label else f"the network expects in_channels={expected}"
            raise VolumeProblemError(
                f"is 4D {shape} with {shape[3]} frames/channels on the last axis; {what} "
                f"(a 4D file is accepted only as (H, W, D, {expected}))"
            )
        spatial, channels = shape[:3], shape[3]
    else:
        raise VolumeProblemError(f"is {len(shape)}D {shape}; expected a 3D volume (H, W, D)")
    if min(spatial) <= 1:
        raise VolumeProblemError(f"has spatial shape {spatial}: a single slice (2D); the network needs a 3D volume")
    return spatial, channels  # type: ignore[return-value]


def read_volume(
    path: str, key: str = "image", in_channels: int | None = 1, voxels: bool = True, h5_spacing: float = 0.625
) -> tuple[VolumeInfo, np.ndarray | None]:
    """Read one image or label file's header (and its voxels with ``voxels``) without MONAI's transforms.

    NIfTI with nibabel, ``.h5`` with h5py (dataset ``key``: ``"image"`` or ``"label"``; affine
    ``diag(h5_spacing)``), NRRD/MetaImage with SimpleITK (affine :func:`ras_affine`), anything else (and DICOM
    folders) with MONAI's ``LoadImage``. See ``bundle.data.checks`` for the accepted shapes.

    Returns:
        ``(VolumeInfo without value range, voxel array or None)``.

    Raises:
        VolumeProblemError: missing, empty, unreadable or truncated file, or a shape that is not a 3D volume.
    """
    label = key == "label"
    p = Path(path)
    if not p.exists():
        parent = next((q for q in p.parents if q.exists()), None)
        hint = "" if parent == p.parent else f" (folder {p.parent} does not exist either)"
        raise VolumeProblemError(f"file not found{hint}")
    if p.is_dir() and not _has_suffix(path, SUPPORTED_SUFFIXES):
        return _read_monai(path, key, in_channels, label, voxels)
    if p.is_dir():
        raise VolumeProblemError("is a folder, expected a volume file")
    if p.stat().st_size == 0:
        raise VolumeProblemError("is an empty file (0 bytes)")
    if _has_suffix(path, H5_SUFFIXES):
        return _read_h5(path, key, label, voxels, h5_spacing)
    if _has_suffix(path, SITK_SUFFIXES):
        return _read_sitk(path, key, in_channels, label, voxels)
    if _has_suffix(path, NIFTI_SUFFIXES):
        return _read_nifti(path, key, in_channels, label, voxels)
    return _read_monai(path, key, in_channels, label, voxels)


def _read_nifti(path: str, key: str, in_channels: int | None, label: bool, voxels: bool):
    import nibabel as nib

    try:
        img = nib.load(path)
        shape, affine = img.shape, np.asarray(img.affine, dtype=np.float64)
        dtype = str(img.get_data_dtype())
    except Exception as e:
        raise VolumeProblemError(f"unreadable NIfTI header (corrupt or truncated file?): {_first_line(e)}") from None
    spatial, channels = _spatial(shape, in_channels, label)
    data = None
    if voxels:
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            raise VolumeProblemError(
                f"cannot read the voxel data (truncated or corrupt file?): {_first_line(e)}"
            ) from None
    return VolumeInfo(path, key, spatial, channels, affine, dtype), data


def _read_h5(path: str, key: str, label: bool, voxels: bool, h5_spacing: float):
    dataset = "label" if label else "image"
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise VolumeProblemError(f"has no dataset '{dataset}' (datasets: {sorted(f.keys())})")
            ds = f[dataset]
            shape, dtype = ds.shape, str(ds.dtype)
            if len(shape) != 3:
                _spatial(shape, 1, label)  # 2D / single-slice messages
                raise VolumeProblemError(f"dataset '{dataset}' is {len(shape)}D {tuple(shape)}; expected 3D (x, y, z)")
            spatial, channels = _spatial(shape, 1, label)
            data = np.asarray(ds[()]) if voxels else None
    except VolumeProblemError:
        raise
    except Exception as e:
        raise VolumeProblemError(f"unreadable h5 file (corrupt or truncated?): {_first_line(e)}") from None
    affine = np.diag([*np.broadcast_to(np.asarray(h5_spacing, dtype=np.float64), (3,)), 1.0])
    return VolumeInfo(path, key, spatial, channels, affine, dtype), data


def _read_sitk(path: str, key: str, in_channels: int | None, label: bool, voxels: bool):
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        size, components = tuple(reader.GetSize()), int(reader.GetNumberOfComponents())
        dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    except Exception as e:
        raise VolumeProblemError(f"unreadable image header (corrupt or truncated file?): {_first_line(e)}") from None
    if len(size) != 3:
        _spatial(size, in_channels, label)
        raise VolumeProblemError(f"is {len(size)}D {size}; NRRD/MetaImage inputs must be 3D")
    spatial, _ = _spatial(size, in_channels, label)
    expected = 1 if label else (in_channels or 1)
    if components != expected:
        raise VolumeProblemError(f"has {components} components per voxel; expected {expected}")
    data = None
    if voxels:
        try:
            data = sitk.GetArrayFromImage(reader.Execute())
        except Exception as e:
            raise VolumeProblemError(
                f"cannot read the voxel data (truncated or corrupt file?): {_first_line(e)}"
            ) from None
    return VolumeInfo(path, key, spatial, components, ras_affine(reader), dtype), data


def _read_monai(path: str, key: str, in_channels: int | None, label: bool, voxels: bool):
    from monai.transforms import LoadImage

    try:
        img = LoadImage(image_only=True, ensure_channel_first=False)(path)
    except Exception as e:
        raise VolumeProblemError(
            f"unreadable image (unsupported format, corrupt or truncated?): {_first_line(e)}"
        ) from None
    spatial, channels = _spatial(img.shape, in_channels, label)
    affine = np.asarray(img.affine, dtype=np.float64)
    return VolumeInfo(path, key, spatial, channels, affine, str(img.dtype)), np.asarray(img)


class H5VolumeReader(ImageReader):
    """Reader of the legacy UA-MT/MC-Net LA ``.h5`` layout (datasets ``image`` float32 and ``label`` uint8,
    axes x, y, z; no geometry stored).

    The array gets the RAS affine ``diag(spacing, spacing, spacing, 1)`` (origin 0) and no channel dimension
    (``original_channel_dim = nan``), so ``LoadImage(ensure_channel_first=True)`` returns ``(1, H, W, D)``.

    Args:
        dataset: name of the h5 dataset to read. Default ``"image"``.
        spacing: isotropic voxel size in mm (or three sizes). Default 0.625 (the LA data).
    """

    suffixes = tuple(s[1:] for s in H5_SUFFIXES)

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

    The affine is :func:`ras_affine` (ITK's LPS geometry converted to RAS), and the array is transposed from
    SimpleITK's ``(z, y, x)`` to ``(x, y, z)``. Multi-component pixels become the last axis
    (``original_channel_dim = -1``).

    Args:
        suffixes: accepted file suffixes. Default ``("nrrd", "nhdr", "mha", "mhd")``.
    """

    def __init__(self, suffixes: Sequence[str] = tuple(s[1:] for s in SITK_SUFFIXES)) -> None:
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
        affine = ras_affine(img)
        meta = {
            "affine": affine,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(array.shape[:3]),
            "space": "RAS",
            "original_channel_dim": -1 if channels else float("nan"),
        }
        return array, meta
