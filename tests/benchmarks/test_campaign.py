"""LA-lite campaign: run specs, paired statistics, and a whole tiny campaign (train, evaluate, figures, summary)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, TINY_TRAIN
from test_la_lite import fake_la  # noqa: F401  (fixture)

from benchmarks import campaign, campaign_report


def test_run_specs():
    run = campaign.Run.parse("plgdf-4:2")
    assert (run.arm, run.labels, run.seed, run.name, run.spec) == ("plgdf", 4, 2, "plgdf-4", "plgdf-4:2")
    assert run.dir("r").as_posix() == "r/labels4/plgdf/seed2"
    for bad, message in (("plgdf4:0", "expected"), ("fancy-4:0", "unknown arm"), ("plgdf-5:0", "budget 5")):
        with pytest.raises(ValueError, match=message):
            campaign.Run.parse(bad)
    plan = [campaign.Run.parse(s) for s in campaign.DEFAULT_PLAN]
    assert len(plan) == 15 and len(set(plan)) == 15
    assert [r.labels for r in plan] == [4] * 6 + [72] * 3 + [8] * 6  # the issue's order


def test_plgdf_plus_screen_arms_add_one_preset_each(tmp_path):
    for arm, preset in (
        ("plgdf_semi_clean", "semi_on_clean"),
        ("plgdf_authors_aug", "authors_augmentation"),
        ("plgdf_plus", "plgdf_plus"),
        ("plgdf_average", "average_model"),
    ):
        cmd = campaign.train_command(campaign.Run.parse(f"{arm}-4:0"), tmp_path)
        files = cmd[cmd.index("--config_file") + 1]
        assert files == f"['configs/train.json','configs/presets/la_lite.json','configs/presets/{preset}.json']"
        assert (REPO_ROOT / "configs" / "presets" / f"{preset}.json").is_file()


def test_train_command_sets_seed_budget_and_folder(tmp_path):
    cmd = campaign.train_command(campaign.Run.parse("supervised-8:1"), tmp_path, ["--n_filters", "4"])
    text = " ".join(cmd)
    assert "configs/presets/la_lite.json" in text and "configs/presets/supervised.json" in text
    assert cmd[cmd.index("--seed") + 1] == "1" and cmd[-2:] == ["--n_filters", "4"]
    assert cmd[cmd.index("--datalist_file") + 1].endswith("data/datalist_8.json")
    assert cmd[cmd.index("--output_dir") + 1].endswith("labels8/supervised/seed1")


def test_paired_gain_constant_difference():
    b = np.array([[70.0, 80.0, 60.0], [72.0, 78.0, 61.0]])
    g = campaign.paired_gain(b + 5.0, b, ceiling=b + 10.0, n_boot=200)
    assert g["mean"] == pytest.approx(5.0) and g["ci95"] == pytest.approx([5.0, 5.0])
    assert g["gap_recovered"] == pytest.approx(0.5) and g["gap_recovered_ci95"] == pytest.approx([0.5, 0.5])
    assert (g["n_seeds"], g["n_cases"]) == (2, 3)


def test_paired_gain_interval_covers_noise_and_is_paired():
    rng = np.random.default_rng(1)
    case_effect = rng.normal(0, 15, size=8)  # large case spread, shared by both arms
    b = 70 + case_effect + rng.normal(0, 1, size=(3, 8))
    a = b + 3 + rng.normal(0, 1, size=(3, 8))
    g = campaign.paired_gain(a, b, n_boot=2000)
    assert g["ci95"][0] < g["mean"] < g["ci95"][1]
    assert 1.5 < g["ci95"][0] and g["ci95"][1] < 4.5  # pairing removes the case spread
    with pytest.raises(ValueError, match="same"):
        campaign.paired_gain(a, b[:2])


def test_git_commit_of_results_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    (repo / "other.txt").write_text("work in progress")
    subprocess.run([*git, "add", "other.txt"], check=True)
    (repo / "fig.json").write_text("{}")
    subprocess.run(["git", "-C", str(repo), "config", "user.email", "t@t"], check=True)
    subprocess.run(["git", "-C", str(repo), "config", "user.name", "t"], check=True)
    assert campaign.git_commit_results(repo, [repo / "fig.json"], "figures")
    shown = subprocess.run(["git", "-C", str(repo), "show", "--name-only", "--format="], capture_output=True, text=True)
    assert shown.stdout.split() == ["fig.json"]  # the staged other.txt stays staged, not committed
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout.strip() == "A  other.txt"


def test_tiny_campaign_end_to_end(fake_la, tmp_path, monkeypatch):  # noqa: F811
    """Three runs (supervised-2, plgdf-2, ceiling supervised-3) through the real bundle command: train with teacher
    validation, interrupted-run resume, 8 evaluations per run, per-run figures, fp16 model, summary, curves."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(campaign, "BUDGETS", (2, 3))
    monkeypatch.setattr(campaign_report, "CEILING", 3)
    la_dir, split = fake_la
    run_root, results = tmp_path / "runs", tmp_path / "results"
    tiny = [a for a in TINY_TRAIN if a not in ("--spacing", "[3.0,3.0,3.0]")]
    tiny += ["--labeled_batch_size", "2", "--num_iterations", "4", "--val_interval", "2"]
    tiny += ["--device", "$torch.device('cpu')", "--n_filters", "2", "--patch_size", "[16,16,16]"]
    plan = ["supervised-2:0", "plgdf-2:0", "supervised-3:0"]
    done = campaign.run_campaign(plan, run_root, la_dir, results, tiny, split)
    assert done == plan
    run_dir = campaign.Run.parse("plgdf-2:0").dir(run_root)
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log if "val_dice_teacher" in r] == [2, 4]
    assert all("label_fg" in r for r in log if "loss" in r)
    assert (run_dir / "teacher_best.pt").is_file()
    record = json.loads((run_dir / "run.json").read_text())
    assert record["finished"] and record["precision"] == "fp32" and record["attempts"][0]["machine"]["cpu"]
    assert len(record["attempts"][0]["commit"] or "x" * 40) == 40

    fig = json.loads((results / "la_lite_runs" / "plgdf-2_seed0.json").read_text())
    assert set(fig["evaluations"]) == set(campaign.variants()) and len(campaign.variants()) == 8
    assert all(len(e["cases"]) == 2 for e in fig["evaluations"].values())
    assert fig["evaluations"]["paper/best/student"]["inferer"]["name"] == "StridedSlidingWindowInferer"
    assert [p[0] for p in fig["curves"]["val_dice"]] == [2, 4] and fig["curves"]["pseudo_fg"]

    model = torch.load(results / "models" / "la_lite_plgdf-2_seed0.pt", weights_only=True)
    assert all(v.dtype == torch.float16 for v in model.values() if v.is_floating_point())

    summary = json.loads((results / "la_lite_summary.json").read_text())
    assert (summary["protocol"], summary["checkpoint"], summary["model"]) == ("paper_stride", "best", "student")
    block = summary["budgets"]["2"]
    # the repo's plgdf_plus preset only changes what is deployed, so the headline scores the plgdf runs as deployed
    assert set(block["dice"]) == {"supervised", "plgdf", "supervised_72", "plgdf_plus"}
    assert summary["plgdf_plus_from_plgdf_runs"] and block["plgdf_plus_variant"] == "paper/best/best_of_both"
    deployed = fig["evaluations"][f"paper/best/{summary['best_of_both']['plgdf-2']['0']}"]["cases"].values()
    assert block["dice"]["plgdf_plus"]["0"] == pytest.approx(100 * np.mean([c["dice"] for c in deployed]), abs=0.01)
    assert set(block["dice"]["plgdf"]) == {"0"} and set(block["paired_gain"]) >= {"mean", "ci95"}
    gain = block["dice"]["plgdf"]["0"] - block["dice"]["supervised"]["0"]
    assert block["paired_gain"]["mean"] == pytest.approx(gain)
    assert "gap_recovered" in block
    assert (results / "la_lite_curves_2labels.png").stat().st_size > 1000
    assert "Headline" in (results / "la_lite_campaign.md").read_text()

    # a second call skips finished runs; a run whose figures are gone but checkpoints exist is not retrained
    (results / "la_lite_runs" / "supervised-3_seed0.json").unlink()
    ckpt = campaign.Run.parse("supervised-3:0").dir(run_root) / "checkpoint_last.pt"
    mtime = ckpt.stat().st_mtime_ns
    assert campaign.run_campaign(plan, run_root, la_dir, results, tiny, split) == ["supervised-3:0"]
    assert ckpt.stat().st_mtime_ns == mtime

    # PLGDF+ candidate 2 screened on the finished run: BatchNorm re-estimated, scored at both protocols
    from benchmarks.bn_screen import screen_bn

    net = {"n_filters": 2, "patch_size": [16, 16, 16]}
    screen = screen_bn(campaign.Run.parse("plgdf-2:0"), run_root, la_dir, n_batches=2, batch_size=2, overrides=net)
    assert set(screen) == {"batches", "batch_size", "default", "paper"} and screen["batches"] == 2
    assert all(0.0 <= screen[p][k] <= 1.0 for p in ("default", "paper") for k in ("unchanged", "bn"))
    assert (run_dir / "eval_models" / "student_best_bn.pt").is_file()


