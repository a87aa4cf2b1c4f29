"""Smoke tests of the benchmarks and chaos scenarios in ``bench/``: each runs a small,
fast version of the real thing (real processes, real sockets on 127.0.0.1) and checks
its structure and correctness (every call ok, no frame lost, exit codes), never timings:
the figures themselves come from ``make bench`` / ``make chaos`` on a quiet machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import chaos, headline, scaling, soak, tls_cost

pytestmark = pytest.mark.slow


def _check_point(p: dict[str, Any], n: int) -> None:
    assert p["n"] == n
    assert p["calls_ok"] == n and p["calls_failed"] == 0, p["hangups"]
    assert p["lost"] == 0
    # Every frame came back, but those bridge's playout trimmed on purpose (counted).
    assert p["frames_echoed"] + p.get("trimmed", 0) >= p["frames_sent"] > 0
    for key in ("cpu_percent", "cpu_us_per_call_frame", "rss_per_call_kb", "rtt_p50_ms",
                "rtt_p99_ms", "added_p50_ms", "added_p99_ms"):  # fmt: skip
        assert isinstance(p[key], (int, float)), key
    assert p["lateness"]["streams"] >= 1
    assert isinstance(p["lateness"]["p99_ms"], (int, float))
    assert isinstance(p["within_slo"], bool)


def test_headline_bridge_and_baseline(tmp_path: Path) -> None:
    doc = headline.run(
        bridge_ladder=[5], baseline_ladder=[5], window_s=0.5, settle_s=0.3, refine_steps=0,
        repeats=1, retries=0, margin_s=1.0, pin=False, save=False, verbose=False,
    )  # fmt: skip
    (bridge,) = doc["bridge"]
    (baseline,) = doc["baseline"]
    _check_point(bridge, 5)
    _check_point(baseline, 5)
    assert bridge["lateness"]["source"].startswith("GET /v1/streams")
    assert baseline["lateness"]["source"].startswith("baseline pacer")
    assert [d["n"] for d in doc["direct"]] == [5]
    assert doc["direct"][0]["lost"] == 0
    for key in ("bridge_calls_per_core", "baseline_calls_per_core", "ratio", "calls_per_core_met"):
        assert key in doc["result"]
    png = headline.plot_results(doc, tmp_path / "headline.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tls_cost_plain_and_tls_side_by_side() -> None:
    doc = tls_cost.run(
        n=3, rounds=1, window_s=0.5, settle_s=0.3, margin_s=1.0, retries=0, pin=False, save=False,
        verbose=False,
    )  # fmt: skip
    assert doc["result"]["all_ok"], doc["points"]
    for variant in ("plain", "tls"):
        (point,) = doc["points"][variant]
        assert point["calls_ok"] == 3 and point["lost"] == 0
        assert point["call_frames_in_window"] > 0
        assert isinstance(point["cpu_us_per_call_frame"], (int, float))
    assert isinstance(doc["result"]["tls_over_plain"], float)
    transport = tls_cost.transport(count=200, rounds=1, verbose=False)
    assert transport["plain_us_per_round_trip"] > 0 and transport["tls_us_per_round_trip"] > 0


def test_scaling_two_processes_share_the_port() -> None:
    doc = scaling.run(
        single_ladder=[4], double_ladder=[6], window_s=0.5, settle_s=0.3, refine_steps=0,
        retries=0, margin_s=1.0, save=False, verbose=False,
    )  # fmt: skip
    (one,) = doc["one_process"]
    (two,) = doc["two_processes"]
    _check_point(one, 4)
    _check_point(two, 6)
    assert len(two["window"]["cpu_percent"]) == 4  # generator, echo-server, two bridges
    assert sum(two["streams_per_process"]) == 6


def test_soak_returns_to_baseline() -> None:
    doc = soak.run(duration_s=4.0, rate=4.0, call_s=1.5, chunk_s=4.0, sample_s=1.0,
                   warmup_s=0.0, pin=False, save=False, verbose=False)  # fmt: skip
    assert doc["calls"] > 0 and doc["calls_failed"] == 0
    assert doc["lost"] == 0  # frames trimmed by bridge's playout are counted apart
    assert doc["fds_back"] and doc["streams_back"] and doc["tasks_back"]
    assert doc["before"]["tasks"] > 0 and doc["tasks_max"] > doc["before"]["tasks"]
    assert doc["after"]["live"] == 0
    assert len(doc["samples"]) >= 3


def _chaos(name: str) -> dict[str, Any]:
    result = chaos.SCENARIOS[name]("smoke")
    assert set(result["figures"]) == {"scenario", "calls_dropped", "caller_frames_lost",
                                      "events_lost", "drain"}  # fmt: skip
    return result


def test_chaos_app_restart() -> None:
    r = _chaos("app-restart")
    assert r["figures"]["calls_dropped"] == 0
    # Frames in flight to the app when it is SIGKILLed are not replayed (bench/README.md):
    # at most one per call per kill.
    lost = r["figures"]["caller_frames_lost"]
    assert lost <= 4 * r["details"]["restarts"]
    assert r["ok"], r["details"]


def test_chaos_callback_outage() -> None:
    r = _chaos("callback-outage")
    assert r["figures"]["calls_dropped"] == 0
    assert r["figures"]["caller_frames_lost"] == 0
    assert r["figures"]["events_lost"] == 0
    assert r["ok"], r["details"]


def test_chaos_sigkill_redelivers() -> None:
    r = _chaos("sigkill")
    assert r["figures"]["events_lost"] == 0
    assert "exit status -9" in r["details"]["kill"]
    assert r["ok"], r["details"]


def test_chaos_garbage() -> None:
    r = _chaos("garbage")
    assert r["figures"]["calls_dropped"] == 0
    assert r["figures"]["caller_frames_lost"] == 0
    assert r["ok"], r["details"]


def test_chaos_drain() -> None:
    r = _chaos("drain")
    assert r["figures"]["events_lost"] == 0
    assert r["figures"]["drain"].startswith("exit 0 ")
    assert r["ok"], r["details"]
