"""Inference on new scans: input discovery, class probabilities (optionally with flip test-time augmentation),
atomic mask writing in the scan's own geometry, and per-case progress.

``configs/inference.json`` wires these around MONAI's ``SupervisedEvaluator``:
``list_inputs -> preprocessing -> ProbabilityInferer(sliding window) -> Invertd -> argmax
-> [KeepLargestComponentd] -> SaveMaskd``. The output mask of ``<dir>/<name>.nii.gz`` is
``<output_dir>/<name>_<postfix>.nii.gz`` (uint8), with the scan's shape and affine (and, for NIfTI scans, the
scan's header: qform/sform codes, units).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import MapTransform, SaveImaged
from monai.utils.type_conversion import convert_to_dst_type

from bundle.datalist import SECTIONS, SUPPORTED_SUFFIXES, case_name, load_datalist
from bundle.inferers import StridedSlidingWindowInferer

__all__ = [
    "list_inputs",
    "ProbabilityInferer",
    "KeepLargestComponentd",
    "SaveMaskd",
    "InferenceProgress",
    "output_path",
    "spacing_from_affine",
]


def _has_magic(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _supported(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and case_name(path) is not None


def _case_ids(paths: Sequence[str]) -> list[str]:
    """A unique id per path: the file name without suffix, or ``<parent>`` / ``<parent>_<name>`` on collisions.

    The legacy LA layout (``<ID>/mri_norm2.h5`` for every case) gets ``<ID>``.
    """
    names = [case_name(p) or Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    parents = [Path(p).parent.name for p in paths]
    if len(set(parents)) == len(parents) and len(set(names)) == 1:
        return parents
    ids = [f"{parent}_{name}" for parent, name in zip(parents, names)]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"inputs with the same case id {dup[0]!r}: rename them or list them in a datalist.")
    return ids


def list_inputs(
    source: str | os.PathLike,
    section: str = "test",
    label_key: str | None = None,
    skip_suffix: str | None = None,
) -> list[dict[str, Any]]:
    """The cases to run inference on, as ``[{"image": path, "case_id": id, ...}, ...]``.

    Args:
        source: a folder (every supported file in it: ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.h5``; not
            recursive; hidden files skipped), a glob pattern (``"scans/**/*.nii.gz"``, recursive), a data list
            ``.json`` (entries of ``section``; other keys of an entry are kept) or a single scan file.
        section: data list section to read. Default ``"test"``.
        label_key: for evaluation: copy each data-list entry's ``label`` path to this key (``"label"`` lets the
            preprocessing load it, ``"label_file"`` keeps it as a path); entries without a label raise. Default
            ``None``: labels dropped (plain inference).
        skip_suffix: in folder/glob mode, skip files whose name without suffix ends with this (e.g. ``"_seg"``, so
            masks written into the input folder are not segmented again). Default ``None``.

    Returns:
        One dict per case, sorted by path for folders and globs, in data-list order otherwise; ``case_id`` is the
        file name without suffix (the parent folder name when all files share one name, as in the LA layout),
        unless the data list entry provides one.

    Raises:
        FileNotFoundError: ``source`` does not exist or matches no supported file.
        ValueError: unknown section, an empty section, or (with ``label_key``) an entry without ``label``.
    """
    src = str(source)
    path = Path(os.path.expanduser(src))
    if path.suffix.lower() == ".json" and path.is_file():
        if section not in SECTIONS:
            raise ValueError(f"unknown data list section {section!r}; expected one of {SECTIONS}.")
        datalist = load_datalist(path)
        entries = datalist[section]
        if not entries:
            counts = ", ".join(f"{k} {len(v)}" for k, v in datalist.items())
            raise ValueError(f"{path}: section '{section}' is empty ({counts}); choose another section.")
        out = []
        for i, entry in enumerate(entries):
            item = {k: v for k, v in entry.items() if k != "label"}
            if label_key is not None:
                if "label" not in entry:
                    raise ValueError(f"{path}: '{section}'[{i}] has no 'label' to evaluate against: {entry}.")
                item[label_key] = entry["label"]
            out.append(item)
        ids = _case_ids([e["image"] if isinstance(e["image"], str) else e["image"][0] for e in out])
        for item, case_id in zip(out, ids):
            item.setdefault("case_id", case_id)
        return out
    if label_key is not None:
        raise ValueError(f"labels for evaluation need a data list .json, got {src!r}.")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _supported(p))
        where = f"folder {path}"
    elif _has_magic(src):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(src), recursive=True) if _supported(Path(p)))
        where = f"pattern {src!r}"
    elif path.is_file():
        if case_name(path) is None:
            raise ValueError(f"{path}: unsupported file type; expected one of {SUPPORTED_SUFFIXES} or a .json list.")
        files = [path]
        where = str(path)
    else:
        raise FileNotFoundError(f"inference input not found: {src} (expected a folder, a glob or a data list .json)")
    if skip_suffix:
        files = [f for f in files if not (case_name(f) or "").endswith(skip_suffix)]
    if not files:
        raise FileNotFoundError(f"no scans ({', '.join(SUPPORTED_SUFFIXES)}) in {where}.")
    paths = [str(f.resolve()) for f in files]
    return [{"image": p, "case_id": c} for p, c in zip(paths, _case_ids(paths))]


class ProbabilityInferer(Inferer):
    """Class probabilities ``(B, C, H, W, D)`` from a sliding-window inferer, optionally averaged over flips.

    With flip sets ``F = {identity} + flip_axes`` (test-time augmentation):

    .. math::
        P(x) = \\frac{1}{|F|} \\sum_{f \\in F} f^{-1}\\left(\\mathrm{softmax}_c\\, I(f(x))\\right),

    where ``I`` is the inner inferer (``softmax`` is skipped when it already returns probabilities, as
    :class:`bundle.inferers.StridedSlidingWindowInferer` does). Flips are their own inverse.

    Args:
        inferer: the inner inferer, e.g. ``monai.inferers.SlidingWindowInferer`` (logits) or
            ``StridedSlidingWindowInferer`` (probabilities).
        flip_axes: spatial axes flipped together per extra pass, e.g. ``[[0], [1], [2]]`` (three extra passes).
            Default ``()``: no test-time augmentation.
        softmax: apply a softmax over channels to the inner output; ``None`` (default) decides by type (False
            for ``StridedSlidingWindowInferer``, True otherwise).
    """

    def __init__(self, inferer: Inferer, flip_axes: Sequence[Sequence[int]] = (), softmax: bool | None = None) -> None:
        super().__init__()
        if not callable(inferer):
            raise TypeError(f"inferer must be callable, got {type(inferer).__name__}.")
        self.inferer = inferer
        self.flip_axes = [tuple(int(a) for a in axes) for axes in (flip_axes or ())]
        for axes in self.flip_axes:
            if not axes or any(a < 0 or a > 2 for a in axes):
                raise ValueError(f"flip_axes entries must be non-empty lists of spatial axes 0..2, got {flip_axes}.")
        self.softmax = not isinstance(inferer, StridedSlidingWindowInferer) if softmax is None else bool(softmax)

    def _probs(self, x: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.inferer(x, network, *args, **kwargs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the inner inferer must return one tensor, got {type(out).__name__}.")
        out = out.float()
        return torch.softmax(out, dim=1) if self.softmax else out

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Probabilities for ``inputs`` ``(B, C_in, H, W, D)``; extra arguments go to the inner inferer."""
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        prob = self._probs(x, network, *args, **kwargs)
        for axes in self.flip_axes:
            dims = [a + 2 for a in axes]
            prob = prob + torch.flip(self._probs(torch.flip(x, dims), network, *args, **kwargs), dims)
        prob = prob / (1 + len(self.flip_axes))
        if isinstance(inputs, MetaTensor):  # keep the input's meta data (Invertd and the saver read it)
            prob = convert_to_dst_type(prob, inputs, dtype=prob.dtype)[0]
        return prob


