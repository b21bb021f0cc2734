"""Speed and memory of training, inference and the data pipeline (``python -m scripts.bench_speed``,
docs/performance.md).

Every figure is a median over repeats after warm-up, and every ratio compares two things measured in the same
process, interleaved round by round, so a busy machine slows both sides alike.

- :func:`bench_training`: one real :class:`bundle.method.trainer.PLGDFTrainer` iteration (its own ``_iteration``,
  synthetic batches), broken down into teacher forward / student forward / losses / backward / optimizer+EMA / the rest
  (noise, mix, copies), against the *bare network work* it contains: the student's forward+backward on its
  ``labelled + (K + 1) * unlabelled`` rows (8 for batch 2+2, K=2) plus the teacher's no-grad forward on
  ``K * unlabelled`` rows (4), timed on separate network copies in the default memory layout fp32 (the authors'
  setting) and in the trainer's layout and precision.
- :func:`bench_inference`: the sliding window over one volume at the paper's stride and at the bundle's default
  overlap, with the number of windows each ran.
- :func:`bench_data`: the training preprocessing of ``configs/train.json`` per sample, uncached (load + resample +
  intensity + crop/augment) and cached (only the random part, as after ``CacheDataset``).
"""

from __future__ import annotations

import contextlib
import copy
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bundle.method.mix import MixModule
from bundle.method.networks import PLGDFVNet
from bundle.method.teacher import EMATeacher
from bundle.method.trainer import PLGDFTrainer


def peak_memory_mb(device: torch.device) -> float:
    """Peak RSS of this process (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


class _PhaseTimer:
    """Wall time of the phases of one trainer iteration, from the engine's events and two wrapped calls."""

    def __init__(self, trainer: PLGDFTrainer, device: torch.device):
        from monai.engines.utils import IterationEvents

        self.device = device
        self.marks: dict[str, float] = {}
        self.phases: dict[str, float] = {}
        self._mark_fns: list[Any] = []
        teacher = trainer.teacher
        if teacher is not None:
            original = teacher.pseudo_labels

            def timed_pseudo_labels(*args: Any, **kwargs: Any) -> Any:
                start = self.now()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.phases["teacher_forward"] = self.phases.get("teacher_forward", 0.0) + self.now() - start

            teacher.pseudo_labels = timed_pseudo_labels  # type: ignore[method-assign]
        trainer.network.register_forward_pre_hook(lambda *_: self.mark("student_start"))
        for event, name in (
            (IterationEvents.FORWARD_COMPLETED, "forward_done"),
            (IterationEvents.LOSS_COMPLETED, "loss_done"),
            (IterationEvents.BACKWARD_COMPLETED, "backward_done"),
            (IterationEvents.MODEL_COMPLETED, "model_done"),
        ):
            trainer.add_event_handler(event, self._marker(name))

    def _marker(self, name: str) -> Callable[[Any], None]:
        def handler(_: Any) -> None:
            self.mark(name)

        return handler

    def now(self) -> float:
        _sync(self.device)
        return time.perf_counter()

    def mark(self, name: str) -> None:
        self.marks[name] = self.now()

    def start(self) -> None:
        self.marks.clear()
        self.phases.clear()
        self.marks["start"] = self.now()

    def result(self) -> dict[str, float]:
        m = self.marks
        total = m["model_done"] - m["start"]
        out = {
            "total": total,
            "teacher_forward": self.phases.get("teacher_forward", 0.0),
            "student_forward": m["forward_done"] - m["student_start"],
            "losses": m["loss_done"] - m["forward_done"],
            "backward": m["backward_done"] - m["loss_done"],
            "optimizer_ema": m["model_done"] - m["backward_done"],
        }
        out["other"] = total - sum(v for k, v in out.items() if k != "total")
        return out


def build_trainer(
    device: torch.device,
    patch_size: Sequence[int],
    labeled_batch: int = 2,
    unlabeled_batch: int = 2,
    n_filters: int = 16,
    n_copies: int = 2,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    channels_last: bool = True,
    seed: int = 0,
) -> tuple[PLGDFTrainer, dict[str, torch.Tensor]]:
    """A full PLGDF trainer (all terms on, as ``configs/train.json``) and one synthetic labelled batch."""
    torch.manual_seed(seed)
    net = PLGDFVNet(1, 2, n_filters=n_filters, dropout=True).to(device)
    teacher = EMATeacher(net, decay=0.99, train_mode=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    shape = (labeled_batch, 1, *patch_size)
    batch = {"image": torch.randn(shape), "label": (torch.rand(shape) > 0.7).long()}
    unlabeled = torch.randn((unlabeled_batch, 1, *patch_size))
    trainer = PLGDFTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[batch],
        network=net,
        optimizer=opt,
        unlabeled_loader=_Repeat(unlabeled),
        teacher=teacher,
        mix=MixModule(alpha=0.75),
        n_copies=n_copies,
        amp=amp,
        amp_dtype=amp_dtype,
        amp_cpu=amp and device.type == "cpu",
        channels_last=channels_last,
    )
    trainer.state.device = device
    return trainer, batch


