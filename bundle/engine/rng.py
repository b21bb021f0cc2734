"""Random-number-generator states as plain tensors, so that checkpoints load with ``weights_only=True`` and a resumed
run draws the same numbers as an uninterrupted one."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["rng_state", "set_rng_state", "numpy_state", "numpy_state_tuple", "transform_random_states"]


def numpy_state(state: tuple) -> dict:
    """A NumPy ``MT19937`` state tuple (``RandomState.get_state()``) as plain tensors and numbers."""
    return {
        "keys": torch.from_numpy(np.asarray(state[1]).astype(np.int64)),
        "pos": int(state[2]),
        "has_gauss": int(state[3]),
        "cached_gaussian": float(state[4]),
    }


def numpy_state_tuple(n: Mapping) -> tuple:
    """The inverse of :func:`numpy_state`, for ``RandomState.set_state``."""
    return "MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and CUDA) RNG states as plain tensors and ints."""
    state = {"python": random.getstate(), "numpy": numpy_state(np.random.get_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore the states of :func:`rng_state`."""
    random.setstate(_as_tuple(state["python"]))
    np.random.set_state(numpy_state_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def transform_random_states(*transforms: Any) -> list[np.random.RandomState]:
    """The distinct ``np.random.RandomState`` objects of the MONAI random transforms reachable from ``transforms``.

    MONAI random transforms draw from their own ``R``, not from the global RNGs: a checkpoint must hold these
    states too for a resumed run to draw the same crops and flips. The walk follows ``Compose.transforms``
    and the attributes of transforms (e.g. the cropper inside ``RandSpatialCropd``) in a fixed order.
    """
    from monai.transforms import Randomizable, Transform

    states: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if depth > 10 or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            children = obj
        elif isinstance(obj, (Transform, Randomizable)):
            rs = getattr(obj, "R", None)
            if isinstance(rs, np.random.RandomState) and id(rs) not in seen:
                seen.add(id(rs))
                states.append(rs)
            children = list(vars(obj).values())
        else:
            return
        for child in children:
            if isinstance(child, (list, tuple, Transform, Randomizable)):
                visit(child, depth + 1)

    for t in transforms:
        if t is not None:
            visit(t, 0)
    return states
