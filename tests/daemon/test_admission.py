"""Per-peer admission on the call-leg listeners: a slowloris from one address does not
keep anyone else's calls out (the attacker-style finding: 1,100 idle connections from
one address, renewed at ~13/s, failed 39 of 40 new AudioSocket calls and 38 of 40
Twilio calls while the pending limit was global).

Here, small: 200 idle connections from 127.0.0.2 (Linux routes all of 127/8 to lo),
renewed at 13/s, against the *old* global limit of 64 with the default handshake
deadline of 5 s; 40 new calls from 127.0.0.3 must all succeed. ``python -m
bench.slowloris`` is the full-size run against the daemon as a process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from bench.slowloris import PARTIAL_REQUEST, Slowloris, audiosocket_call, place_calls, twilio_call
from bridge.daemon._config import Config
from bridge.daemon._daemon import Daemon
from bridge.transports import open_tcp_listener, serve_admitted
from bridge.transports._admission import Admission

from .conftest import make_config

ATTACKER = "127.0.0.2"
CALLER = "127.0.0.3"
IDLE = 200
RENEW_PER_S = 13.0
CALLS = 40

ROUTES = """
[[routes]]
name = "as-echo"
match = { listener = "audiosocket" }
app = { url = "echo:", encapsulation = "sln" }

[[routes]]
name = "twilio-echo"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "echo:", encapsulation = "sln" }
"""


def slowloris_config(tmp_path: Path) -> Config:
    """Today's pending totals (64 each) and handshake deadlines (5 s): what the finding
    was measured against. Only the per-peer limits (default 16) are new."""
    config = make_config(tmp_path, routes=ROUTES)
    replace = msgspec.structs.replace
    return replace(
        config,
        audiosocket=replace(config.audiosocket, first_frame_timeout="5s", max_pending=64),
        websocket=replace(config.websocket, handshake_timeout="5s", max_handshakes=64),
    )


def refused(daemon: Daemon, listener: str, reason: str) -> float:
    return float(daemon.metrics.admission_refused.labels(listener, reason)._value.get())


@pytest.mark.parametrize("listener", ["audiosocket", "websocket"])
async def test_slowloris_from_one_peer_does_not_keep_other_callers_out(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture, listener: str
) -> None:
    with trio.fail_after(40):
        daemon: Daemon = await daemon_factory(slowloris_config(tmp_path))
        host, port = daemon.bound[listener]
        attacker = Slowloris(
            ATTACKER,
            host,
            port,
            idle=IDLE,
            renew_per_s=RENEW_PER_S,
            payloads=(b"", PARTIAL_REQUEST) if listener == "websocket" else (b"",),
        )
        call = audiosocket_call if listener == "audiosocket" else twilio_call
        async with trio.open_nursery() as nursery:
            await nursery.start(attacker.run)
            results = await place_calls(lambda: call(host, port, CALLER), CALLS, concurrency=8)
            stats = attacker.stats()
            nursery.cancel_scope.cancel()
    failures = [failure for failure, _ in results if failure is not None]
    assert failures == [], failures  # 40 of 40
    assert len(results) == CALLS
    # The attacker was there all along, and held no more than its share.
    assert stats["attempts"] >= IDLE
    per_peer = refused(daemon, listener, "too_many_pending_per_peer")
    assert per_peer >= IDLE - 16
    assert refused(daemon, listener, "too_many_pending") == 0
    # Refusals are counted, each; their log lines stay within the bad-peer budget
    # (20 per 10 s by default) plus the summary of what was held back.
    lines = [
        r.getMessage()
        for r in bridge_logs.records
        if r.levelno >= logging.WARNING and r.name.startswith("bridge")
    ]
    refusal_lines = [m for m in lines if "closed at accept" in m]
    assert 1 <= len(refusal_lines) <= 20, len(refusal_lines)
    assert all(ATTACKER in m for m in refusal_lines)
    assert not any(CALLER in m for m in lines), [m for m in lines if CALLER in m]


async def test_a_refused_connection_never_gets_a_task_and_nobody_is_evicted() -> None:
    """serve_admitted on its own: the per-peer limit resets the newcomer at accept; the
    connections already admitted stay, and another peer is admitted."""
    admission = Admission(max_pending=8, max_pending_per_peer=2)
    seen: list[tuple[str, int]] = []
    refusals: list[tuple[str, str]] = []
    release = trio.Event()

    async def handler(stream: trio.SocketStream, peer: tuple[str, int], pending: Any) -> None:
        seen.append(peer)
        async with stream:
            await release.wait()

    with trio.fail_after(10):
        listener = await open_tcp_listener("127.0.0.1", 0)
        port = listener.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_admitted(
                    handler,
                    [listener],
                    admission,
                    on_refused=lambda peer, why: refusals.append((peer[0], why)),
                    task_status=task_status,
                )
            )
            first = [
                await trio.open_tcp_stream("127.0.0.1", port, local_address=ATTACKER)
                for _ in range(2)
            ]
            # Reset at accept, and no handler ran for it. The RST may even beat
            # connect() back to this side (then connect fails).
            try:
                third = await trio.open_tcp_stream("127.0.0.1", port, local_address=ATTACKER)
            except OSError:
                pass
            else:
                with pytest.raises(trio.BrokenResourceError):
                    while await third.receive_some(10):
                        pass
                await third.aclose()
            while not refusals:
                await trio.sleep(0.01)
            other = await trio.open_tcp_stream("127.0.0.1", port, local_address=CALLER)
            while len(seen) < 3:
                await trio.sleep(0.01)
            assert [p[0] for p in seen] == [ATTACKER, ATTACKER, CALLER]
            assert refusals == [(ATTACKER, "too_many_pending_per_peer")]
            assert admission.pending == 3 and admission.pending_from(ATTACKER) == 2
            # The two admitted first are still connected (nobody evicted).
            for stream in first:
                with trio.move_on_after(0.05):
                    assert await stream.receive_some(10) != b""
            release.set()
            for stream in [*first, other]:
                await stream.aclose()
            while admission.pending:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert admission.peers == 0
