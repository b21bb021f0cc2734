"""LA-lite benchmark driver: split file, data lists, commands, evaluation and report (tiny fake LA cases)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import REPO_ROOT, TINY_TRAIN

from benchmarks import la_lite

IDS = ["CASE_A", "CASE_B", "CASE_C", "CASE_D", "CASE_E"]


def _ball(shape, centre, radius):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    return (((grid - np.asarray(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2).astype(np.uint8)


@pytest.fixture
def fake_la(tmp_path):
    """Five LA-layout h5 cases (40^3 at 0.625 mm -> 20^3 at 1.25 mm) and a split file: 3 train, 2 validation."""
    rng = np.random.default_rng(0)
    root = tmp_path / "LA" / "2018LA_Seg_Training Set"
    for k, case in enumerate(IDS):
        (root / case).mkdir(parents=True)
        label = _ball((40, 40, 40), (20, 20, 20), 8 + k)
        with h5py.File(root / case / "mri_norm2.h5", "w") as f:
            f["image"] = (rng.normal(size=label.shape) + 2.0 * label).astype(np.float32)
            f["label"] = label
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": IDS[:3], "validation": IDS[3:]}))
    return tmp_path / "LA", split


def test_shipped_split_file_is_the_la_lite_protocol():
    split = la_lite.load_split()
    assert len(split["train"]) == 72 and len(split["validation"]) == 8
    assert not set(split["train"]) & set(split["validation"])
    assert split["version"] == 1


def test_split_file_matches_train_list_when_available():
    from conftest import shared_path

    train_list = [s.strip() for s in shared_path("LA", "train.list").read_text().splitlines() if s.strip()]
    split = la_lite.load_split()
    assert split["train"] == train_list[:72] and split["validation"] == train_list[-8:]


@pytest.mark.parametrize(
    "content, message",
    [
        ({"train": ["A", "B"], "validation": ["B"]}, "in both"),
        ({"train": ["A", "A"], "validation": ["B"]}, "repeated"),
        ({"train": [], "validation": ["B"]}, "non-empty"),
    ],
)
def test_bad_split_files_are_named(tmp_path, content, message):
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        la_lite.load_split(bad)
    with pytest.raises(FileNotFoundError, match="split file not found"):
        la_lite.load_split(tmp_path / "missing.json")


def test_prepare_writes_one_datalist_per_budget(fake_la, tmp_path):
    la_dir, split = fake_la
    written = la_lite.prepare(la_dir, tmp_path / "run", split, budgets=(1, 3))
    assert (tmp_path / "run" / "data" / "validation.list").read_text().split() == IDS[3:]
    one = json.loads(written["datalist_1"].read_text())
    three = json.loads(written["datalist_3"].read_text())
    assert [e["case_id"] for e in one["training"]] == ["CASE_A"]
    assert [e["case_id"] for e in one["unlabeled"]] == ["CASE_B", "CASE_C"]
    assert all("label" not in e for e in one["unlabeled"])
    assert [e["case_id"] for e in three["training"]] == IDS[:3] and three["unlabeled"] == []
    assert [e["case_id"] for e in three["validation"]] == IDS[3:]
    with pytest.raises(ValueError, match="budget 4"):
        la_lite.prepare(la_dir, tmp_path / "run", split, budgets=(4,))


def test_prepare_names_a_missing_case(fake_la, tmp_path):
    la_dir, split = fake_la
    split.write_text(json.dumps({"train": ["CASE_A", "NOPE"], "validation": ["CASE_E"]}))
    with pytest.raises(FileNotFoundError, match="NOPE"):
        la_lite.prepare(la_dir, tmp_path / "run", split, budgets=(1,))


def test_arms_share_the_preset_and_differ_only_in_their_switches(tmp_path):
    cmds = {arm: la_lite.train_command(arm, tmp_path) for arm in la_lite.ARMS}
    for arm, cmd in cmds.items():
        files = cmd[cmd.index("--config_file") + 1]
        assert files.startswith("['configs/train.json','configs/presets/la_lite.json'")
        assert cmd[cmd.index("--output_dir") + 1] == str((tmp_path / arm).resolve())
    assert "supervised.json" in cmds["supervised-8"][5] and "supervised.json" in cmds["supervised-72"][5]
    assert "presets/" not in cmds["plgdf-8"][5].replace("presets/la_lite.json", "")
    assert cmds["supervised-72"][7].endswith("datalist_72.json") and cmds["plgdf-8"][7].endswith("datalist_8.json")
    with pytest.raises(ValueError, match="unknown arm"):
        la_lite.train_command("supervised-9", tmp_path)


def test_preset_fixes_the_benchmark_settings():
    preset = json.loads((REPO_ROOT / "configs" / "presets" / "la_lite.json").read_text())
    assert preset["spacing"] == [1.25, 1.25, 1.25] and preset["crop_foreground"] is False
    assert la_lite.RESAMPLE_FACTOR * 1.25 == 0.625
    for key in ("patch_size", "n_filters", "num_iterations", "labeled_batch_size", "unlabeled_batch_size"):
        assert key in preset


def test_parse_overrides():
    assert la_lite.parse_overrides(["--n_filters", "2", "--patch_size", "[16,16,16]", "--device", "cpu"]) == {
        "n_filters": 2,
        "patch_size": [16, 16, 16],
        "device": "cpu",
    }
    with pytest.raises(ValueError, match="pairs"):
        la_lite.parse_overrides(["--n_filters"])
    with pytest.raises(ValueError, match="start with"):
        la_lite.parse_overrides(["n_filters", "2"])


def test_train_without_prepare_is_a_clear_error(tmp_path, capsys):
    from scripts import la_lite as cli

    rc = cli.main(["train", "--arm", "plgdf-8", "--run-root", str(tmp_path / "run")])
    assert rc == 2 and "run the prepare step first" in capsys.readouterr().err
    assert not (tmp_path / "run" / "plgdf-8" / "log.jsonl").exists()


def test_failed_arm_keeps_the_record_of_a_finished_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    (run / "data" / "datalist_8.json").write_text("{}")
    (run / "plgdf-8").mkdir()
    (run / "plgdf-8" / "wall.json").write_text(json.dumps({"wall_seconds": 99.0}))
    monkeypatch.setattr(la_lite.subprocess, "call", lambda *a, **k: 3)
    with pytest.raises(RuntimeError, match="exit status 3"):
        la_lite.run_arm("plgdf-8", run)
    assert json.loads((run / "plgdf-8" / "wall.json").read_text()) == {"wall_seconds": 99.0}
    failed = list((run / "plgdf-8").glob("wall_failed_*.json"))
    assert len(failed) == 1 and json.loads(failed[0].read_text())["returncode"] == 3


def test_report_from_logs_and_summaries(tmp_path):
    run = tmp_path / "run"
    for arm, dice in (("supervised-8", 0.5), ("plgdf-8", 0.7)):
        d = run / arm
        (d / "eval_validation_last").mkdir(parents=True)
        (d / "log.jsonl").write_text(
            "\n".join(json.dumps({"iteration": i, "val_dice": dice * i / 300}) for i in (100, 200, 300)) + "\n"
        )
        (d / "wall.json").write_text(json.dumps({"wall_seconds": 12.5}))
        metrics = {k: {"mean": dice, "std": 0.1, "median": dice, "n": 2} for k in ("dice", "jaccard")}
        metrics.update({k: {"mean": 3.0, "std": 1.0, "median": 3.0, "n": 2} for k in ("hd95_vox", "asd_mm")})
        (d / "eval_validation_last" / "summary.json").write_text(json.dumps({"n_cases": 2, "metrics": metrics}))
        (d / "eval_validation_last" / "timing.json").write_text(json.dumps({"seconds_per_case": 1.5}))
    results = la_lite.report(run, ["supervised-8", "plgdf-8"], tmp_path / "report")
    assert results["plgdf-8"]["best_iteration"] == 300 and results["plgdf-8"]["wall_seconds"] == 12.5
    table = (tmp_path / "report" / "la_lite_validation.md").read_text()
    assert (
        "| plgdf-8 | last | 70.00 ± 10.00 | 70.00 | 70.00 ± 10.00 | 3.00 ± 1.00 | n/a | n/a | 3.00 ± 1.00 | 2 | 1.5 |"
        in table
    )
    assert "| supervised-8 | last | 50.00 ± 10.00" in table
    assert (tmp_path / "report" / "la_lite_curves.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "report" / "la_lite_validation.json").read_text())
    assert saved["supervised-8"]["curve"][-1] == [300, 0.5]


def test_la_lite_end_to_end_on_tiny_cases(fake_la, tmp_path, monkeypatch):
    """prepare -> train two arms (real bundle command, tiny settings) -> evaluate both protocols -> report."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    la_dir, split = fake_la
    run = tmp_path / "run"
    small_arms = {"plgdf-2": ((), 2, True), "supervised-3": (("configs/presets/supervised.json",), 3, False)}
    monkeypatch.setattr(la_lite, "ARMS", {**la_lite.ARMS, **small_arms})
    la_lite.prepare(la_dir, run, split, budgets=(2, 3))
    tiny = [a for a in TINY_TRAIN if a not in ("--spacing", "[3.0,3.0,3.0]")]
    tiny += [
        "--labeled_batch_size",
        "2",
        "--num_iterations",
        "4",
        "--val_interval",
        "2",
        "--device",
        "$torch.device('cpu')",
    ]
    arms = ["plgdf-2", "supervised-3"]
    net = ["--n_filters", "2", "--patch_size", "[16,16,16]"]
    for arm in arms:
        rec = la_lite.run_arm(arm, run, tiny)
        assert rec["returncode"] == 0 and rec["wall_seconds"] > 0
        assert json.loads((run / arm / "wall.json").read_text())["arm"] == arm
        summaries = la_lite.evaluate_arm(arm, run, la_dir, overrides=net)
        assert set(summaries) == {"last", "best"} and all(s["n_cases"] == 2 for s in summaries.values())
    paper = la_lite.evaluate_arm("plgdf-2", run, la_dir, protocol="paper", stride=(8, 8, 8), overrides=net)
    assert paper["last"]["info"]["inferer"]["name"] == "StridedSlidingWindowInferer"
    results = la_lite.report(run, arms, run / "report")
    assert set(results["plgdf-2"]["checkpoints"]) == {"last", "best", "last_paper", "best_paper"}
    assert [it for it, _ in results["supervised-3"]["curve"]] == [2, 4]
    table = (run / "report" / "la_lite_validation.md").read_text()
    assert table.count("| plgdf-2 |") == 4 and table.count("| supervised-3 |") == 2
    settings = {"default": {"overlap": 0.5, "mode": "gaussian"}, "paper": {"stride": [8, 8, 8]}}
    windows = la_lite.window_study(run, arms, la_dir, run / "report", settings=settings, overrides=net)
    assert set(windows) == {"plgdf-2 (last)", "supervised-3 (last)"}
    assert windows["plgdf-2 (last)"]["settings"]["paper"]["windows_per_volume"] == 8  # 20^3 at 1.25 mm, 16^3, 8
    assert (run / "report" / "la_lite_windows_validation.md").read_text().count("| supervised-3 (last) |") == 2
