"""The PLGDF semi-supervised training step as a MONAI ``SupervisedTrainer``.

One iteration (``docs/method_notes.md``, "One iteration"):

1. ``x_u_noisy`` = K noisy copies of the unlabelled batch (copy-major); ``x_l_noisy`` = n(x_l).
2. Pseudo-labels: one batched no-grad teacher forward over all K copies; softmax of P1 averaged
   over the copies; argmax.
3. Mix: every noisy unlabelled copy is blended with a random noisy labelled row,
   ``x_mix = lambda' n(x_u) + (1 - lambda') n(x_l)``, ``lambda' >= 0.5``; its target is the
   pseudo-label of its unlabelled source.
4. One student forward over ``[x_l_noisy, x_mix, x_u]`` giving P1..P4 for every row.
5. ``L = L_sup + L_semi + lambda(t) (L_sharp + L_consis)``; SGD step; EMA update of the teacher.
   The four terms share one :class:`bundle.method.losses.SoftmaxPyramid` of the student's outputs (one
   log-softmax per output over all rows; each term reads its rows as views).

Every component is a switch (the paper's ablation). Loss terms stay on the device: the step does
no host synchronisation; handlers read the scalars when they log.

Before the first step (:meth:`PLGDFTrainer.prepare_step`) the trainer settles the CPU precision
(``cpu_precision``, timing the candidates of ``"auto"`` on the run's own shapes: see
:mod:`bundle.engine.precision`) and compiles the networks (``compile``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from bundle.engine import precision as cpu_precisions
from bundle.engine.distributed import unwrap_model
from bundle.engine.rng import rng_state, set_rng_state
from bundle.method.losses import PyramidConsistencyLoss, PyramidSupervisedLoss, SharpeningLoss, SoftmaxPyramid
from bundle.method.mix import MixModule, add_noise
from bundle.method.rampup import ConsistencyRampUp
from bundle.method.teacher import EMATeacher

__all__ = ["PLGDFTrainer"]

logger = logging.getLogger("plgdf")


def _as_list(outputs: Any) -> list[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


SEMI_WARMUPS = ("none", "rampup", "confidence")
#: ``cpu_precision "auto"`` is skipped when the run has fewer than this many times the probe's iterations left
PROBE_MIN_RUN_FACTOR = 10


def _shares_softmax(loss: Any) -> bool:
    """True if ``loss`` computes from a shared :class:`SoftmaxPyramid`: it has ``from_probs`` and its ``forward`` is
    the one of the class that defines ``from_probs`` (a subclass that overrides only ``forward`` must be called)."""
    cls = type(loss)
    owner = next((c for c in cls.__mro__ if "from_probs" in c.__dict__), None)
    if owner is None or not callable(getattr(loss, "from_probs", None)):
        return False
    return getattr(cls, "forward", None) is getattr(owner, "forward", None)


def _resolve_cpu_precision(device: torch.device, cpu_precision: str | None, amp_cpu: bool, channels_last: bool) -> str:
    """The run's ``cpu_precision``: itself, or (``None``) the earlier pair ``amp_cpu`` / ``channels_last``."""
    if cpu_precision is None:
        return cpu_precisions.legacy_cpu_precision(bool(amp_cpu), bool(channels_last))
    cpu_precisions.check_cpu_precision(cpu_precision)
    if amp_cpu and cpu_precision in ("fp32", "fp32_cl") and device.type == "cpu":
        raise ValueError(
            f"amp_cpu = True asks for bf16 autocast on the CPU but cpu_precision = {cpu_precision!r}; "
            "cpu_precision replaces amp_cpu: leave amp_cpu False."
        )
    return cpu_precision


