"""Tests of the trainer's CPU precision (``cpu_precision``): an ``auto`` run that picks X trains exactly as a run with X
set explicitly (the probe leaves weights, optimizer, RNGs and data streams as they were), the probe is skipped for
short runs, handlers never see its steps, and the settings are checked."""

from __future__ import annotations

import json

import pytest
import torch
from monai.engines.utils import IterationEvents

from bundle.engine import precision
from bundle.engine.run_settings import update_run_settings
from bundle.method.mix import MixModule
from bundle.method.networks import PLGDFVNet
from bundle.method.teacher import EMATeacher
from bundle.method.trainer import PLGDFTrainer

SHAPE = (48, 16, 16)  # bottleneck 3x1x1 (see test_bf16_check_failure_leaves_bf16_out_or_stops_the_run)


pytestmark = pytest.mark.usefixtures("one_thread")  # timings and probes on one torch thread


class CountingStream:
    """An endless unlabelled stream of different batches that counts what was drawn from it."""

    batch_size = 1

    def __init__(self) -> None:
        self.drawn = 0

    def __iter__(self) -> CountingStream:
        return self

    def __next__(self) -> torch.Tensor:
        self.drawn += 1
        g = torch.Generator().manual_seed(100 + self.drawn)
        return torch.randn(1, 1, *SHAPE, generator=g)


def _trainer(
    cpu_precision: str | None, iterations: int = 200, probe_steps: int = 1, **kwargs
) -> tuple[PLGDFTrainer, dict, CountingStream]:
    torch.manual_seed(0)
    network = PLGDFVNet(1, 2, n_filters=2, dropout=True)
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(2, 1, *SHAPE, generator=g),
        "label": (torch.rand(2, 1, *SHAPE, generator=g) > 0.6).to(torch.uint8),
    }
    stream = CountingStream()
    trainer = PLGDFTrainer(
        device="cpu",
        max_epochs=1,
        epoch_length=iterations,
        train_data_loader=[batch],
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
        unlabeled_loader=stream,
        teacher=EMATeacher(network, decay=0.99),
        mix=MixModule(alpha=0.75),
        cpu_precision=cpu_precision,
        probe_steps=probe_steps,
        **kwargs,
    )
    return trainer, batch, stream


def _train(trainer: PLGDFTrainer, batch: dict, steps: int = 3) -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(2)
    losses = []
    for i in range(steps):
        trainer.state.iteration = i + 1
        losses.append(float(trainer._iteration(trainer, batch)["loss"]))
    state = {f"student.{k}": v.clone() for k, v in trainer.network.state_dict().items()}
    state.update({f"teacher.{k}": v.clone() for k, v in trainer.teacher.state_dict().items()})
    return losses, state


@pytest.mark.parametrize("pick", ["fp32", "bf16_cl"])
def test_auto_run_equals_a_run_with_its_choice_set(monkeypatch, pick):
    """The probe times real steps of every candidate, then the run is the one the choice gives when set explicitly:
    the same losses and bit-identical student and teacher weights (the fixed pick covers a layout change away from
    the initial fp32_cl and the bf16 autocast)."""
    monkeypatch.setattr(precision, "native_bf16", lambda flags=None: True)  # all four candidates on any host
    monkeypatch.setattr(precision, "fastest", lambda timings: pick)
    reports = []
    auto, batch, stream = _trainer("auto", on_precision=reports.append)
    events = []
    auto.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda engine: events.append(engine.state.iteration))
    auto_losses, auto_state = _train(auto, batch)
    report = auto.precision_report
    assert reports == [report] and report["setting"] == "auto" and report["chosen"] == pick
    assert list(report["timings_s"]) == ["fp32", "fp32_cl", "bf16", "bf16_cl"]
    assert all(t > 0 for t in report["timings_s"].values())
    assert report["probe"]["unlabeled_shape"] == [1, 1, *SHAPE]
    assert events == [1, 2, 3]  # handlers saw the run's three steps, none of the probe's eight
    assert stream.drawn == 3  # the probe drew nothing from the unlabelled stream
    assert auto.cpu_precision.name == pick and auto.memory_format == precision.CpuPrecision(pick).memory_format

    forced, batch, stream = _trainer(pick)
    forced_losses, forced_state = _train(forced, batch)
    assert "timings_s" not in forced.precision_report and forced.precision_report["chosen"] == pick
    assert auto_losses == forced_losses
    for key, value in forced_state.items():
        assert torch.equal(auto_state[key], value), key


