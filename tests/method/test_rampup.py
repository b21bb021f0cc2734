"""Tests of bundle.method.rampup.ConsistencyRampUp."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from bundle.method.rampup import ConsistencyRampUp

try:
    from tests.conftest import SHARED_FIXTURES
except ImportError:  # pragma: no cover
    _data = Path(os.environ.get("PLGDF_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    SHARED_FIXTURES = _data.parent / "fixtures"

FIXTURE = SHARED_FIXTURES / "plgdf_reference_losses.npz"


def test_smooth_ramp_by_hand():
    ramp = ConsistencyRampUp(weight=1.0, length=6000)
    assert ramp(0) == pytest.approx(math.exp(-5.0))  # 0.0067379
    assert ramp(3000) == pytest.approx(math.exp(-1.25))  # t_r / 2: 0.2865048
    assert ramp(3000) == pytest.approx(0.2865048, rel=1e-6)
    assert ramp(6000) == 1.0
    assert ramp(15000) == 1.0
    assert ramp(3149) == pytest.approx(math.exp(-5 * (1 - 3149 / 6000) ** 2))
    assert ConsistencyRampUp(weight=0.3, length=100)(50) == pytest.approx(0.3 * math.exp(-1.25))


def test_stepped_ramp_floors_iteration():
    ramp = ConsistencyRampUp(weight=1.0, length=6000, step=150)
    assert ramp(149) == pytest.approx(math.exp(-5.0))
    assert ramp(3149) == pytest.approx(math.exp(-1.25))
    assert ramp(3150) == pytest.approx(math.exp(-5 * (1 - 21 / 40) ** 2))
    assert ramp(5999) == pytest.approx(math.exp(-5 * (1 / 40) ** 2))
    assert ramp(6000) == 1.0


def test_constant_and_errors():
    assert ConsistencyRampUp(weight=2.0, length=0)(0) == 2.0
    assert ConsistencyRampUp(weight=2.0, length=-1)(10**6) == 2.0
    with pytest.raises(ValueError, match="iteration"):
        ConsistencyRampUp()(-1)
    with pytest.raises(ValueError, match="step"):
        ConsistencyRampUp(step=0)
    with pytest.raises(ValueError, match="weight"):
        ConsistencyRampUp(weight=-1.0)


def test_reference_setting_matches_authors_weights():
    if not FIXTURE.exists():
        pytest.skip(f"reference test vectors not available: {FIXTURE}")
    data = np.load(FIXTURE)
    ramp = ConsistencyRampUp(weight=1.0, length=6000, step=150)  # sigmoid_rampup(iter_num // 150, 40)
    got = [ramp(int(t)) for t in data["rampup_t"]]
    np.testing.assert_allclose(got, data["rampup_w"], rtol=1e-6)
