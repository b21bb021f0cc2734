"""Post-processing of predicted label maps."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils.type_conversion import convert_to_dst_type

__all__ = ["KeepLargestComponentd"]


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
