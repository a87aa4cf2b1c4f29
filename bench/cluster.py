"""Cluster mode with real processes, a real Redis and real sockets: the figures of
docs/cluster.md.

Every bridge process runs ``bridge run`` with ``[cluster] enabled`` and shares the
AudioSocket and WebSocket ports with the others (``reuse_port = true``: the kernel
spreads connections, as under ``bridge@.service``); each has its own admin port, RTP
range and records file. Redis is a ``redis-server`` this script starts on a free port.

    .venv/bin/python bench/cluster.py                 # every scenario (~3 min)
    .venv/bin/python bench/cluster.py redial inbound  # some of them

Scenarios:

* ``redial``: 2 processes, a Twilio-format client makes N calls; each drops its socket
  mid-call and dials again with the same callSid/streamSid (lands on either process).
  Every re-dial must resume the same stream on its owner: one StartStream, no second
  stream, the app sees one connection per call and every frame.
* ``inbound``: 2 processes, N AudioSocket calls on accept-mode routes; the app finds its
  stream through the cluster-wide ``GET /v1/streams`` of either process and dials the
  shared WebSocket port: every app connection must reach its stream.
* ``sigkill``: 3 processes, 60 calls spread over them, the callback receiver down; one
  process is SIGKILLed, the receiver comes back: each of the dead process's calls must
  end with exactly one DroppedStream (from a survivor), every event of every call must
  be delivered within 30 s (duplicates only with the same event_id), and the other
  processes' calls must lose 0 frames.
* ``redis``: 2 processes, 20 calls; Redis is killed mid-run and started again: the calls
  keep their audio (0 frames lost), registrations come back, and re-dials attempted
  while Redis is down fail cleanly and are counted.
* ``cost``: CPU per call-frame at N=100 echo calls, cluster off vs on, same process
  layout, alternated in one run (nothing on the per-frame path touches Redis).
* ``latency``: echo round trip of a carrier call before and after its re-dial was
  carried to the owner (relay across "machines": socket_dir = ""; and by descriptor).
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import struct
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _procs as P
from bridge.dialects import Audio, Start, Stop
from bridge.dialects._sln import SlnApp
from bridge.dialects._twilio import TwilioPlatform
from bridge.transports import open_websocket_client
from tests.cluster.redis_server import RedisServer
from tests.daemon.asclient import AudioSocketCaller
from tests.daemon.callback_receiver import CallbackReceiver, open_callback_receiver
from tests.daemon.test_app_leg import AppServer

SECRET = "bench-cluster-secret-0123456789"


def frame(n: int) -> bytes:
    """A numbered 20 ms frame (sln 8 kHz): n + 1 in every sample, never silence."""
    return struct.pack("<h", (n % 30000) + 1) * 160


def _ulaw_levels() -> list[int]:
    """The 16-bit values µ-law reproduces exactly (a Twilio leg is µ-law both ways)."""
    from bridge.media import PCMU

    levels = sorted({struct.unpack_from("<h", PCMU.decode(bytes([b])))[0] for b in range(256)})
    return [v for v in levels if v > 0]


_LEVELS = _ulaw_levels()
_LEVEL_INDEX = {v: i for i, v in enumerate(_LEVELS)}


def ulaw_frame(n: int) -> bytes:
    """A frame numbered so that µ-law carries the number exactly: two samples, the
    number's digits in base len(levels), repeated."""
    base = len(_LEVELS)
    pair = struct.pack("<hh", _LEVELS[n % base], _LEVELS[(n // base) % base])
    return pair * 80


def ulaw_number(pcm: bytes) -> int | None:
    if len(pcm) < 4:
        return None
    lo, hi = struct.unpack_from("<hh", pcm)
    if lo not in _LEVEL_INDEX or hi not in _LEVEL_INDEX:
        return None
    return _LEVEL_INDEX[lo] + _LEVEL_INDEX[hi] * len(_LEVELS)


def number(pcm: bytes) -> int | None:
    if len(pcm) < 2:
        return None
    value = struct.unpack_from("<h", pcm)[0]
    return value - 1 if value > 0 else None


# --------------------------------------------------------------------------- the rig


class Rig:
    """Redis, N bridge processes sharing ports, an app, a callback receiver."""

    def __init__(self, wd: Path, nodes: int, *, routes: str, socket_dir: bool = True,
                 cluster: bool = True, lease: str = "2s", shared_ws: bool = True,
                 stream: str = "") -> None:  # fmt: skip
        self.wd = wd
        self.redis = RedisServer(wd, appendonly=True)
        self.redis.start()
        self.as_port = P.free_port()
        self.ws_port = P.free_port()
        self.bridges: list[P.Bridge] = []
        self.ws_ports: list[int] = []
        for i in range(nodes):
            admin = P.free_port()
            ws = self.ws_port if shared_ws else P.free_port()
            self.ws_ports.append(ws)
            rtp = P.free_udp_range(10, lo=50000 + i * 200)
            cluster_toml = (
                f"""
[cluster]
enabled = true
redis_url = "{self.redis.url}"
node_id = "n{i}"
secret = "{SECRET}"
lease = "{lease}"
listen = "127.0.0.1:0"
socket_dir = "{wd / "run" if socket_dir else ""}"
"""
                if cluster
                else ""
            )
            text = f"""
[daemon]
log_level = "info"
log_format = "json"
max_streams = 2000
drain_timeout = "3s"

[admin]
listen = "127.0.0.1:{admin}"

[audiosocket]
listen = "127.0.0.1:{self.as_port}"
reuse_port = true

[websocket]
listen = "127.0.0.1:{ws}"
reuse_port = true
max_handshakes_per_peer = 1024

[rtp]
ports = "{rtp[0]}-{rtp[1]}"

[records]
path = "{wd / f"n{i}.sqlite3"}"

[callbacks]
backoff = "200ms"
max_backoff = "1s"

[stream]
trim_latency = false
{stream}
{cluster_toml}
{routes}
"""
            config = wd / f"n{i}.toml"
            config.write_text(text)
            bridge = P.Bridge(f"n{i}", config, admin, wd)
            self.bridges.append(bridge)
        for bridge in self.bridges:
            bridge.wait_ready()

    def metric(self, i: int, name: str, labels: dict[str, str] | None = None) -> float:
        text = P.http_text(self.bridges[i].admin + "/metrics")
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if (labels is None and (key == name or key.startswith(name + "{"))) or (labels is not None and _same_series(key, name, labels)):
                total += float(value)
        del want
        return total

    def streams(self, i: int) -> list[dict[str, Any]]:
        return list(P.http_json(self.bridges[i].admin + "/v1/streams?limit=1000")["streams"])

    def close(self) -> None:
        P.kill_on_exit(self.bridges)
        self.redis.stop()


def _same_series(key: str, name: str, labels: dict[str, str]) -> bool:
    if not key.startswith(name + "{"):
        return False
    got = dict(part.split("=", 1) for part in key[len(name) + 1 : -1].split(",") if "=" in part)
    return all(got.get(k) == f'"{v}"' for k, v in labels.items())


async def thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


# --------------------------------------------------------------------------- redial


def _twilio_route(app_url: str, rx: CallbackReceiver, window: str = "10s", orphan: str = "new") -> str:
    return f"""
[[routes]]
name = "twilio"
match = {{ listener = "websocket", path = "/twilio" }}
carrier = "twilio"
app = {{ url = "{app_url}", encapsulation = "sln" }}
callback = {{ url = "{rx.url}", secret = "cb" }}
stream = {{ reconnect_window = "{window}" }}
orphan = "{orphan}"
"""


async def twilio_leg(port: int, sid: str, call: str, first: int, frames: int, *, end: bool,
                     rtts: list[float] | None = None) -> int:  # fmt: skip
    """One carrier connection: start, ``frames`` numbered frames at 20 ms, then a stop
    (``end``) or a dropped socket. Returns the frames that came back (echo app)."""
    platform = TwilioPlatform(sid, call, "AC1")
    back = 0
    sent_at: dict[int, float] = {}
    async with open_websocket_client(f"ws://127.0.0.1:{port}/twilio") as ws:
        for msg in platform.send(Start(sid, call)):
            await ws.send(msg)

        async def reader() -> None:
            nonlocal back
            while True:
                msg = await ws.receive()
                for ev in platform.receive(msg):
                    if isinstance(ev, Audio):
                        n = ulaw_number(ev.frame.pcm)
                        if n is not None:
                            back += 1
                            if rtts is not None and n in sent_at:
                                rtts.append(trio.current_time() - sent_at.pop(n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for n in range(first, first + frames):
                sent_at[n] = trio.current_time()
                await ws.send(platform.send_audio(ulaw_frame(n)))
                await trio.sleep(0.02)
            await trio.sleep(0.3)
            nursery.cancel_scope.cancel()
        if end:
            for msg in platform.send(Stop()):
                await ws.send(msg)
            await ws.close()
        else:
            await ws._abort(1006, "carrier dropped")
    return back


async def scenario_redial(wd: Path, calls: int = 50, concurrency: int = 5) -> dict[str, Any]:
    app_port = P.free_port()
    async with open_callback_receiver() as rx, trio.open_nursery() as nursery:
        app = AppServer(app_port, "--echo")
        await nursery.start(app.run)
        rig = await thread(lambda: Rig(wd, 2, routes=_twilio_route(f"ws://127.0.0.1:{app_port}/agent", rx)))
        try:
            sids = [f"MZ{uuid.uuid4().hex}" for _ in range(calls)]
            limiter = trio.Semaphore(concurrency)

            async def one(sid: str) -> None:
                async with limiter:
                    await twilio_leg(rig.ws_port, sid, "CA" + sid[2:], 0, 25, end=False)
                    await trio.sleep(0.05)
                    await twilio_leg(rig.ws_port, sid, "CA" + sid[2:], 25, 25, end=True)

            async with trio.open_nursery() as calls_nursery:
                for sid in sids:
                    calls_nursery.start_soon(one, sid)
            with trio.move_on_after(20):
                await rx.wait_for(lambda rx: sum(b["event"] == "StopStream" for b in rx.delivered_bodies()) >= calls)
            carried = sum(rig.metric(i, "bridge_cluster_handoffs_total", {"outcome": "sent"}) for i in range(2))
        finally:
            await thread(rig.close)
            app.kill()
            nursery.cancel_scope.cancel()
    bodies = rx.delivered_bodies()
    starts: dict[str, set[str]] = {}
    for b in bodies:
        if b["event"] == "StartStream":
            starts.setdefault(b["call_id"], set()).add(b["stream_id"])
    connects: dict[str, int] = {}
    for line in app.lines:
        if "connect" in line:
            sid = line["connect"].get("x-bridge-stream-id", "")
            connects[sid] = connects.get(sid, 0) + 1
    frames_back = len(app.frames())
    second = sum(len(s) - 1 for s in starts.values())
    result = {
        "calls": calls,
        "redials": calls,
        "redials_carried_to_other_process": int(carried),
        "calls_with_one_stream": sum(len(s) == 1 for s in starts.values()),
        "second_streams": second,
        "dropped_events": sum(b["event"] == "DroppedStream" for b in bodies),
        "app_connections_per_call_max": max(connects.values()) if connects else 0,
        "app_connections": sum(connects.values()),
        "app_frames": frames_back,
        "app_frames_expected": calls * 50,
    }
    result["ok"] = (
        result["calls_with_one_stream"] == calls
        and second == 0
        and result["app_connections"] == calls
        and result["dropped_events"] == 0
    )
    return result


# --------------------------------------------------------------------------- inbound


_ACCEPT_ROUTE = """
[[routes]]
name = "as-accept"
match = { listener = "audiosocket" }
app = { mode = "accept", token = "app-token", encapsulation = "sln" }
stream = { accept_timeout = "10s" }
"""


async def scenario_inbound(wd: Path, calls: int = 50) -> dict[str, Any]:
    rig = await thread(lambda: Rig(wd, 2, routes=_ACCEPT_ROUTE))
    reached = 0
    failures: list[str] = []
    try:

        async def one(i: int) -> None:
            nonlocal reached
            caller = await AudioSocketCaller.connect("127.0.0.1", rig.as_port)
            call_id = caller.dialect.start_event().call_id
            try:
                stream_id = ""
                with trio.move_on_after(10):
                    while not stream_id:
                        # The cluster-wide list of whichever process we ask.
                        listed = await thread(rig.streams, i % 2)
                        stream_id = next((s["stream_id"] for s in listed if s.get("call_id") == call_id), "")
                        if not stream_id:
                            await trio.sleep(0.1)
                if not stream_id:
                    failures.append(f"{call_id}: not listed")
                    return
                url = f"ws://127.0.0.1:{rig.ws_port}/v1/streams/{stream_id}/media?token=app-token"
                app = SlnApp()
                got = 0
                with trio.move_on_after(10):
                    async with open_websocket_client(url) as ws, trio.open_nursery() as nursery:

                        async def talk() -> None:
                            for n in range(20):
                                await caller.send_frame(frame(n))
                                await trio.sleep(0.02)

                        nursery.start_soon(talk)
                        while got < 10:
                            for ev in app.receive(await ws.receive()):
                                if isinstance(ev, Audio) and number(ev.frame.pcm) is not None:
                                    got += 1
                        nursery.cancel_scope.cancel()
                if got >= 10 and app.stream_id == stream_id:
                    reached += 1
                else:
                    failures.append(f"{stream_id}: {got} frames")
            finally:
                await caller.aclose()

        async with trio.open_nursery() as nursery:
            for i in range(calls):
                nursery.start_soon(one, i)
                await trio.sleep(0.05)
        carried = sum(rig.metric(i, "bridge_cluster_handoffs_total", {"kind": "app", "outcome": "sent"}) for i in range(2))
    finally:
        await thread(rig.close)
    return {"app_connections": calls, "reached_their_stream": reached, "carried_to_owner": int(carried),
            "failures": failures[:5], "ok": reached == calls}  # fmt: skip


# --------------------------------------------------------------------------- calls with loss counting


class Call:
    def __init__(self, caller: AudioSocketCaller) -> None:
        self.caller = caller
        self.sent = 0
        self.call_id = caller.dialect.start_event().call_id
        self.stop = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.caller.receive_forever)
            while not self.stop.is_set():
                if not await self.caller.send_frame(frame(self.sent)):
                    break
                self.sent += 1
                await trio.sleep(0.02)
            await trio.sleep(0.5)  # the last echoes
            await self.caller.aclose()
            nursery.cancel_scope.cancel()

    def lost(self) -> int:
        got = {number(pcm) for _, pcm in self.caller.received}
        got.discard(None)
        return sum(1 for n in range(self.sent) if n not in got)


def _echo_route(app_url: str, rx: CallbackReceiver | None) -> str:
    cb = f'callback = {{ url = "{rx.url}", secret = "cb" }}' if rx else ""
    return f"""
[[routes]]
name = "as-echo"
match = {{ listener = "audiosocket" }}
app = {{ url = "{app_url}", encapsulation = "sln" }}
{cb}
"""


async def scenario_sigkill(wd: Path, calls: int = 60) -> dict[str, Any]:
    echo, echo_url = await thread(lambda: P.echo_server("echo", wd))
    async with open_callback_receiver() as rx, trio.open_nursery() as nursery:
        await rx.down()  # events pile up undelivered in Redis
        rig = await thread(lambda: Rig(wd, 3, routes=_echo_route(echo_url, rx)))
        try:
            active: list[Call] = []
            for _ in range(calls):
                call = Call(await AudioSocketCaller.connect("127.0.0.1", rig.as_port))
                active.append(call)
                nursery.start_soon(call.run)
                await trio.sleep(0.02)
            await trio.sleep(2.0)
            listed = await thread(rig.streams, 0)
            owner = {s["call_id"]: s["owner"] for s in listed}
            victim_index = max(range(3), key=lambda i: sum(o == f"n{i}" for o in owner.values()))
            victim = f"n{victim_index}"
            killed_calls = {c for c, o in owner.items() if o == victim}
            rig.bridges[victim_index].kill()  # SIGKILL
            killed_at = trio.current_time()
            await trio.sleep(1.0)
            await rx.up()
            expected_drops = len(killed_calls)

            def done(rx: CallbackReceiver) -> bool:
                bodies = rx.delivered_bodies()
                drops = {b["call_id"] for b in bodies if b["event"] == "DroppedStream"}
                started = {b["call_id"] for b in bodies if b["event"] == "StartStream"}
                return killed_calls <= drops and len(started) >= calls

            with trio.move_on_after(30):
                await rx.wait_for(done)
            delivered_within_s = trio.current_time() - killed_at
            await trio.sleep(3.0)
            for call in active:
                call.stop.set()
            await trio.sleep(1.5)
            survivors = [i for i in range(3) if i != victim_index]
            takeovers = sum(rig.metric(i, "bridge_cluster_takeovers_total") for i in survivors)
            orphans = sum(rig.metric(i, "bridge_cluster_orphans_dropped_total") for i in survivors)
            with trio.move_on_after(10):
                await rx.wait_for(lambda rx: sum(b["event"] == "StopStream" for b in rx.delivered_bodies()) >= calls - expected_drops)
        finally:
            await thread(rig.close)
            echo.stop()
    bodies = rx.delivered_bodies()
    drops_per_call: dict[str, int] = {}
    for b in bodies:
        if b["event"] == "DroppedStream":
            drops_per_call[b["call_id"]] = drops_per_call.get(b["call_id"], 0) + 1
    ids = rx.event_ids()
    by_id: dict[str, dict[str, Any]] = {}
    conflicting = 0
    for req in rx.requests:
        if req.status is not None and req.status < 300:
            body = req.json
            prev = by_id.setdefault(body["event_id"], body)
            conflicting += prev != body
    survivors_lost = sum(c.lost() for c in active if c.call_id not in killed_calls)
    return {
        "calls": calls,
        "killed_process": victim,
        "calls_on_killed_process": len(killed_calls),
        "calls_with_exactly_one_dropped": sum(drops_per_call.get(c, 0) == 1 for c in killed_calls),
        "dropped_for_other_calls": sum(v for c, v in drops_per_call.items() if c not in killed_calls),
        "start_events_delivered": len({b["call_id"] for b in bodies if b["event"] == "StartStream"}),
        "all_delivered_within_s": round(delivered_within_s, 1),
        "duplicate_deliveries": len(ids) - len(set(ids)),
        "duplicates_with_a_different_body": conflicting,
        "survivor_calls": calls - len(killed_calls),
        "survivor_frames_sent": sum(c.sent for c in active if c.call_id not in killed_calls),
        "survivor_frames_lost": survivors_lost,
        "takeovers": int(takeovers),
        "orphans_dropped_by_survivors": int(orphans),
        "ok": (
            all(drops_per_call.get(c, 0) == 1 for c in killed_calls)
            and survivors_lost == 0
            and len({b["call_id"] for b in bodies if b["event"] == "StartStream"}) == calls
            and delivered_within_s <= 31
        ),
    }


async def scenario_redis(wd: Path, calls: int = 20) -> dict[str, Any]:
    echo, echo_url = await thread(lambda: P.echo_server("echo", wd))
    app_port = P.free_port()
    async with open_callback_receiver() as rx, trio.open_nursery() as nursery:
        app = AppServer(app_port, "--echo")
        await nursery.start(app.run)
        routes = _echo_route(echo_url, rx) + _twilio_route(f"ws://127.0.0.1:{app_port}/agent", rx, orphan="refuse")
        rig = await thread(lambda: Rig(wd, 2, routes=routes))
        try:
            active = []
            for _ in range(calls):
                call = Call(await AudioSocketCaller.connect("127.0.0.1", rig.as_port))
                active.append(call)
                nursery.start_soon(call.run)
            await trio.sleep(2.0)
            before = len(await thread(rig.streams, 0))
            rig.redis.kill()
            # It comes back empty (as a Redis without persistence, or a new one after a
            # failover would): the registrations must come back from the processes.
            import shutil

            for leftover in rig.wd.glob("appendonly*"):
                shutil.rmtree(leftover, ignore_errors=True)
            down_at = trio.current_time()
            # Re-dials while Redis is down: those that land on the non-owner cannot
            # find it; the route says refuse: refused cleanly and counted.
            answered = 0
            for k in range(6):
                sid = f"MZdown{k}"
                await twilio_leg(rig.ws_port, sid, f"CAdown{k}", 0, 10, end=False)
                back = await twilio_leg(rig.ws_port, sid, f"CAdown{k}", 10, 10, end=True)
                answered += back > 0
            await trio.sleep(max(0.0, 5.0 - (trio.current_time() - down_at)))
            rig.redis.start()
            up_at = trio.current_time()
            empty_at_start = _redis_registered(rig) == 0
            registered = 0
            with trio.move_on_after(15):
                while True:
                    # Read in Redis itself (a process's listing would show its cache).
                    registered = await thread(_redis_registered, rig)
                    if registered >= before:
                        break
                    await trio.sleep(0.05)
            back_after_s = trio.current_time() - up_at
            await trio.sleep(1.0)
            failed = sum(rig.metric(i, "bridge_cluster_lookups_failed_total") for i in range(2))
            redis_up = [rig.metric(i, "bridge_cluster_redis_up") for i in range(2)]
            for call in active:
                call.stop.set()
            await trio.sleep(1.5)
        finally:
            await thread(rig.close)
            app.kill()
            echo.stop()
            nursery.cancel_scope.cancel()
    lost = sum(c.lost() for c in active)
    return {
        "calls": calls,
        "redis_down_s": 5,
        "frames_sent": sum(c.sent for c in active),
        "frames_lost": lost,
        "registered_before": before,
        "redis_came_back_empty": empty_at_start,
        "registered_after_restart": registered,
        "registrations_back_within_s": round(back_after_s, 1),
        "redials_while_down": 6,
        "redials_answered_while_down": answered,
        "redials_while_down_that_became_a_second_stream": sum(
            len(v) - 1 for k, v in _streams_by_call(rx).items() if k.startswith("CAdown")
        ),
        "lookups_failed_counted": int(failed),
        "redis_up_after": redis_up,
        "ok": lost == 0 and registered >= before,
    }


def _redis_registered(rig: Rig) -> int:
    import subprocess

    total = 0
    for i in range(len(rig.bridges)):
        out = subprocess.run(["redis-cli", "-p", str(rig.redis.port), "hlen", f"bridge:streams:n{i}"],
                             capture_output=True, text=True, timeout=5).stdout.strip()  # fmt: skip
        total += int(out) if out.isdigit() else 0
    return total


def _streams_by_call(rx: CallbackReceiver) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for b in rx.delivered_bodies():
        if b["event"] == "StartStream":
            out.setdefault(b["call_id"], set()).add(b["stream_id"])
    return out


# --------------------------------------------------------------------------- cost


async def _load(port: int, calls: int, seconds: float) -> list[Call]:
    active = []
    async with trio.open_nursery() as nursery:
        for _ in range(calls):
            call = Call(await AudioSocketCaller.connect("127.0.0.1", port))
            active.append(call)
            nursery.start_soon(call.run)
        await trio.sleep(seconds)
        for call in active:
            call.stop.set()
    return active


async def scenario_cost(wd: Path, calls: int = 100, window_s: float = 15.0, rounds: int = 4) -> dict[str, Any]:
    echo, echo_url = await thread(lambda: P.echo_server("echo", wd))
    per_frame: dict[str, list[float]] = {"off": [], "on": []}
    try:
        for r in range(rounds):
            # Alternate which goes first: the machine's other load drifts.
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                sub = wd / f"cost-{mode}-{r}"
                sub.mkdir()
                rig = await thread(lambda sub=sub, mode=mode: Rig(sub, 1, routes=_echo_route(echo_url, None), cluster=mode == "on"))  # type: ignore[misc]
                try:
                    pid = rig.bridges[0].pid
                    async with trio.open_nursery() as nursery:
                        active: list[Call] = []
                        for _ in range(calls):
                            call = Call(await AudioSocketCaller.connect("127.0.0.1", rig.as_port))
                            active.append(call)
                            nursery.start_soon(call.run)
                        await trio.sleep(2.0)  # settle
                        cpu0, t0, f0 = P.cpu_s(pid), time.monotonic(), sum(c.sent for c in active)
                        await trio.sleep(window_s)
                        cpu1, t1, f1 = P.cpu_s(pid), time.monotonic(), sum(c.sent for c in active)
                        for call in active:
                            call.stop.set()
                    # One call-frame: one 20 ms frame each way on one call.
                    per_frame[mode].append((cpu1 - cpu0) / max(1, f1 - f0) * 1e6)
                    del t0, t1
                finally:
                    await thread(rig.close)
    finally:
        echo.stop()
    off = sum(per_frame["off"]) / len(per_frame["off"])
    on = sum(per_frame["on"]) / len(per_frame["on"])
    return {"calls": calls, "window_s": window_s, "rounds": rounds,
            "cpu_us_per_call_frame_off": [round(x, 1) for x in per_frame["off"]],
            "cpu_us_per_call_frame_on": [round(x, 1) for x in per_frame["on"]],
            "ratio_on_off": round(on / off, 3), "ok": on / off <= 1.05}  # fmt: skip


# --------------------------------------------------------------------------- latency


async def scenario_latency(wd: Path, frames: int = 1500) -> dict[str, Any]:
    """Two calls at once on the same owner n0, each re-dialled once: one re-dial lands on
    n0 itself (resumed locally), the other on n1 and is carried to n0. Their second legs
    run side by side, so machine noise hits both alike; the difference of their echo
    round trips is what carrying adds."""
    app_port = P.free_port()
    out: dict[str, Any] = {}
    async with open_callback_receiver() as rx, trio.open_nursery() as nursery:
        app = AppServer(app_port, "--echo")
        await nursery.start(app.run)
        try:
            for via in ("relay", "fd"):
                sub = wd / via
                sub.mkdir()
                rig = await thread(lambda sub=sub, via=via: Rig(sub, 2, routes=_twilio_route(f"ws://127.0.0.1:{app_port}/agent", rx), socket_dir=via == "fd", shared_ws=False))  # type: ignore[misc]
                try:
                    direct: list[float] = []
                    carried: list[float] = []
                    a, b = f"MZlat{via}a", f"MZlat{via}b"
                    async with trio.open_nursery() as legs:
                        legs.start_soon(functools.partial(twilio_leg, rig.ws_ports[0], a, "CA" + a, 0, 25, end=False))
                        legs.start_soon(functools.partial(twilio_leg, rig.ws_ports[0], b, "CA" + b, 0, 25, end=False))
                    async with trio.open_nursery() as legs:
                        legs.start_soon(functools.partial(twilio_leg, rig.ws_ports[0], a, "CA" + a, 25, frames, end=True, rtts=direct))
                        legs.start_soon(functools.partial(twilio_leg, rig.ws_ports[1], b, "CA" + b, 25, frames, end=True, rtts=carried))
                    out[via] = {
                        "resumed_locally_p50_ms": round(P.pct(direct, 50) * 1000, 2),
                        "resumed_locally_p99_ms": round(P.pct(direct, 99) * 1000, 2),
                        "carried_p50_ms": round(P.pct(carried, 50) * 1000, 2),
                        "carried_p99_ms": round(P.pct(carried, 99) * 1000, 2),
                        "added_p50_ms": round((P.pct(carried, 50) - P.pct(direct, 50)) * 1000, 2),
                        "added_p99_ms": round((P.pct(carried, 99) - P.pct(direct, 99)) * 1000, 2),
                        "frames": [len(direct), len(carried)],
                        "carried_by": int(rig.metric(1, "bridge_cluster_handoffs_total", {"outcome": "sent", "via": via})),
                    }
                finally:
                    await thread(rig.close)
        finally:
            app.kill()
            nursery.cancel_scope.cancel()
    out["ok"] = all(v["added_p99_ms"] <= 2.0 for v in out.values() if isinstance(v, dict))
    return out


SCENARIOS: dict[str, Callable[[Path], Awaitable[dict[str, Any]]]] = {
    "redial": scenario_redial,
    "inbound": scenario_inbound,
    "sigkill": scenario_sigkill,
    "redis": scenario_redis,
    "cost": scenario_cost,
    "latency": scenario_latency,
}


async def main(names: list[str]) -> dict[str, Any]:
    doc: dict[str, Any] = {"machine": P.machine()}
    for name in names:
        started = time.monotonic()
        with P.workdir(f"bridge-cluster-{name}-") as wd:
            result = await SCENARIOS[name](wd)
        result["wall_s"] = round(time.monotonic() - started, 1)
        doc[name] = result
        print(name, json.dumps(result), flush=True)
    return doc


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", default=list(SCENARIOS), choices=[*SCENARIOS, []][:-1] or None)
    args = parser.parse_args()
    P.install_sigterm_exit()
    doc = trio.run(main, args.scenarios or list(SCENARIOS))
    print("saved", P.save_json("cluster.json", doc))
    del signal
