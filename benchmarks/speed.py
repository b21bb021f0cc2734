"""Speed and memory of training, inference and the data pipeline (``python -m scripts.bench_speed``,
docs/performance.md).

Every figure is a median over repeats after warm-up, and every ratio compares two things measured in the same
process, interleaved round by round, so a busy machine slows both sides alike.

- :func:`bench_training`: one real :class:`bundle.method.trainer.PLGDFTrainer` iteration (its own ``_iteration``,
  synthetic batches), broken down into teacher forward / student forward / losses / backward / optimizer+EMA / the rest
  (noise, mix, copies), against the *bare network work* it contains: the student's forward+backward on its
  ``labelled + (K + 1) * unlabelled`` rows (8 for batch 2+2, K=2) plus the teacher's no-grad forward on
  ``K * unlabelled`` rows (4), timed on separate network copies in the default memory layout fp32 (the authors'
  setting) and in the trainer's layout and precision; and the loss terms alone (forward + backward on the captured
  student outputs), as the trainer computes them (one shared softmax pyramid) and each term on its own rows (the
  earlier implementation). ``cpu_precision`` (``auto`` runs the trainer's own probe first) and ``compile`` apply
  as in training; with ``compile`` an eager copy of the trainer and of the bare work run in the same rounds.
- :func:`host_summary_entry` / :func:`merge_host_summary`: one host's entry of ``docs/results/speed_summary.json``.
- :func:`bench_inference`: the sliding window over one volume at the paper's stride and at the bundle's default
  overlap, with the number of windows each ran.
- :func:`bench_data`: the training preprocessing of ``configs/train.json`` per sample, uncached (load + resample +
  intensity + crop/augment) and cached (only the random part, as after ``CacheDataset``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bundle.engine import precision as cpu_precisions
from bundle.engine.distributed import unwrap_model
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
        # hooks run outside torch.compile's graph (a compiled module traces its hooks otherwise)
        trainer.network.register_forward_pre_hook(torch.compiler.disable(lambda *_: self.mark("student_start")))
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
    cpu_precision: str | None = None,
    compile: bool = False,
    probe_steps: int = 2,
) -> tuple[PLGDFTrainer, dict[str, torch.Tensor]]:
    """A full PLGDF trainer (all terms on, as ``configs/train.json``) and one synthetic labelled batch.

    ``cpu_precision`` ``None`` keeps the earlier pair (``amp`` on CPU = bf16 autocast, ``channels_last``). The
    trainer's nominal run is long (the benchmark drives ``_iteration`` itself), so ``"auto"`` always probes.
    """
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
        epoch_length=10**6,
        train_data_loader=[batch],
        network=net,
        optimizer=opt,
        unlabeled_loader=_Repeat(unlabeled),
        teacher=teacher,
        mix=MixModule(alpha=0.75),
        n_copies=n_copies,
        amp=amp,
        amp_dtype=amp_dtype,
        cpu_precision=cpu_precision,
        amp_cpu=amp and device.type == "cpu" and cpu_precision is None,
        channels_last=channels_last,
        compile=compile,
        probe_steps=probe_steps,
    )
    trainer.state.device = device
    return trainer, batch


class _Repeat:
    """An endless iterable yielding the same tensor (the unlabelled loader of the benchmark)."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.batch_size = x.shape[0]

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


class _OutputCapture:
    """The student's outputs of the last forward pass (detached), for timing the loss terms on their own."""

    def __init__(self, network: torch.nn.Module):
        self.outputs: list[torch.Tensor] = []
        network.register_forward_hook(torch.compiler.disable(self._hook))

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if module.training and torch.is_grad_enabled():
            self.outputs = [o.detach() for o in (output if isinstance(output, (list, tuple)) else [output])]


def unshared_loss_terms(trainer: PLGDFTrainer, outputs: Sequence[torch.Tensor], n_l: int, y_l, y_hat, t: int):
    """The loss terms as the trainer computed them before the shared softmax pyramid: each term called on its own
    rows of the logits (its own float cast, softmax and log-softmax). The benchmark's baseline for the saving."""
    sup, _ = trainer.loss_function([o[:n_l] for o in outputs], y_l)
    n_semi = y_hat.shape[0]
    semi, _ = trainer.loss_function([o[n_l : n_l + n_semi] for o in outputs], y_hat)
    consis = trainer.consistency_loss([o[n_l:] for o in outputs])
    sharp = trainer.sharpening_loss([o[n_l + n_semi :] for o in outputs])
    weight = float(trainer.rampup(t))
    return {"loss": sup + semi + weight * (sharp + consis)}


