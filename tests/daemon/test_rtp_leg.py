"""The RTP call leg end to end: a real daemon, the admin API over HTTP, real UDP sockets,
the built-in echo. ``rtpclient.RtpPeer`` plays the far end (an SBC or Asterisk)."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio

import bridge.daemon._rtp as rtp_module
from bridge.daemon._daemon import Daemon
from bridge.dialects import Audio

from .conftest import make_config
from .rtpclient import RtpPeer, ulaw_frame

RTP_ROUTES = """
[[routes]]
name = "as-echo"
match = { listener = "audiosocket" }
app = { url = "echo:", encapsulation = "sln", sample_rate = 8000 }

[[routes]]
name = "rtp-echo"
match = { listener = "rtp" }
app = { url = "echo:", encapsulation = "sln", sample_rate = 8000 }
"""


def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


@pytest.fixture
async def client_for() -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    def make(daemon: Daemon) -> httpx.AsyncClient:
        host, port = daemon.bound["admin"]
        c = httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=5)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.aclose()


async def start(daemon_factory: Any, tmp_path: Path, **sections: dict[str, Any]) -> Daemon:
    """A daemon on conftest's config with RTP_ROUTES; ``rtp={...}``, ``daemon={...}``
    override fields of those sections."""
    config = make_config(tmp_path, routes=RTP_ROUTES)
    for name, fields in sections.items():
        section = msgspec.structs.replace(getattr(config, name), **fields)
        config = msgspec.structs.replace(config, **{name: section})
    daemon: Daemon = await daemon_factory(config)
    return daemon


def opener(daemon: Daemon) -> rtp_module.RtpOpener:
    found = rtp_module.rtp_opener_of(daemon)
    assert found is not None, "the RTP hook did not run"
    return found


async def wait_ended(daemon: Daemon, stream_id: str) -> dict[str, Any]:
    while daemon.manager.get(stream_id) is not None:
        await trio.sleep(0.01)
    assert daemon.store is not None
    await daemon.store.flush()
    record = await daemon.get_stream(stream_id)
    assert record is not None
    return record


async def test_echo_round_trip_delete_and_port_release(
    daemon_factory: Any, tmp_path: Path, client_for: Any
) -> None:
    with trio.fail_after(15):
        # One port in the range: a second stream can only get it once it is released.
        daemon = await start(daemon_factory, tmp_path, rtp={"ports": "41000-41000"})
        http = client_for(daemon)
        r = await http.post("/v1/streams", json={"call_id": "call-1", "route": "rtp-echo"})
        assert r.status_code == 201, r.text
        answer = r.json()
        assert answer["local"] == "127.0.0.1:41000"
        assert (answer["codec"], answer["sample_rate"], answer["ptime"]) == ("pcmu", 8000, 20)
        stream_id = answer["stream_id"]
        assert opener(daemon).pool.in_use == 1
        (leg,) = opener(daemon).legs.values()
        leg_socket = leg.socket
        assert leg_socket is not None
        # The port is the only one: a second POST meanwhile is refused (503).
        r2 = await http.post("/v1/streams", json={"call_id": "call-2", "route": "rtp-echo"})
        assert r2.status_code == 503 and r2.json()["reason"] == "rtp_ports_exhausted"

        local = parse_addr(answer["local"])
        peer = await RtpPeer.open()
        frames = [ulaw_frame(n) for n in range(100)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.receive_forever)
            await peer.play(frames, local)
            await peer.send_dtmf("5", local)
            await trio.sleep(0.4)
            live = await http.get(f"/v1/streams/{stream_id}")
            assert live.json()["state"] == "streaming"
            assert live.json()["legs"]["call"]["kind"] == "rtp"

            r = await http.delete(f"/v1/streams/{stream_id}")
            assert r.status_code == 202
            record = await wait_ended(daemon, stream_id)
            nursery.cancel_scope.cancel()
        peer.close()

        # The stream ended the way DELETE says, and gave its port back.
        assert record["reason"] == "api_request"
        # Strict-RTP learning: the latch's first three packets are not played.
        assert record["frames_in"] >= 97
        jitter = record["jitter"]
        assert jitter["played"] == 97 and jitter["lost"] == 0 and jitter["rtp_latches"] == 1
        assert jitter["rtp_probation_dropped"] == 3
        assert any(e.get("event") == "dtmf" and e.get("digit") == "5" for e in record["events"])
        assert opener(daemon).pool.in_use == 0 and not opener(daemon).legs
        assert leg.closed and leg_socket.fileno() == -1

        # Everything came back from the port we sent to (symmetric RTP, RFC 4961) ...
        assert {r.addr[:2] for r in peer.received} == {local}
        # ... every frame once, in order, byte-exact (µ-law -> PCM16 -> echo -> µ-law),
        # followed by at most the jitter buffer's two fading concealment frames.
        echoed = peer.payloads()
        assert echoed[:97] == frames[3:]
        assert len(echoed) <= 99 and not set(echoed[97:]) & set(frames)
        # ... and paced: the median gap between packets is the ptime.
        audio = [r for r in peer.received if any(isinstance(e, Audio) for e in r.events)]
        times = [r.at for r in audio if r.payload in set(frames)]
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        assert abs(statistics.median(gaps) - 0.02) < 0.003
        seqs = [r.seq for r in audio]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))

        # The port is free again: the next stream gets it.
        r = await http.post("/v1/streams", json={"call_id": "call-3", "route": "rtp-echo"})
        assert r.status_code == 201 and r.json()["local"] == "127.0.0.1:41000"


async def test_bad_requests_are_400(daemon_factory: Any, tmp_path: Path, client_for: Any) -> None:
    with trio.fail_after(10):
        daemon = await start(daemon_factory, tmp_path)
        http = client_for(daemon)
        bodies = [
            ({"call_id": "c", "route": "nope"}, "unknown route"),
            ({"call_id": "c", "route": "as-echo"}, "not rtp"),
            ({"call_id": "c", "route": "rtp-echo", "codec": "pcmu", "sample_rate": 16000}, "8000"),
            ({"call_id": "c", "route": "rtp-echo", "codec": "pcma", "sample_rate": 48000}, "8000"),
            ({"call_id": "c", "route": "rtp-echo", "codec": "opus"}, ""),
            ({"route": "rtp-echo"}, ""),
            ({"call_id": "c", "route": "rtp-echo", "remote": "[::1]:4000"}, "IPv6"),
            ({"call_id": "c", "route": "rtp-echo", "remote": "example.com:4000"}, ""),
        ]
        for body, words in bodies:
            r = await http.post("/v1/streams", json=body)
            assert r.status_code == 400, (body, r.text)
            assert words in r.json().get("message", ""), (body, r.text)
        assert opener(daemon).pool.in_use == 0 and daemon.manager.live_count == 0
        # L16 at 16 kHz is fine (dynamic payload type 96).
        r = await http.post(
            "/v1/streams",
            json={"call_id": "c", "route": "rtp-echo", "codec": "l16", "sample_rate": 16000},
        )
        assert r.status_code == 201 and r.json()["payload_type"] == 96


async def test_max_streams_is_503_before_a_port_is_taken(
    daemon_factory: Any, tmp_path: Path, client_for: Any
) -> None:
    with trio.fail_after(10):
        daemon = await start(daemon_factory, tmp_path, daemon={"max_streams": 1})
        http = client_for(daemon)
        r = await http.post("/v1/streams", json={"call_id": "c1", "route": "rtp-echo"})
        assert r.status_code == 201
        r = await http.post("/v1/streams", json={"call_id": "c2", "route": "rtp-echo"})
        assert r.status_code == 503 and r.json()["reason"] == "max_streams"
        assert opener(daemon).pool.in_use == 1
        metrics = (await http.get("/metrics")).text
        assert 'bridge_streams_refused_total{listener="rtp",reason="max_streams"} 1.0' in metrics


async def test_rtp_timeout_ends_the_stream_with_call_hangup(
    daemon_factory: Any, tmp_path: Path, client_for: Any
) -> None:
    with trio.fail_after(10):
        daemon = await start(
            daemon_factory, tmp_path, rtp={"ports": "41000-41009", "timeout": "300ms"}
        )
        http = client_for(daemon)
        peer = await RtpPeer.open()
        r = await http.post(
            "/v1/streams",
            json={"call_id": "c1", "route": "rtp-echo", "remote": "{}:{}".format(*peer.address)},
        )
        assert r.status_code == 201
        stream_id = r.json()["stream_id"]
        local = parse_addr(r.json()["local"])
        t0 = trio.current_time()
        await peer.play([ulaw_frame(n) for n in range(25)], local)  # 0.5 s > the timeout
        # Garbage keeps nothing alive and ends nothing: it is counted.
        for _ in range(5):
            await peer.send_raw(b"\x00garbage", local)
        last = trio.current_time()
        record = await wait_ended(daemon, stream_id)
        ended = trio.current_time()
        assert record["reason"] == "call_hangup"
        assert ended - last >= 0.25 and ended - t0 >= 0.75
        assert record["jitter"]["rtp_malformed"] == 5
        assert opener(daemon).pool.in_use == 0
        metrics = (await http.get("/metrics")).text
        assert 'bridge_bad_input_total{kind="malformed_rtp",leg="rtp"} 5.0' in metrics
        peer.close()


async def test_shutdown_closes_every_port(
    daemon_factory: Any, tmp_path: Path, client_for: Any
) -> None:
    with trio.fail_after(10):
        daemon = await start(daemon_factory, tmp_path)
        http = client_for(daemon)
        locals_ = []
        for n in range(3):
            r = await http.post("/v1/streams", json={"call_id": f"c{n}", "route": "rtp-echo"})
            assert r.status_code == 201
            locals_.append(r.json()["local"])
        # Even ports only: each odd one is left for its neighbour's RTCP (RFC 3550 §11).
        assert locals_ == ["127.0.0.1:41000", "127.0.0.1:41002", "127.0.0.1:41004"]
        the_opener = opener(daemon)
        legs = list(the_opener.legs.values())
        sockets = [leg.socket for leg in legs]
        assert len(legs) == 3
        assert daemon._cancel is not None
        daemon._cancel.cancel()
        while the_opener.pool.in_use:
            await trio.sleep(0.01)
        assert all(leg.closed for leg in legs)
        assert all(s is not None and s.fileno() == -1 for s in sockets)
