"""Shared test helpers: where the real data lives, and a tiny-volume factory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PLGDF_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_FIXTURES = SHARED_DATA.parent / "fixtures"
SHARED_SCHEMA = SHARED_DATA.parent / "monai" / "meta_schema_20240725.json"


def shared_path(*parts: str) -> Path:
    """Path below ``../shared/data``; skips the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


# The smallest settings of the real training command used by the end-to-end tests.
TINY_TRAIN = [
    "--n_filters", "2", "--patch_size", "[16,16,16]", "--spacing", "[3.0,3.0,3.0]",
    "--labeled_batch_size", "1", "--unlabeled_batch_size", "1", "--print_interval", "1",
]  # fmt: skip
