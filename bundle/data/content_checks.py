"""Content checks of the training inputs (``bundle.data.checks`` runs them): images whose values do not fit the
declared modality, the same case used twice, and held-out images copied into training under another name or format.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from bundle.data.readers import VolumeInfo

__all__ = ["content_digest", "content_leaks", "entry_files", "identity", "modality_note", "repeated_cases"]


def content_digest(data: np.ndarray) -> str:
    """A fingerprint of an image's voxel values that does not depend on the file format, data type, axis order
    or flips: the sorted shape and the first three moments of the values (float64, 12 significant digits)."""
    v = np.asarray(data).ravel()
    sums = np.zeros(3)
    for start in range(0, v.size, 1 << 22):  # float64 in chunks: no full-size copy of a large CT
        c = v[start : start + (1 << 22)].astype(np.float64)
        sums += (c.sum(), (c * c).sum(), (c * c * c).sum())
    parts = [sorted(int(n) for n in np.squeeze(data).shape), v.size, float(v.min()), float(v.max())]
    parts += [float(f"{x:.12g}") for x in sums]
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()


def entry_files(value: Any) -> list[str]:
    """The file path(s) of a data-list ``image``/``label`` value (a path or a list of channel paths)."""
    if value is None:
        return []
    return [os.fspath(v) for v in value] if isinstance(value, (list, tuple)) else [os.fspath(value)]


def identity(path: str) -> tuple:
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def modality_note(info: VolumeInfo, modality: str | None) -> str | None:
    """A warning when an image's values do not look like the declared ``modality`` (``None``: they do)."""
    if modality is None or info.minimum is None or info.maximum is None:
        return None
    lo, hi, rng = info.minimum, info.maximum, f"values {info.minimum:g} to {info.maximum:g}"
    if info.distinct is not None and info.distinct <= 2:
        kind = "constant" if info.distinct == 1 else "binary (two values)"
        return f"{info.path}: image is {kind} ({rng}): a mask or an empty volume given as an image?"
    if modality == "ct":
        if 0.0 <= lo and hi <= 1.0:
            return f"{info.path}: {rng} look already normalised, not Hounsfield units: set modality to 'none'"
        if lo < -3000 or hi > 40000 or lo >= 0:
            why = "nothing below 0 (CT in HU has air at about -1000)" if lo >= 0 else "outside the HU range"
            return f"{info.path}: {rng}, {why}: not a CT in Hounsfield units? Set modality to 'mr' (z-score) or 'none'"
    return None


def content_leaks(jobs, results, test_files, test_digests, where: str) -> list[tuple[str, str]]:
    """Training or unlabelled images with the same voxel values as a validation or test image (another file)."""
    held_out: dict[str, tuple[str, str]] = {}
    for (_, section, _), (_, images, _) in zip(jobs, results):
        if section == "validation":
            for info in images:
                if info.digest:
                    held_out.setdefault(info.digest, (info.path, section))
    for path, d in zip(test_files, test_digests):
        if d:
            held_out.setdefault(d, (path, "test"))
    leaks = []
    for (_, section, _), (_, images, _) in zip(jobs, results):
        if section in ("training", "unlabeled"):
            for info in images:
                hit = held_out.get(info.digest) if info.digest else None
                if hit and identity(hit[0]) != identity(info.path):
                    leaks.append(
                        (info.path, f"has the same image content as the '{hit[1]}' case {hit[0]} (data leak){where}")
                    )
    return leaks


def repeated_cases(jobs, results) -> list[str]:
    """Notes for an image used twice for training (the same file, or the same voxel values)."""
    seen: dict[tuple, str] = {}
    notes = []
    for (_, section, _), (_, images, _) in zip(jobs, results):
        if section not in ("training", "unlabeled"):
            continue
        for info in images:
            keys = [identity(info.path)] + ([("digest", info.digest)] if info.digest else [])
            first = next((seen[k] for k in keys if k in seen), None)
            if first is not None:
                same = "the same file as" if identity(first) == identity(info.path) else "identical in content to"
                notes.append(f"{info.path} ({section}) is {same} {first}: the case is used twice for training")
            for k in keys:
                seen.setdefault(k, info.path)
    return notes
