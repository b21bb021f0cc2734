"""Speed of one real PLGDF training iteration (:func:`bench_training`), broken down into its phases and set against
the bare network work and the loss terms it contains (:mod:`benchmarks.speed_parts`), measured round by round in one
process."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from benchmarks.speed_parts import OutputCapture, bare_work, time_loss_terms
from benchmarks.speed_timing import check_precision, median, peak_memory_mb, sync
from bundle.engine import precision as cpu_precisions
from bundle.engine.distributed import unwrap_model
from bundle.method.mix import MixModule
from bundle.method.networks import PLGDFVNet
from bundle.method.teacher import EMATeacher
from bundle.method.trainer import PLGDFTrainer


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
        sync(self.device)
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
        check_precision(device, amp, amp_dtype)
    setup = (patch_size, labeled_batch, unlabeled_batch, n_filters, n_copies, amp, amp_dtype, channels_last)
    trainer, batch = build_trainer(device, *setup, cpu_precision=cpu_precision, probe_steps=probe_steps)
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
        eager_trainer, eager_batch = build_trainer(device, *setup, cpu_precision=chosen)  # same seed and layout
        eager_trainer.prepare_step(eager_batch)
        for module in (unwrap_model(trainer.network), trainer.teacher.model, same_net, same_teacher):
            cpu_precisions.compile_network(module, device)
        report["compile"] = True
    timer = _PhaseTimer(trainer, device)  # after the copies: they must not carry its hooks
    capture = OutputCapture(trainer.network)
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
            "bare_reference": bare_work(ref_net, ref_teacher, x_s, x_t, device, no_autocast),
            "bare_same_setting": bare_work(same_net, same_teacher, x_same, t_same, device, trainer._autocast),
            "loss_terms": time_loss_terms(trainer, capture.outputs, labeled_batch, shared=True),
            "loss_terms_unshared": time_loss_terms(trainer, capture.outputs, labeled_batch, shared=False),
        }
        if eager_trainer is not None:
            eager_trainer.state.iteration = i + 1
            sync(device)
            start = time.perf_counter()
            eager_trainer._iteration(eager_trainer, eager_batch)
            sync(device)
            measured["iteration_eager"] = time.perf_counter() - start
            measured["bare_same_setting_eager"] = bare_work(
                eager_net, eager_teacher, x_same, t_same, device, trainer._autocast
            )
        if i >= warmup:
            for k, v in res.items():
                phases.setdefault(k, []).append(v)
            for k, v in measured.items():
                rounds.setdefault(k, []).append(v)
    it = {k: median(v) for k, v in phases.items()}
    med = {k: median(v) for k, v in rounds.items()}
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