class PLGDFTrainer(SupervisedTrainer):
    """Semi-supervised PLGDF trainer.

    Args:
        device: device of the run.
        max_epochs: number of engine epochs; one epoch is ``epoch_length`` iterations.
        train_data_loader: labelled loader (``image``, ``label``); it drives the epochs.
        network: the student (:class:`bundle.method.networks.PLGDFVNet`, possibly DDP-wrapped).
        optimizer: the student's optimizer.
        unlabeled_loader: endless iterable of unlabelled batches (``image``), e.g.
            :class:`bundle.data.samplers.EndlessLoader`. ``None`` (or ``semi=False``) trains on L_sup alone.
        teacher: the EMA teacher; required when any unlabelled term is on.
        sup_loss: L_sup / L_semi module. Defaults to ``PyramidSupervisedLoss()``.
        consistency_loss: L_consis module. Defaults to ``PyramidConsistencyLoss()``.
        sharpening_loss: L_sharp module. Defaults to ``SharpeningLoss()``.
        rampup: ``lambda(t)``. Defaults to ``ConsistencyRampUp()``.
        mix: the mix module; ``None`` applies L_semi to the noisy unlabelled copies directly.
        n_copies: K, noisy copies of each unlabelled patch for the teacher. Defaults to 2.
        noise_std, noise_clip: the noise n(x). Defaults to 0.1 and 0.2.
        noise_labeled: add noise to the labelled rows. Defaults to True.
        semi, consistency, sharpening: switch L_semi, L_consis and L_sharp. Default True.
        semi_on_clean: L_semi also on the clean unlabelled rows against their pseudo-labels, as the paper's
            Algorithm 1 (line 14) writes it; the authors' code and the paper's prose apply it to the mixed rows
            only. Default False.
        semi_warmup: weight of L_semi early in training, when the teacher is still poor: ``"none"`` (1, the
            paper), ``"rampup"`` (the shape of ``lambda(t)``, ``rampup(t) / rampup.weight``: 0.007 at t = 0, 1 at
            the end of the ramp-up) or ``"confidence"`` (the teacher's mean confidence over the unlabelled voxels,
            rescaled from ``1/C..1`` to ``0..1``). Default ``"none"``.
        amp: autocast on CUDA (ignored on CPU). ``amp_dtype``: "bfloat16" or "float16" (with a GradScaler).
        cpu_precision: numerics and memory layout on the CPU (ignored on CUDA): ``"fp32"``, ``"fp32_cl"``
            (``torch.channels_last_3d``), ``"bf16"``, ``"bf16_cl"`` (bfloat16 autocast; fast only on CPUs with
            native bf16) or ``"auto"`` (the fastest of those, timed before the first step on this run's shapes;
            :meth:`prepare_step`). ``None`` (default) takes the earlier pair ``amp_cpu`` / ``channels_last``
            (:func:`bundle.engine.precision.legacy_cpu_precision`).
        amp_cpu: earlier form of ``cpu_precision="bf16..."``: bfloat16 autocast on CPU. Default False.
        channels_last: ``torch.channels_last_3d`` memory format on CUDA; on the CPU, with ``cpu_precision=None``,
            the earlier form of ``"fp32_cl"``. Default False.
        compile: ``torch.compile`` the student and the teacher (in place, before the first step; results differ
            from eager only by float rounding). Default False.
        probe_steps: timed trainer steps per candidate of ``cpu_precision="auto"`` (after one warm-up step).
            The probe is skipped (with a log line, keeping ``"fp32_cl"``) when the run has fewer than
            ``PROBE_MIN_RUN_FACTOR`` (10) times the probe's steps left. Default 2.
        on_precision: called once, before the first step, with the precision report (setting, choice, CPU flags,
            the probe's seconds per step of each candidate), e.g. to record it in ``run_settings.json``.
            Default None.
        epoch_length, non_blocking, train_handlers, key_train_metric, postprocessing: as in SupervisedTrainer.

    ``schedule_start`` (0) is the number of iterations the student had before this run: ``t``, the iteration of
    lambda(t) and of the EMA, counts from it (set by :class:`bundle.handlers.schedule.ContinueSchedule`).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        unlabeled_loader: Iterable | None = None,
        teacher: EMATeacher | None = None,
        sup_loss: Callable | None = None,
        consistency_loss: Callable | None = None,
        sharpening_loss: Callable | None = None,
        rampup: Callable[[int], float] | None = None,
        mix: MixModule | None = None,
        n_copies: int = 2,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        noise_labeled: bool = True,
        semi: bool = True,
        consistency: bool = True,
        sharpening: bool = True,
        semi_on_clean: bool = False,
        semi_warmup: str = "none",
        amp: bool = False,
        amp_dtype: str = "bfloat16",
        cpu_precision: str | None = None,
        amp_cpu: bool = False,
        channels_last: bool = False,
        compile: bool = False,
        probe_steps: int = 2,
        on_precision: Callable[[dict[str, Any]], Any] | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = True,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        postprocessing: Callable | None = None,
    ):
        device = torch.device(device)
        use_amp = bool(amp) and device.type == "cuda"
        if semi_warmup not in SEMI_WARMUPS:
            raise ValueError(f"semi_warmup must be one of {SEMI_WARMUPS}, got {semi_warmup!r}")
        if amp_dtype not in ("bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be 'bfloat16' or 'float16', got {amp_dtype!r}")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=sup_loss or PyramidSupervisedLoss(),
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            train_handlers=train_handlers,
            key_train_metric=key_train_metric,
            postprocessing=postprocessing,
            amp=use_amp,
            amp_kwargs={"dtype": getattr(torch, amp_dtype)} if use_amp else None,
            decollate=False,
        )
        # bf16 needs no loss scaling; fp16 keeps the GradScaler SupervisedTrainer made.
        if use_amp and amp_dtype == "bfloat16":
            self.scaler = None
        self.use_amp = use_amp
        self.unlabeled_loader = unlabeled_loader
        self.unlabeled_iter = iter(unlabeled_loader) if unlabeled_loader is not None else None
        self.use_unlabeled = self.unlabeled_iter is not None and (semi or consistency or sharpening)
        if self.use_unlabeled and teacher is None:
            raise ValueError("an EMA teacher is required when unlabelled loss terms are on")
        if n_copies < 1:
            raise ValueError(f"n_copies must be >= 1, got {n_copies}")
        self.teacher = teacher
        self.consistency_loss = consistency_loss or PyramidConsistencyLoss()
        self.sharpening_loss = sharpening_loss or SharpeningLoss()
        self.rampup = rampup or ConsistencyRampUp()
        self.schedule_start = 0
        self.mix = mix
        self.n_copies = n_copies
        self.noise_std, self.noise_clip, self.noise_labeled = noise_std, noise_clip, noise_labeled
        self.semi, self.consistency, self.sharpening = semi, consistency, sharpening
        self.semi_on_clean, self.semi_warmup = bool(semi_on_clean), semi_warmup
        self._confidence: torch.Tensor | None = None  # the teacher's mean confidence of this iteration
        if probe_steps < 1:
            raise ValueError(f"probe_steps must be >= 1, got {probe_steps}")
        self.compile, self.probe_steps, self.on_precision = bool(compile), int(probe_steps), on_precision
        self._prepared = False
        self.precision_report: dict[str, Any] = {}
        self.cpu_precision_setting = _resolve_cpu_precision(device, cpu_precision, amp_cpu, channels_last)
        self.cpu_precision: cpu_precisions.CpuPrecision | None = None  # the CPU's precision in use (None on CUDA)
        self.memory_format = torch.contiguous_format
        if device.type == "cpu":
            initial = self.cpu_precision_setting
            if initial == "auto":  # until prepare_step has timed the candidates: today's default, or the DDP layout
                wrapped = self.network is not unwrap_model(self.network)
                keep = cpu_precisions.module_memory_format(unwrap_model(self.network))
                initial = "fp32" if wrapped and keep == torch.contiguous_format else "fp32_cl"
            self._apply_cpu_precision(initial)
        elif channels_last:
            self._set_memory_format(torch.channels_last_3d, "channels_last")

    def _set_memory_format(self, memory_format: torch.memory_format, setting: str) -> None:
        """Put the student and the teacher in ``memory_format``; a DDP-wrapped student must already be in it."""
        student = unwrap_model(self.network)
        current = cpu_precisions.module_memory_format(student)
        if self.network is not student and current != memory_format:
            raise ValueError(
                f"{setting} asks for {memory_format}, but the student was wrapped in DistributedDataParallel in "
                f"{current} and a wrapped network cannot change its layout: choose a setting with that layout, or set "
                "channels_last in configs/multi_gpu_train.json (it converts the network before wrapping)."
            )
        self.memory_format = memory_format
        student.to(memory_format=memory_format)
        if self.teacher is not None:
            self.teacher.model.to(memory_format=memory_format)

    def _apply_cpu_precision(self, name: str) -> None:
        """Use the explicit CPU precision ``name``: its autocast in every forward pass and its memory layout."""
        self.cpu_precision = cpu_precisions.CpuPrecision(name)
        self._set_memory_format(self.cpu_precision.memory_format, f"cpu_precision {name!r}")

    # -- before the first step ------------------------------------------------------------------
    def prepare_step(self, batchdata: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Settle the CPU precision and compile the networks, once, before the first step (the first
        :meth:`_iteration` calls it; a benchmark may call it first). Returns the precision report, also given to
        ``on_precision``.

        ``cpu_precision="auto"`` times ``1 + probe_steps`` real trainer steps (teacher pseudo-labels, mix, student
        forward, all loss terms, backward, SGD and EMA) of each candidate on synthetic tensors of the shapes of
        ``batchdata`` (and of the unlabelled batch), then restores the student, the teacher, the optimizer state and
        every RNG, so the run goes on exactly as if the chosen precision had been set explicitly. No data is drawn
        from the loaders and no handler sees the probe's steps.

        Args:
            batchdata: the first labelled batch (``image`` ``(B, C, H, W, D)``, ``label``); only its shapes are used.
        """
        if self._prepared:
            return self.precision_report
        self._prepared = True
        device = torch.device(self.state.device)
        report: dict[str, Any] = {"setting": self.cpu_precision_setting, "device": device.type}
        if device.type != "cpu":
            amp = f"{self.amp_kwargs['dtype']} autocast" if self.use_amp else "no autocast"
            report.update(chosen=None, ignored=f"on {device.type} amp decides ({amp})")
            logger.info(
                f"cpu_precision {self.cpu_precision_setting!r} is ignored on {device.type}: amp decides ({amp})."
            )
        else:
            flags = cpu_precisions.cpu_flags()
            report.update(cpu=cpu_precisions.cpu_model(), flags=flags, native_bf16=cpu_precisions.native_bf16(flags))
            if self.cpu_precision_setting == "auto":
                report.update(self._probe(batchdata, report["native_bf16"]))
            elif self.cpu_precision.bf16:
                check = self._bf16_check(batchdata, self.cpu_precision.memory_format)
                report["bf16_check"] = {self.cpu_precision.name: check}
                if not check["ok"]:
                    raise RuntimeError(
                        f"cpu_precision {self.cpu_precision.name!r}: bf16 convolutions compute wrong results on this "
                        f"CPU at this run's shapes ({check['worst']}: relative error {check['max_relative_error']:.3g} "
                        f"against float32; a bf16 kernel problem of this CPU and torch build). Use 'fp32_cl', or "
                        "'auto' (which leaves bf16 out here)."
                    )
            report["chosen"] = self.cpu_precision.name
            if self.cpu_precision_setting != "auto":
                logger.info(f"cpu_precision {report['chosen']} (CPU {report['cpu']}; flags {'|'.join(flags) or '-'})")
        if self.compile:
            for module in (unwrap_model(self.network), self.teacher.model if self.teacher is not None else None):
                if module is not None:
                    cpu_precisions.compile_network(module, device)
            report["compile"] = True
            logger.info("compile: student and teacher compiled with torch.compile (the first steps compile them).")
        self.precision_report = report
        if self.on_precision is not None:
            self.on_precision(report)
        return report

    def _probe(self, batchdata: dict[str, torch.Tensor], bf16_native: bool) -> dict[str, Any]:
        """``cpu_precision="auto"``: time the candidates, keep the fastest; the report's probe entries."""
        wrapped = self.network is not unwrap_model(self.network)
        layouts = [cpu_precisions.module_memory_format(unwrap_model(self.network))] if wrapped else None
        candidates = cpu_precisions.probe_candidates(bf16_native, layouts)
        probe_iterations = len(candidates) * (1 + self.probe_steps)
        left = None
        if self.state.epoch_length is not None and self.state.max_epochs is not None:
            left = self.state.max_epochs * self.state.epoch_length - max(self.state.iteration - 1, 0)
        if left is not None and left < PROBE_MIN_RUN_FACTOR * probe_iterations:
            logger.info(
                f"cpu_precision auto: probe skipped, the run has {left} iterations left, fewer than "
                f"{PROBE_MIN_RUN_FACTOR} x the probe's {probe_iterations}; using {self.cpu_precision.name}."
            )
            return {"probe": f"skipped: {left} iterations left < {PROBE_MIN_RUN_FACTOR} x {probe_iterations}"}
        checks = {}
        for name in [c for c in candidates if cpu_precisions.CpuPrecision(c).bf16]:
            checks[name] = self._bf16_check(batchdata, cpu_precisions.CpuPrecision(name).memory_format)
            if not checks[name]["ok"]:
                candidates.remove(name)
                logger.warning(
                    f"cpu_precision auto: {name} left out, its convolutions are wrong on this CPU at this run's "
                    f"shapes ({checks[name]['worst']}: relative error {checks[name]['max_relative_error']:.3g})."
                )
        found: dict[str, Any] = {"bf16_check": checks} if checks else {}
        x_l, y_l = batchdata[Keys.IMAGE], batchdata[Keys.LABEL]
        generator = torch.Generator().manual_seed(0)  # the synthetic tensors draw nothing from the run's RNGs
        batch = {
            Keys.IMAGE: torch.randn(tuple(x_l.shape), generator=generator),
            Keys.LABEL: torch.randint(0, 2, tuple(y_l.shape), generator=generator).to(y_l.dtype),
        }
        n_u = self._unlabeled_rows(x_l.shape[0])
        x_u = torch.randn((n_u, *x_l.shape[1:]), generator=generator)
        with self._probe_scope(x_u) as restore:

            def step(name: str) -> None:
                if self.cpu_precision.name != name:
                    restore()  # every candidate starts from the run's state
                    self._apply_cpu_precision(name)
                self._iteration(self, batch)

            timings = cpu_precisions.time_candidates(candidates, step, warmup=1, steps=self.probe_steps)
        chosen = cpu_precisions.fastest(timings)
        self._apply_cpu_precision(chosen)
        logger.info(
            f"cpu_precision auto: {', '.join(f'{n} {s:.3f} s' for n, s in timings.items())} per step "
            f"(labelled {tuple(x_l.shape)} + unlabelled {(n_u, *x_l.shape[1:])}) -> {chosen}"
        )
        return {
            **found,
            "timings_s": timings,
            "probe": {
                "steps": self.probe_steps,
                "warmup": 1,
                "labeled_shape": list(x_l.shape),
                "unlabeled_shape": [n_u, *x_l.shape[1:]],
            },
        }

    def _bf16_check(self, batchdata: dict[str, torch.Tensor], memory_format: torch.memory_format) -> dict[str, Any]:
        """:func:`bundle.engine.precision.bf16_conv_check` of the student at its batch (all rows of a step)."""
        x_l = batchdata[Keys.IMAGE]
        rows = x_l.shape[0]
        if self.use_unlabeled:
            rows += (self.n_copies + 1) * self._unlabeled_rows(x_l.shape[0])
        return cpu_precisions.bf16_conv_check(unwrap_model(self.network), (rows, *x_l.shape[1:]), memory_format)

    def _unlabeled_rows(self, n_labeled: int) -> int:
        """Rows of an unlabelled batch: the loader's ``batch_size`` (also inside an ``EndlessLoader``), else
        ``n_labeled``."""
        loader = self.unlabeled_loader
        size = getattr(loader, "batch_size", None) or getattr(getattr(loader, "loader", None), "batch_size", None)
        return int(size) if size else int(n_labeled)

    @contextlib.contextmanager
    def _probe_scope(self, x_u: torch.Tensor) -> Iterator[Callable[[], None]]:
        """Steps inside run on the unlabelled tensor ``x_u`` and fire no events; yields ``restore()``, which puts
        back the student and teacher weights and buffers, the optimizer state, every RNG and the engine's output,
        and is called again on exit."""
        modules = [unwrap_model(self.network)] + ([self.teacher.model] if self.teacher is not None else [])
        saved_tensors = [[t.detach().clone() for t in m.state_dict(keep_vars=True).values()] for m in modules]
        saved_optimizer = copy.deepcopy(self.optimizer.state_dict())
        saved_rng = rng_state()
        saved_engine = (self.unlabeled_iter, self.state.output, self._confidence, self.state.iteration)

        def restore() -> None:
            with torch.no_grad():
                for module, values in zip(modules, saved_tensors):
                    for tensor, value in zip(module.state_dict(keep_vars=True).values(), values):
                        tensor.copy_(value)
            for p in modules[0].parameters():
                p.grad = None
            self.optimizer.load_state_dict(copy.deepcopy(saved_optimizer))
            set_rng_state(saved_rng)

        self.unlabeled_iter = itertools.repeat(x_u) if self.unlabeled_iter is not None else None
        self.state.iteration = max(self.state.iteration, 1)  # also when called before the run's first step
        self.fire_event = lambda *args, **kwargs: None  # the probe's steps are no iterations of the run
        try:
            yield restore
        finally:
            del self.fire_event
            restore()
            self.unlabeled_iter, self.state.output, self._confidence, self.state.iteration = saved_engine

    # -- helpers ---------------------------------------------------------------------------------
    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.to(self.state.device, non_blocking=self.non_blocking)

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        return add_noise(x, std=self.noise_std, clip=self.noise_clip)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' autocast: ``amp`` on CUDA, the CPU precision's on the CPU."""
        if self.use_amp:
            return torch.autocast("cuda", **self.amp_kwargs)
        if self.cpu_precision is not None:
            return self.cpu_precision.autocast()
        return contextlib.nullcontext()

    def next_unlabeled(self) -> torch.Tensor:
        batch = next(self.unlabeled_iter)
        return self._to_device(batch[Keys.IMAGE] if isinstance(batch, dict) else batch)

    # -- the step --------------------------------------------------------------------------------
    def _iteration(self, engine: PLGDFTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if not engine._prepared:
            engine.prepare_step(batchdata)
        t = engine.schedule_start + engine.state.iteration - 1  # 0-based iteration index for lambda(t) and the EMA
        x_l = engine._to_device(batchdata[Keys.IMAGE])
        y_l = engine._to_device(batchdata[Keys.LABEL]).long()
        n_l = x_l.shape[0]
        x_l_in = engine._noise(x_l) if engine.noise_labeled else x_l
        rows = [x_l_in]
        y_hat = None
        if engine.use_unlabeled:
            x_u = engine.next_unlabeled()
            k = engine.n_copies
            x_u_noisy = engine._noise(x_u.repeat(k, *([1] * (x_u.ndim - 1))))  # copy-major
            with engine._autocast():
                y_hat, mean_probs = engine.teacher.pseudo_labels(
                    x_u_noisy.contiguous(memory_format=engine.memory_format), k
                )
            engine._confidence = mean_probs.max(dim=1).values.mean() if engine.semi_warmup == "confidence" else None
            y_hat = y_hat.repeat(k, *([1] * (y_hat.ndim - 1)))  # target of every noisy copy
            x_semi = engine.mix(x_u_noisy, x_l_in)[0] if engine.mix is not None else x_u_noisy
            rows += [x_semi, x_u]
        inputs = torch.cat(rows, 0).contiguous(memory_format=engine.memory_format)
        engine.state.output = {Keys.IMAGE: x_l, Keys.LABEL: y_l}

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with engine._autocast():
            outputs = _as_list(engine.network(inputs))
            engine.state.output[Keys.PRED] = outputs[0][:n_l]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            terms = engine.loss_terms(outputs, n_l, y_l, y_hat, t)
        loss = terms["loss"]
        engine.state.output.update({key: value.detach() for key, value in terms.items()})
        engine.state.output[Keys.LOSS] = loss.detach()
        engine.state.output["lambda"] = terms["lambda"]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None and engine.use_amp:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        if engine.teacher is not None:
            engine.teacher.update(engine.network, t + 1)  # 1-based, as the authors: a=0.5 first
        engine.state.output["label_fg"] = (y_l > 0).float().mean()  # to compare with pseudo_fg
        if y_hat is not None:
            engine.state.output["pseudo_fg"] = (y_hat > 0).float().mean()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def loss_terms(
        self, outputs: Sequence[torch.Tensor], n_l: int, y_l: torch.Tensor, y_hat: torch.Tensor | None, t: int
    ) -> dict[str, torch.Tensor]:
        """All loss terms from the student's outputs over the rows ``[labelled, semi rows, clean unlabelled]``.

        One :class:`bundle.method.losses.SoftmaxPyramid` of ``outputs`` (all rows) is shared by every term that
        has ``from_probs`` (the bundle's losses); another loss callable, or a subclass that overrides ``forward``
        (its ``forward`` defines the term), gets its rows of the logits.

        Args:
            outputs: the student's ``[P1, ..., P4]``, each ``(n_l + n_semi + n_clean, C, H, W, D)``.
            n_l: labelled rows (first).
            y_l: labels ``(n_l, [1,] H, W, D)``.
            y_hat: pseudo-labels of the semi rows ``(n_semi, H, W, D)``, or ``None`` without unlabelled data.
            t: 0-based iteration (``lambda(t)``).

        Returns:
            ``loss_sup``, ``loss_semi``, ``loss_consis``, ``loss_sharp``, ``loss`` (their weighted sum) and
            ``lambda`` (a 0-dim tensor).
        """
        outputs = list(outputs)
        pyramid = SoftmaxPyramid.from_logits(outputs)

        def rows(loss: Callable, start: int, stop: int | None, *args: Any) -> Any:
            if _shares_softmax(loss):
                return loss.from_probs(pyramid.rows(start, stop), *args)
            return loss([o[start:stop] for o in outputs], *args)

        zero = outputs[0].new_zeros((), dtype=torch.float32)
        loss_sup, _ = rows(self.loss_function, 0, n_l, y_l)
        terms = {"loss_sup": loss_sup, "loss_semi": zero, "loss_consis": zero, "loss_sharp": zero}
        weight = float(self.rampup(t)) if self.use_unlabeled else 0.0
        if y_hat is not None:
            n_semi = y_hat.shape[0]
            if self.semi:
                if self.semi_on_clean:  # the clean rows' targets: the first copy's pseudo-labels (one per image)
                    n_clean = outputs[0].shape[0] - n_l - n_semi
                    terms["loss_semi"], _ = rows(self.loss_function, n_l, None, torch.cat([y_hat, y_hat[:n_clean]], 0))
                else:
                    terms["loss_semi"], _ = rows(self.loss_function, n_l, n_l + n_semi, y_hat)
                terms["loss_semi"] = terms["loss_semi"] * self._semi_weight(t, outputs[0].shape[1])
            if self.consistency:
                terms["loss_consis"] = rows(self.consistency_loss, n_l, None)
            if self.sharpening:
                terms["loss_sharp"] = rows(self.sharpening_loss, n_l + n_semi, None)
        terms["loss"] = terms["loss_sup"] + terms["loss_semi"] + weight * (terms["loss_sharp"] + terms["loss_consis"])
        terms["lambda"] = torch.tensor(weight)
        return terms

    def _semi_weight(self, t: int, num_classes: int) -> float:
        """The factor of L_semi at 0-based iteration ``t`` (``semi_warmup``)."""
        if self.semi_warmup == "rampup":
            return float(self.rampup(t)) / self.rampup.weight if self.rampup.weight > 0 else 1.0
        if self.semi_warmup == "confidence" and self._confidence is not None:
            floor = 1.0 / num_classes
            return float(((self._confidence - floor) / (1.0 - floor)).clamp(0.0, 1.0))
        return 1.0