class _Repeat:
    """An endless iterable yielding the same tensor (the unlabelled loader of the benchmark)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __iter__(self) -> _Repeat:
        return self

    def __next__(self) -> torch.Tensor:
        return self.x


def _check_precision(device: torch.device, amp: bool, amp_dtype: str) -> None:
    if amp and device.type == "cpu" and amp_dtype != "bfloat16":
        raise ValueError(f"autocast on CPU is bfloat16 only (the trainer's amp_cpu), got {amp_dtype}.")


def _autocast(device: torch.device, amp: bool, amp_dtype: str) -> Any:
    """The trainer's autocast: ``amp_dtype`` on CUDA, bfloat16 on CPU (``amp_cpu``), nothing when ``amp`` is off."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, amp_dtype))


def _bare_work(
    net: torch.nn.Module,
    teacher_net: torch.nn.Module,
    x_student: torch.Tensor,
    x_teacher: torch.Tensor,
    device: torch.device,
    autocast: Any,
) -> float:
    """Seconds for the student's forward + backward on ``x_student`` and the teacher's no-grad forward on
    ``x_teacher``."""
    start = time.perf_counter()
    net.zero_grad(set_to_none=True)
    with autocast():
        out = net(x_student)
        loss = sum(o.float().mean() for o in (out if isinstance(out, (list, tuple)) else [out]))
    loss.backward()
    with torch.no_grad(), autocast():
        teacher_net(x_teacher)
    _sync(device)
    return time.perf_counter() - start


def bench_training(
    device: str | torch.device = "cpu",
    patch_size: Sequence[int] = (64, 64, 32),
    labeled_batch: int = 2,
    unlabeled_batch: int = 2,
    n_filters: int = 16,
    n_copies: int = 2,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    channels_last: bool = True,
    warmup: int = 2,
    repeats: int = 5,
) -> dict[str, Any]:
    """Median seconds per PLGDF iteration with its breakdown, against the bare network work, in one process.

    Each round runs one trainer iteration, then the bare work on a copy of the network in the default layout fp32
    (``bare_reference``: the authors' setting), then in the trainer's layout and precision (``bare_same_setting``).

    Returns:
        ``{"iteration": {phase: median s}, "bare_reference_s", "bare_same_setting_s", "ratio_to_bare_reference",
        "ratio_to_bare_same_setting", "peak_memory_mb", "rows": {...}, "settings": {...}}``.
    """
    device = torch.device(device)
    _check_precision(device, amp, amp_dtype)
    trainer, batch = build_trainer(
        device, patch_size, labeled_batch, unlabeled_batch, n_filters, n_copies, amp, amp_dtype, channels_last
    )
    n_student = labeled_batch + (n_copies + 1) * unlabeled_batch  # labelled, mixed noisy copies, clean unlabelled
    n_teacher = n_copies * unlabeled_batch
    ref_net = copy.deepcopy(trainer.network).to(memory_format=torch.contiguous_format).train()
    ref_teacher = copy.deepcopy(trainer.teacher.model).to(memory_format=torch.contiguous_format).train()
    fmt = trainer.memory_format
    same_net = copy.deepcopy(trainer.network).train()
    same_teacher = copy.deepcopy(trainer.teacher.model).train()
    timer = _PhaseTimer(trainer, device)  # after the copies: they must not carry its hooks
    x_s = torch.randn((n_student, 1, *patch_size), device=device)
    x_t = torch.randn((n_teacher, 1, *patch_size), device=device)

    def no_autocast() -> Any:
        return contextlib.nullcontext()

    def trainer_autocast() -> Any:
        return _autocast(device, amp, amp_dtype)

    phases: dict[str, list[float]] = {}
    bare_ref: list[float] = []
    bare_same: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + repeats):
        trainer.state.iteration = i + 1
        timer.start()
        trainer._iteration(trainer, batch)
        res = timer.result()
        r = _bare_work(ref_net, ref_teacher, x_s, x_t, device, no_autocast)
        s = _bare_work(
            same_net,
            same_teacher,
            x_s.contiguous(memory_format=fmt),
            x_t.contiguous(memory_format=fmt),
            device,
            trainer_autocast,
        )
        if i >= warmup:
            for k, v in res.items():
                phases.setdefault(k, []).append(v)
            bare_ref.append(r)
            bare_same.append(s)
    it = {k: _median(v) for k, v in phases.items()}
    ref, same = _median(bare_ref), _median(bare_same)
    return {
        "iteration_s": it,
        "bare_reference_s": ref,
        "bare_same_setting_s": same,
        "ratio_to_bare_reference": it["total"] / ref,
        "ratio_to_bare_same_setting": it["total"] / same,
        "peak_memory_mb": peak_memory_mb(device),
        "rows": {"student": n_student, "teacher": n_teacher},
        "settings": {
            "device": str(device),
            "patch_size": list(patch_size),
            "labeled_batch": labeled_batch,
            "unlabeled_batch": unlabeled_batch,
            "n_filters": n_filters,
            "n_copies": n_copies,
            "precision": amp_dtype if amp else "fp32",
            "channels_last": channels_last,
            "warmup": warmup,
            "repeats": repeats,
        },
    }


