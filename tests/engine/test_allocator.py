"""cpu_allocator: 'reuse' keeps freed tensor memory in the process (fewer page faults), 'system' leaves glibc alone."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from bundle.engine import allocator

_PROBE = """
import json, resource, sys, torch
from bundle.engine.allocator import configure_cpu_allocator
state = configure_cpu_allocator(sys.argv[1])
def step():  # two tensors far above glibc's mmap threshold, freed again, as an iteration's activations
    x, y = torch.ones(16 * 2**20), torch.ones(5 * 2**20)
    del x, y
for _ in range(10):  # the heap settles (alignment padding makes it grow for a few rounds)
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"state": state, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)
def test_reuse_keeps_freed_pages():
    system, reuse = _probe("system"), _probe("reuse")
    assert system["state"] == {"cpu_allocator": "system"} and reuse["state"] == {"cpu_allocator": "reuse"}
    # system: every tensor is a fresh mmap, ~21k page faults a step; reuse: the same heap pages again
    assert system["faults"] > 5 * 10_000
    assert reuse["faults"] < system["faults"] / 5


def test_rejects_unknown_mode_and_is_a_no_op_elsewhere(monkeypatch):
    with pytest.raises(ValueError, match="cpu_allocator"):
        allocator.configure_cpu_allocator("jemalloc")
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    monkeypatch.setattr(allocator, "_applied", None)
    assert allocator.configure_cpu_allocator("reuse") == {"cpu_allocator": "system", "reason": "not Linux with glibc"}


def test_the_configs_apply_it_first(repo_root):
    for name in ("train.json", "inference.json"):
        config = json.loads((repo_root / "configs" / name).read_text())
        assert config["cpu_allocator"] == "reuse"
        steps = config["initialize"]
        assert steps.index("$bundle.engine.allocator.configure_cpu_allocator(@cpu_allocator)") <= 2
