"""Mask writing: each mask as a NIfTI label file in the scan's own geometry, written atomically, never over an
input (:func:`check_output_paths`).

The output mask of ``<dir>/<name>.nii.gz`` is ``<output_dir>/<name>_<postfix>.nii.gz`` (uint8), with the scan's
shape and affine (and, for NIfTI scans, the scan's header: qform/sform codes, units).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, SaveImaged

from bundle.data.datalist import case_name
from bundle.engine.errors import DataValidationError
from bundle.engine.files import atomic_path

__all__ = ["SaveMaskd", "output_path", "check_output_paths"]


def output_path(
    source: str, output_dir: str | os.PathLike, postfix: str = "seg", ext: str = ".nii.gz", case_id: str | None = None
) -> Path:
    """``<output_dir>/<case_id or name of source>_<postfix><ext>`` (no ``_`` when ``postfix`` is empty)."""
    name = case_id or case_name(source) or Path(source).stem
    return Path(output_dir) / (f"{name}_{postfix}{ext}" if postfix else f"{name}{ext}")


def _input_files(cases: Sequence[Mapping[str, Any]]) -> dict[tuple[int, int], str]:
    """``{(device, inode): path}`` of every existing file a case names (image, label, any other path value)."""
    files = {}
    for case in cases:
        for value in case.values():
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, (str, os.PathLike)) and os.path.isfile(v):
                    st = os.stat(v)  # follows links: a link to an input is that input
                    files[(st.st_dev, st.st_ino)] = str(v)
    return files


def check_output_paths(
    cases: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    postfix: str = "seg",
    ext: str = ".nii.gz",
    enabled: bool = True,
) -> list[Mapping[str, Any]]:
    """Refuse, before anything is computed, a run whose masks (:func:`output_path`) would replace one of its
    inputs (the same file, also through a symbolic or hard link, or a linked folder) or each other.

    Args:
        cases: the entries of :func:`list_inputs`.
        output_dir, postfix, ext: as :class:`SaveMaskd`'s.
        enabled: ``False`` (masks not saved) checks nothing. Default True.

    Returns:
        ``cases``, unchanged.

    Raises:
        DataValidationError: naming the input and the output, and the settings to change.
    """
    if not enabled:
        return list(cases)
    inputs = _input_files(cases)
    targets: dict[str, str] = {}
    for case in cases:
        image = case["image"] if isinstance(case["image"], (str, os.PathLike)) else case["image"][0]
        case_id = case.get("case_id") if isinstance(case.get("case_id"), str) else None
        out = output_path(str(image), output_dir, postfix, ext, case_id)
        real = os.path.realpath(out)
        clash = None
        if os.path.isfile(out):  # an existing file: the same inode as an input (hard or symbolic link)
            st = os.stat(out)
            clash = inputs.get((st.st_dev, st.st_ino))
        if clash is None:  # not written yet: the same resolved path (linked folders)
            clash = next((p for p in inputs.values() if os.path.realpath(p) == real), None)
        if clash is not None:
            raise DataValidationError(
                f"the mask of {image} would be written to {out}, which is the input file {clash}; nothing was "
                "written. Choose another output_dir or a non-empty output_postfix."
            )
        if real in targets:
            raise DataValidationError(
                f"the masks of {targets[real]} and {image} would both be written to {out}; nothing was written. "
                "Give the cases distinct names (case_id in the data list) or run them separately."
            )
        targets[real] = str(image)
    return list(cases)


def _is_nifti(path: str) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


class SaveMaskd(SaveImaged):
    """Write each mask ``(1, H, W, D)`` as a NIfTI label file in the scan's own geometry, atomically.

    The file is ``<output_dir>/<case_id or scan name>_<output_postfix><output_ext>`` (see :func:`output_path`),
    with dtype ``output_dtype``. Its affine is the scan's (``meta["original_affine"]`` of the loaded scan; the
    mask's own affine must agree to 1e-3 after ``Invertd``, else the mask is not in the scan's grid and an error
    names the file); a NIfTI scan's header is reused (qform/sform codes, units), with the data type and scaling
    reset. The data go to a hidden temporary file in ``output_dir`` that is renamed over the target, so an
    interrupted run never leaves a partial file. The written path is stored under ``<key>_file``.

    It subclasses ``SaveImaged`` so that tools that drop saving transforms (MONAI Label) recognise it.

    Args:
        keys: keys of the masks. Default ``"pred"``.
        output_dir: output folder (created). Default ``"./output"``.
        output_postfix: appended to the scan name with ``_``. Default ``"seg"``.
        output_ext: file extension, ``".nii.gz"`` or ``".nii"``. Default ``".nii.gz"``.
        output_dtype: stored data type. Default ``numpy.uint8``.
        ref_key: key of the scan whose meta data give the source file and affine. Default ``"image"``.
        check_geometry: the mask is in the scan's grid (after ``Invertd``): require its shape/affine to match the
            scan's and write the scan's affine and header. False writes the mask's own affine (a mask left in the
            model's grid). Default True.
        print_log: print one line per written file. Default False.
        allow_missing_keys: skip absent keys. Default False.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_dir: str | os.PathLike = "./output",
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        output_dtype: Any = np.uint8,
        ref_key: str = "image",
        check_geometry: bool = True,
        print_log: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if output_ext not in (".nii.gz", ".nii"):
            raise ValueError(f"output_ext must be '.nii.gz' or '.nii', got {output_ext!r}.")
        self.output_dir = Path(output_dir)
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.output_dtype = np.dtype(output_dtype)
        self.ref_key = ref_key
        self.check_geometry = check_geometry
        self.print_log = print_log

    def _meta(self, d: Mapping[Hashable, Any], key: Hashable) -> dict:
        # the meta data as loaded (LoadVolumed's ``<key>_meta_dict``) first: transforms never touch it
        candidates = (
            d.get(f"{self.ref_key}_meta_dict"),
            getattr(d.get(key), "meta", None),
            getattr(d.get(self.ref_key), "meta", None),
        )
        for meta in candidates:
            if meta and meta.get("filename_or_obj"):
                return dict(meta)
        raise KeyError(f"SaveMaskd: no 'filename_or_obj' in the meta data of '{self.ref_key}' or '{key}'.")

    def _write(self, mask: Any, meta: dict, case_id: str | None) -> Path:
        source = str(meta["filename_or_obj"])
        arr = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask)
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"{source}: expected a one-channel mask (1, H, W, D), got shape {arr.shape}.")
            arr = arr[0]
        if arr.ndim != 3:
            raise ValueError(f"{source}: expected a 3D mask, got shape {arr.shape}.")
        affine = np.asarray(meta.get("original_affine", meta.get("affine")), dtype=np.float64)
        own = getattr(mask, "affine", None)
        if not self.check_geometry and own is not None:  # a mask left in the model's grid keeps its own affine
            affine = np.asarray(own, dtype=np.float64)
        elif self.check_geometry:
            shape = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", arr.shape)).tolist()[:3])
            if shape != arr.shape:
                raise ValueError(f"{source}: mask shape {arr.shape} is not the scan's {shape} (missing Invertd?).")
            if own is not None and not np.allclose(np.asarray(own, dtype=np.float64), affine, atol=1e-3):
                raise ValueError(f"{source}: mask affine\n{np.asarray(own)}\ndiffers from the scan's\n{affine}.")
        data = arr.astype(self.output_dtype)
        if self.check_geometry and _is_nifti(source) and os.path.isfile(source):
            header = nib.load(source).header.copy()
            header.set_data_dtype(self.output_dtype)
            header.set_slope_inter(1.0, 0.0)
            img = nib.Nifti1Image(data, None, header=header)
            if not np.allclose(img.header.get_best_affine(), affine, atol=1e-4):  # no usable sform/qform: fall back
                img = nib.Nifti1Image(data, affine)
        else:
            img = nib.Nifti1Image(data, affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
        img.header.set_data_dtype(self.output_dtype)
        out = output_path(source, self.output_dir, self.output_postfix, self.output_ext, case_id)
        with atomic_path(out, self.output_ext) as tmp:
            nib.save(img, str(tmp))
        if self.print_log:
            print(f"saved {out}", flush=True)
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            case_id = d.get("case_id")
            case_id = case_id if isinstance(case_id, str) else None
            d[f"{key}_file"] = str(self._write(d[key], self._meta(d, key), case_id))
        return d