def bench_inference(
    device: str | torch.device = "cpu",
    volume: Sequence[int] = (215, 140, 88),
    roi_size: Sequence[int] = (112, 112, 80),
    stride: Sequence[int] | None = None,
    overlap: float = 0.5,
    mode: str = "gaussian",
    sw_batch_size: int = 4,
    n_filters: int = 16,
    amp: bool = False,
    amp_dtype: str = "bfloat16",
    repeats: int = 3,
    paper_repeats: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Seconds per volume of the paper's strided window and of the bundle's ``SlidingWindowInferer``.

    Args:
        stride: the paper protocol's stride; default :func:`bundle.evaluation.evaluate.paper_stride` of ``roi_size``, or
            ``roi // 4`` for windows the paper does not define.
        overlap, mode, sw_batch_size: the bundle default (``configs/inference.json``: 0.5, gaussian, 4).
        repeats / paper_repeats: timed runs of the default / paper protocol, after one warm-up run of the default
            (``paper_repeats`` defaults to ``repeats``).
    """
    from monai.inferers import SlidingWindowInferer

    from bundle.evaluation.evaluate import PAPER_STRIDES
    from bundle.inference.inferers import StridedSlidingWindowInferer

    device = torch.device(device)
    _check_precision(device, amp, amp_dtype)
    torch.manual_seed(seed)
    net = PLGDFVNet(1, 2, n_filters=n_filters, dropout=True).to(device).eval()
    roi = tuple(int(r) for r in roi_size)
    stride = tuple(stride) if stride is not None else PAPER_STRIDES.get(roi, tuple(max(1, r // 4) for r in roi))
    x = torch.randn((1, 1, *volume), device=device)
    paper = StridedSlidingWindowInferer(roi_size=roi, stride=stride, num_classes=2, sw_batch_size=sw_batch_size)
    default = SlidingWindowInferer(roi_size=roi, overlap=overlap, mode=mode, sw_batch_size=sw_batch_size)
    counted = {"n": 0}

    def counting_net(t: torch.Tensor) -> torch.Tensor:
        counted["n"] += t.shape[0]
        return net(t)

    def ctx() -> Any:
        return _autocast(device, amp, amp_dtype)

    def run(inferer: Any) -> tuple[float, int]:
        counted["n"] = 0
        start = time.perf_counter()
        with torch.no_grad(), ctx():
            inferer(x, counting_net)
        _sync(device)
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
        out[name] = {"seconds_per_volume": _median(times), "windows": windows, "runs": len(times)}
        if device.type == "cuda":
            out[name]["peak_memory_mb"] = peak_memory_mb(device)
    out["paper"]["stride"] = list(stride)
    out["default"].update(overlap=overlap, mode=mode)
    out["speedup_default_vs_paper"] = out["paper"]["seconds_per_volume"] / out["default"]["seconds_per_volume"]
    out["peak_memory_mb"] = peak_memory_mb(device)
    out["settings"] = {
        "device": str(device),
        "volume": list(volume),
        "roi_size": list(roi),
        "sw_batch_size": sw_batch_size,
        "n_filters": n_filters,
        "precision": amp_dtype if amp else "fp32",
    }
    return out


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
        "uncached_s_per_sample": _median(uncached),
        "cached_s_per_sample": _median(cached),
        "ratio_uncached_to_cached": _median(uncached) / _median(cached),
        "samples": samples,
        "cases": len(items),
    }
