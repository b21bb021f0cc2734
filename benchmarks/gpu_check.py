"""The GPU check in one command (``bash scripts/gpu_check.sh``; docs/performance.md, "GPU check").

On one CUDA GPU, within a wall-clock budget (default 450 s, under 8 minutes), with synthetic data only:

1. the GPU-marked tests (``pytest -m gpu tests/test_gpu.py``): AMP bf16/fp16 steps finite and close to fp32, the
   fp16 GradScaler path, a checkpoint round trip, inference on the GPU equal to the CPU, ``torchrun
   --nproc_per_node=1`` on NCCL;
2. the training benchmark at the paper's configuration (patch 112x112x80, batch 2+2, V-Net 16) in fp32 (default
   layout), fp32 channels_last_3d, bf16 and fp16 autocast (``python -m scripts.bench_speed --part training``);
3. inference per LA-sized volume (215x140x88 synthetic, window 112x112x80) at the paper's stride and the bundle
   default, in fp32 and bf16;
4. if at least ``--compile-min-s`` of the budget is left: the fp32 training benchmark with ``torch.compile``.

Each step is a subprocess with a timeout of what is left of the budget, so the whole check cannot run past it; a step
that no longer fits is recorded as skipped. After every step one JSON (GPU model, driver, torch / CUDA / cuDNN
versions, every figure, each step's status) is rewritten, so an interrupted check keeps what it measured; a summary
is printed at the end.

Exit status: 0 every step ran and passed; 1 a step failed or ran out of time; 2 torch or the bundle is not
installed; 3 every step that ran passed but some were skipped for lack of budget; 77 no GPU (nothing was run; the
automake convention for "skipped").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parents[1]
INSTALL = (
    'python -m venv .venv && . .venv/bin/activate && pip install torch && pip install -e ".[test]"  '
    "(README, Quickstart; on a GPU machine install your CUDA build of torch first)"
)
EXIT_OK, EXIT_FAILED, EXIT_NOT_INSTALLED, EXIT_INCOMPLETE, EXIT_NO_GPU = 0, 1, 2, 3, 77

#: the training benchmark's variants: name -> bench_speed options
TRAINING_VARIANTS = {
    "fp32": ["--precision", "fp32", "--no-channels-last"],
    "fp32_channels_last": ["--precision", "fp32"],
    "bf16": ["--precision", "bf16", "--no-channels-last"],
    "fp16": ["--precision", "fp16", "--no-channels-last"],
}
INFERENCE_VARIANTS = {"fp32": ["--precision", "fp32"], "bf16": ["--precision", "bf16"]}
PAPER = ["--patch", "112", "112", "80", "--labeled-batch", "2", "--unlabeled-batch", "2", "--n-filters", "16"]


def run_step(
    cmd: Sequence[str], deadline: float, cap_s: float, min_s: float, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Run ``cmd`` from the repository root with a timeout of ``min(cap_s, time left until deadline)``.

    Args:
        cmd: the command.
        deadline: ``time.monotonic()`` value by which the step must end.
        cap_s: the step's own time limit.
        min_s: the least time the step needs; with less left it is not started.
        env: its environment. Default: this process's, with the repository importable.

    Returns:
        ``{"status": "passed" | "failed" | "timed out" | "skipped", "wall_s", "returncode", "stdout", "stderr"}``
        (``stdout`` whole, ``stderr`` its last 4000 characters).
    """
    left = deadline - time.monotonic()
    if left < min_s:
        return {"status": "skipped", "reason": f"{left:.0f} s of the budget left, the step needs {min_s:.0f} s"}
    timeout = max(1.0, min(cap_s, left))
    env = dict(env if env is not None else {**os.environ, "PYTHONPATH": str(ROOT)})
    start = time.monotonic()
    try:
        proc = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        tail = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        return {"status": "timed out", "wall_s": time.monotonic() - start, "timeout_s": timeout, "stderr": tail[-4000:]}
    return {
        "status": "passed" if proc.returncode == 0 else "failed",
        "wall_s": time.monotonic() - start,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr[-4000:],
    }


