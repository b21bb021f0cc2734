"""Reproducibility: with a fixed seed on CPU two runs of the real training command give identical losses and
identical checkpoints; the seed and the resolved settings are written next to the run's outputs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle.data.demo import generate_demo_dataset
from bundle.engine.files import safe_load
from bundle.engine.run_settings import resolved_settings, write_run_settings
from tests.conftest import TINY_TRAIN, TRAIN_CONFIG, read_log, run_bundle, run_dirs

TINY = [*TINY_TRAIN, "--val_interval", "3", "--num_iterations", "6", "--rand_flip_prob", "0.5"]


def run_train(demo: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return run_bundle(TRAIN_CONFIG, *TINY, *run_dirs(demo, out), *args)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    demo = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(demo, n_labelled=2, n_unlabelled=2, n_val=1, n_test=1, shape=(40, 40, 12))
    runs = tmp_path_factory.mktemp("runs")
    for name in ("a", "b"):
        run_train(demo, runs / name)
    return runs / "a", runs / "b"


@pytest.mark.slow
def test_same_seed_same_losses_and_checkpoints(two_runs: tuple[Path, Path]) -> None:
    a, b = two_runs
    log_a, log_b = read_log(a), read_log(b)
    assert [r["iteration"] for r in log_a if "loss" in r] == list(range(1, 7))
    assert log_a == log_b  # every loss term, lambda, lr and validation Dice, bit for bit
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "models/model.pt"):
        sa, sb = safe_load(a / name), safe_load(b / name)
        for part in ("network", "teacher") if "network" in sa else (None,):
            ta, tb = (sa[part], sb[part]) if part else (sa, sb)
            assert ta.keys() == tb.keys()
            assert all(torch.equal(ta[k], tb[k]) for k in ta), (name, part)
    opt_a, opt_b = safe_load(a / "checkpoint_last.pt")["optimizer"], safe_load(b / "checkpoint_last.pt")["optimizer"]
    assert all(
        torch.equal(opt_a["state"][k]["momentum_buffer"], opt_b["state"][k]["momentum_buffer"]) for k in opt_a["state"]
    )


@pytest.mark.slow
def test_run_settings_are_written_next_to_the_outputs(two_runs: tuple[Path, Path]) -> None:
    a, _ = two_runs
    settings = json.loads((a / "run_settings.json").read_text())
    assert settings["seed"] == 0
    assert {"python", "torch", "monai", "pytorch-ignite", "numpy"} <= settings["versions"].keys()
    assert settings["versions"]["torch"] == torch.__version__
    resolved = settings["resolved"]
    assert resolved["output_dir"] == str(a) and resolved["num_iterations"] == 6 and resolved["seed"] == 0
    assert resolved["patch_size"] == [16, 16, 16] and resolved["rand_flip_prob"] == 0.5
    assert resolved["rampup_length"] == 2  # "$int(0.4 * @num_iterations)", evaluated
    assert resolved["device"] == "cpu"
    assert settings["extra"]["data"]["training"]  # the exact files trained on
    assert "network_def" not in resolved and "optimizer" not in resolved  # components stay text, in "config"
    assert settings["config"]["network_def"]["_target_"] == "bundle.method.networks.PLGDFVNet"
    assert "--num_iterations" in settings["argv"]


@pytest.mark.slow
def test_another_seed_changes_the_run(two_runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = two_runs
    demo = Path(json.loads((a / "run_settings.json").read_text())["resolved"]["dataset_dir"])
    run_train(demo, tmp_path / "c", "--seed", "1", "--num_iterations", "3")
    first = [r for r in read_log(tmp_path / "c") if "loss" in r][0]
    assert first != [r for r in read_log(a) if "loss" in r][0]
    assert json.loads((tmp_path / "c" / "run_settings.json").read_text())["seed"] == 1


class Recorder:
    """A component whose construction is visible: run settings must not instantiate components."""

    made = 0

    def __init__(self, **kwargs):
        Recorder.made += 1


def test_write_run_settings_records_plain_values_without_creating_objects(tmp_path: Path) -> None:
    config = {
        "imports": ["$import os"],
        "root": str(tmp_path),
        "out": "$@root + '/run'",
        "steps": 10,
        "ramp": "$int(0.4 * @steps)",
        "window": [-125.0, 275.0],
        "made": "$tests.test_reproducibility.Recorder()",
        "thing": {"_target_": "tests.test_reproducibility.Recorder", "size": "@steps"},
        "initialize": ["$print('never run')"],
    }
    parser = ConfigParser(config)
    parser.parse()
    resolved = resolved_settings(parser)
    resolved.pop("_meta_", None)  # the bundle metadata, when the parser has it
    assert resolved == {
        "root": str(tmp_path),
        "out": f"{tmp_path}/run",
        "steps": 10,
        "ramp": 4,
        "window": [-125.0, 275.0],
    }
    assert Recorder.made == 0

    first = write_run_settings(tmp_path / "run", seed=7, parser=parser)
    second = write_run_settings(tmp_path / "run", seed=8, parser=parser)  # e.g. a resumed run
    assert first == second == tmp_path / "run" / "run_settings.json"
    assert json.loads(second.read_text())["seed"] == 8
    assert json.loads((tmp_path / "run" / "run_settings.1.json").read_text())["seed"] == 7  # kept
    assert json.loads(second.read_text())["config"]["thing"]["_target_"].endswith("Recorder")
    assert Recorder.made == 0
