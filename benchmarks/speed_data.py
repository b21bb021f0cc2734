"""Speed of the training data pipeline (:func:`bench_data`): ``configs/train.json``'s preprocessing per sample, uncached
and cached."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from benchmarks.speed_timing import median


def bench_data(
    datalist: Sequence[dict[str, Any]],
    configs: Sequence[str],
    overrides: dict[str, Any] | None = None,
    samples: int = 8,
) -> dict[str, Any]:
    """Seconds per training sample of the bundle's preprocessing (``preprocessing`` + ``augmentation`` ids).

    ``uncached``: the whole Compose per sample (load, orientation, resampling, intensity, crop, augmentation);
    ``cached``: the deterministic part done once (as ``CacheDataset`` does), then only the random part per sample.
    """
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(list(configs))
    for key, value in (overrides or {}).items():
        parser[key] = value
    pre = Compose(parser.get_parsed_content("preprocessing"))
    aug = Compose(parser.get_parsed_content("augmentation"))
    items = [dict(d) for d in datalist]
    if not items:
        raise ValueError("bench_data needs at least one data list entry.")
    uncached: list[float] = []
    cache = []
    for i in range(samples):
        item = dict(items[i % len(items)])
        start = time.perf_counter()
        aug(pre(item))
        uncached.append(time.perf_counter() - start)
        if i < len(items):
            cache.append(pre(dict(items[i])))
    cached = []
    for i in range(samples):
        start = time.perf_counter()
        aug(dict(cache[i % len(cache)]))
        cached.append(time.perf_counter() - start)
    return {
        "uncached_s_per_sample": median(uncached),
        "cached_s_per_sample": median(cached),
        "ratio_uncached_to_cached": median(uncached) / median(cached),
        "samples": samples,
        "cases": len(items),
    }
