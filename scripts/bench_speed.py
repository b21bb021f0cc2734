"""Speed and memory benchmark (docs/performance.md); prints one JSON object.

    python -m scripts.bench_speed --out runs/speed_cpu.json                       # CPU: 64x64x32, batch 2+2, V-Net 16
    python -m scripts.bench_speed --device cuda --patch 112 112 80 --precision bf16 --out runs/speed_gpu_bf16.json
    python -m scripts.bench_speed --part training --cpu-precision auto --summary docs/results/speed_summary.json
    python -m scripts.bench_speed --part training --cpu-precision fp32_cl --compile --warmup 3   # compile gain

Parts (--part, default all; each part runs in its own process so peak memory is per part):
- training: median seconds per PLGDF iteration (the real trainer step on synthetic batches) with the breakdown
  teacher forward / student forward / losses / backward / optimizer+EMA / other, against the bare network work it
  contains (student forward+backward on its 8 rows, teacher no-grad forward on its 4) in the default layout fp32
  (the authors' setting) and in the trainer's own setting, measured round by round in the same process;
- inference: seconds per volume (--volume, default 215x140x88, an LA case) at the paper's stride (18x18x4 for a
  112x112x80 window) and at the bundle default (configs/inference.json's window), with window counts;
- data: seconds per training sample of configs/train.json's preprocessing, uncached and cached, on LA h5 cases
  (--la-dir, with configs/presets/la_lite.json) or on generated demo cases.

--cpu-precision runs training and inference in the bundle's cpu_precision (auto: the trainer's own start-up probe,
then the iteration in the chosen precision); --compile adds torch.compile (and an eager copy in the same rounds, for
the gain); --summary FILE merges this CPU host's entry (cpu, flags, chosen, iteration_s and the two ratios) into the
speed summary (docs/results/speed_summary.json; the issue's configuration is the default 64x64x32, batch 2+2, width 16).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PARTS = ("training", "inference", "data")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--patch", type=int, nargs=3, default=[64, 64, 32], help="training patch (default 64 64 32)")
    p.add_argument("--labeled-batch", type=int, default=2)
    p.add_argument("--unlabeled-batch", type=int, default=2)
    p.add_argument("--n-filters", type=int, default=16, help="V-Net base width (default 16, the paper's)")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        default="fp32",
        help="autocast: bf16/fp16 on CUDA, bf16 on CPU (the trainer's amp_cpu)",
    )
    p.add_argument("--no-channels-last", action="store_true", help="default memory layout in the trainer")
    p.add_argument(
        "--cpu-precision",
        choices=["fp32", "fp32_cl", "bf16", "bf16_cl", "auto"],
        help="the bundle's cpu_precision for training and inference on the CPU (replaces --precision and "
        "--no-channels-last there); auto runs the trainer's / inference's own probe first",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the networks (eager copies timed beside)")
    p.add_argument("--probe-steps", type=int, default=2, help="timed steps per candidate of --cpu-precision auto")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="timed training iterations / inference runs")
    p.add_argument("--volume", type=int, nargs=3, default=[215, 140, 88], help="inference volume (an LA case)")
    p.add_argument("--roi", type=int, nargs=3, default=[112, 112, 80], help="inference window (the paper's)")
    p.add_argument("--stride", type=int, nargs=3, help="paper-protocol stride (default the paper's for the window)")
    p.add_argument("--overlap", type=float, help="time MONAI's overlap window with this overlap instead of the default")
    p.add_argument("--paper-repeats", type=int, help="timed runs at the paper's stride (default --repeats)")
    p.add_argument("--la-dir", help="data part: LA folder (h5 cases); default: generated demo cases")
    p.add_argument("--samples", type=int, default=8, help="data part: samples timed per mode")
    p.add_argument("--threads", type=int, help="torch CPU threads (default torch's)")
    p.add_argument(
        "--cpu-allocator",
        choices=["reuse", "system"],
        default="reuse",
        help="the bundle's cpu_allocator, set before anything is timed (default reuse, the configs' default)",
    )
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument(
        "--summary",
        help="merge this host's training entry into this speed summary JSON (e.g. docs/results/speed_summary.json)",
    )
    return p


def _run_part(args: argparse.Namespace) -> dict:
    import torch

    from bundle.engine.allocator import configure_cpu_allocator

    allocator = configure_cpu_allocator(args.cpu_allocator)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = _bench_part(args)
    out["cpu_allocator"] = allocator
    return out


def _bench_part(args: argparse.Namespace) -> dict:
    import torch

    from benchmarks import speed

    amp = args.precision != "fp32"
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(args.precision, "bfloat16")
    on_cpu = not args.device.startswith("cuda")
    if args.cpu_precision and on_cpu:
        amp = False  # the CPU precision decides
    cpu_precision = args.cpu_precision if on_cpu else None
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda given but torch sees no CUDA device.")
        torch.backends.cudnn.benchmark = True
    if args.part == "training":
        return speed.bench_training(
            args.device,
            args.patch,
            args.labeled_batch,
            args.unlabeled_batch,
            args.n_filters,
            amp=amp,
            amp_dtype=dtype,
            channels_last=not args.no_channels_last,
            warmup=args.warmup,
            repeats=args.repeats,
            cpu_precision=cpu_precision,
            compile=args.compile,
            probe_steps=args.probe_steps,
        )
    if args.part == "inference":
        return speed.bench_inference(
            args.device,
            args.volume,
            args.roi,
            args.stride,
            args.overlap,
            n_filters=args.n_filters,
            amp=amp,
            amp_dtype=dtype,
            repeats=args.repeats,
            paper_repeats=args.paper_repeats,
            cpu_precision=cpu_precision,
            compile=args.compile,
        )
    return _run_data(args)


def _run_data(args: argparse.Namespace) -> dict:
    from benchmarks import speed
    from bundle.data.datalist import load_datalist

    configs = [str(ROOT / "configs" / "train.json")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.la_dir:
            from bundle.data.prepare import la_entries

            ids = json.loads((ROOT / "configs" / "la_lite_split.json").read_text())["train"][:4]
            list_file = Path(tmp) / "cases.list"
            list_file.write_text("\n".join(ids) + "\n")
            entries = la_entries(args.la_dir, list_file)
            configs.append(str(ROOT / "configs" / "presets" / "la_lite.json"))
            source = f"LA h5 cases {', '.join(ids)} (configs/presets/la_lite.json: 1.25 mm, patch 48x48x32)"
        else:
            from bundle.data.demo import generate_demo_dataset

            datalist = load_datalist(generate_demo_dataset(tmp, n_labelled=4, n_unlabelled=0, n_val=0, n_test=0))
            entries = datalist["training"]
            source = "generated demo cases (configs/train.json defaults: CT, 2 mm, patch 32^3)"
        out = speed.bench_data(entries, configs, samples=args.samples)
    out["source"] = source
    return out


def _without_option(args: list[str], option: str) -> list[str]:
    """``args`` without ``option`` and its value."""
    return [a for i, a in enumerate(args) if a != option and (i == 0 or args[i - 1] != option)]


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.summary and (args.part not in ("training", "all") or args.device.startswith("cuda")):
        raise ValueError(
            "--summary records a CPU host's training figures: use it with --part training (or all) on cpu."
        )
    if args.part != "all":
        result = {args.part: _run_part(args)}
    else:
        result = {}
        raw = list(sys.argv[1:] if argv is None else argv)
        base = raw
        for option in ("--part", "--out", "--summary"):
            base = _without_option(base, option)
        for part in PARTS:
            print(f"[bench] {part} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [sys.executable, "-m", "scripts.bench_speed", "--part", part, *base],
                cwd=ROOT,
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            if proc.returncode != 0:
                raise SystemExit(f"part {part} failed:\n{proc.stderr[-3000:]}")
            result.update(json.loads(proc.stdout))
    import platform

    import torch

    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if args.summary:
        from benchmarks import speed

        entry = speed.host_summary_entry(result["training"], result["machine"])
        speed.merge_host_summary(args.summary, entry)
        result["summary_entry"] = entry
        if result["training"]["settings"]["patch_size"] != speed.SUMMARY_SETTINGS["patch_size"]:
            print(f"[bench] note: the summary's configuration is {speed.SUMMARY_SETTINGS}", file=sys.stderr)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        from bundle.engine.files import write_text_atomic

        write_text_atomic(args.out, text + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
