"""Smoke test of bench/admin_load.py: small versions of its parts, structure and
correctness only (daemon up, no frame lost, every call ok), never timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import admin_load

pytestmark = pytest.mark.slow


def test_attack_small(tmp_path: Path) -> None:
    result = admin_load.attack(tmp_path, crash_requests=200, fuzz_rounds=24, pin=False,
                               verbose=False)  # fmt: skip
    assert result["ok"], result
    assert result["crash_answers"] == {"400": 200}
    assert result["calls"]["lost"] == 0 and result["calls"]["sent"] > 0


def test_mixed_and_cost_small(tmp_path: Path) -> None:
    doc = admin_load.mixed(tmp_path, calls=3, admin_rate=50, settle_s=0.3, window_s=1.0,
                           pin=False, verbose=False)  # fmt: skip
    tags = [p["phase"] for p in doc["phases"]]
    assert tags == ["no-admin-load", "default-limits", "limits-off"]
    for phase in doc["phases"]:
        assert phase["daemon_alive"] and phase["lost"] == 0 and phase["calls_ok"] == 3
        assert phase["lateness"]["streams"] == 3
    assert doc["phases"][2]["admin"]["statuses"].get("404", 0) > 0
    cost = admin_load.cost(tmp_path, rate=50, window_s=1.0, kinds=("404",), modes=(0,), rounds=1,
                           pin=False, verbose=False)  # fmt: skip
    [point] = cost["points"]
    assert point["answered"] == 50 and point["us_per_request"] is not None
