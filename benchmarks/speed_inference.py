"""Speed of the sliding-window inference over one volume (:func:`bench_inference`): the paper's strided window against
the bundle's default window, with the number of windows each ran."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.speed_timing import autocast, check_precision, median, peak_memory_mb, sync
from bundle.engine import precision as cpu_precisions
from bundle.method.networks import PLGDFVNet


def bench_inference(
    device: str | torch.device = "cpu",
    volume: Sequence[int] = (215, 140, 88),
    roi_size: Sequence[int] = (112, 112, 80),
    stride: Sequence[int] | None = None,
    overlap: float | Sequence[float] | None = None,
    mode: str | None = None,
    sw_batch_size: int = 4,
    n_filters: int = 16,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    repeats: int = 3,
    paper_repeats: int | None = None,
    seed: int = 0,
    cpu_precision: str | None = None,
    compile: bool = False,
    default: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Seconds per volume of the paper's strided window and of the bundle's default window.

    Args:
        cpu_precision: the network as ``configs/inference.json`` runs it
            (:func:`bundle.engine.precision.inference_network`; ``"auto"`` probes on a window batch first);
            ``None`` uses ``amp`` / ``amp_dtype`` autocast instead. Default None.
        compile: ``torch.compile`` the network (the warm-up run compiles it). Default False.
        stride: the paper protocol's stride; default :func:`bundle.evaluation.evaluate.paper_stride` of ``roi_size``, or
            ``roi // 4`` for windows the paper does not define.
        default: the bundle default's window as a :mod:`benchmarks.window_study` setting; ``None`` (default) reads
            ``configs/inference.json`` for ``roi_size`` (:func:`benchmarks.window_campaign.default_setting`).
        overlap, mode: MONAI's overlap window with this overlap instead of the default window / its blending.
        sw_batch_size: windows per forward pass, both protocols.
        repeats / paper_repeats: timed runs of the default / paper protocol, after one warm-up run of the default
            (``paper_repeats`` defaults to ``repeats``).
    """
    from benchmarks.window_campaign import default_setting
    from benchmarks.window_study import build_inferer
    from bundle.evaluation.evaluate import PAPER_STRIDES
    from bundle.inference.inferers import StridedSlidingWindowInferer

    device = torch.device(device)
    check_precision(device, amp, amp_dtype)
    if cpu_precision is not None and amp:
        raise ValueError("give either cpu_precision (the inference config's) or amp autocast, not both.")
    torch.manual_seed(seed)
    net = PLGDFVNet(1, 2, n_filters=n_filters, dropout=True).to(device).eval()
    roi = tuple(int(r) for r in roi_size)
    report: dict[str, Any] = {}
    if cpu_precision is not None:
        net = cpu_precisions.inference_network(net, cpu_precision, device, (sw_batch_size, 1, *roi), compile=compile)
        report = net.precision_report
    elif compile:
        cpu_precisions.compile_network(net, device)
    stride = tuple(stride) if stride is not None else PAPER_STRIDES.get(roi, tuple(max(1, r // 4) for r in roi))
    x = torch.randn((1, 1, *volume), device=device)
    paper = StridedSlidingWindowInferer(roi_size=roi, stride=stride, num_classes=2, sw_batch_size=sw_batch_size)
    if default is not None and (overlap is not None or mode is not None):
        raise ValueError("give either a default window setting or overlap / mode overrides of the config's, not both.")
    overrides: dict[str, Any] = {"sw_mode": mode} if mode is not None else {}
    if overlap is not None:  # MONAI's overlap window instead of the default one
        overrides.update(window_inferer="@sliding_window_inferer", sw_overlap=overlap)
    setting = dict(default if default is not None else default_setting(roi_size=roi, overrides=overrides))
    default = build_inferer(setting, roi, sw_batch_size=sw_batch_size)
    counted = {"n": 0}

    def counting_net(t: torch.Tensor) -> torch.Tensor:
        counted["n"] += t.shape[0]
        return net(t)

    def ctx() -> Any:
        return autocast(device, amp, amp_dtype)

    def run(inferer: Any) -> tuple[float, int]:
        counted["n"] = 0
        start = time.perf_counter()
        with torch.no_grad(), ctx():
            inferer(x, counting_net)
        sync(device)
        return time.perf_counter() - start, counted["n"]

    out: dict[str, Any] = {}
    for name, inferer, n in (
        ("default", default, repeats),
        ("paper", paper, paper_repeats if paper_repeats is not None else repeats),
    ):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if name == "default":
            run(inferer)  # one warm-up run (allocator, cudnn autotuning); the paper protocol reuses it
        times, windows = [], 0
        for _ in range(max(1, n)):
            t, windows = run(inferer)
            times.append(t)
        out[name] = {"seconds_per_volume": median(times), "windows": windows, "runs": len(times)}
        if device.type == "cuda":
            out[name]["peak_memory_mb"] = peak_memory_mb(device)
    out["paper"]["stride"] = list(stride)
    out["default"].update(setting)
    out["speedup_default_vs_paper"] = out["paper"]["seconds_per_volume"] / out["default"]["seconds_per_volume"]
    out["peak_memory_mb"] = peak_memory_mb(device)
    out["settings"] = {
        "device": str(device),
        "volume": list(volume),
        "roi_size": list(roi),
        "sw_batch_size": sw_batch_size,
        "n_filters": n_filters,
        "precision": amp_dtype if amp else "fp32",
        "cpu_precision": report.get("chosen", cpu_precision),
        "compile": bool(compile),
    }
    if report:
        out["precision"] = report
    return out
