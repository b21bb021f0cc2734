"""Interruptions and numerical stops: atomic checkpoints under SIGKILL, the real training command killed with
SIGKILL or stopped with SIGTERM mid-run and resumed (it continues exactly where it stopped), a non-finite loss
stopping the run with the iteration and the term named, eps-guarded losses, and safe checkpoint loading."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from torch.utils.data import DataLoader

from bundle.data.samplers import EndlessLoader, RepeatedShuffleSampler
from bundle.engine.checkpoint import TrainingState
from bundle.engine.errors import CheckpointError
from bundle.engine.files import safe_load, save_atomic
from bundle.handlers.resume import ResumeTraining
from bundle.handlers.run_log import RunLog
from bundle.method.losses import PyramidConsistencyLoss, PyramidSupervisedLoss, SharpeningLoss
from tests.conftest import REPO_ROOT, TINY_TRAIN, TRAIN_CONFIG, bundle_cmd, bundle_env, read_log, run_dirs

TINY = [*TINY_TRAIN, "--val_interval", "4", "--num_iterations", "16"]
ENV = bundle_env()


class NaNSharpeningLoss(SharpeningLoss):
    """Test-only L_sharp that turns NaN from its ``nan_from_call``-th call (1-based; one call per iteration)."""

    def __init__(self, nan_from_call: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.nan_from_call, self.calls = int(nan_from_call), 0

    def forward(self, logits):
        self.calls += 1
        loss = super().forward(logits)
        return loss * float("nan") if self.calls >= self.nan_from_call else loss


# -- helpers --------------------------------------------------------------------------------------------
def train_cmd(demo: Path, out: Path, *args: str) -> list[str]:
    return bundle_cmd(TRAIN_CONFIG, *TINY, *run_dirs(demo, out), *args)


def run_train(demo: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(demo, out, *args), cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=600
    )


def start_and_wait(demo: Path, out: Path, iterations: int) -> subprocess.Popen:
    """Start training and return once ``iterations`` iterations are logged and a checkpoint exists."""
    proc = subprocess.Popen(
        train_cmd(demo, out), cwd=REPO_ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        log = out / "log.jsonl"
        done = log.exists() and sum('"loss"' in line for line in log.read_text().splitlines()) >= iterations
        if done and (out / "checkpoint_last.pt").exists():
            return proc
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("training did not reach the iteration in time")


def temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders if folder.exists() for p in folder.rglob("*") if ".tmp" in p.name]


def assert_all_checkpoints_load(out: Path) -> None:
    files = sorted(out.glob("*.pt")) + sorted((out / "models").glob("*.pt"))
    assert files
    for path in files:
        state = safe_load(path)
        tensors = state["network"] if "network" in state else state
        assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()), path


def assert_same_run(out: Path, reference: Path) -> None:
    """The resumed run logged each iteration once, with the uninterrupted run's exact values."""
    log, ref = read_log(out), read_log(reference)
    assert [r["iteration"] for r in log if "loss" in r] == list(range(1, 17))
    assert log == ref
    final, ref_final = safe_load(out / "checkpoint_last.pt"), safe_load(reference / "checkpoint_last.pt")
    assert final["iteration"] == 16
    for part in ("network", "teacher"):  # flat state_dicts
        assert all(torch.equal(final[part][k], ref_final[part][k]) for k in ref_final[part]), part


@pytest.fixture(scope="module")
def reference(tiny_demo: Path, tmp_path_factory) -> Path:
    """An uninterrupted 16-iteration run (checkpoints every 4 iterations, after validation)."""
    out = tmp_path_factory.mktemp("reference")
    proc = run_train(tiny_demo, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# -- atomic checkpoints ---------------------------------------------------------------------------------
WRITER = """
import sys, torch
from bundle.engine.files import save_atomic
i = 0
while True:
    save_atomic({"i": torch.tensor(i), "w": torch.full((512, 1024), float(i))}, sys.argv[1])
    i += 1
"""


def test_atomic_save_leaves_a_loadable_file_whatever_the_kill_moment(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_last.pt"
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=REPO_ROOT, env=ENV)
        while not path.exists():
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = safe_load(path)
        assert torch.equal(state["w"], torch.full((512, 1024), float(state["i"])))
    # a killed save may leave its temporary file; a resumed run removes it
    (tmp_path / ".checkpoint_last.pt.tmp.12345").write_bytes(b"partial")
    TrainingState(str(tmp_path), torch.nn.Linear(2, 2)).remove_stale_temporaries()
    assert temporaries(tmp_path) == []
    assert safe_load(path)["w"].shape == (512, 1024)


# -- the real training command, interrupted -------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tiny_demo: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_and_wait(tiny_demo, out, iterations=6)  # past the first checkpoint (iteration 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(r["iteration"] for r in read_log(out) if "loss" in r)
    saved = safe_load(out / "checkpoint_last.pt")  # the previous checkpoint is intact
    assert saved["iteration"] % 4 == 0 and 4 <= saved["iteration"] <= killed_at

    resumed = run_train(tiny_demo, out, "--resume", "True")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, reference)
    assert_all_checkpoints_load(out)
    assert temporaries(out) == []


