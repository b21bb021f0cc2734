"""Multi-GPU config: the real ``torchrun ... -m monai.bundle run`` with ``configs/multi_gpu_train.json`` on the CPU
(gloo backend, 2 processes, a few iterations), plus unit checks of ``bundle.engine.distributed``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bundle.data.demo import generate_demo_dataset
from bundle.engine.distributed import rank_handlers, validation_sampler
from bundle.handlers.broadcast import BroadcastBuffers
from tests.conftest import REPO_ROOT, TINY_TRAIN

TINY = TINY_TRAIN

# Test-only override: every rank dumps what it trained after the run (after the group is destroyed).
DUMP = {
    "+finalize": [
        "$torch.save({'rank': int(os.environ['RANK']), 'iteration': @train#trainer.state.iteration, "
        "'sampler': (@train#dataloader.sampler.rank, @train#dataloader.sampler.num_replicas, "
        "@train#dataloader.sampler.epoch), "
        "'unlabeled_sampler': (@train#unlabeled_dataloader.loader.sampler.rank, "
        "@train#unlabeled_dataloader.loader.sampler.num_replicas, @train#unlabeled_dataloader.passes), "
        "'ddp': isinstance(@network, torch.nn.parallel.DistributedDataParallel), "
        "'student': @network.module.state_dict(), 'teacher': @teacher.state_dict()}, "
        "@output_dir + '/rank' + os.environ['RANK'] + '.pt')"
    ]
}


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_two_ranks_cpu(tmp_path):
    demo = tmp_path / "demo"
    generate_demo_dataset(demo, n_labelled=2, n_unlabelled=3, n_val=1, n_test=0, shape=(40, 40, 12))
    out, models = tmp_path / "run", tmp_path / "models"
    dump = tmp_path / "dump.json"
    dump.write_text(json.dumps(DUMP))
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(torchrun if torchrun.exists() else shutil.which("torchrun")),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"['configs/train.json','configs/multi_gpu_train.json','{dump}']",
        *TINY,
        "--dataset_dir",
        str(demo),
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(models),
        "--num_iterations",
        "4",
        "--val_interval",
        "2",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r, state in enumerate(ranks):
        assert state["rank"] == r
        assert state["ddp"]
        assert state["iteration"] == 4, state["iteration"]  # both ranks stepped 4 times
        assert state["sampler"] == (r, 2, 2)  # DistributedSampler share of this rank; set_epoch(2) was called
        assert state["unlabeled_sampler"][:2] == (r, 2) and state["unlabeled_sampler"][2] >= 1
    s0, s1 = ranks[0]["student"], ranks[1]["student"]
    t0, t1 = ranks[0]["teacher"], ranks[1]["teacher"]
    for key in s0:
        assert torch.equal(s0[key], s1[key]), f"student {key} differs between ranks"
    for key in t0:
        assert torch.equal(t0[key], t1[key]), f"teacher {key} differs between ranks"
    assert any(not torch.equal(s0[k], t0[k]) for k in s0 if s0[k].is_floating_point())  # the teacher is an EMA

    # rank 0 alone saved, logged and validated
    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True)
    assert ckpt["iteration"] == 4
    assert (models / "model.pt").is_file()
    flat = torch.load(models / "model.pt", weights_only=True)
    assert flat.keys() == s0.keys()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    assert [r["iteration"] for r in log if "loss" in r] == [1, 2, 3, 4]
    assert [r["iteration"] for r in log if "val_dice" in r] == [2, 4]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


class _FakeHandler:
    def attach(self, engine):
        pass


class ValidationHandler(_FakeHandler):
    pass


class TensorBoardStatsHandler(_FakeHandler):
    def __init__(self):
        self._writer = type("W", (), {"closed": False, "close": lambda self: setattr(self, "closed", True)})()


def test_rank_handlers_without_group_keeps_all():
    handlers = [_FakeHandler(), ValidationHandler(), TensorBoardStatsHandler()]
    assert rank_handlers(handlers) == handlers


def test_rank_handlers_on_other_ranks(monkeypatch):
    import bundle.engine.distributed as bd

    monkeypatch.setattr(bd, "rank", lambda: 1)
    tb, keep, val = TensorBoardStatsHandler(), _FakeHandler(), ValidationHandler()
    assert rank_handlers([keep, val, tb]) == [keep, val]  # validation runs on every rank
    assert tb._writer.closed


def test_validation_sampler_shares(monkeypatch):
    import bundle.engine.distributed as bd

    assert validation_sampler(list(range(5))) is None  # not distributed
    monkeypatch.setattr(bd, "world_size", lambda: 2)
    monkeypatch.setattr(bd, "rank", lambda: 0)
    assert validation_sampler([]) is None
    shares = []
    for r in (0, 1):
        monkeypatch.setattr(bd, "rank", lambda r=r: r)
        shares.append(list(iter(validation_sampler(list(range(5))))))
    assert sorted(shares[0] + shares[1]) == [0, 1, 2, 3, 4]  # no overlap, nothing left out
    monkeypatch.setattr(bd, "world_size", lambda: 4)
    assert len(list(iter(validation_sampler(list(range(3)))))) == 1  # fewer cases than ranks: repeated


def test_broadcast_buffers_is_a_no_op_without_group():
    model = torch.nn.BatchNorm3d(2)
    model.running_mean.fill_(3.0)
    BroadcastBuffers(model)()
    assert torch.equal(model.running_mean, torch.full((2,), 3.0))
    with pytest.raises(ValueError, match="event"):
        BroadcastBuffers(model, event="NOT_AN_EVENT")


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_two_ranks_train_then_evaluate_cpu(tmp_path):
    """The Zoo's ``_dist`` unit test of a bundle: multi-GPU training, then multi-GPU evaluation
    (``train.json`` + ``evaluate.json`` + ``multi_gpu_evaluate.json``), under ``torchrun --nproc_per_node=2`` (gloo)."""
    demo = tmp_path / "demo"
    generate_demo_dataset(demo, n_labelled=2, n_unlabelled=2, n_val=3, n_test=0, shape=(40, 40, 12))
    torchrun = Path(sys.executable).with_name("torchrun")
    base = [str(torchrun if torchrun.exists() else shutil.which("torchrun")), "--standalone", "--nproc_per_node=2"]
    base += ["-m", "monai.bundle", "run"]
    common = [*TINY, "--dataset_dir", str(demo), "--output_dir", str(tmp_path / "run"), "--ckpt_dir"]
    common += [str(tmp_path / "models"), "--num_iterations", "2"]
    common += ["--val_interval", "2"]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    for files in ("'configs/train.json','configs/multi_gpu_train.json'",
                  "'configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json'"):  # fmt: skip
        if "evaluate" in files:
            before = (tmp_path / "models" / "model.pt").read_bytes()
        extra = ["--eval_dir", str(tmp_path / "eval")] if "evaluate" in files else []
        cmd = [*base, "--config_file", f"[{files}]", *common, *extra]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "models" / "model.pt").read_bytes() == before  # evaluation never trains or saves a model
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["n_cases"] == 3 and summary["info"]["ranks"] == 2
    assert sorted(p.name for p in (tmp_path / "eval").glob("rank*")) == ["rank0", "rank1"]
