"""The numerics and memory layout of a run on the CPU (``cpu_precision``) and ``torch.compile`` of its networks.

``cpu_precision`` (``configs/train.json``, ``configs/inference.json``) takes one of

=========== ===================== =========================
value       autocast              memory layout
=========== ===================== =========================
``fp32``    none (float32)        default (contiguous)
``fp32_cl`` none (float32)        ``torch.channels_last_3d``
``bf16``    bfloat16              default
``bf16_cl`` bfloat16              ``torch.channels_last_3d``
``auto``    the fastest of the candidates, timed at start-up on the run's own shapes
=========== ===================== =========================

``auto`` times a few steps of each candidate (:func:`time_candidates`) and keeps the fastest (:func:`fastest`).
The bf16 candidates are tried only where the CPU has native bf16 instructions (``/proc/cpuinfo`` flags
``avx512_bf16`` or ``amx_bf16``, :func:`native_bf16`): elsewhere bf16 convolutions are emulated and many times
slower than float32. bf16 is a numerics change (8-bit mantissa in the convolutions; the losses stay float32).

Before bf16 is used, :func:`bf16_conv_check` runs every convolution of the network at the run's own shapes in bf16
and in float32 and compares them: some CPU/oneDNN combinations compute wrong bf16 weight gradients for small
spatial extents (seen with torch 2.13's oneDNN 3.12 on an AVX512-BF16 AMD EPYC: 3x3x3 convolutions over 2x2x2
inputs, e.g. the V-Net's bottleneck at a 32^3 patch, give NaN or arbitrary weight gradients). ``auto`` then leaves
bf16 out; an explicit bf16 setting stops the run with a message naming the convolution.

On CUDA ``cpu_precision`` is ignored: ``amp`` / ``amp_dtype`` choose the GPU's autocast.

Training applies the choice in :class:`bundle.method.trainer.PLGDFTrainer`; inference and evaluation wrap the network
with :func:`inference_network` (:class:`PrecisionNetwork`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "CPU_PRECISIONS",
    "CpuPrecision",
    "check_cpu_precision",
    "legacy_cpu_precision",
    "cpu_flags",
    "cpu_model",
    "native_bf16",
    "probe_candidates",
    "time_candidates",
    "fastest",
    "module_memory_format",
    "bf16_conv_check",
    "PrecisionNetwork",
    "inference_network",
    "compile_unavailable_reason",
    "compile_network",
]

logger = logging.getLogger("plgdf")

#: the values of ``cpu_precision``
CPU_PRECISIONS = ("fp32", "fp32_cl", "bf16", "bf16_cl", "auto")
#: the explicit ones, in the order ``auto`` tries them (a tie keeps the earlier one)
EXPLICIT_PRECISIONS = CPU_PRECISIONS[:-1]
#: CPU flags recorded with a choice (the ones that decide which precision is fast)
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
#: flags that mean native bf16 arithmetic
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = "/proc/cpuinfo"


@dataclass(frozen=True)
class CpuPrecision:
    """One explicit ``cpu_precision``: its autocast dtype and memory layout.

    Args:
        name: ``"fp32"``, ``"fp32_cl"``, ``"bf16"`` or ``"bf16_cl"``.
    """

    name: str

    def __post_init__(self) -> None:
        if self.name not in EXPLICIT_PRECISIONS:
            raise ValueError(f"cpu_precision must be one of {', '.join(EXPLICIT_PRECISIONS)} here, got {self.name!r}.")

    @property
    def bf16(self) -> bool:
        """Whether the forward passes run under bfloat16 autocast."""
        return self.name.startswith("bf16")

    @property
    def channels_last(self) -> bool:
        """Whether networks and inputs use ``torch.channels_last_3d``."""
        return self.name.endswith("_cl")

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last_3d`` or ``torch.contiguous_format``."""
        return torch.channels_last_3d if self.channels_last else torch.contiguous_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """The CPU autocast context of this precision (disabled for the fp32 ones)."""
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16)


