"""Cluster mode with real ``bridge run`` processes sharing their ports (reuse_port), a
real Redis and a SIGKILL: short versions of bench/cluster.py's scenarios (the full ones,
with 50-60 calls, are in docs/cluster.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from bench.cluster import scenario_redial, scenario_sigkill

pytestmark = pytest.mark.slow


async def test_redials_on_either_process_resume_their_stream(tmp_path: Path, redis_server: object) -> None:
    with trio.fail_after(90):
        result = await scenario_redial(tmp_path, calls=8, concurrency=4)
    assert result["calls_with_one_stream"] == 8, result
    assert result["second_streams"] == 0, result
    assert result["app_connections"] == 8, result
    assert result["dropped_events"] == 0, result


async def test_sigkill_one_of_three_processes(tmp_path: Path, redis_server: object) -> None:
    with trio.fail_after(120):
        result = await scenario_sigkill(tmp_path, calls=9)
    assert result["calls_with_exactly_one_dropped"] == result["calls_on_killed_process"] > 0, result
    assert result["dropped_for_other_calls"] == 0, result
    assert result["start_events_delivered"] == 9, result
    assert result["survivor_frames_lost"] == 0, result
    assert result["duplicates_with_a_different_body"] == 0, result
