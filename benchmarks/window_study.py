"""Sliding-window settings compared on labelled cases: Dice, windows and inference seconds per volume.

Answers "how much accuracy does a cheaper window placement cost?" for one checkpoint, in one process: every case
is preprocessed once (the inference config's ``preprocessing``), then each setting runs over the same tensors,
timed around the inferer alone (no loading, no resampling), with the number of windows the network saw counted.

A setting is a dict:

- ``{"overlap": 0.5, "mode": "gaussian"}``: MONAI ``SlidingWindowInferer``, optionally ``"overlap"`` per axis
  (``[0.5, 0.5, 0.75]``), ``"sigma"`` (the gaussian's ``sigma_scale``, default 0.125), ``"average":
  "probabilities"`` (blend window softmaxes instead of logits), ``"roi": [h, w, d]`` (a window other than the
  training patch; sizes divisible by 16) and ``"tta": [[0], ...]`` (flip test-time augmentation); all through
  :class:`bundle.inference.inferers.ProbabilityInferer`;
- ``{"stride": [9, 9, 2]}``: the paper's exact-stride window with uniform averaging
  (:class:`bundle.inference.inferers.StridedSlidingWindowInferer`), optionally ``"keep": 7`` (one window of every
  seven of that grid, a lattice subset: :func:`bundle.inference.inferers.lattice_windows`), ``"sigma": 0.5``
  (gaussian weights instead of the uniform average) and ``"flips": [[], [0, 1, 2]]`` (window n seen flipped along
  entry n mod 2: ``window_flips``) or ``"tta"`` as above.

``python -m scripts.la_lite windows`` runs it on the LA-lite validation cases (``docs/results.md``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["WINDOW_SETTINGS", "build_inferer", "compare_windows", "markdown", "peak_memory_gb", "prepare_cases"]

# name -> setting; the first is the bundle default (LA-lite), the last the paper's protocol scaled to LA-lite (9x9x2)
WINDOW_SETTINGS: dict[str, dict[str, Any]] = {
    "default: 1 in 7 of the 9x9x2 grid (lattice), uniform": {"stride": [9, 9, 2], "keep": 7},
    "1 in 7 of the 9x9x2 grid (lattice), gaussian 0.5": {"stride": [9, 9, 2], "keep": 7, "sigma": 0.5},
    "1 in 5 of the 9x9x2 grid (lattice), uniform": {"stride": [9, 9, 2], "keep": 5},
    "steps 16x16x8, gaussian 0.5, probabilities (default of 2026-12-01)": {
        "overlap": [0.66, 0.66, 0.75],
        "mode": "gaussian",
        "sigma": 0.5,
        "average": "probabilities",
    },
    "overlap 0.5, gaussian (default until 2026-11-30)": {"overlap": 0.5, "mode": "gaussian"},
    "overlap 0.5, gaussian, flip TTA x3": {"overlap": 0.5, "mode": "gaussian", "tta": [[0], [1], [2]]},
    "window 96x64x48, overlap 0.5, constant": {"roi": [96, 64, 48], "overlap": 0.5, "mode": "constant"},
    "overlap 0.75, constant": {"overlap": 0.75, "mode": "constant"},
    "paper stride 9x9x2": {"stride": [9, 9, 2]},
}
_KEYS = {"overlap", "mode", "sigma", "average", "roi", "tta", "stride", "keep", "flips"}


def build_inferer(setting: Mapping[str, Any], patch_size: Sequence[int], sw_batch_size: int = 4) -> Any:
    """The inferer of one setting: probabilities ``(B, C, H, W, D)`` from a network returning logits."""
    from monai.inferers import SlidingWindowInferer

    from bundle.inference.inferers import ProbabilityInferer, StridedSlidingWindowInferer

    unknown = set(setting) - _KEYS
    if unknown:
        raise ValueError(f"unknown window setting keys {sorted(unknown)}; use {sorted(_KEYS)}.")
    roi = [int(r) for r in setting.get("roi", patch_size)]
    if "keep" in setting and "stride" not in setting:
        raise ValueError(f"'keep' needs a 'stride' (the grid it keeps one window in so many of), got {dict(setting)}.")
    if "stride" in setting:
        if set(setting) - {"stride", "roi", "keep", "sigma", "flips", "tta"}:
            raise ValueError(
                "a stride setting takes only 'roi', 'keep', 'sigma', 'flips' and 'tta' besides 'stride', "
                f"got {dict(setting)}."
            )
        inner = StridedSlidingWindowInferer(
            roi,
            [int(s) for s in setting["stride"]],
            sw_batch_size=sw_batch_size,
            keep=int(setting.get("keep", 1)),
            sigma_scale=setting.get("sigma"),
            window_flips=setting.get("flips", ()),
        )
        return ProbabilityInferer(inner, flip_axes=setting.get("tta", ()))
    inner = SlidingWindowInferer(
        roi,
        sw_batch_size=sw_batch_size,
        overlap=setting.get("overlap", 0.5),
        mode=setting.get("mode", "gaussian"),
        sigma_scale=setting.get("sigma", 0.125),
    )
    return ProbabilityInferer(inner, flip_axes=setting.get("tta", ()), average=setting.get("average", "logits"))


def _prepare_cases(entries: Sequence[Mapping[str, Any]], preprocessing: Any) -> list[tuple[str, torch.Tensor, Any]]:
    cases = []
    for entry in entries:
        data = preprocessing(dict(entry))
        image = data["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        label = np.asarray(data["label"])[0] > 0
        cases.append((str(entry.get("case_id", Path(str(entry["image"])).stem)), image[None].float(), label))
    return cases


def prepare_cases(
    entries: Sequence[Mapping[str, Any]], configs: Sequence[str | Path], overrides: Mapping[str, Any] | None = None
) -> list[tuple[str, torch.Tensor, Any]]:
    """``entries`` through the ``preprocessing`` of ``configs`` once: ``[(case_id, image (1, C, H, W, D), label)]``."""
    from monai.bundle import ConfigParser

    if not entries:
        raise ValueError("no cases to evaluate the window settings on.")
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    for key, value in (overrides or {}).items():
        parser[key] = value
    return _prepare_cases(entries, parser.get_parsed_content("preprocessing"))


def peak_memory_gb(setting: Mapping[str, Any], volume: Sequence[int], roi: Sequence[int], n_filters: int) -> float:
    """Peak resident memory (GB) of a fresh process that runs ``setting`` once over a random ``volume`` (H, W, D)
    with a V-Net of width ``n_filters`` and window ``roi`` (the whole process: Python, torch, network, buffers)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, resource, sys, torch\n"
        "from benchmarks.window_study import build_inferer\n"
        "from bundle.method.networks import PLGDFVNet\n"
        "a = json.loads(sys.argv[1])\n"
        "torch.manual_seed(0)\n"
        "net = PLGDFVNet(1, 2, n_filters=a['n'], dropout=True).eval()\n"
        "inferer = build_inferer(a['setting'], a['roi'])\n"
        "with torch.no_grad():\n"
        "    inferer(torch.randn(1, 1, *a['volume']), net)\n"
        "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20))\n"
    )
    arg = json.dumps({"setting": dict(setting), "volume": list(volume), "roi": list(roi), "n": int(n_filters)})
    out = subprocess.run(
        [sys.executable, "-c", code, arg], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    return float(out.stdout.strip().splitlines()[-1])


def compare_windows(
    checkpoint: str | Path,
    entries: Sequence[Mapping[str, Any]],
    configs: Sequence[str | Path],
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    overrides: Mapping[str, Any] | None = None,
    reference: str | None = None,
    repeats: int = 1,
    cases: Sequence[tuple[str, torch.Tensor, Any]] | None = None,
) -> dict[str, Any]:
    """Dice and inference time per volume of each window ``setting`` for ``checkpoint`` on labelled ``entries``.

    Args:
        checkpoint: flat state_dict or training checkpoint (its ``network``); read with ``weights_only=True``.
        entries: data list entries with ``image`` and ``label`` (and optionally ``case_id``).
        configs: config files giving ``preprocessing``, ``network_def`` and ``patch_size`` (``configs/inference.json``
            and a preset).
        settings: ``{name: setting}``; default :data:`WINDOW_SETTINGS`.
        overrides: config ids to set (e.g. ``{"spacing": [1.25] * 3}``).
        reference: the setting the others are compared with (Dice difference, speed-up); default the last one.
        repeats: timed runs per case and setting (the median is kept).
        cases: already preprocessed ``(case_id, image (1, C, H, W, D), label mask)`` (:func:`prepare_cases`), so that
            several checkpoints share one preprocessing; default: preprocess ``entries`` here.

    Returns:
        ``{"settings": {name: {"setting", "dice_mean", "dice_std", "dice_median", "dice_per_case",
        "seconds_per_volume", "windows_per_volume", "dice_minus_reference", "speedup_vs_reference"}},
        "reference", "cases", "n_cases"}``; Dice in [0, 1], seconds the median over cases of each case's median.
    """
    from monai.bundle import ConfigParser

    from bundle.engine.files import safe_load
    from bundle.evaluation.metrics import dice

    settings = dict(settings or WINDOW_SETTINGS)
    if not settings:
        raise ValueError("no window settings to compare.")
    reference = reference or list(settings)[-1]
    if reference not in settings:
        raise ValueError(f"reference {reference!r} is not one of the settings {list(settings)}.")
    if not entries and not cases:
        raise ValueError("no cases to evaluate the window settings on.")
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    for key, value in (overrides or {}).items():
        parser[key] = value
    net = parser.get_parsed_content("network_def")
    state = safe_load(checkpoint)
    net.load_state_dict(state["network"] if isinstance(state, Mapping) and "network" in state else state)
    net.eval()
    patch = [int(p) for p in parser.get_parsed_content("patch_size")]
    if cases is None:
        cases = _prepare_cases(entries, parser.get_parsed_content("preprocessing"))
    seen = {"n": 0}

    def counting_net(x: torch.Tensor) -> torch.Tensor:
        seen["n"] += x.shape[0]
        return net(x)

    inferers = {name: build_inferer(setting, patch) for name, setting in settings.items()}
    scores: dict[str, list[float]] = {name: [] for name in settings}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    windows: dict[str, list[int]] = {name: [] for name in settings}
    # case by case, every setting in turn: the settings are timed side by side, so a drift of the machine's speed
    # over the run moves them together instead of biasing their ratio
    for _case_id, image, label in cases:
        for name, inferer in inferers.items():
            times = []
            for _ in range(max(1, repeats)):
                seen["n"] = 0
                start = time.perf_counter()
                with torch.no_grad():
                    prob = inferer(image, counting_net)
                times.append(time.perf_counter() - start)
            pred = prob[0].argmax(0).numpy() > 0
            scores[name].append(dice(pred, label))
            seconds[name].append(statistics.median(times))
            windows[name].append(seen["n"])
    out: dict[str, Any] = {}
    for name, setting in settings.items():
        out[name] = {
            "setting": dict(setting),
            "dice_mean": float(np.mean(scores[name])),
            "dice_std": float(np.std(scores[name])),
            "dice_median": float(np.median(scores[name])),
            "dice_per_case": [float(s) for s in scores[name]],
            "seconds_per_volume": float(statistics.median(seconds[name])),
            "windows_per_volume": float(np.mean(windows[name])),
        }
        print(
            f"[windows] {name}: Dice {out[name]['dice_mean']:.4f}, {out[name]['seconds_per_volume']:.2f} s and "
            f"{out[name]['windows_per_volume']:.0f} windows per volume",
            flush=True,
        )
    ref = out[reference]
    for row in out.values():
        row["dice_minus_reference"] = row["dice_mean"] - ref["dice_mean"]
        row["speedup_vs_reference"] = ref["seconds_per_volume"] / row["seconds_per_volume"]
    return {"settings": out, "reference": reference, "cases": [c[0] for c in cases], "n_cases": len(cases)}


def markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One table: ``{label: compare_windows(...) result}`` -> rows of label x setting."""
    lines = [
        "| model | window setting | Dice % | median Dice % | Dice - reference | windows / volume | s / volume "
        "| speed-up vs reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        for name, row in res["settings"].items():
            ref = " (reference)" if name == res["reference"] else ""
            lines.append(
                f"| {label} | {name}{ref} | {100 * row['dice_mean']:.2f} ± {100 * row['dice_std']:.2f} "
                f"| {100 * row['dice_median']:.2f} | {100 * row['dice_minus_reference']:+.2f} "
                f"| {row['windows_per_volume']:.0f} | {row['seconds_per_volume']:.2f} "
                f"| {row['speedup_vs_reference']:.1f}x |"
            )
    return "\n".join(lines) + "\n"