def test_interrupted_run_resumes(fake_la, tmp_path, monkeypatch):  # noqa: F811
    """A run whose training died (non-zero exit) is recorded as unfinished and resumed from checkpoint_last.pt."""
    monkeypatch.setattr(campaign, "BUDGETS", (2, 3))
    run = campaign.Run.parse("supervised-2:1")
    (run.dir(tmp_path)).mkdir(parents=True)
    calls = []

    def fake_call(cmd, cwd=None):
        calls.append(cmd)
        return 137 if len(calls) == 1 else 0

    monkeypatch.setattr(campaign.subprocess, "call", fake_call)
    with pytest.raises(RuntimeError, match="exit status 137"):
        campaign.train(run, tmp_path)
    (run.dir(tmp_path) / "checkpoint_last.pt").write_bytes(b"x")
    record = campaign.train(run, tmp_path)
    assert record["finished"] and [a["returncode"] for a in record["attempts"]] == [137, 0]
    assert "--resume" not in calls[0] and calls[1][-2:] == ["--resume", "True"]
    assert campaign.train(run, tmp_path) is not None and len(calls) == 2  # finished: not run again


@pytest.mark.slow
def test_average_arm_scores_the_average_model(fake_la, tmp_path, monkeypatch):  # noqa: F811
    """A run of the plgdf_average arm adds the average model's best to the evaluated models (both protocols) and its
    validation curve to the figures; the summary is still built."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(campaign, "BUDGETS", (2, 3))
    la_dir, split = fake_la
    run_root, results = tmp_path / "runs", tmp_path / "results"
    tiny = [a for a in TINY_TRAIN if a not in ("--spacing", "[3.0,3.0,3.0]")]
    tiny += ["--labeled_batch_size", "2", "--num_iterations", "4", "--val_interval", "2"]
    tiny += ["--device", "$torch.device('cpu')", "--n_filters", "2", "--patch_size", "[16,16,16]"]
    assert campaign.run_campaign(["plgdf_average-2:0"], run_root, la_dir, results, tiny, split) == ["plgdf_average-2:0"]
    fig = json.loads((results / "la_lite_runs" / "plgdf_average-2_seed0.json").read_text())
    assert set(fig["evaluations"]) == set(campaign.variants()) | {"paper/best/average", "default/best/average"}
    assert [p[0] for p in fig["curves"]["val_dice_average"]] == [2, 4]
    run_dir = campaign.Run.parse("plgdf_average-2:0").dir(run_root)
    scored, saved = (
        torch.load(f, weights_only=True)
        for f in (run_dir / "eval_models" / "average_best.pt", run_dir / "average_best.pt")
    )
    assert scored.keys() == saved.keys() and all(torch.equal(scored[k], saved[k]) for k in saved)