def time_loss_terms(
    trainer: PLGDFTrainer, outputs: Sequence[torch.Tensor], n_l: int, shared: bool = True, t: int = 0
) -> float:
    """Seconds for the loss terms' forward + backward on leaf copies of the student's ``outputs`` (all terms on;
    labels random, the cost does not depend on them); ``shared``: as the trainer does, else
    :func:`unshared_loss_terms`."""
    device = outputs[0].device
    n_semi = trainer.n_copies * (outputs[0].shape[0] - n_l) // (trainer.n_copies + 1)
    spatial = tuple(outputs[0].shape[2:])
    generator = torch.Generator().manual_seed(0)
    y_l = torch.randint(0, outputs[0].shape[1], (n_l, *spatial), generator=generator).to(device)
    y_hat = torch.randint(0, outputs[0].shape[1], (n_semi, *spatial), generator=generator).to(device)
    leaves = [o.clone().requires_grad_() for o in outputs]
    _sync(device)
    start = time.perf_counter()
    terms = (trainer.loss_terms if shared else lambda *a: unshared_loss_terms(trainer, *a))(leaves, n_l, y_l, y_hat, t)
    terms["loss"].backward()
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
    cpu_precision: str | None = None,
    compile: bool = False,
    probe_steps: int = 2,
) -> dict[str, Any]:
    """Median seconds per PLGDF iteration with its breakdown, against the bare network work, in one process.

    Each round runs one trainer iteration, then the bare work on a copy of the network in the default layout fp32
    (``bare_reference``: the authors' setting), then in the trainer's layout and precision (``bare_same_setting``),
    then the loss terms alone (forward + backward on the iteration's student outputs) shared and unshared. With
    ``compile`` the trainer's networks and the same-setting copies are compiled, and an eager trainer (same seed,
    same precision) and eager same-setting copies run in the same rounds (``compile_gain_*``); ``warmup`` must cover
    the compilation (the first rounds).

    Args:
        device: ``"cpu"`` or ``"cuda[:N]"``. Default ``"cpu"``.
        patch_size: ``(H, W, D)``. Default ``(64, 64, 32)``.
        labeled_batch, unlabeled_batch, n_filters, n_copies: the batch layout and width. Default 2, 2, 16, 2.
        amp, amp_dtype: autocast (CUDA; on the CPU ``amp`` is bf16, the earlier ``amp_cpu``). Default off.
        channels_last: ``torch.channels_last_3d`` (CUDA; on the CPU with ``cpu_precision=None``). Default True.
        warmup, repeats: untimed and timed rounds. Default 2 and 5.
        cpu_precision: the trainer's ``cpu_precision`` on the CPU (``"auto"`` probes first, ``probe_steps``);
            ``None`` takes ``amp`` / ``channels_last``. Default None.
        compile: ``torch.compile`` the trainer's networks. Default False.
        probe_steps: timed steps per candidate of ``"auto"``. Default 2.

    Returns:
        ``{"iteration_s": {phase: median s}, "bare_reference_s", "bare_same_setting_s", "ratio_to_bare_reference",
        "ratio_to_bare_same_setting", "loss_terms_s", "loss_terms_unshared_s", "loss_terms_share",
        "peak_memory_mb", "rows", "precision", "settings"}`` (+ the ``*_eager_s`` and ``compile_gain_*`` with
        ``compile``).
    """
    device = torch.device(device)
    if cpu_precision is None:
        _check_precision(device, amp, amp_dtype)
    trainer, batch = build_trainer(
        device,
        patch_size,
        labeled_batch,
        unlabeled_batch,
        n_filters,
        n_copies,
        amp,
        amp_dtype,
        channels_last,
        cpu_precision=cpu_precision,
        probe_steps=probe_steps,
    )
    report = trainer.prepare_step(batch)  # the precision probe (auto), before any copy or timer
    n_student = labeled_batch + (n_copies + 1) * unlabeled_batch  # labelled, mixed noisy copies, clean unlabelled
    n_teacher = n_copies * unlabeled_batch
    ref_net = copy.deepcopy(trainer.network).to(memory_format=torch.contiguous_format).train()
    ref_teacher = copy.deepcopy(trainer.teacher.model).to(memory_format=torch.contiguous_format).train()
    fmt = trainer.memory_format
    same_net = copy.deepcopy(trainer.network).train()
    same_teacher = copy.deepcopy(trainer.teacher.model).train()
    eager_trainer = eager_batch = None
    if compile:
        eager_net, eager_teacher = copy.deepcopy(same_net), copy.deepcopy(same_teacher)
        chosen = trainer.cpu_precision.name if trainer.cpu_precision is not None else None
        eager_trainer, eager_batch = build_trainer(
            device, patch_size, labeled_batch, unlabeled_batch, n_filters, n_copies, amp, amp_dtype, channels_last,
            cpu_precision=chosen,
        )  # fmt: skip
        eager_trainer.prepare_step(eager_batch)
        for module in (unwrap_model(trainer.network), trainer.teacher.model, same_net, same_teacher):
            cpu_precisions.compile_network(module, device)
        report["compile"] = True
    timer = _PhaseTimer(trainer, device)  # after the copies: they must not carry its hooks
    capture = _OutputCapture(trainer.network)
    x_s = torch.randn((n_student, 1, *patch_size), device=device)
    x_t = torch.randn((n_teacher, 1, *patch_size), device=device)

    def no_autocast() -> Any:
        return contextlib.nullcontext()

    phases: dict[str, list[float]] = {}
    rounds: dict[str, list[float]] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + repeats):
        trainer.state.iteration = i + 1
        timer.start()
        trainer._iteration(trainer, batch)
        res = timer.result()
        x_same, t_same = x_s.contiguous(memory_format=fmt), x_t.contiguous(memory_format=fmt)
        measured = {
            "bare_reference": _bare_work(ref_net, ref_teacher, x_s, x_t, device, no_autocast),
            "bare_same_setting": _bare_work(same_net, same_teacher, x_same, t_same, device, trainer._autocast),
            "loss_terms": time_loss_terms(trainer, capture.outputs, labeled_batch, shared=True),
            "loss_terms_unshared": time_loss_terms(trainer, capture.outputs, labeled_batch, shared=False),
        }
        if eager_trainer is not None:
            eager_trainer.state.iteration = i + 1
            _sync(device)
            start = time.perf_counter()
            eager_trainer._iteration(eager_trainer, eager_batch)
            _sync(device)
            measured["iteration_eager"] = time.perf_counter() - start
            measured["bare_same_setting_eager"] = _bare_work(
                eager_net, eager_teacher, x_same, t_same, device, trainer._autocast
            )
        if i >= warmup:
            for k, v in res.items():
                phases.setdefault(k, []).append(v)
            for k, v in measured.items():
                rounds.setdefault(k, []).append(v)
    it = {k: _median(v) for k, v in phases.items()}
    med = {k: _median(v) for k, v in rounds.items()}
    out: dict[str, Any] = {
        "iteration_s": it,
        "bare_reference_s": med["bare_reference"],
        "bare_same_setting_s": med["bare_same_setting"],
        "ratio_to_bare_reference": it["total"] / med["bare_reference"],
        "ratio_to_bare_same_setting": it["total"] / med["bare_same_setting"],
        "loss_terms_s": med["loss_terms"],
        "loss_terms_unshared_s": med["loss_terms_unshared"],
        "loss_terms_share": med["loss_terms"] / it["total"],
        "peak_memory_mb": peak_memory_mb(device),
        "rows": {"student": n_student, "teacher": n_teacher},
        "precision": report,
        "settings": {
            "device": str(device),
            "patch_size": list(patch_size),
            "labeled_batch": labeled_batch,
            "unlabeled_batch": unlabeled_batch,
            "n_filters": n_filters,
            "n_copies": n_copies,
            "precision": _precision_name(trainer, amp, amp_dtype),
            "channels_last": fmt == torch.channels_last_3d,
            "compile": bool(compile),
            "warmup": warmup,
            "repeats": repeats,
        },
    }
    if compile:
        out.update(
            iteration_eager_s=med["iteration_eager"],
            bare_same_setting_eager_s=med["bare_same_setting_eager"],
            compile_gain_iteration=med["iteration_eager"] / it["total"],
            compile_gain_bare=med["bare_same_setting_eager"] / med["bare_same_setting"],
        )
    return out