@pytest.mark.slow
def test_sigterm_saves_then_resume_continues(tiny_demo: Path, reference: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start_and_wait(tiny_demo, out, iterations=6)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    stopped_at = max(r["iteration"] for r in read_log(out) if "loss" in r)
    saved = safe_load(out / "checkpoint_last.pt")
    assert saved["iteration"] == stopped_at < 16  # saved where it stopped, mid-run
    assert temporaries(out) == []

    resumed = run_train(tiny_demo, out, "--resume", "True")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, reference)
    assert_all_checkpoints_load(out)
    assert temporaries(out) == []


# -- numerical safety -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_non_finite_loss_stops_with_iteration_and_term(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_train(
        tiny_demo,
        out,
        "--sharpening_loss#_target_",
        "tests.test_interrupt.NaNSharpeningLoss",
        "--sharpening_loss#nan_from_call",
        "6",
    )
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("NonFiniteLossError: non-finite loss term loss_sharp = nan at iteration 6"), last
    saved = safe_load(out / "checkpoint_last.pt")  # the last good state, not overwritten by the NaN step
    assert saved["iteration"] == 4
    assert_all_checkpoints_load(out)
    assert [r["iteration"] for r in read_log(out) if "loss" in r] == [1, 2, 3, 4, 5]
    assert temporaries(out) == []


def test_losses_are_finite_at_zero_probabilities() -> None:
    """Logits of +-1e4 give probabilities of exactly 0 and 1: every loss and gradient stays finite."""
    logits = torch.full((2, 2, 4, 4, 4), -1e4)
    logits[:, 0] = 1e4  # every voxel predicted background with probability 1
    assert torch.softmax(logits, 1)[:, 1].max() == 0.0
    target = torch.ones(2, 4, 4, 4, dtype=torch.long)  # ... but the truth is foreground: log(0) territory
    empty = torch.zeros(2, 4, 4, 4, dtype=torch.long)  # no foreground at all: Dice 0 / 0 territory
    pyramid = [logits.clone().requires_grad_(True) for _ in range(4)]
    terms = [
        PyramidSupervisedLoss()(pyramid, target)[0],
        PyramidSupervisedLoss(dice_form="reference")(pyramid, empty)[0],
        PyramidConsistencyLoss()(pyramid),
        PyramidConsistencyLoss(form="reference")(pyramid),
        SharpeningLoss()(pyramid),
        SharpeningLoss(detach_target=False)(pyramid),
    ]
    for value in terms:
        assert torch.isfinite(value), value
    sum(terms).backward()
    assert all(torch.isfinite(p.grad).all() for p in pyramid)


# -- exact resume positions (unit level) ----------------------------------------------------------------
def test_sampler_skip_and_stream_state_continue_the_same_sequence() -> None:
    data = list(range(5))

    def stream() -> EndlessLoader:
        loader = DataLoader(data, batch_size=2, sampler=RepeatedShuffleSampler(data, num_samples=4, seed=3))
        return EndlessLoader(loader)

    a = stream()
    for _ in range(5):  # two full passes and one batch of the third
        next(a)
    state = a.state_dict()
    assert state == {"passes": 3, "consumed": 1}
    expected = [next(a).tolist() for _ in range(4)]
    b = stream()
    b.load_state_dict(state)
    assert [next(b).tolist() for _ in range(4)] == expected


def test_loss_log_keeps_each_iteration_once(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"iteration": i, "loss": 1.0}) for i in range(1, 7)] + ['{"iteration": 7, "lo']  # cut
    log.write_text("\n".join(lines))
    RunLog(str(tmp_path))._truncate(4)
    assert [json.loads(line)["iteration"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


# -- safe loading ---------------------------------------------------------------------------------------
class Payload:
    """Pickles as a call to ``os.system`` (what a tampered checkpoint would hide)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class CustomObject:
    pass


@pytest.mark.parametrize("payload", ["code", "custom class"])
def test_tampered_checkpoint_is_refused(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint_last.pt"
    evil = Payload(marker) if payload == "code" else CustomObject()
    torch.save({"network": {"w": torch.zeros(2)}, "iteration": 4, "extra": evil}, path)
    with pytest.raises(CheckpointError, match=r"refused to load .*checkpoint_last\.pt for safety"):
        safe_load(path)
    assert not marker.exists()  # the payload never ran


def test_resume_from_a_tampered_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"network": {}, "extra": Payload(marker)}, tmp_path / "checkpoint_last.pt")
    engine = Engine(lambda engine, batch: None)
    ResumeTraining(TrainingState(str(tmp_path), torch.nn.Linear(2, 2)), resume=True).attach(engine)
    with pytest.raises(CheckpointError, match="refused to load .* for safety"):
        engine.run([0], max_epochs=1)
    assert not marker.exists()


def test_truncated_and_missing_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_atomic({"w": torch.arange(100000.0)}, path)
    assert torch.equal(safe_load(path)["w"], torch.arange(100000.0))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*model\.pt: truncated, corrupt"):
        safe_load(path)
    with pytest.raises(CheckpointError, match="checkpoint not found: .*missing.pt"):
        safe_load(tmp_path / "missing.pt")


def test_every_checkpoint_load_in_the_code_uses_weights_only() -> None:
    sources = [p for d in ("bundle", "benchmarks", "scripts") for p in sorted((REPO_ROOT / d).rglob("*.py"))]
    calls = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 1, match.end()
            while depth and end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            calls.append((path.name, text[match.start() : end]))
    assert calls, "no torch.load call found"
    unsafe = [(name, call) for name, call in calls if "weights_only=True" not in call]
    assert unsafe == []
