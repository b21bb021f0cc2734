"""Deterministic synthetic CT-like dataset for demos, smoke tests and the end-to-end tests.

Every case is an abdominal-CT-like volume in Hounsfield units (HU) with one enhanced target organ:

- air (-1000 HU) outside an elliptical body; a subcutaneous fat ring (about -100 HU);
- soft tissue (about 40 HU) with a smooth low-frequency texture, a liver-like region (about 60 HU);
- a spine-like bone structure (about 700 HU) with a spinal canal (about 10 HU);
- the target: an enhanced spleen-like organ (about 130 HU, label 1) whose surface is an ellipsoid with a
  radius perturbed by a few smooth random harmonics, varying in size (diameter 40-60% of the body width),
  position, orientation and shape between cases;
- slight blur (partial volume) and Gaussian noise (sigma 20 HU).

Geometry: anisotropic spacing (default 1.0 x 1.0 x 3.0 mm) stored in an LPS-oriented affine
``diag(-sx, -sy, sz)`` with a per-case origin offset, so that ``Orientationd("RAS")`` and ``Spacingd`` really
act. Image (int16 HU) and label (uint8 0/1) of a case share their affine exactly. The files are gzipped
with ``mtime=0``, so the same seed gives byte-identical files.

Layout written below ``out_dir`` (the folder layout read by :func:`bundle.data.datalist.build_datalist`)::

    imagesTr/ labelsTr/          labelled training cases
    imagesUnlabeled/             unlabelled training cases (no labels written)
    imagesVal/ labelsVal/        validation cases
    imagesTs/ labelsTs/          test cases
    datalist.json  README.txt
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bundle.data.datalist import build_datalist

__all__ = ["generate_demo_dataset", "ensure_demo_dataset", "synthesize_case", "DATALIST_NAME"]

DATALIST_NAME = "datalist.json"

# Nominal intensities (HU).
HU_AIR = -1000.0
HU_FAT = -100.0
HU_TISSUE = 40.0
HU_LIVER = 60.0
HU_ORGAN = 130.0
HU_BONE = 700.0
HU_CANAL = 10.0
NOISE_SIGMA = 20.0

# (sub-folder for images, sub-folder for labels or None, split name)
_SPLITS = (
    ("imagesTr", "labelsTr", "labelled"),
    ("imagesUnlabeled", None, "unlabelled"),
    ("imagesVal", "labelsVal", "validation"),
    ("imagesTs", "labelsTs", "test"),
)


def _smooth_field(rng: np.random.Generator, shape: Sequence[int], sigma_vox: Sequence[float]) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field smoothed with ``sigma_vox`` (voxels per axis)."""
    field = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma=tuple(sigma_vox), mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random 3x3 rotation matrix (QR of a Gaussian matrix with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _blob(
    rng: np.random.Generator,
    axes: Sequence[np.ndarray],
    center: np.ndarray,
    radii: np.ndarray,
    n_harmonics: int = 4,
    amplitude: float = 0.12,
) -> np.ndarray:
    """Smooth random 3D blob: a rotated ellipsoid whose radius is perturbed by low-order harmonics.

    A point ``p`` (mm) with local coordinates ``q = R^T (p - center) / radii`` is inside when
    ``|q| <= 1 + sum_k a_k sin(f_k (w_k . q/|q|) + phi_k)``, with a random rotation ``R``, random unit vectors
    ``w_k``, frequencies ``f_k`` in [1, 3], phases ``phi_k`` and amplitudes ``a_k`` in [amplitude/2, amplitude].

    Args:
        rng: random generator.
        axes: voxel-centre coordinates (mm) along each of the three array axes.
        center: blob centre (mm).
        radii: ellipsoid semi-axes (mm) before rotation.
        n_harmonics: number of perturbation terms. Default 4.
        amplitude: largest relative amplitude of a term. Default 0.12.

    Returns:
        Boolean mask of shape ``(len(axes[0]), len(axes[1]), len(axes[2]))``.
    """
    rot = _random_rotation(rng)
    terms = []
    for _ in range(n_harmonics):
        w = rng.standard_normal(3)
        freq, phase = rng.uniform(1.0, 3.0), rng.uniform(0.0, 2.0 * np.pi)
        terms.append((w / np.linalg.norm(w), freq, phase, rng.uniform(amplitude / 2.0, amplitude)))
    # Evaluate only inside the bounding box of the largest possible radius.
    reach = float(np.max(radii)) * (1.0 + n_harmonics * amplitude)
    index = [np.flatnonzero(np.abs(ax - c) <= reach) for ax, c in zip(axes, center)]
    mask = np.zeros(tuple(len(ax) for ax in axes), dtype=bool)
    if any(len(i) == 0 for i in index):
        return mask
    sub = np.meshgrid(*[ax[i] - c for ax, i, c in zip(axes, index, center)], indexing="ij")
    local = (np.stack(sub, axis=-1) @ rot) / radii
    dist = np.linalg.norm(local, axis=-1)
    direction = local / np.maximum(dist, 1e-6)[..., None]
    surface = np.ones_like(dist)
    for w, freq, phase, amp in terms:
        surface += amp * np.sin(freq * (direction @ w) + phase)
    box = tuple(slice(i[0], i[-1] + 1) for i in index)
    mask[box] = dist <= surface
    return mask


def synthesize_case(
    rng: np.random.Generator,
    shape: Sequence[int] = (96, 96, 32),
    spacing: Sequence[float] = (1.0, 1.0, 3.0),
    organ_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic CT-like case in array (voxel) space.

    Array axis 0 runs towards the patient's left, axis 1 towards posterior, axis 2 towards superior (the LPS
    layout of the affine written by :func:`generate_demo_dataset`).

    Args:
        rng: random generator; the case is a pure function of its state.
        shape: ``(H, W, D)`` voxels. Default ``(96, 96, 32)``.
        spacing: voxel size in mm per axis. Default ``(1.0, 1.0, 3.0)``.
        organ_scale: factor on the target organ's diameter (the same random draws, so ``1.0`` is the demo). ``0.65``
            gives a small structure: the organ fills a median 2.7 % of the body's voxels (1.2-7.1 % over 28 cases)
            instead of 8.7 % (4.2-24.8 %). Default 1.0.

    Returns:
        ``(image, label)``: image float32 HU of shape ``(H, W, D)``, label uint8 0/1 of the same shape.
    """
    shape = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4, got {shape}.")
    if sp.shape != (3,) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive values, got {tuple(spacing)}.")
    if not 0.05 <= float(organ_scale) <= 1.5:
        raise ValueError(f"organ_scale must be in [0.05, 1.5], got {organ_scale!r}.")
    extent = np.asarray(shape) * sp
    axes = [(np.arange(n) + 0.5) * s for n, s in zip(shape, sp)]  # voxel centres, mm
    x, y, z = np.meshgrid(*axes, indexing="ij")

    # Body: ellipse in the axial plane, semi-axes slowly varying along z.
    cx = extent[0] * (0.5 + rng.uniform(-0.03, 0.03))
    cy = extent[1] * (0.5 + rng.uniform(-0.03, 0.03))
    zr = z / extent[2] - 0.5
    a = extent[0] * rng.uniform(0.40, 0.45) * (1.0 + rng.uniform(-0.04, 0.04) * zr)
    b = extent[1] * rng.uniform(0.30, 0.35) * (1.0 + rng.uniform(-0.04, 0.04) * zr)
    rho = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    body = rho <= 1.0
    inner = rho <= 1.0 - rng.uniform(0.07, 0.11)  # inside the subcutaneous fat ring

    image = np.full(shape, HU_AIR)
    image[body] = HU_FAT
    texture = _smooth_field(rng, shape, 6.0 / sp)
    image[inner] = HU_TISSUE + 8.0 * texture[inner]

    # A few visceral fat pockets.
    for _ in range(int(rng.integers(1, 4))):
        c = np.array([cx + rng.uniform(-0.5, 0.5) * a.mean(), cy + rng.uniform(-0.5, 0.0) * b.mean(), 0.0])
        c[2] = extent[2] * rng.uniform(0.2, 0.8)
        pocket = _blob(rng, axes, c, extent.min() * rng.uniform(0.04, 0.08) * np.ones(3), amplitude=0.2)
        image[pocket & inner] = HU_FAT

    # Liver-like region on the patient's right (low array index along axis 0), mildly enhanced.
    liver_c = np.array([cx - 0.45 * a.mean(), cy + rng.uniform(-0.1, 0.1) * b.mean(), extent[2] * 0.5])
    liver = _blob(rng, axes, liver_c, np.array([0.45 * a.mean(), 0.6 * b.mean(), 0.6 * extent[2]]), amplitude=0.1)
    image[liver & inner] = HU_LIVER + 8.0 * texture[liver & inner]

    # Spine: vertebral body and spinous process (bone), spinal canal, posterior and central.
    sx0, sy0 = cx + rng.uniform(-2.0, 2.0), cy + 0.62 * b.mean()
    r_vb = rng.uniform(0.07, 0.09) * extent[0]
    vb = (x - sx0) ** 2 + (y - sy0) ** 2 <= r_vb**2
    canal_c = sy0 + 1.45 * r_vb
    canal = (x - sx0) ** 2 + (y - canal_c) ** 2 <= (0.5 * r_vb) ** 2
    ring = ((x - sx0) ** 2 + (y - canal_c) ** 2 <= (0.85 * r_vb) ** 2) & ~canal
    process = (np.abs(x - sx0) <= 0.2 * r_vb) & (y > canal_c) & (y <= canal_c + 1.6 * r_vb)
    bone = (vb | ring | process) & body
    image[bone] = HU_BONE + 40.0 * texture[bone]
    image[canal & body] = HU_CANAL

    # Target organ: spleen-like, on the patient's left (high array index along axis 0), posterior-lateral.
    diameter = rng.uniform(0.40, 0.60) * 2.0 * a.mean() * float(organ_scale)
    radii = 0.5 * diameter * np.array([rng.uniform(0.75, 1.0), rng.uniform(0.9, 1.2), rng.uniform(1.0, 1.4)])
    organ_c = np.array(
        [
            cx + rng.uniform(0.15, 0.35) * a.mean(),
            cy + rng.uniform(-0.15, 0.15) * b.mean(),
            extent[2] * rng.uniform(0.35, 0.65),
        ]
    )
    organ = _blob(rng, axes, organ_c, radii) & inner & ~ndimage.binary_dilation(bone, iterations=2)
    organ = ndimage.binary_opening(organ, iterations=1)
    image[organ] = HU_ORGAN + 8.0 * texture[organ]

    # Partial volume (mostly in-plane) and noise; air stays air-like.
    image = ndimage.gaussian_filter(image, sigma=0.6 / np.maximum(sp / sp.min(), 1.0))
    image = image + NOISE_SIGMA * rng.standard_normal(shape)
    return image.astype(np.float32), organ.astype(np.uint8)


def _lps_affine(shape: Sequence[int], spacing: Sequence[float], offset: np.ndarray) -> np.ndarray:
    """RAS+ world affine of an LPS-stored array: ``diag(-sx, -sy, sz)`` with a (roughly centred) origin."""
    sp = np.asarray(spacing, dtype=float)
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    half = (np.asarray(shape, dtype=float) - 1.0) / 2.0 * sp
    affine[:3, 3] = np.array([half[0], half[1], -half[2]]) + offset
    return affine


def _save_nifti_gz(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write ``array`` as ``.nii.gz`` with qform = sform = ``affine`` and a gzip header without timestamp."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def generate_demo_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_labelled: int = 4,
    n_unlabelled: int = 16,
    n_val: int = 4,
    n_test: int = 4,
    shape: Sequence[int] = (96, 96, 32),
    spacing: Sequence[float] = (1.0, 1.0, 3.0),
    organ_scale: float = 1.0,
) -> Path:
    """Write the synthetic dataset below ``out_dir`` (see the module docstring for the layout).

    Case ``i`` (numbered across all splits, files ``demo_XXX.nii.gz``) is drawn from
    ``np.random.default_rng([seed, i])``, so the same arguments give byte-identical files.

    Args:
        out_dir: target folder (created; existing files of the same names are overwritten).
        seed: dataset seed. Default 0.
        n_labelled: labelled training cases (``imagesTr``/``labelsTr``). Default 4.
        n_unlabelled: unlabelled training cases (``imagesUnlabeled``). Default 16.
        n_val: validation cases (``imagesVal``/``labelsVal``). Default 4.
        n_test: test cases (``imagesTs``/``labelsTs``). Default 4.
        shape: ``(H, W, D)`` voxels per case. Default ``(96, 96, 32)``.
        spacing: voxel size in mm. Default ``(1.0, 1.0, 3.0)``.
        organ_scale: factor on the organ's diameter (:func:`synthesize_case`; ``0.65``: a small structure).
            Default 1.0.

    Returns:
        Path of the written ``datalist.json`` (paths inside relative to ``out_dir``).
    """
    counts = {"labelled": n_labelled, "unlabelled": n_unlabelled, "validation": n_val, "test": n_test}
    for name, n in counts.items():
        if int(n) != n or n < 0:
            raise ValueError(f"n_{name} must be a non-negative integer, got {n!r}.")
    if n_labelled < 1:
        raise ValueError(f"n_labelled must be >= 1 for a usable dataset, got {n_labelled}.")
    out = Path(out_dir)
    index = 0
    for images_dir, labels_dir, split in _SPLITS:
        (out / images_dir).mkdir(parents=True, exist_ok=True)
        if labels_dir is not None:
            (out / labels_dir).mkdir(parents=True, exist_ok=True)
        for _ in range(int(counts[split])):
            rng = np.random.default_rng([int(seed), index])
            image, label = synthesize_case(rng, shape, spacing, organ_scale)
            affine = _lps_affine(shape, spacing, offset=rng.uniform(-20.0, 20.0, size=3).round(2))
            name = f"demo_{index:03d}.nii.gz"
            _save_nifti_gz(np.clip(np.round(image), -32768, 32767).astype(np.int16), affine, out / images_dir / name)
            if labels_dir is not None:
                _save_nifti_gz(label, affine, out / labels_dir / name)
            index += 1
    (out / "README.txt").write_text(
        "Synthetic CT-like demo dataset generated by bundle/data/demo.py (no real patient data).\n"
        f"seed={seed} shape={tuple(int(s) for s in shape)} spacing_mm={tuple(float(s) for s in spacing)} "
        "orientation=LPS (affine diag(-sx, -sy, sz))"
        + (f" organ_scale={float(organ_scale)}" if float(organ_scale) != 1.0 else "")
        + "\n"
        f"labelled={n_labelled} unlabelled={n_unlabelled} validation={n_val} test={n_test}\n"
        "Images: int16 Hounsfield units (air -1000, fat -100, tissue 40, bone 700, target organ 130, noise 20).\n"
        "Labels: uint8, 1 = target organ.\n"
        "Regenerate: python -m scripts.make_demo_data --out <folder> --seed <seed>\n"
    )
    datalist = out / DATALIST_NAME
    build_datalist(out, out=datalist)
    return datalist


def ensure_demo_dataset(out_dir: str | os.PathLike, **kwargs) -> Path:
    """Generate the demo dataset in ``out_dir`` unless ``out_dir/datalist.json`` already exists.

    Generation happens in a temporary sibling folder that is renamed to ``out_dir`` at the end, so an
    interrupted run never leaves a half dataset. Prints one line when it generates.

    Args:
        out_dir: dataset folder; must be absent, empty, or already hold ``datalist.json``.
        kwargs: forwarded to :func:`generate_demo_dataset` (``seed``, ``n_labelled``, ``shape`` ...).

    Returns:
        Path of ``out_dir/datalist.json``.
    """
    out = Path(out_dir)
    datalist = out / DATALIST_NAME
    if datalist.is_file():
        return datalist
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder, but has no {DATALIST_NAME}; remove it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        generate_demo_dataset(tmp, **kwargs)
        tmp.chmod(0o755)  # mkdtemp creates 0o700
        if out.exists():
            out.rmdir()  # empty folder
        os.rename(tmp, out)
    except OSError:
        if datalist.is_file():  # a concurrent generation finished first
            return datalist
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"Generated the synthetic demo dataset in {out} ({DATALIST_NAME} written).")
    return datalist
