"""Model Zoo CI style checks (its flake8 plugins, black, isort, pre-commit hooks); no large files; no absolute paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

CODE = ["bundle", "benchmarks", "scripts", "tests"]


@pytest.mark.parametrize(
    "module,args",
    [  # the Model Zoo's checks, with its settings in setup.cfg / pyproject.toml (.ci/zoo_format.sh runs the same)
        ("flake8", [*CODE]),
        ("black", ["--check", "--quiet", "--skip-magic-trailing-comma", *CODE]),
        ("isort", ["--check-only", "--quiet", *CODE]),
    ],
)
def test_lint(module, args):
    pytest.importorskip(module)
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{module} found problems:\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}"


def test_zoo_pre_commit_hooks():
    """pretty-format-json --indent=4 --no-sort-keys, end-of-file-fixer and check-docstring-first (read-only here)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    bad_json = []
    for f in files:
        if f.endswith(".json") and not f.startswith("docs/results/"):
            text = (REPO_ROOT / f).read_text(encoding="utf-8")
            if text != json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n":
                bad_json.append(f)
    assert not bad_json, f"not formatted as pretty-format-json --indent=4 --no-sort-keys: {bad_json}"
    binary = (".pt", ".ts", ".png", ".jpg", ".gz", ".h5")
    bad_end = []
    for f in files:
        path = REPO_ROOT / f
        if f.endswith(binary) or not path.is_file() or path.stat().st_size == 0:
            continue
        data = path.read_bytes()
        if not data.endswith(b"\n") or data.endswith(b"\n\n"):
            bad_end.append(f)
    assert not bad_end, f"end-of-file-fixer would change: {bad_end}"
    tool = shutil.which("check-docstring-first")
    if tool:
        py = [f for f in files if f.endswith(".py")]
        proc = subprocess.run([tool, *py], cwd=REPO_ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-2000:]


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
