"""Model Zoo CI style checks: flake8, black and isort at line length 120; no large files; no absolute paths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CODE = ["bundle", "benchmarks", "scripts", "tests"]


@pytest.mark.parametrize(
    "module,args",
    [
        ("flake8", ["--max-line-length", "120", *CODE]),
        ("black", ["--check", "--quiet", "--line-length", "120", *CODE]),
        ("isort", ["--check-only", "--quiet", "--profile", "black", "--line-length", "120", *CODE]),
    ],
)
def test_lint(module, args):
    pytest.importorskip(module)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{module} found problems:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"


def test_no_large_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    big = [f for f in files if (REPO_ROOT / f).is_file() and (REPO_ROOT / f).stat().st_size > 25 * 2**20]
    assert not big, f"files over 25 MB: {big}"


def test_no_absolute_paths_in_configs():
    for path in (REPO_ROOT / "configs").rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        json.loads(text)
        for bad in ("/work/", "/home/", "/root/", "/tmp/", "C:\\\\"):
            assert bad not in text, f"{path.name} contains an absolute path ({bad})"


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in ci.splitlines() if "pytest" in line]
    assert len(commands) == 1 and commands[0].strip() in readme
