"""The four PLGDF loss terms alone, forward + backward: this checkout's ``bundle/method/losses.py`` against an earlier
revision of it, interleaved in one process (docs/performance.md, "The loss terms").

    python -m benchmarks.loss_terms                      # 1 thread, bf16 channels_last outputs, 64x64x32, 8 rows
    python -m benchmarks.loss_terms --threads 2 --out runs/loss_terms_2t.json
    python -m benchmarks.loss_terms --compile            # + torch.compile of the baseline's terms (compile time)

The outputs are random tensors shaped as the student's ``[P1, P2, P3, P4]`` at the benchmark configuration of
``benchmarks/speed.py`` (labelled batch 2 + unlabelled 2, K = 2: 2 labelled + 4 mixed + 2 clean = 8 rows, 2 classes,
``(8, 2, 64, 64, 32)`` each, bf16 channels_last as ``cpu_precision=bf16_cl`` gives them); the labels are random (the
cost does not depend on them); every round times each side on fresh leaf copies as :func:`benchmarks.speed_parts.
time_loss_terms` does (the terms as ``PLGDFTrainer.loss_terms`` assembles them, all on, ``configs/train.json``'s
settings), alternating which side goes first. Reported: the medians and the ratio of the medians (baseline / this
checkout), with the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bundle.method import losses as current_losses

ROOT = Path(__file__).resolve().parents[1]
#: ``bundle/method/losses.py`` before the two-class closed forms (one shared log-softmax pyramid, issue #17)
BASELINE = "66d1d91b9c5371f32c476c50dbec1a2de67912b1"


def load_losses(revision: str, root: str | Path = ROOT) -> types.ModuleType:
    """``bundle/method/losses.py`` as it was at git ``revision``, imported as a separate module."""
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{revision}:bundle/method/losses.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = f"losses_at_{revision[:10]}"
    module = types.ModuleType(name)
    module.__file__ = f"{revision}:bundle/method/losses.py"
    sys.modules[name] = module  # dataclasses and the like look their module up
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102 (the repository's own file)
    return module


def student_outputs(
    rows: int = 8,
    classes: int = 2,
    patch: Sequence[int] = (64, 64, 32),
    dtype: torch.dtype = torch.bfloat16,
    channels_last: bool = True,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Four random ``(rows, classes, *patch)`` logits in the student's dtype and memory format."""
    generator = torch.Generator().manual_seed(seed)
    fmt = torch.channels_last_3d if channels_last and len(patch) == 3 else torch.contiguous_format
    return [
        (2.0 * torch.randn((rows, classes, *patch), generator=generator)).to(dtype).contiguous(memory_format=fmt)
        for _ in range(4)
    ]


def terms_function(module: types.ModuleType, n_l: int = 2, n_semi: int = 4) -> Callable:
    """``f(outputs, y_l, y_hat) -> loss``: the terms of ``module`` (``configs/train.json``'s settings) over one
    shared pyramid, as ``PLGDFTrainer.loss_terms`` assembles them (lambda = 1)."""
    sup = module.PyramidSupervisedLoss(dice_form="paper", weight=0.5)
    consis = module.PyramidConsistencyLoss(form="paper", detach_mean=True)
    sharp = module.SharpeningLoss(temperature=0.1, detach_target=True)

    def loss_terms(outputs: Sequence[torch.Tensor], y_l: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        pyramid = module.SoftmaxPyramid.from_logits(list(outputs))
        loss_sup, _ = sup.from_probs(pyramid.rows(0, n_l), y_l)
        loss_semi, _ = sup.from_probs(pyramid.rows(n_l, n_l + n_semi), y_hat)
        return (
            loss_sup + loss_semi + consis.from_probs(pyramid.rows(n_l)) + sharp.from_probs(pyramid.rows(n_l + n_semi))
        )

    return loss_terms


def time_terms(fn: Callable, outputs: Sequence[torch.Tensor], y_l: torch.Tensor, y_hat: torch.Tensor) -> float:
    """Seconds for ``fn``'s forward + backward on fresh leaf copies of ``outputs``."""
    leaves = [o.clone().requires_grad_() for o in outputs]
    start = time.perf_counter()
    fn(leaves, y_l, y_hat).backward()
    return time.perf_counter() - start


def bench_loss_terms(
    baseline: str = BASELINE,
    patch: Sequence[int] = (64, 64, 32),
    rows: int = 8,
    n_l: int = 2,
    n_semi: int = 4,
    dtype: str = "bfloat16",
    channels_last: bool = True,
    warmup: int = 3,
    repeats: int = 15,
    compile: bool = False,
) -> dict[str, Any]:
    """Median seconds of the loss terms' forward + backward at ``baseline``'s losses and this checkout's,
    interleaved (the order alternates each round); with ``compile`` also ``torch.compile`` of the baseline's terms
    (its first call, the compilation, timed apart), in the same rounds."""
    outputs = student_outputs(rows, 2, patch, getattr(torch, dtype), channels_last)
    generator = torch.Generator().manual_seed(0)
    y_l = torch.randint(0, 2, (n_l, *patch), generator=generator)
    y_hat = torch.randint(0, 2, (n_semi, *patch), generator=generator)
    sides: dict[str, Callable] = {
        "baseline": terms_function(load_losses(baseline), n_l, n_semi),
        "current": terms_function(current_losses, n_l, n_semi),
    }
    out: dict[str, Any] = {}
    with torch.no_grad():
        values = {name: float(fn(outputs, y_l, y_hat)) for name, fn in sides.items()}
    if compile:
        sides["baseline_compiled"] = torch.compile(sides["baseline"])
        out["compile_first_call_s"] = time_terms(sides["baseline_compiled"], outputs, y_l, y_hat)
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(warmup + repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            elapsed = time_terms(sides[name], outputs, y_l, y_hat)
            if i >= warmup:
                times[name].append(elapsed)
    med = {name: statistics.median(v) for name, v in times.items()}
    out.update(
        {
            "baseline_s": med["baseline"],
            "current_s": med["current"],
            "ratio": med["baseline"] / med["current"],
            "ratio_per_round_median": statistics.median(b / c for b, c in zip(times["baseline"], times["current"])),
            "values": values,
            "times_s": times,
            "settings": {
                "baseline": baseline,
                "patch": list(patch),
                "rows": rows,
                "n_l": n_l,
                "n_semi": n_semi,
                "dtype": dtype,
                "channels_last": channels_last,
                "warmup": warmup,
                "repeats": repeats,
                "threads": torch.get_num_threads(),
            },
        }
    )
    if compile:
        out["baseline_compiled_s"] = med["baseline_compiled"]
        out["compile_gain"] = med["baseline"] / med["baseline_compiled"]
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the baseline losses.py")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="also torch.compile the baseline's terms")
    parser.add_argument("--out", help="write the result as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from benchmarks.campaign import machine_info

    result = bench_loss_terms(
        args.baseline,
        args.patch,
        dtype=args.dtype,
        channels_last=not args.no_channels_last,
        warmup=args.warmup,
        repeats=args.repeats,
        compile=args.compile,
    )
    result["machine"] = machine_info()
    result["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    result["command"] = " ".join(["python -m benchmarks.loss_terms", *(argv if argv is not None else sys.argv[1:])])
    summary = {k: v for k, v in result.items() if k not in ("times_s", "machine")}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
