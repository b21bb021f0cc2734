"""The Model Zoo's own ``ci/verify_bundle.py`` on this bundle, through ``scripts/zoo_verify.sh``: modes ``min`` (the
Zoo's CPU premerge) and ``full`` (its GPU premerge: properties, network in/out, TorchScript) pass on a copy of the
bundle with the untrained ``network_def`` as ``models/model.pt``. Needs the Zoo snapshot (a model-zoo checkout or git
directory: ``PLGDF_MODEL_ZOO``, else ``../.mirror/Project-MONAI+model-zoo/repo``) and the local metadata schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, SHARED_SCHEMA

SCRIPT = REPO_ROOT / "scripts" / "zoo_verify.sh"
ZOO = Path(os.environ.get("PLGDF_MODEL_ZOO", REPO_ROOT.parent / ".mirror" / "Project-MONAI+model-zoo" / "repo"))


def _zoo_present() -> bool:
    if (ZOO / "ci" / "verify_bundle.py").is_file():
        return True
    probe = ["git", "--git-dir", str(ZOO), "cat-file", "-e", "HEAD:ci/verify_bundle.py"]
    return ZOO.is_dir() and subprocess.run(probe, capture_output=True).returncode == 0


def _run(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    """The script with this interpreter's ``python`` first on PATH and its temporary Zoo root under ``tmp``."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, PATH=path, TMPDIR=str(tmp), OMP_NUM_THREADS="1")
    cmd = ["bash", str(SCRIPT), *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_zoo_verify_bundle_min_and_full_pass(tmp_path):
    if not _zoo_present():
        pytest.skip(f"Model Zoo snapshot not available: {ZOO} (set PLGDF_MODEL_ZOO)")
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"metadata schema not available: {SHARED_SCHEMA}")
    proc = _run(str(ZOO), tmp=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("zoo verify_bundle ")]
    assert summary[0] == "zoo verify_bundle min: PASS (directory, version/changelog, metadata format)", summary
    assert summary[1].startswith(
        "zoo verify_bundle full: PASS (directory, version/changelog, metadata format, "
    ), summary
    for check in ("properties", "data shape", "TorchScript"):
        assert check in summary[1], summary
    assert "UNTRAINED network_def" in proc.stdout  # says that the checked weights are not a trained model
    assert list(tmp_path.iterdir()) == []  # the temporary Zoo root is removed


def test_zoo_verify_without_zoo_says_so(tmp_path):
    missing = tmp_path / "no_zoo"
    proc = _run(str(missing), tmp=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Model Zoo not found at '{missing}'"), lines