def test_probe_without_restoring_would_change_the_run(monkeypatch):
    """Guard of the test above: the probe's steps do change the weights, so the equality is the restore's doing."""
    monkeypatch.setattr(precision, "native_bf16", lambda flags=None: False)
    auto, batch, _ = _trainer("auto")
    before = {k: v.clone() for k, v in auto.network.state_dict().items()}
    with auto._probe_scope(torch.randn(1, 1, *SHAPE)) as restore:
        auto.state.iteration = 1
        auto._prepared = True
        auto._iteration(auto, batch)
        assert not all(torch.equal(before[k], v) for k, v in auto.network.state_dict().items())
        restore()
        assert all(torch.equal(before[k], v) for k, v in auto.network.state_dict().items())


def test_short_runs_skip_the_probe(tmp_path):
    # 30 < 10 x the smallest probe (2 candidates x 2 steps): skipped on every host, with or without native bf16
    trainer, batch, _ = _trainer("auto", iterations=30, on_precision=lambda r: update_run_settings(tmp_path, "cpu", r))
    _train(trainer, batch, steps=1)
    report = json.loads((tmp_path / "run_settings.json").read_text())["cpu"]
    assert report["chosen"] == "fp32_cl" and report["probe"].startswith("skipped")
    assert "timings_s" not in report and report["device"] == "cpu" and "flags" in report


def test_explicit_settings_and_the_earlier_pair():
    trainer, _, _ = _trainer("bf16")
    assert trainer.cpu_precision.name == "bf16" and trainer.memory_format == torch.contiguous_format
    with trainer._autocast():
        assert trainer.network(torch.randn(1, 1, *SHAPE))[0].dtype == torch.bfloat16
    legacy, _, _ = _trainer(None, amp_cpu=True, channels_last=True)
    assert legacy.cpu_precision_setting == "bf16_cl"
    assert precision.module_memory_format(legacy.network) == torch.channels_last_3d
    assert precision.module_memory_format(legacy.teacher.model) == torch.channels_last_3d
    plain, _, _ = _trainer(None)
    assert plain.cpu_precision.name == "fp32"
    with pytest.raises(ValueError, match="cpu_precision must be one of"):
        _trainer("fp16")
    with pytest.raises(ValueError, match="amp_cpu = True .* cpu_precision = 'fp32_cl'"):
        _trainer("fp32_cl", amp_cpu=True)
    with pytest.raises(ValueError, match="probe_steps"):
        _trainer("auto", probe_steps=0)


def test_bf16_check_failure_leaves_bf16_out_or_stops_the_run(monkeypatch):
    """Where bf16 convolutions are wrong at the run's shapes (seen: 3x3x3 weight gradients over 2xNxN inputs with
    torch 2.13 on an AVX512-BF16 CPU), auto never picks bf16 and an explicit bf16 setting stops before training."""
    monkeypatch.setattr(precision, "native_bf16", lambda flags=None: True)
    failed = {"ok": False, "max_relative_error": float("inf"), "worst": "enc5.0 weight_gradient", "checked": 18}
    monkeypatch.setattr(precision, "bf16_conv_check", lambda *args, **kwargs: dict(failed))
    auto, batch, _ = _trainer("auto")
    _train(auto, batch, steps=1)
    assert list(auto.precision_report["timings_s"]) == ["fp32", "fp32_cl"]
    assert set(auto.precision_report["bf16_check"]) == {"bf16", "bf16_cl"}
    explicit, batch, _ = _trainer("bf16_cl")
    with pytest.raises(RuntimeError, match="cpu_precision 'bf16_cl': bf16 convolutions compute wrong results.*enc5.0"):
        _train(explicit, batch, steps=1)