def _precision_name(trainer: PLGDFTrainer, amp: bool, amp_dtype: str) -> str:
    """``fp32`` / ``bfloat16`` / ``float16``: the autocast dtype the trainer's steps run in."""
    if trainer.cpu_precision is not None:
        return "bfloat16" if trainer.cpu_precision.bf16 else "fp32"
    return amp_dtype if amp else "fp32"


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
) -> dict[str, Any]:
    """Seconds per volume of the paper's strided window and of the bundle's ``SlidingWindowInferer``.

    Args:
        cpu_precision: the network as ``configs/inference.json`` runs it
            (:func:`bundle.engine.precision.inference_network`; ``"auto"`` probes on a window batch first);
            ``None`` uses ``amp`` / ``amp_dtype`` autocast instead. Default None.
        compile: ``torch.compile`` the network (the warm-up run compiles it). Default False.
        stride: the paper protocol's stride; default :func:`bundle.evaluation.evaluate.paper_stride` of ``roi_size``, or
            ``roi // 4`` for windows the paper does not define.
        overlap, mode, sw_batch_size: the bundle default's window; ``None`` (default) reads ``configs/inference.json``
            (``sw_overlap``, ``sw_mode``, ``sw_sigma_scale``, ``sw_average``: probabilities blended).
        repeats / paper_repeats: timed runs of the default / paper protocol, after one warm-up run of the default
            (``paper_repeats`` defaults to ``repeats``).
    """
    from benchmarks.window_campaign import default_setting
    from benchmarks.window_study import build_inferer
    from bundle.evaluation.evaluate import PAPER_STRIDES
    from bundle.inference.inferers import StridedSlidingWindowInferer

    device = torch.device(device)
    _check_precision(device, amp, amp_dtype)
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
    setting = dict(default_setting())
    setting.update({k: v for k, v in (("overlap", overlap), ("mode", mode)) if v is not None})
    default = build_inferer(setting, roi, sw_batch_size=sw_batch_size)
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