def check_cpu_precision(value: Any, setting: str = "cpu_precision") -> str:
    """``value`` if it is one of :data:`CPU_PRECISIONS`, else a ``ValueError`` naming ``setting``."""
    if value not in CPU_PRECISIONS:
        raise ValueError(f"{setting} must be one of {', '.join(repr(v) for v in CPU_PRECISIONS)}, got {value!r}.")
    return value


def legacy_cpu_precision(amp_cpu: bool, channels_last: bool) -> str:
    """The ``cpu_precision`` that the earlier pair of settings ``amp_cpu`` (bf16 autocast on CPU) and
    ``channels_last`` meant: ``"fp32"``, ``"fp32_cl"`` (today's default), ``"bf16"`` or ``"bf16_cl"``."""
    return ("bf16" if amp_cpu else "fp32") + ("_cl" if channels_last else "")


def _read_cpuinfo(path: str | os.PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags(cpuinfo: str | os.PathLike = CPUINFO) -> list[str]:
    """The flags of :data:`CPU_FLAGS_OF_INTEREST` that the CPU has (first ``flags`` line of ``cpuinfo``), in that
    order; empty where the file is missing (not Linux)."""
    for line in _read_cpuinfo(cpuinfo).splitlines():
        if line.split(":")[0].strip() == "flags":
            present = set(line.split(":", 1)[1].split())
            return [f for f in CPU_FLAGS_OF_INTEREST if f in present]
    return []


def cpu_model(cpuinfo: str | os.PathLike = CPUINFO) -> str:
    """The CPU's model name (``model name`` in ``cpuinfo``), or ``platform.processor()`` where there is none."""
    for line in _read_cpuinfo(cpuinfo).splitlines():
        if line.split(":")[0].strip() == "model name":
            return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or platform.machine()


def native_bf16(flags: Sequence[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` among ``flags``; default
    :func:`cpu_flags`). Without ``/proc/cpuinfo``, torch's CPU capability ``AVX512_BF16`` or ``AMX`` counts."""
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in BF16_FLAGS):
        return True
    if not flags and not Path(CPUINFO).exists():
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
        return "BF16" in capability or "AMX" in capability
    return False


def probe_candidates(bf16_native: bool, memory_formats: Sequence[torch.memory_format] | None = None) -> list[str]:
    """The explicit precisions ``auto`` times: the bf16 ones only when ``bf16_native``; with ``memory_formats``
    given, only those whose layout is among them (e.g. a DDP-wrapped network keeps its layout)."""
    out = []
    for name in EXPLICIT_PRECISIONS:
        p = CpuPrecision(name)
        if p.bf16 and not bf16_native:
            continue
        if memory_formats is not None and p.memory_format not in memory_formats:
            continue
        out.append(name)
    return out


def time_candidates(
    candidates: Sequence[str],
    step: Callable[[str], Any],
    warmup: int = 1,
    steps: int = 2,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds of ``step(name)`` for each candidate, after ``warmup`` untimed calls.

    Under ``torch.distributed`` every rank times its own steps and the per-candidate sums over the ranks are
    returned, so that every rank picks the same candidate (the steps themselves may synchronise the ranks).

    Args:
        candidates: precision names, tried in this order.
        step: runs one step of the given candidate (it applies the candidate itself).
        warmup: untimed calls per candidate (oneDNN builds its kernels on the first). Defaults to 1.
        steps: timed calls per candidate (>= 1). Defaults to 2.
        sync: called before reading the clock (e.g. ``torch.cuda.synchronize``). Defaults to None.
        clock: the timer. Defaults to ``time.perf_counter``.

    Returns:
        ``{name: seconds}`` in the order of ``candidates``.
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}.")
    if not candidates:
        raise ValueError("no candidate precision to time.")
    timings: dict[str, float] = {}
    for name in candidates:
        for _ in range(warmup):
            step(name)
        times = []
        for _ in range(steps):
            if sync is not None:
                sync()
            start = clock()
            step(name)
            if sync is not None:
                sync()
            times.append(clock() - start)
        timings[name] = float(statistics.median(times))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        values = torch.tensor([timings[n] for n in candidates], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            values = values.cuda()
        dist.all_reduce(values)
        timings = dict(zip(candidates, values.cpu().tolist()))
    return timings


def fastest(timings: Mapping[str, float]) -> str:
    """The name with the smallest time (the first one on a tie)."""
    if not timings:
        raise ValueError("no timings to choose from.")
    return min(timings, key=lambda name: (timings[name], list(timings).index(name)))


def module_memory_format(module: nn.Module) -> torch.memory_format:
    """``torch.channels_last_3d`` or ``torch.contiguous_format``: how the module's 5D weights are stored, read from
    the first one whose two layouts differ (more than one input channel and a kernel larger than 1x1x1)."""
    for p in module.parameters():
        if p.dim() == 5 and p.shape[1] > 1 and p.shape[2:].numel() > 1:
            channels_last = not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last_3d)
            return torch.channels_last_3d if channels_last else torch.contiguous_format
    return torch.contiguous_format


#: largest relative error of a bf16 convolution against float32 that :func:`bf16_conv_check` accepts (bf16 rounds at
#: 2^-8 = 0.004; correct kernels measure about 0.003 on random data, the failures seen are 0.9 to 1e30 or NaN)
BF16_CHECK_TOLERANCE = 0.05


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    err = (value.double() - reference.double()).norm() / reference.double().norm().clamp_min(1e-30)
    return float(err) if torch.isfinite(err) else float("inf")


def bf16_conv_check(
    network: nn.Module,
    input_shape: Sequence[int],
    memory_format: torch.memory_format = torch.contiguous_format,
    backward: bool = True,
    tolerance: float = BF16_CHECK_TOLERANCE,
) -> dict[str, Any]:
    """Whether bf16 autocast computes every convolution of ``network`` correctly at the run's shapes.

    The network (a copy: neither it nor the global RNG is changed) runs once on a random ``input_shape`` batch to
    find the input shape of every ``Conv3d`` / ``ConvTranspose3d``; then each distinct (convolution, input shape)
    runs on random data (a copy of its own weights, random input and output gradient) under bf16 autocast and in
    float32, in ``memory_format``, and the output (and, with ``backward``, the weight and input gradients) are
    compared.

    Args:
        network: the network (train mode is used for the shapes: all outputs).
        input_shape: ``(B, C, H, W, D)`` of the batch the network sees.
        memory_format: the layout of the candidate precision. Defaults to ``torch.contiguous_format``.
        backward: also compare the gradients (training). Defaults to True.
        tolerance: the largest accepted relative error (norm of the difference over the float32 norm). Defaults to
            :data:`BF16_CHECK_TOLERANCE`.

    Returns:
        ``{"ok": bool, "max_relative_error": float, "worst": "<module> <what> input (B, C, H, W, D)", "checked": n}``.
    """
    probe = copy.deepcopy(network).float().train()
    shapes: dict[tuple, tuple[str, nn.Module, tuple[int, ...]]] = {}
    hooks = []
    for name, module in probe.named_modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):

            def record(m: nn.Module, args: tuple, _out: Any, name: str = name) -> None:
                shape = tuple(args[0].shape)
                key = (type(m).__name__, tuple(m.weight.shape), m.stride, m.padding, m.dilation, shape)
                shapes.setdefault(key, (name, m, shape))

            hooks.append(module.register_forward_hook(record))
    generator = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout draws: the run's RNG is left as it was
            probe(torch.randn(tuple(int(s) for s in input_shape), generator=generator))
    finally:
        for hook in hooks:
            hook.remove()
    worst, worst_error = "", 0.0
    for name, module, shape in shapes.values():
        x = torch.randn(shape, generator=generator).contiguous(memory_format=memory_format)
        results = []
        for bf16 in (False, True):
            m = copy.deepcopy(module).to(memory_format=memory_format)
            xi = x.clone().requires_grad_(backward)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(backward):
                out = m(xi)
            parts = {"output": out.float().detach()}
            if backward:
                if not results:
                    grad_out = torch.randn(out.shape, generator=generator).contiguous(memory_format=memory_format)
                out.float().backward(grad_out)
                parts.update(weight_gradient=m.weight.grad, input_gradient=xi.grad)
            results.append(parts)
        for what, reference in results[0].items():
            error = _relative_error(results[1][what], reference)
            if error > worst_error or not worst:
                worst, worst_error = f"{name} {what}, input {shape}", error
    return {"ok": worst_error <= tolerance, "max_relative_error": worst_error, "worst": worst, "checked": len(shapes)}


# ------------------------------------------------------------------------------------------------ inference
class PrecisionNetwork(nn.Module):
    """A network run in an explicit CPU precision: each input ``(B, C, H, W, D)`` is put in the precision's memory
    layout and the forward pass runs under its autocast; outputs come back as float32 (one tensor or a list).

    The wrapped module is converted to the memory layout once, here; its parameters stay float32. Load
    checkpoints into ``network`` (the wrapped module): its ``state_dict`` keys are unchanged.

    Args:
        network: the network, e.g. :class:`bundle.method.networks.PLGDFVNet`.
        precision: ``"fp32"``, ``"fp32_cl"``, ``"bf16"`` or ``"bf16_cl"``.
    """

    def __init__(self, network: nn.Module, precision: str) -> None:
        super().__init__()
        self.network = network
        self.precision = CpuPrecision(precision)
        self.network.to(memory_format=self.precision.memory_format)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """``x``: ``(B, C, H, W, D)``. Returns what ``network`` returns, in float32."""
        if x.dim() == 5:
            x = x.contiguous(memory_format=self.precision.memory_format)
        with self.precision.autocast():
            out = self.network(x, *args, **kwargs)
        if isinstance(out, (list, tuple)):
            return type(out)(o.float() for o in out)
        return out.float()


def inference_network(
    network: nn.Module,
    cpu_precision: str = "fp32",
    device: str | torch.device = "cpu",
    window_shape: Sequence[int] | None = None,
    compile: bool = False,
    probe_steps: int = 2,
    cpuinfo: str | os.PathLike = CPUINFO,
) -> nn.Module:
    """The network inference runs (``configs/inference.json``'s evaluator): ``network`` itself in ``fp32`` or on
    CUDA, else a :class:`PrecisionNetwork`; compiled (:func:`compile_network`) when ``compile``.

    ``"auto"`` times ``probe_steps`` forward passes (after one warm-up) of each candidate on a random window batch
    ``window_shape`` (``(sw_batch_size, in_channels, *roi_size)``) in eval mode under ``torch.no_grad()``; the
    network's weights and the global RNG are not touched. bf16 candidates (and an explicit bf16 setting, when
    ``window_shape`` is given) first pass :func:`bf16_conv_check` (forward only). The choice and the timings are logged and kept in
    ``precision_report`` on the returned module.

    Args:
        network: the network (weights may be loaded later, into this same module).
        cpu_precision: one of :data:`CPU_PRECISIONS`. Defaults to ``"fp32"`` (today's inference).
        device: the run's device; on CUDA ``cpu_precision`` is ignored (``amp`` decides). Defaults to CPU.
        window_shape: the window batch for ``"auto"``: ``(B, C, H, W, D)``. Required for ``"auto"``.
        compile: ``torch.compile`` the network (in place; :func:`compile_network`). Defaults to False.
        probe_steps: timed forward passes per candidate for ``"auto"``. Defaults to 2.
        cpuinfo: where the CPU flags are read. Defaults to ``/proc/cpuinfo``.
    """
    check_cpu_precision(cpu_precision)
    device = torch.device(device)
    report: dict[str, Any] = {"setting": cpu_precision, "device": device.type}
    if device.type != "cpu":
        if cpu_precision != "fp32":
            logger.info(f"cpu_precision {cpu_precision!r} is ignored on {device.type}: amp decides the precision.")
        report["chosen"] = None
        chosen = None
    elif cpu_precision == "auto":
        if window_shape is None or len(window_shape) != 5:
            raise ValueError(f"cpu_precision 'auto' needs the window batch shape (B, C, H, W, D), got {window_shape}.")
        flags = cpu_flags(cpuinfo)
        candidates = probe_candidates(native_bf16(flags) if flags else native_bf16())
        checks = {}
        for name in [c for c in candidates if CpuPrecision(c).bf16]:
            checks[name] = bf16_conv_check(network, window_shape, CpuPrecision(name).memory_format, backward=False)
            if not checks[name]["ok"]:
                candidates.remove(name)
                logger.warning(f"cpu_precision auto: {name} left out, wrong on this CPU ({checks[name]['worst']}).")
        report["bf16_check"] = checks
        x = torch.randn(tuple(int(s) for s in window_shape), generator=torch.Generator().manual_seed(0))
        was_training = network.training
        network.eval()

        def step(name: str) -> None:
            with torch.no_grad():
                PrecisionNetwork(network, name)(x)

        try:
            timings = time_candidates(candidates, step, warmup=1, steps=probe_steps)
        finally:
            network.train(was_training)
        chosen = fastest(timings)
        report.update(chosen=chosen, timings_s=timings, flags=flags, window_shape=list(window_shape))
        logger.info(f"cpu_precision auto: {_timings_text(timings)} on window batch {tuple(window_shape)} -> {chosen}")
    else:
        chosen = cpu_precision
        report["chosen"] = chosen
        if CpuPrecision(chosen).bf16 and window_shape is not None:
            check = bf16_conv_check(network, window_shape, CpuPrecision(chosen).memory_format, backward=False)
            report["bf16_check"] = {chosen: check}
            if not check["ok"]:
                raise RuntimeError(
                    f"cpu_precision {chosen!r}: bf16 convolutions compute wrong results on this CPU for these windows "
                    f"({check['worst']}: relative error {check['max_relative_error']:.3g} against float32). Use 'fp32'."
                )
    out = network if chosen in (None, "fp32") else PrecisionNetwork(network, chosen)
    if compile:
        compile_network(network, device)
        report["compile"] = True
    out.precision_report = report
    return out


def _timings_text(timings: Mapping[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.3f} s" for name, seconds in timings.items())


# ------------------------------------------------------------------------------------------------ torch.compile
def compile_unavailable_reason(device: str | torch.device = "cpu") -> str | None:
    """Why ``torch.compile`` cannot run here, or ``None`` when it can: it needs ``torch.compile`` and, on the CPU,
    a C++ compiler for the Inductor backend (``$CXX``, ``g++``, ``c++`` or ``clang++``)."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if torch.device(device).type == "cpu":
        names = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
        if not any(n and shutil.which(n) for n in names):
            return "torch.compile on the CPU needs a C++ compiler (g++, c++ or clang++ on the PATH, or $CXX)"
    return None


def compile_network(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """``torch.compile`` ``module`` in place (``nn.Module.compile``: its ``state_dict`` keys and identity are
    kept, so checkpoints and the EMA teacher are unaffected) and return it.

    Random operations (dropout) use eager PyTorch's generator (``torch._inductor.config.fallback_random``), so a
    compiled network draws the same dropout masks as the eager one from the same seed and results differ only by
    float rounding. Compilation itself happens at the first forward pass (tens of seconds on a CPU).

    Raises:
        RuntimeError: :func:`compile_unavailable_reason` names why compilation cannot run here.
    """
    reason = compile_unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(f"compile = True: {reason}.")
    import locale

    # torch's inductor reads its kernel templates at import with the locale's encoding; a library that set the C
    # locale (ASCII) in this process makes that import fail, so import it under a UTF-8 LC_CTYPE
    previous = locale.setlocale(locale.LC_CTYPE)
    try:
        try:
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
        except locale.Error:
            pass
        import torch._inductor.config as inductor_config
        import torch._inductor.select_algorithm  # noqa: F401  (the templates)
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)
    inductor_config.fallback_random = True
    module.compile()
    return module
