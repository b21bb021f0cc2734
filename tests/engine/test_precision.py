"""Tests of bundle/engine/precision.py: the cpu_precision values, the CPU facts, the probe's timing and choice, the
inference wrapper, torch.compile."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bundle.engine import precision
from bundle.engine.run_settings import update_run_settings
from bundle.method.networks import PLGDFVNet

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile avx512_fp16
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # timings and probes on one torch thread


def test_values_and_their_meaning():
    assert precision.CPU_PRECISIONS == ("fp32", "fp32_cl", "bf16", "bf16_cl", "auto")
    p = precision.CpuPrecision("bf16_cl")
    assert p.bf16 and p.channels_last and p.memory_format == torch.channels_last_3d
    q = precision.CpuPrecision("fp32")
    assert not q.bf16 and q.memory_format == torch.contiguous_format
    with q.autocast():
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.float32
    with p.autocast():
        assert torch.nn.Linear(2, 2)(torch.ones(1, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="cpu_precision must be one of"):
        precision.CpuPrecision("auto")  # not an explicit precision
    with pytest.raises(ValueError, match=r"cpu_precision must be one of 'fp32'.*got 'bf17'"):
        precision.check_cpu_precision("bf17")
    assert precision.check_cpu_precision("auto") == "auto"


@pytest.mark.parametrize(
    "amp_cpu, channels_last, expected",
    [(False, True, "fp32_cl"), (False, False, "fp32"), (True, True, "bf16_cl"), (True, False, "bf16")],
)
def test_the_earlier_pair_of_settings_maps_to_one_value(amp_cpu, channels_last, expected):
    assert precision.legacy_cpu_precision(amp_cpu, channels_last) == expected


def test_cpu_facts_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)
    flags = precision.cpu_flags(info)
    assert flags == ["avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"]
    assert precision.cpu_model(info) == "Intel(R) Xeon(R) Platinum 8480+"
    assert precision.native_bf16(flags)
    assert not precision.native_bf16(["avx2", "avx512f"])  # AVX2 / plain AVX-512 hosts: bf16 is emulated
    assert precision.cpu_flags(tmp_path / "missing") == []


def test_probe_candidates():
    assert precision.probe_candidates(True) == ["fp32", "fp32_cl", "bf16", "bf16_cl"]
    assert precision.probe_candidates(False) == ["fp32", "fp32_cl"]
    assert precision.probe_candidates(True, [torch.contiguous_format]) == ["fp32", "bf16"]


def test_time_candidates_warms_up_then_takes_the_median():
    calls: list[str] = []
    ticks = iter(range(1000))
    durations = {"fp32": [5.0, 1.0, 3.0], "bf16": [1.0, 1.0, 1.0]}
    clock_value = [0.0]

    def step(name: str) -> None:
        calls.append(name)
        clock_value[0] += durations[name][(len([c for c in calls if c == name]) - 2) % 3]  # warm-up not timed

    def clock() -> float:
        next(ticks)
        return clock_value[0]

    timings = precision.time_candidates(["fp32", "bf16"], step, warmup=1, steps=3, clock=clock)
    assert calls == ["fp32"] * 4 + ["bf16"] * 4
    assert timings == {"fp32": 3.0, "bf16": 1.0}
    assert precision.fastest(timings) == "bf16"
    assert precision.fastest({"fp32": 1.0, "fp32_cl": 1.0}) == "fp32"  # a tie keeps the earlier one
    with pytest.raises(ValueError, match="steps"):
        precision.time_candidates(["fp32"], step, steps=0)
    with pytest.raises(ValueError, match="no candidate"):
        precision.time_candidates([], step)


def test_module_memory_format():
    net = PLGDFVNet(1, 2, n_filters=2)
    assert precision.module_memory_format(net) == torch.contiguous_format
    net.to(memory_format=torch.channels_last_3d)
    assert precision.module_memory_format(net) == torch.channels_last_3d


def test_precision_network_converts_layout_runs_autocast_and_returns_float32():
    torch.manual_seed(0)
    net = PLGDFVNet(1, 2, n_filters=2).eval()
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        reference = net(x)
    seen = {}
    net.enc2.register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))  # 4 channels: the layouts differ
    wrapped = precision.PrecisionNetwork(net, "bf16_cl")
    with torch.no_grad():
        out = wrapped(x)
    # the layer runs in bf16 on a channels_last module; the layout of a bf16 convolution's output is oneDNN's choice
    # and differs by host (channels_last with native bf16, contiguous on AVX2-only hosts), so it is checked in fp32
    assert seen["x"].dtype == torch.bfloat16
    assert precision.module_memory_format(net) == torch.channels_last_3d
    assert out.dtype == torch.float32 and out.shape == reference.shape
    assert not torch.equal(out, reference)  # bf16 numerics
    assert torch.allclose(out, reference, atol=0.1, rtol=0.05)
    cl = precision.PrecisionNetwork(net, "fp32_cl")
    with torch.no_grad():
        assert torch.allclose(cl(x), reference, atol=1e-5)
    assert seen["x"].is_contiguous(memory_format=torch.channels_last_3d) and not seen["x"].is_contiguous()
    assert list(wrapped.network.state_dict()) == list(PLGDFVNet(1, 2, n_filters=2).state_dict())


def test_inference_network_explicit_and_cuda_settings():
    net = PLGDFVNet(1, 2, n_filters=2)
    assert precision.inference_network(net, "fp32") is net
    assert net.precision_report == {"setting": "fp32", "device": "cpu", "chosen": "fp32"}
    assert precision.inference_network(net, "bf16_cl", device="cuda") is net  # ignored on CUDA: amp decides
    assert net.precision_report["chosen"] is None
    wrapped = precision.inference_network(net, "bf16")
    assert isinstance(wrapped, precision.PrecisionNetwork) and wrapped.network is net
    with pytest.raises(ValueError, match="cpu_precision must be one of"):
        precision.inference_network(net, "fp16")
    with pytest.raises(ValueError, match="window batch shape"):
        precision.inference_network(net, "auto")


def test_inference_auto_times_every_candidate_and_changes_no_weight_nor_rng(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO)  # native bf16: all four candidates
    torch.manual_seed(0)
    net = PLGDFVNet(1, 2, n_filters=2).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    out = precision.inference_network(net, "auto", window_shape=(2, 1, 16, 16, 16), probe_steps=1, cpuinfo=info)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    report = out.precision_report
    assert list(report["timings_s"]) == ["fp32", "fp32_cl", "bf16", "bf16_cl"]
    assert all(t > 0 for t in report["timings_s"].values())
    assert report["chosen"] == precision.fastest(report["timings_s"])
    assert net.training  # its mode is restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert (out is net) == (report["chosen"] == "fp32")


def test_update_run_settings_adds_an_entry(tmp_path):
    update_run_settings(tmp_path, "cpu_precision", {"chosen": "bf16", "timings_s": {"bf16": 0.5}})
    update_run_settings(tmp_path, "other", [1, 2])
    import json

    settings = json.loads((tmp_path / "run_settings.json").read_text())
    assert settings == {"cpu_precision": {"chosen": "bf16", "timings_s": {"bf16": 0.5}}, "other": [1, 2]}


def test_compile_needs_a_cxx_compiler_on_cpu(monkeypatch):
    monkeypatch.setattr(precision.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in precision.compile_unavailable_reason("cpu")
    with pytest.raises(RuntimeError, match="compile = True: .*C\\+\\+ compiler"):
        precision.compile_network(torch.nn.Linear(2, 2))
    assert precision.compile_unavailable_reason("cuda") is None


@pytest.mark.slow
def test_compiled_forward_equals_eager():
    reason = precision.compile_unavailable_reason("cpu")
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    eager = PLGDFVNet(1, 2, n_filters=2).eval()
    compiled = PLGDFVNet(1, 2, n_filters=2).eval()
    compiled.load_state_dict(eager.state_dict())
    assert precision.compile_network(compiled) is compiled
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints keep their keys
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), atol=1e-5, rtol=1e-4)
        compiled.train()  # dropout: the compiled network draws the eager masks (fallback_random)
        eager.train()
        torch.manual_seed(7)
        out_compiled = compiled(x)
        torch.manual_seed(7)
        out_eager = eager(x)
    for a, b in zip(out_compiled, out_eager):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)


class _WrongInBf16(torch.nn.Conv3d):
    """A convolution whose bf16 weight gradient is wrong (as a faulty bf16 kernel would make it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if torch.is_autocast_cpu_enabled():
            out = out + 0.0 * out.detach() + (out - out.detach()) * 3.0  # same value, 4x the gradient
        return out


def test_bf16_conv_check_finds_a_wrong_convolution():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 4, 3, padding=1))
    good = precision.bf16_conv_check(net, (2, 1, 8, 8, 8))
    assert good["ok"] and good["checked"] == 2 and 0 < good["max_relative_error"] < 0.02  # bf16 rounding only
    net[2] = _WrongInBf16(4, 4, 3, padding=1)
    before = [p.clone() for p in net.parameters()]
    bad = precision.bf16_conv_check(net, (2, 1, 8, 8, 8), torch.channels_last_3d)
    assert not bad["ok"] and bad["max_relative_error"] > 1 and bad["worst"].startswith("2 ")  # names the module
    assert precision.bf16_conv_check(net, (2, 1, 8, 8, 8), backward=False)["ok"]  # its forward is right
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