#: the configuration of ``docs/results/speed_summary.json``'s figures (issue: 64x64x32, batch 2+2, width 16)
SUMMARY_SETTINGS = {"patch_size": [64, 64, 32], "labeled_batch": 2, "unlabeled_batch": 2, "n_filters": 16}


def host_summary_entry(training: Mapping[str, Any], machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One host's entry of the speed summary from a :func:`bench_training` result (measured in one process).

    ``{"cpu", "flags" ("avx2|avx512_bf16|..."), "chosen" (the CPU precision the iteration ran in),
    "iteration_s", "iteration_over_bare_same_setting", "iteration_over_authors_fp32_bare"}`` and, to make the entry
    self-describing, ``probe_s`` (auto's seconds per step of each candidate, or ``null``), ``loss_terms_s``,
    ``loss_terms_unshared_s``, ``compile``, ``patch_size``, ``batch``, ``n_filters``, ``torch``, ``threads``,
    ``date``.

    Raises:
        ValueError: ``training`` was not measured on the CPU.
    """
    settings = training["settings"]
    if not str(settings["device"]).startswith("cpu"):
        raise ValueError(f"the speed summary records CPU hosts; this result ran on {settings['device']}.")
    report = training.get("precision", {})
    flags = report.get("flags", cpu_precisions.cpu_flags())
    return {
        "cpu": report.get("cpu") or cpu_precisions.cpu_model(),
        "flags": "|".join(flags),
        "chosen": report.get("chosen"),
        "iteration_s": training["iteration_s"]["total"],
        "iteration_over_bare_same_setting": training["ratio_to_bare_same_setting"],
        "iteration_over_authors_fp32_bare": training["ratio_to_bare_reference"],
        "probe_s": report.get("timings_s"),
        "loss_terms_s": training.get("loss_terms_s"),
        "loss_terms_unshared_s": training.get("loss_terms_unshared_s"),
        "compile": bool(settings.get("compile", False)),
        "patch_size": list(settings["patch_size"]),
        "batch": [settings["labeled_batch"], settings["unlabeled_batch"]],
        "n_filters": settings["n_filters"],
        "torch": (machine or {}).get("torch", torch.__version__),
        "threads": (machine or {}).get("threads", torch.get_num_threads()),
        "date": time.strftime("%Y-%m-%d"),
    }


def _summary_key(entry: Mapping[str, Any]) -> tuple:
    return (
        entry.get("cpu"),
        entry.get("flags"),
        tuple(entry.get("patch_size") or ()),
        tuple(entry.get("batch") or ()),
        entry.get("n_filters"),
        bool(entry.get("compile", False)),
    )


def merge_host_summary(path: str | Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Add ``entry`` to the summary file ``path`` (``{"hosts": [...]}``, created if missing), replacing an entry of
    the same CPU model, flags, configuration and compile setting; written atomically. Returns the summary.

    Raises:
        ValueError: ``path`` exists but is not such a summary (nothing is written).
    """
    from bundle.engine.files import write_json_atomic

    path = Path(path)
    summary: dict[str, Any] = {"hosts": []}
    if path.exists():
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{path} is not valid JSON ({err}); not overwritten.") from err
        if not isinstance(summary, dict) or not isinstance(summary.get("hosts"), list):
            raise ValueError(f'{path} is not a speed summary ({{"hosts": [...]}}); not overwritten.')
    key = _summary_key(entry)
    summary["hosts"] = [h for h in summary["hosts"] if _summary_key(h) != key] + [dict(entry)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, summary)
    return summary
