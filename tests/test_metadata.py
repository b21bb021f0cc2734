"""Model Zoo readiness: metadata against the MONAI schema, version and changelog, network I/O description, licence and
README sections, no absolute paths in the configs, no file over 25 MB."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import pytest

import bundle
from tests.conftest import REPO_ROOT, SHARED_SCHEMA

CONFIGS = REPO_ROOT / "configs"
META = CONFIGS / "metadata.json"
MAX_FILE_BYTES = 25 * 1024 * 1024
README_SECTIONS = (
    "overview",
    "data",
    "training configuration",
    "input",
    "output",
    "performance",
    "commands",
    "references",
    "license",
)


def _metadata() -> dict:
    return json.loads(META.read_text(encoding="utf-8"))


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def test_metadata_validates_against_schema():
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"schema not available: {SHARED_SCHEMA}")
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(META), filepath=str(SHARED_SCHEMA))


def test_metadata_missing_field_is_rejected(tmp_path):
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"schema not available: {SHARED_SCHEMA}")
    pytest.importorskip("jsonschema")
    from monai.bundle import verify_metadata

    broken = _metadata()
    del broken["network_data_format"]
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError):
        verify_metadata(meta_file=str(path), filepath=str(SHARED_SCHEMA))


def test_version_and_changelog_consistent():
    meta = _metadata()
    version = meta["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert max(meta["changelog"], key=_version_key) == version  # the newest changelog entry is this version
    assert bundle.__version__ == version
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == version
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[?v?(\d+\.\d+\.\d+)\]?", changelog, flags=re.M)
    assert headings and headings[0] == version, headings  # newest first
    assert set(meta["changelog"]) == set(headings)


def test_network_data_format_matches_configs():
    fmt = _metadata()["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    for name in ("train.json", "inference.json"):
        config = json.loads((CONFIGS / name).read_text(encoding="utf-8"))
        assert image["num_channels"] == config["in_channels"], name
        assert pred["num_channels"] == config["num_classes"], name
    assert pred["channel_def"]["0"] == "background"
    assert len(pred["channel_def"]) == pred["num_channels"]
    for shape in (image["spatial_shape"], pred["spatial_shape"]):
        assert shape == ["16*n"] * 3  # four stride-2 down-samplings


def test_license_and_readme_sections():
    assert "Apache License" in (REPO_ROOT / "LICENSE").read_text(encoding="utf-8")
    assert (REPO_ROOT / "docs" / "data_license.txt").read_text(encoding="utf-8").strip()
    readme = (REPO_ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    headings = [h.strip().lower() for h in re.findall(r"^#+\s+(.+)$", readme, flags=re.M)]
    for section in README_SECTIONS:
        assert any(h.startswith(section) or section in h for h in headings), f"README lacks a '{section}' section"


def _strings(value, where=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}#{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}#{i}")
    elif isinstance(value, str):
        yield where, value


_DRIVE_OR_HOME = re.compile(r"^(?:[A-Za-z]:[\\/]|~[/\\]|\\\\)")
_LITERAL = re.compile(r"""(['"])(.*?)\1""")


def absolute_path_in(text: str) -> str | None:
    """The absolute path that a config value names, or None.

    A plain value is absolute when it starts with ``/``, a drive letter or ``~/``. In a ``$`` expression a quoted
    literal is, unless it is appended to something (``@bundle_root + '/models'``).
    """
    if text.startswith(("http://", "https://")):
        return None
    if not text.startswith("$"):
        return text if text.startswith("/") or _DRIVE_OR_HOME.match(text) else None
    for m in _LITERAL.finditer(text):
        literal = m.group(2)
        before = text[: m.start()].rstrip()
        if literal.startswith("/") and not literal.startswith("//") and not before.endswith("+"):
            return literal
        if _DRIVE_OR_HOME.match(literal):
            return literal
    return None


def test_no_absolute_paths_in_configs():
    files = sorted(CONFIGS.rglob("*.json"))
    assert files
    bad = []
    for path in files:
        for where, text in _strings(json.loads(path.read_text(encoding="utf-8"))):
            found = absolute_path_in(text)
            if found:
                bad.append(f"{path.relative_to(REPO_ROOT)}{where}: {found}")
    assert not bad, "absolute paths in configs:\n" + "\n".join(bad)


def test_absolute_path_detection():
    for text in ("/data/LA", "C:\\data", "~/data", "$'/work/data' + @x", "$os.path.join('/data', @x)"):
        assert absolute_path_in(text), text
    for text in (
        "$@bundle_root + '/models/model.pt'",
        "$@output_dir + '/tensorboard'",
        "data/demo",
        "https://x/y",
        "$[max(1, r // 4) for r in @x]",
        "@dataset_dir",
    ):
        assert absolute_path_in(text) is None, text


def _repo_files() -> list[Path]:
    """Files git tracks or would add (untracked, not ignored); every file below the root without git."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO_ROOT / p for p in out.decode().split("\0") if p]


def test_no_file_over_25_mb():
    big = [
        f"{p.relative_to(REPO_ROOT)} ({p.stat().st_size / 2**20:.1f} MiB)"
        for p in _repo_files()
        if p.is_file() and p.stat().st_size > MAX_FILE_BYTES
    ]
    assert not big, "files over 25 MB (the Model Zoo limit): " + ", ".join(big)


def _install_requires() -> dict[str, str]:
    """``{normalised name: specifier}`` of setup.cfg's install_requires."""
    from packaging.requirements import Requirement

    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    reqs = [Requirement(line) for line in setup["options"]["install_requires"].split("\n") if line.strip()]
    return {r.name.lower().replace("_", "-"): r.specifier for r in reqs}


def test_metadata_pins_match_setup_cfg():
    """The Zoo's CI installs exactly the metadata's versions (ci/get_bundle_requirements.py); pip installs setup.cfg's
    ranges: every pin is inside its range and every dependency is pinned (the pins are also chosen to install on
    Python 3.10-3.12, e.g. scipy 1.15.x: scipy >= 1.16 needs Python 3.11)."""
    meta = _metadata()
    pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    pins.update({k.lower(): v for k, v in meta["required_packages_version"].items()})
    ranges = _install_requires()
    assert set(pins) == set(ranges), (sorted(set(pins) - set(ranges)), sorted(set(ranges) - set(pins)))
    outside = {name: (pins[name], str(spec)) for name, spec in ranges.items() if pins[name] not in spec}
    assert not outside, f"metadata pins outside setup.cfg's ranges: {outside}"
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    assert setup["options"]["python_requires"] == ">=3.10"
    assert _version_key(pins["scipy"]) < (1, 16)  # scipy 1.16+ has no Python 3.10 wheels


def test_metadata_names_the_target_and_reference():
    meta = _metadata()
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert (image["modality"], image["format"]) == ("CT", "hounsfield")
    assert pred["value_range"] == [0, 1] and pred["channel_def"]["1"] not in ("organ", "foreground", "")
    assert "arXiv:2311.10349" in meta["references"][0] and "2025" in meta["references"][0]
