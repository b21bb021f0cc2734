"""GPU checks (``pytest -m gpu``; ``bash scripts/gpu_check.sh`` runs them first): AMP bf16 and fp16 steps finite and
close to fp32, the fp16 GradScaler path, a checkpoint round trip, inference on the GPU equal to the CPU, and the
multi-GPU config under ``torchrun --nproc_per_node=1`` on NCCL. Every test is skipped without CUDA; all data is
synthetic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.engine.checkpoint import TrainingState
from bundle.engine.files import safe_load
from bundle.engine.precision import inference_network
from bundle.method.mix import MixModule
from bundle.method.networks import PLGDFVNet
from bundle.method.teacher import EMATeacher
from bundle.method.trainer import PLGDFTrainer
from tests.conftest import REPO_ROOT, TINY_TRAIN

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU (CUDA)")]

PATCH = (32, 32, 32)
TERMS = ("loss_sup", "loss_semi", "loss_consis", "loss_sharp", "loss")


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _trainer(amp: bool, amp_dtype: str = "bfloat16", seed: int = 0) -> tuple[PLGDFTrainer, dict[str, torch.Tensor]]:
    """A full PLGDF trainer on the GPU (dropout off, so that precisions see the same network), and its batch."""
    _seed(seed)
    net = PLGDFVNet(1, 2, n_filters=4, dropout=False).cuda()
    g = torch.Generator().manual_seed(1)
    x_l = torch.randn(2, 1, *PATCH, generator=g)
    batch = {"image": x_l, "label": (x_l > 0.8).to(torch.uint8)}
    x_u = torch.randn(2, 1, *PATCH, generator=g)

    class Stream:
        batch_size = 2

        def __iter__(self):
            return self

        def __next__(self):
            return x_u

    trainer = PLGDFTrainer(
        device="cuda",
        max_epochs=1,
        epoch_length=100,
        train_data_loader=[batch],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4),
        unlabeled_loader=Stream(),
        teacher=EMATeacher(net, decay=0.99),
        mix=MixModule(alpha=0.75),
        amp=amp,
        amp_dtype=amp_dtype,
        channels_last=False,
    )
    return trainer, batch


def _steps(trainer: PLGDFTrainer, batch: dict, n: int) -> list[dict[str, float]]:
    _seed(2)
    out = []
    for i in range(n):
        trainer.state.iteration = i + 1
        terms = trainer._iteration(trainer, batch)
        out.append({k: float(terms[k]) for k in TERMS})
    return out


@pytest.fixture(scope="module")
def fp32_steps() -> list[dict[str, float]]:
    trainer, batch = _trainer(amp=False)
    return _steps(trainer, batch, 4)


@pytest.mark.parametrize("dtype, rtol", [("bfloat16", 0.05), ("float16", 0.02)])
def test_amp_steps_are_finite_and_close_to_fp32(fp32_steps, dtype, rtol):
    trainer, batch = _trainer(amp=True, amp_dtype=dtype)
    assert trainer.use_amp and (trainer.scaler is not None) == (dtype == "float16")
    with trainer._autocast():
        assert trainer.network(torch.randn(1, 1, *PATCH, device="cuda"))[0].dtype == getattr(torch, dtype)
    steps = _steps(trainer, batch, 4)
    assert all(torch.isfinite(p).all() for p in trainer.network.parameters())
    for key in TERMS:  # the first step starts from the same weights: every term close
        assert steps[0][key] == pytest.approx(fp32_steps[0][key], rel=rtol, abs=1e-3), key
    assert steps[-1]["loss"] == pytest.approx(fp32_steps[-1]["loss"], rel=2 * rtol)  # and the trajectory follows


def test_fp16_grad_scaler_skips_an_overflowing_step_and_lowers_the_scale():
    trainer, batch = _trainer(amp=True, amp_dtype="float16")
    trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)  # fp16 gradients overflow at this scale
    before = [p.detach().clone() for p in trainer.network.parameters()]
    _steps(trainer, batch, 1)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))  # the step was skipped
    assert trainer.scaler.get_scale() < 2.0**40
    trainer.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    _steps(trainer, batch, 1)
    assert not all(torch.equal(a, p) for a, p in zip(before, trainer.network.parameters()))
    assert trainer.scaler.get_scale() == 2.0**10 and all(torch.isfinite(p).all() for p in trainer.network.parameters())


def test_checkpoint_round_trip_on_gpu(tmp_path):
    trainer, batch = _trainer(amp=True)
    _steps(trainer, batch, 2)
    state = TrainingState(
        tmp_path, trainer.network, trainer.teacher, trainer.optimizer, model_file=tmp_path / "model.pt"
    )
    state.save()
    state.export_model()
    fresh, _ = _trainer(amp=True, seed=5)
    restored = TrainingState(tmp_path, fresh.network, fresh.teacher, fresh.optimizer)
    restored.load()
    for a, b in zip(trainer.network.state_dict().values(), fresh.network.state_dict().values()):
        assert b.is_cuda and torch.equal(a, b)
    for a, b in zip(trainer.teacher.state_dict().values(), fresh.teacher.state_dict().values()):
        assert torch.equal(a, b)
    momentum = [s["momentum_buffer"] for s in fresh.optimizer.state.values()]
    assert momentum and all(m.is_cuda for m in momentum)
    model = safe_load(tmp_path / "model.pt")  # the deployed weights load on a CPU machine
    cpu_net = PLGDFVNet(1, 2, n_filters=4, dropout=False)
    cpu_net.load_state_dict(model)
    assert all(not v.is_cuda for v in model.values())


def test_inference_on_gpu_equals_cpu():
    from monai.inferers import SlidingWindowInferer

    from bundle.inference.inferers import ProbabilityInferer, StridedSlidingWindowInferer

    _seed(0)
    net = PLGDFVNet(1, 2, n_filters=4).eval()
    net.load_state_dict({k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                         for k, v in net.state_dict().items()})  # fmt: skip
    volume = torch.randn(1, 1, 60, 50, 40, generator=torch.Generator().manual_seed(3))
    stride = [max(1, r * 3 // 16) for r in PATCH[:-1]] + [max(1, PATCH[-1] // 16)]
    for window in (  # MONAI's overlap window and the bundle's default (a lattice of a dense grid, gaussian)
        SlidingWindowInferer(PATCH, sw_batch_size=4, overlap=0.5, mode="gaussian"),
        StridedSlidingWindowInferer(PATCH, stride, num_classes=2, sw_batch_size=4, keep=7, sigma_scale=0.5),
    ):
        inferer = ProbabilityInferer(window, average="probabilities")
        with torch.no_grad():
            cpu = inferer(volume, net.cpu())
            gpu_net = inference_network(net.cuda(), "bf16_cl", device="cuda")  # cpu_precision is ignored on CUDA
            assert gpu_net is net and net.precision_report["chosen"] is None
            gpu = inferer(volume.cuda(), gpu_net).cpu()
        assert gpu.shape == cpu.shape == (1, 2, 60, 50, 40)
        assert (gpu - cpu).abs().max() < 1e-2  # TF32 convolutions on the GPU
        assert (gpu.argmax(1) == cpu.argmax(1)).float().mean() > 0.999


DUMP = {
    "+finalize": [
        "$torch.save({'iteration': @train#trainer.state.iteration, "
        "'ddp': isinstance(@network, torch.nn.parallel.DistributedDataParallel), "
        "'cuda': next(@network.module.parameters()).is_cuda}, @output_dir + '/rank0.pt')"
    ]
}


def _torchrun() -> str | None:
    local = Path(sys.executable).with_name("torchrun")
    return str(local) if local.exists() else shutil.which("torchrun")


@pytest.mark.skipif(_torchrun() is None, reason="torchrun not installed")
def test_ddp_torchrun_one_rank_nccl(tmp_path):
    from bundle.data.demo import generate_demo_dataset

    demo = tmp_path / "demo"
    generate_demo_dataset(demo, n_labelled=2, n_unlabelled=3, n_val=1, n_test=0, shape=(40, 40, 12))
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(DUMP))
    out = tmp_path / "run"
    cmd = [
        _torchrun(), "--standalone", "--nproc_per_node=1", "-m", "monai.bundle", "run", "--config_file",
        f"['configs/train.json','configs/multi_gpu_train.json','{dump}']", *TINY_TRAIN,
        "--dataset_dir", str(demo), "--output_dir", str(out), "--ckpt_dir", str(tmp_path / "models"),
        "--num_iterations", "4", "--val_interval", "2",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1", NCCL_DEBUG="INFO")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    state = torch.load(out / "rank0.pt", weights_only=True)
    assert state == {"iteration": 4, "ddp": True, "cuda": True}  # DDP on the GPU: the NCCL backend
    assert "NCCL" in proc.stdout + proc.stderr
    assert (tmp_path / "models" / "model.pt").is_file()
