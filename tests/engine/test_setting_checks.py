"""Settings checks: a mistyped id or a wrong value stops the run before anything starts, naming the setting."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import REPO_ROOT, TINY_TRAIN, TRAIN_CONFIG, run_bundle

from bundle.engine.setting_checks import SettingsError, check_command_line, check_settings, config_ids, parse_run_argv

MAIN = str(REPO_ROOT / ".venv" / "lib" / "monai" / "bundle" / "__main__.py")  # what python -m sets as argv[0]
TRAIN = str(REPO_ROOT / "configs" / "train.json")


def _argv(*args: str, files: str = f"['{TRAIN}']") -> list[str]:
    return [MAIN, "run", "--config_file", files, *args]


def test_parse_run_argv_reads_files_and_typed_overrides():
    files, overrides = parse_run_argv(_argv("--lr", "0.5", "--patch_size", "[32,32,32]", "--resume=True"))
    assert files == [TRAIN]
    assert overrides == {"lr": 0.5, "patch_size": [32, 32, 32], "resume": True}
    assert parse_run_argv(["/usr/bin/pytest", "-q"]) is None  # not a bundle command: nothing checked
    check_command_line(["/usr/bin/pytest", "run", "--nonsense", "1"])


@pytest.mark.parametrize(
    "args, expected",
    [
        (("--num_iteration", "5"), "--num_iteration: not a setting.*did you mean num_iterations"),
        (("--modalty", "mr"), "--modalty: not a setting.*modality"),
        (("--lr", "abc"), r"lr = 'abc' \(command line\): must be a number > 0"),
        (("--patch_size", "[30,30,30]"), "patch_size = .*divisible by 16"),
        (("--modality", "xray"), "modality = 'xray'.*one of 'ct', 'mr', 'flair', 'none'"),
        (("--use_mix", "false"), "use_mix = 'false'.*True or False"),
        (("--spacing", "null"), "spacing = 'null'.*or None"),
        (("--validate#key_metric#val_dice", "1"), "--validate#key_metric#val_dice: not a setting.*val_mean_dice"),
    ],
)
def test_command_line_problems_are_named(args, expected):
    with pytest.raises(SettingsError, match=expected):
        check_command_line(_argv(*args))


def test_valid_command_lines_pass():
    check_command_line(_argv("--num_iterations", "5", "--use_mix", "False", "--spacing", "None", "--seed", "3"))
    check_command_line(_argv("--train#trainer#max_epochs", "2", "--train#handlers#5#_disabled_", "True"))
    check_command_line(_argv("--augmentation#2#max_k", "3"))  # a new argument of an existing component
    with pytest.raises(SettingsError, match="--lr#max_k: not a setting"):
        check_command_line(_argv("--lr#max_k", "3"))  # lr is a number, not a component
    presets = ",".join(f"'{REPO_ROOT / 'configs' / f}'" for f in ("train.json", "presets/la_lite.json"))
    check_command_line(_argv(files=f"[{presets}]"))
    infer = ",".join(f"'{REPO_ROOT / 'configs' / f}'" for f in ("inference.json", "evaluate.json"))
    check_command_line(_argv("--eval_dir", "x", files=f"[{infer}]"))  # evaluate.json adds ids: allowed


def test_override_file_with_an_unknown_id(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"num_iteration": 5, "lr": 0.001}))
    with pytest.raises(
        SettingsError, match=r"mine\.json: 'num_iteration' is not a setting of train\.json.*num_iterations"
    ):
        check_command_line(_argv(files=f"['{TRAIN}','{mine}']"))


def test_value_checks_and_config_ids():
    assert check_settings({"lr": 0.01, "patch_size": [16, 32, 48], "modality": "ct", "amp": True}) == []
    assert len(check_settings({"lr": -1, "n_filters": 0, "num_classes": 1, "sw_overlap": 1.0})) == 4
    assert check_settings({"rampup_length": "$int(0.4 * @num_iterations)", "lr": "@other"}) == []
    assert {"a", "a#b", "a#b#0", "c"} == set(config_ids({"a": {"b": [1]}, "+c": 2}))


@pytest.mark.slow
def test_mistyped_setting_stops_the_run_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint_last.pt").write_bytes(b"an earlier run's checkpoint")
    before = hashlib.sha256((out / "checkpoint_last.pt").read_bytes()).hexdigest()
    proc = run_bundle(TRAIN_CONFIG, *TINY_TRAIN, "--num_iteration", "5", "--output_dir", str(out), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "--num_iteration: not a setting" in proc.stderr and "num_iterations" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_last.pt"]  # no run_settings.json, no log
    assert hashlib.sha256((out / "checkpoint_last.pt").read_bytes()).hexdigest() == before


def test_window_settings_take_one_value_or_one_per_axis():
    assert (
        check_settings({"sw_overlap": [0.66, 0.66, 0.75], "sw_sigma_scale": 0.5, "sw_average": "probabilities"}) == []
    )
    assert check_settings({"sw_overlap": 0.5, "sw_sigma_scale": [0.5, 0.5, 1.0], "sw_average": "logits"}) == []
    errors = check_settings({"sw_overlap": [0.5, 0.5], "sw_sigma_scale": 0, "sw_average": "votes"})
    assert len(errors) == 3
    assert "sw_overlap = [0.5, 0.5]" in errors[0] and "list of three" in errors[0]
    assert any("sw_sigma_scale" in e and "> 0" in e for e in errors)
    assert any("sw_average" in e and "'probabilities'" in e for e in errors)


def test_window_flips_are_lists_of_spatial_axes():
    assert check_settings({"sw_window_flips": [[], [0, 1, 2]]}) == [] == check_settings({"sw_window_flips": [[]]})
    for bad in ([0, 1], [[3]], [[0, 0]], "[[], [0]]", [[True]]):
        (error,) = check_settings({"sw_window_flips": bad})
        assert error.startswith(f"sw_window_flips = {bad!r}") and "lists of spatial axes 0-2" in error
