"""Time ``bundle.evaluation.metrics.case_metrics`` on synthetic LA-sized cases (prints JSON).

Each case is a 215x140x88 volume (the size of a cropped LA case) holding an atrium-like blob: an
ellipsoid of about 80x60x45 voxels whose radius is modulated by smooth low-frequency noise; the
"prediction" is the same kind of blob shifted by a couple of voxels with its own noise, so Dice is
about 0.85-0.9 and the surfaces are realistic. Case generation is not timed.

Usage::

    python -m benchmarks.metrics                    # 20 cases, 3 repeats, prints the median seconds
    python -m benchmarks.metrics --compare-medpy    # also time medpy (test-only dependency) on the same cases
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.ndimage import zoom

from bundle.evaluation.metrics import case_metrics

LA_SHAPE = (215, 140, 88)
LA_SPACING = (0.625, 0.625, 0.625)


def atrium_blob(
    rng: np.random.Generator,
    shape: tuple[int, int, int] = LA_SHAPE,
    radii: tuple[float, float, float] = (40.0, 30.0, 22.0),
    shift: tuple[float, float, float] = (0.0, 0.0, 0.0),
    roughness: float = 0.15,
) -> np.ndarray:
    """Boolean ellipsoid ``sum(((x - c) / r)^2) <= 1 + roughness * n(x)``, ``n`` smooth noise in [-1, 1].

    Args:
        rng: random generator.
        shape: volume shape (default ``LA_SHAPE``).
        radii: ellipsoid semi-axes in voxels (default (40, 30, 22)).
        shift: centre offset from the volume centre in voxels (default none).
        roughness: amplitude of the radius modulation (default 0.15).
    """
    coarse = rng.uniform(-1.0, 1.0, size=(6, 5, 4))
    noise = zoom(coarse, [s / c for s, c in zip(shape, coarse.shape)], order=1, grid_mode=True, mode="nearest")
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    rho = sum(((g - (s - 1) / 2.0 - d) / r) ** 2 for g, s, d, r in zip(grids, shape, shift, radii))
    return rho <= 1.0 + roughness * noise


def make_cases(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` (prediction, reference) pairs of LA-sized atrium-like blobs."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n):
        ref = atrium_blob(rng)
        pred = atrium_blob(rng, shift=tuple(rng.uniform(-2.5, 2.5, size=3)))
        cases.append((pred, ref))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-medpy", action="store_true", help="also time medpy hd95+asd (vox and mm)")
    args = parser.parse_args()

    cases = make_cases(args.cases)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rows = [case_metrics(p, r, spacing=LA_SPACING) for p, r in cases]
        times.append(time.perf_counter() - t0)
    result = {
        "cases": args.cases,
        "shape": list(LA_SHAPE),
        "seconds_all_cases_median": float(np.median(times)),
        "seconds_all_cases_runs": [round(t, 3) for t in times],
        "mean_dice": float(np.mean([row["dice"] for row in rows])),
        "mean_hd95_vox": float(np.mean([row["hd95_vox"] for row in rows])),
    }
    if args.compare_medpy:
        from medpy.metric import binary as mb

        t0 = time.perf_counter()
        for p, r in cases:
            _ = (mb.dc(p, r), mb.jc(p, r), mb.hd95(p, r), mb.asd(p, r))
            _ = (mb.hd95(p, r, voxelspacing=LA_SPACING), mb.asd(p, r, voxelspacing=LA_SPACING))
        result["seconds_medpy_all_cases"] = time.perf_counter() - t0
        result["speedup_vs_medpy"] = result["seconds_medpy_all_cases"] / result["seconds_all_cases_median"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