class KeepLargestComponentd(MapTransform):
    """Keep only the largest connected component of each foreground label of a label map ``(1, H, W, D)``.

    The same operation as MONAI's ``KeepLargestConnectedComponentd(applied_labels, independent=True)``, computed
    with ``scipy.ndimage.label`` (MONAI's needs scikit-image on CPU, which the bundle does not depend on). Voxels
    of other components of a label become background (0). Ties keep the component with the lowest index.

    Args:
        keys: keys of the label maps. Default ``"pred"``.
        applied_labels: labels to filter; ``None`` (default) every non-zero label present.
        connectivity: maximal number of orthogonal hops between neighbours (1: faces, 2: + edges, 3: + corners);
            ``None`` (default) the full connectivity, as MONAI.
        allow_missing_keys: skip absent keys. Default False.
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        applied_labels: Sequence[int] | int | None = None,
        connectivity: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(applied_labels, int):
            applied_labels = [applied_labels]
        self.applied_labels = None if applied_labels is None else [int(v) for v in applied_labels]
        if connectivity is not None and not 1 <= int(connectivity) <= 3:
            raise ValueError(f"connectivity must be 1, 2, 3 or None, got {connectivity}.")
        self.connectivity = connectivity

    def _filter(self, label_map: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        out = label_map.copy()
        structure = ndimage.generate_binary_structure(label_map.ndim, self.connectivity or label_map.ndim)
        labels = self.applied_labels if self.applied_labels is not None else [v for v in np.unique(out) if v != 0]
        for value in labels:
            components, n = ndimage.label(label_map == value, structure=structure)
            if n > 1:
                keep = int(np.argmax(np.bincount(components.ravel())[1:])) + 1
                out[(components > 0) & (components != keep)] = 0
        return out

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            arr = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
            filtered = np.stack([self._filter(c) for c in arr]) if arr.ndim == 4 else self._filter(arr)
            d[key] = convert_to_dst_type(filtered, x)[0]
        return d


def spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    """Voxel size per array axis: the norms of the first three columns of a 4x4 affine."""
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {a.shape}.")
    return tuple(float(v) for v in np.sqrt((a[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def atomic_nifti_save(img: nib.Nifti1Image, path: Path, ext: str = ".nii.gz") -> Path:
    """Save ``img`` to a temporary name beside ``path`` and rename it: never a partial file at ``path``."""
    tmp = path.with_name(f".{path.name[: -len(ext)]}.tmp{os.getpid()}{ext}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
    from bundle.validation import DataValidationError

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
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_nifti_save(img, out, self.output_ext)
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


class InferenceProgress:
    """Ignite handler: one line per case, ``[k/N] <case> <seconds> s [-> <written mask>]``, and a total at the end.

    Args:
        total: number of cases (for the ``N``); ``None`` reads ``len`` of the engine's data. Default ``None``.
        pred_file_key: output key holding the written path (set by :class:`SaveMaskd`). Default ``"pred_file"``.
        report: an object with ``record_output(path)`` (the run's ``CaseReport``) told of every written mask, so
            that ``summary.json`` lists the outputs. Default ``None``.
    """

    def __init__(self, total: int | None = None, pred_file_key: str = "pred_file", report: Any = None) -> None:
        self.total = total
        self.pred_file_key = pred_file_key
        self.report = report
        self._t0 = self._t = 0.0
        self._n = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._t0 = self._t = time.perf_counter()
        self._n = 0
        if self.total is None:
            try:
                self.total = len(engine.state.dataloader.dataset)
            except (AttributeError, TypeError):
                self.total = None

    def _iteration(self, engine: Engine) -> None:
        now = time.perf_counter()
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        seconds = (now - self._t) / max(len(batch), 1)
        for item, out in zip(batch, outputs):
            self._n += 1
            name = item.get("case_id") if isinstance(item, Mapping) else None
            if not isinstance(name, str):
                meta = getattr(item.get("image"), "meta", {}) if isinstance(item, Mapping) else {}
                name = Path(str(meta.get("filename_or_obj", f"case {self._n}"))).name
            written = out.get(self.pred_file_key) if isinstance(out, Mapping) else None
            if written and self.report is not None:
                self.report.record_output(written)
            total = self.total if self.total is not None else "?"
            print(f"[{self._n}/{total}] {name}: {seconds:.1f} s" + (f" -> {written}" if written else ""), flush=True)
        self._t = now

    def _completed(self, engine: Engine) -> None:
        print(f"inference done: {self._n} case(s) in {time.perf_counter() - self._t0:.1f} s", flush=True)
