"""Bundle configs: MONAI's property check, and presets that only override existing settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PRESETS = sorted((REPO_ROOT / "configs" / "presets").glob("*.json"))


def test_train_check_properties():
    code = (
        "from monai.bundle import ConfigWorkflow\n"
        "w = ConfigWorkflow(config_file='configs/train.json', meta_file='configs/metadata.json', "
        "workflow_type='train')\n"
        "w.initialize()\n"
        "print('PROPS', w.check_properties())\n"
    )
    # check_properties resolves _target_s: the bundle root must be importable (bundle.md)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert "PROPS []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]


def _has_id(config: dict, key: str) -> bool:
    """``key`` names an existing id, or a new argument of an existing component (a dict with ``_target_``)."""
    node = config
    parts = key.replace("::", "#").split("#")
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return False
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return isinstance(node, dict) and "_target_" in node and i == len(parts) - 1
    return True


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_override_existing_ids_only(preset):
    """A typo in a preset would silently add an unused id; merging would also replace whole top-level dicts."""
    override = json.loads(preset.read_text())
    assert override, f"{preset.name} is empty"
    # a preset overrides either the training or the inference config
    bases = {name: json.loads((REPO_ROOT / "configs" / name).read_text()) for name in ("train.json", "inference.json")}
    matching = [name for name, base in bases.items() if all(_has_id(base, key) for key in override)]
    assert matching, f"{preset.name}: ids {list(override)} are not all ids of train.json or inference.json"
    for key, value in override.items():
        assert not isinstance(value, dict), f"{preset.name}: {key!r} replaces a whole dict; use flat ids"


def test_plgdf_plus_preset_validates_the_teacher_and_deploys_the_better_model():
    """The PLGDF+ preset (issue #18) on top of train.json: the teacher is validated and deployment follows it."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / "train.json"), str(REPO_ROOT / "configs/presets/plgdf_plus.json")])
    assert parser.get_parsed_content("validate_teacher") is True
    assert parser.get_parsed_content("deploy_model") == "best_of_both"
    assert parser.get_parsed_content("use_semi") is True  # otherwise the paper's method