def gpu_facts() -> dict[str, Any]:
    """GPU model, memory, compute capability, driver (``nvidia-smi``), torch / CUDA / cuDNN versions."""
    import torch

    props = torch.cuda.get_device_properties(0)
    facts: dict[str, Any] = {
        "gpu": props.name,
        "gpu_count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": sys.version.split()[0],
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        facts["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        facts["driver"] = None
    return facts


def _junit_counts(path: Path) -> dict[str, int]:
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _write(path: Path, result: Mapping[str, Any]) -> None:
    from bundle.engine.files import write_json_atomic

    write_json_atomic(path, result)


def _bench(step: dict[str, Any]) -> dict[str, Any] | None:
    """The benchmark's JSON out of a finished step (its stdout), or None."""
    if step.get("status") != "passed":
        return None
    try:
        return json.loads(step.pop("stdout"))
    except (KeyError, ValueError):
        step["status"] = "failed"
        step["reason"] = "no JSON on stdout"
        return None


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The printed summary: GPU, tests, training and inference figures, step statuses."""
    gpu = result.get("gpu", {})
    lines = [
        f"GPU check: {gpu.get('gpu')} ({gpu.get('memory_gib')} GiB, driver {gpu.get('driver')}), torch "
        f"{gpu.get('torch')}, CUDA {gpu.get('cuda')}, cuDNN {gpu.get('cudnn')}; {result.get('wall_s', 0):.0f} s "
        f"of a {result.get('budget_s')} s budget"
    ]
    tests = result.get("tests", {})
    if tests:
        lines.append(f"tests (pytest -m gpu): {tests}")
    training = result.get("training", {})
    if training:
        lines.append("training, patch 112x112x80, batch 2+2, V-Net 16 (median s per iteration; ratios in-process):")
        lines.append(f"  {'variant':<20} {'iteration':>10} {'/bare same':>11} {'/bare fp32':>11} {'peak MiB':>9}")
        for name, t in training.items():
            lines.append(
                f"  {name:<20} {t['iteration_s']['total']:>10.4f} {t['ratio_to_bare_same_setting']:>11.3f} "
                f"{t['ratio_to_bare_reference']:>11.3f} {t['peak_memory_mb']:>9.0f}"
            )
    inference = result.get("inference", {})
    if inference:
        lines.append("inference per 215x140x88 volume, window 112x112x80, V-Net 16 (s per volume, windows):")
        for name, r in inference.items():
            lines.append(
                f"  {name:<6} paper stride {r['paper']['seconds_per_volume']:.3f} s ({r['paper']['windows']}), "
                f"default overlap 0.5 {r['default']['seconds_per_volume']:.3f} s ({r['default']['windows']})"
            )
    if "compile" in result:
        c = result["compile"]
        lines.append(
            f"torch.compile (fp32): iteration {c['iteration_s']['total']:.4f} s, gain "
            f"{c.get('compile_gain_iteration', float('nan')):.2f}x (iteration), "
            f"{c.get('compile_gain_bare', float('nan')):.2f}x (bare work)"
        )
    for name, step in result.get("steps", {}).items():
        if step["status"] != "passed":
            lines.append(f"step {name}: {step['status']} {step.get('reason', '')}".rstrip())
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_check/gpu_check.json", help="the JSON (default %(default)s)")
    p.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget in seconds (default 450)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds per training benchmark (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds per training benchmark (default 3)")
    p.add_argument("--compile-min-s", type=float, default=200.0, help="budget left needed for the compile step")
    p.add_argument("--no-tests", action="store_true", help="skip the GPU-marked tests")
    args = p.parse_args(argv)
    start = time.monotonic()
    deadline = start + args.budget_s
    try:
        import torch

        import bundle  # noqa: F401  (the package must be installed or importable)
    except ImportError as err:
        print(f"not installed ({err}); install first: {INSTALL}", file=sys.stderr)
        return EXIT_NOT_INSTALLED
    if not torch.cuda.is_available():
        print(
            f"no GPU: torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}) sees no CUDA device; "
            f"nothing was run (exit {EXIT_NO_GPU})."
        )
        return EXIT_NO_GPU
    out = Path(args.out)
    if not out.is_absolute():
        out = ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "gpu": gpu_facts(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "budget_s": args.budget_s,
        "steps": {},
    }
    print(
        f"[gpu_check] {result['gpu']['gpu']}, torch {result['gpu']['torch']}; budget {args.budget_s:.0f} s", flush=True
    )

    def step(name: str, cmd: Sequence[str], cap_s: float, min_s: float) -> dict[str, Any]:
        print(f"[gpu_check] {name} ...", flush=True)
        outcome = run_step(cmd, deadline, cap_s, min_s)
        result["steps"][name] = outcome
        result["wall_s"] = time.monotonic() - start
        _write(out, result)
        print(f"[gpu_check] {name}: {outcome['status']} ({outcome.get('wall_s', 0):.0f} s)", flush=True)
        return outcome

    py = sys.executable
    if not args.no_tests:
        with tempfile.TemporaryDirectory() as tmp:
            junit = Path(tmp) / "junit.xml"
            cmd = [py, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p", "no:cacheprovider"]
            outcome = step("tests", [*cmd, f"--junitxml={junit}"], cap_s=240, min_s=60)
            if junit.is_file():
                counts = _junit_counts(junit)
                result["tests"] = counts
                if counts["tests"] and counts["skipped"] == counts["tests"]:
                    outcome.update(status="failed", reason="every GPU test was skipped")
            outcome.pop("stdout", None)
    bench = [py, "-m", "scripts.bench_speed", "--device", "cuda"]
    timing = ["--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    for name, options in TRAINING_VARIANTS.items():
        outcome = step(f"training_{name}", [*bench, "--part", "training", *PAPER, *options, *timing], 120, 30)
        figures = _bench(outcome)
        if figures is not None:
            result.setdefault("training", {})[name] = figures["training"]
    for name, options in INFERENCE_VARIANTS.items():
        cmd = [*bench, "--part", "inference", "--n-filters", "16", *options, "--repeats", "5", "--paper-repeats", "3"]
        figures = _bench(step(f"inference_{name}", cmd, 120, 30))
        if figures is not None:
            result.setdefault("inference", {})[name] = figures["inference"]
    cmd = [*bench, "--part", "training", *PAPER, "--precision", "fp32", "--compile", "--warmup", "3", "--repeats", "5"]
    figures = _bench(step("training_fp32_compile", cmd, 300, args.compile_min_s))
    if figures is not None:
        result["compile"] = figures["training"]
    result["wall_s"] = time.monotonic() - start
    _write(out, result)
    print("\n".join(summary_lines(result)))
    print(f"[gpu_check] JSON: {out}")
    statuses = [s["status"] for s in result["steps"].values()]
    if any(s in ("failed", "timed out") for s in statuses):
        return EXIT_FAILED
    return EXIT_INCOMPLETE if "skipped" in statuses else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
