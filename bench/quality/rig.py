"""The media-quality rig's live part: a real ``bridge run``, emulated callers on every
call-leg transport, and the app WebSocket server, with per-frame send schedules and
per-frame arrival timestamps on one clock.

* The **daemon** runs as a process (``bench/_procs.Bridge``) on a config this module
  writes (:func:`write_config`): every carrier path and every RTP route for each app
  side, and the one AudioSocket route of the phase (AudioSocket routes can only match
  on the listener, so each AudioSocket app side is a phase, i.e. a daemon of its own).
* The **caller** (:func:`place_call`) plays the platform side with bridge's own sans-IO
  dialects (``bridge.dialects``), sends source frame k when the impairment schedule
  says, and stamps every message that comes back. Carrier legs echo marks when the
  audio before them has been played (serial playout, as Twilio and Telnyx do).
* The **app** (:class:`AppServer`) is a WebSocket server on a free port, speaking the
  app side of sln, twilio, telnyx or plivo. Which behaviour a connection gets is looked
  up by its ``X-Bridge-Call-Id``: ``echo`` (each frame back at once, or delayed by
  :func:`~bench.quality.impair.hold_delays`), ``tts`` (utterances sent far faster than
  real time, a mark after each), ``tone`` (one tone, for the alias check), ``silent``,
  ``hangup`` (sends ``hangup`` after a few frames and records whether ``stop`` came
  before the close).

Everything is on Trio's clock (``trio.current_time()``), so the caller's send times, the
app's arrivals and the caller's arrivals are directly comparable.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket as stdlib_socket
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import trio

from bench import _procs
from bridge.dialects import (
    Audio,
    AudioSocketPlatform,
    Connected,
    Hangup,
    Mark,
    PlivoPlatform,
    RtpSession,
    SlnApp,
    Start,
    Stop,
    TelnyxPlatform,
    TwilioPlatform,
    dialect,
)
from bridge.transports import (
    WebSocketRequest,
    open_websocket_client,
    parse_host_port,
    serve_websocket,
)

from . import impair

PTIME_S = 0.02

# ------------------------------------------------------------------------ legs and apps


@dataclass(frozen=True)
class Leg:
    name: str
    transport: str  # audiosocket, rtp, twilio, telnyx, plivo
    rate: int
    codec: str  # pcmu, pcma, l16 (the codec on the wire)

    @property
    def datagrams(self) -> bool:
        return self.transport == "rtp"


LEGS: dict[str, Leg] = {
    leg.name: leg
    for leg in (
        Leg("as8", "audiosocket", 8000, "l16"),
        Leg("as16", "audiosocket", 16000, "l16"),
        Leg("rtp-pcmu", "rtp", 8000, "pcmu"),
        Leg("rtp-pcma", "rtp", 8000, "pcma"),
        Leg("rtp-l16", "rtp", 16000, "l16"),
        Leg("twilio", "twilio", 8000, "pcmu"),
        Leg("telnyx", "telnyx", 8000, "pcmu"),
        Leg("plivo", "plivo", 8000, "l16"),
    )
}


@dataclass(frozen=True)
class AppSide:
    name: str
    encapsulation: str  # sln, twilio, telnyx, plivo; "echo" = the built-in echo:
    rate: int
    codec: str  # on the app leg's wire

    def route_app(self, app_url: str) -> str:
        if self.encapsulation == "echo":
            return f'{{ url = "echo:", encapsulation = "sln", sample_rate = {self.rate} }}'
        extra = f', codec = "{self.codec}"' if self.encapsulation in ("telnyx", "plivo") else ""
        return (f'{{ url = "{app_url}/{self.encapsulation}", encapsulation = "{self.encapsulation}",'
                f" sample_rate = {self.rate}{extra} }}")  # fmt: skip


APPS: dict[str, AppSide] = {
    a.name: a
    for a in (
        AppSide("echo8", "echo", 8000, "l16"),
        AppSide("echo16", "echo", 16000, "l16"),
        AppSide("sln8", "sln", 8000, "l16"),
        AppSide("sln16", "sln", 16000, "l16"),
        AppSide("sln24", "sln", 24000, "l16"),
        AppSide("twilio", "twilio", 8000, "pcmu"),
        AppSide("telnyx", "telnyx", 8000, "pcmu"),
        AppSide("plivo", "plivo", 8000, "pcmu"),
    )
}


def codec_steps(leg: Leg, app: AppSide) -> list[tuple[str, int]]:
    """The codec/resampling chain of a round trip through ``app``, for the reference."""
    return [(leg.codec, leg.rate), (app.codec, app.rate), (leg.codec, leg.rate)]


# ------------------------------------------------------------------------ daemon


def write_config(path: Path, *, admin_port: int, as_port: int, ws_port: int, rtp_ports: tuple[int, int],
                 app_url: str, as_app: str, records: Path) -> Path:  # fmt: skip
    """A config with the AudioSocket route to ``as_app``, and for every app side a
    carrier path ``/{carrier}/{app}`` and an RTP route ``rtp-{app}``."""
    routes = [
        f'[[routes]]\nname = "as-{as_app}"\nmatch = {{ listener = "audiosocket" }}\n'
        f"app = {APPS[as_app].route_app(app_url)}\n"
    ]
    for app in APPS.values():
        routes.append(f'[[routes]]\nname = "rtp-{app.name}"\nmatch = {{ listener = "rtp" }}\n'
                      f"app = {app.route_app(app_url)}\n")  # fmt: skip
        for carrier in ("twilio", "telnyx", "plivo"):
            routes.append(
                f'[[routes]]\nname = "{carrier}-{app.name}"\n'
                f'match = {{ listener = "websocket", path = "/{carrier}/{app.name}" }}\n'
                f'carrier = "{carrier}"\napp = {app.route_app(app_url)}\n'
            )
    text = f"""[daemon]
log_level = "warning"
log_format = "json"
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:{admin_port}"

[audiosocket]
listen = "127.0.0.1:{as_port}"

[websocket]
listen = "127.0.0.1:{ws_port}"

[rtp]
bind = "127.0.0.1"
ports = "{rtp_ports[0]}-{rtp_ports[1]}"
timeout = "10s"

[records]
path = "{records}"

""" + "\n".join(routes)
    path.write_text(text)
    return path


@dataclass
class Daemon:
    proc: _procs.Bridge
    admin: str
    as_port: int
    ws_port: int


@contextlib.asynccontextmanager
async def running_daemon(workdir: Path, app_url: str, as_app: str, name: str = "bridge") -> Any:
    """``bridge run`` on a config of its own; start and stop happen in a thread, so the
    rig's event loop (and the canary that watches it) never blocks on them."""
    admin_port = _procs.free_port()
    as_port = _procs.free_port()
    ws_port = _procs.free_port()
    rtp = _procs.free_udp_range(200)
    cfg = write_config(workdir / f"{name}.toml", admin_port=admin_port, as_port=as_port,
                       ws_port=ws_port, rtp_ports=rtp, app_url=app_url, as_app=as_app,
                       records=workdir / f"{name}.sqlite3")  # fmt: skip
    proc = _procs.Bridge(name, cfg, admin_port, workdir)
    try:
        await trio.to_thread.run_sync(proc.wait_ready)
        yield Daemon(proc, proc.admin, as_port, ws_port)
    finally:
        proc.send_signal(signal.SIGCONT)  # never leave it stopped
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: proc.stop(timeout_s=10))


# ------------------------------------------------------------------------ the app


@dataclass
class AppPlan:
    """What the app does on the connection of one call."""

    behaviour: str = "echo"  # echo, tts, tone, silent, hangup, hangup-race
    delays: list[float] = field(default_factory=list)
    """echo: per received frame, extra hold (impair.hold_delays)."""
    utterances: list[np.ndarray] = field(default_factory=list)
    """tts/tone: PCM16 float at the app rate, each followed by a mark u<i>."""
    utterance_at_s: list[float] = field(default_factory=list)
    """tts: when (from the first caller frame the app receives) each utterance is sent."""
    chunk_ms: int = 100
    hangup_after: int = 10
    on_hangup: Any = None
    """hangup-race: called the moment the app has sent its hangup (the rig closes the
    call leg then, so both ends go at once)."""


@dataclass
class AppRecord:
    """What the app saw on one call."""

    connections: int = 0
    start: dict[str, Any] = field(default_factory=dict)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    sent: list[tuple[float, int]] = field(default_factory=list)
    """(time, bytes) of each audio message the app sent."""
    marks_sent: dict[str, float] = field(default_factory=dict)
    marks_back: dict[str, float] = field(default_factory=dict)
    utterance_frames: list[tuple[int, int]] = field(default_factory=list)
    """tts: (first, last) frame index at the call rate of each utterance in the source."""
    stop_reason: str | None = None
    stop_before_close: bool = False
    close_code: int | None = None
    first_audio_at: float | None = None
    errors: list[str] = field(default_factory=list)


def _app_dialect(encapsulation: str) -> Any:
    """The app role of the encapsulation the rig's app was dialled for (the registry's)."""
    return dialect(encapsulation).app_role()


def _pcm(x: np.ndarray) -> bytes:
    return np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes()


class AppServer:
    """The app side: one WebSocket server, one :class:`AppPlan` per call id."""

    def __init__(self) -> None:
        self.plans: dict[str, AppPlan] = {}
        self.records: dict[str, AppRecord] = {}
        self.url = ""

    def expect(self, call_id: str, plan: AppPlan) -> AppRecord:
        self.plans[call_id] = plan
        rec = self.records[call_id] = AppRecord()
        return rec

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(
                lambda task_status: serve_websocket(self._handle, "127.0.0.1", 0,
                                                    max_handshakes=256, task_status=task_status)
            )  # fmt: skip
            host, port = addrs[0]
            self.url = f"ws://{host}:{port}"
            task_status.started(self.url)

    async def _handle(self, request: WebSocketRequest) -> None:
        call_id = request.headers.get("X-Bridge-Call-Id", "")
        plan = self.plans.get(call_id)
        rec = self.records.get(call_id)
        if plan is None or rec is None:
            await request.reject(404, "unknown call")
            return
        ws = await request.accept()
        rec.connections += 1
        dialect = _app_dialect(request.path.strip("/"))
        send_q: deque[tuple[float, bytes | str, bool]] = deque()
        state: dict[str, Any] = {"wake": trio.Event(), "received": 0, "last_due": -math.inf}

        async def sender() -> None:
            # One writer, in due order: an impaired echo holds frames back, never
            # reorders them (a WebSocket cannot).
            while True:
                while not send_q:
                    state["wake"] = trio.Event()
                    await state["wake"].wait()
                due, msg, audio = send_q.popleft()
                await trio.sleep_until(due)
                await ws.send(msg)
                if audio:
                    rec.sent.append((trio.current_time(), len(msg)))

        def queue(due: float, msg: bytes | str, audio: bool = True) -> None:
            send_q.append((due, msg, audio))
            state["wake"].set()

        async def play_utterances(t_first: float) -> None:
            rate = dialect.sample_rate if isinstance(dialect, SlnApp) else 8000
            chunk = rate * plan.chunk_ms // 1000
            for i, (u, at) in enumerate(zip(plan.utterances, plan.utterance_at_s, strict=True)):
                await trio.sleep_until(t_first + at)
                pcm = _pcm(u)
                now = trio.current_time()
                # Far faster than real time: every chunk at once.
                for off in range(0, len(pcm), 2 * chunk):
                    queue(now, dialect.send_audio(pcm[off : off + 2 * chunk]))
                name = f"u{i}"
                for m in dialect.send(Mark(name)):
                    queue(now, m, False)
                rec.marks_sent[name] = now

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                while True:
                    try:
                        message = await ws.receive()
                    except Exception as exc:  # closed
                        rec.close_code = ws.close_code
                        if rec.stop_reason is None:
                            rec.errors.append(f"closed before stop: {exc!r}"[:200])
                        break
                    now = trio.current_time()
                    for ev in dialect.receive(message):
                        if isinstance(ev, Start):
                            rec.start = {"sample_rate": ev.sample_rate, "encoding": ev.encoding}
                            if plan.behaviour.startswith("hangup") and plan.hangup_after == 0:
                                for m in dialect.send(Hangup()):
                                    await ws.send(m)
                                if plan.on_hangup is not None:
                                    plan.on_hangup()
                        elif isinstance(ev, Audio):
                            pcm = ev.frame.pcm
                            rec.chunks.append((now, pcm))
                            i = state["received"]
                            state["received"] = i + 1
                            if rec.first_audio_at is None:
                                rec.first_audio_at = now
                                if plan.behaviour in ("tts", "tone"):
                                    nursery.start_soon(play_utterances, now)
                            if plan.behaviour == "echo":
                                d = plan.delays[i] if i < len(plan.delays) else 0.0
                                due = max(now + d, state["last_due"])
                                state["last_due"] = due
                                queue(due, dialect.send_audio(pcm))
                            elif plan.behaviour.startswith("hangup") and i + 1 == plan.hangup_after:
                                for m in dialect.send(Hangup()):
                                    await ws.send(m)
                                if plan.on_hangup is not None:
                                    plan.on_hangup()
                        elif isinstance(ev, Mark):
                            rec.marks_back.setdefault(ev.name, now)
                        elif isinstance(ev, Stop):
                            rec.stop_reason = ev.reason or "stop"
                            rec.stop_before_close = True
                nursery.cancel_scope.cancel()
        finally:
            rec.close_code = ws.close_code


# ------------------------------------------------------------------------ the caller


@dataclass
class CallRecord:
    """What the caller saw on one call."""

    leg: str
    call_id: str = ""
    stream_id: str = ""
    t0: float = 0.0
    """Nominal send time of source frame 0."""
    sent_at: dict[int, float] = field(default_factory=dict)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)
    hangup: str = ""
    error: str = ""
    freezes: list[tuple[float, float]] = field(default_factory=list)
    stream_record: dict[str, Any] = field(default_factory=dict)
    send_late_ms: float = 0.0
    """The rig's own health: the latest any frame left behind its schedule."""
    rig_stalls_ms: list[tuple[float, float]] = field(default_factory=list)
    """The rig's own health: (offset from t0, ms) of every time the rig's event loop
    woke more than 10 ms late during this call (see :class:`Canary`)."""


def _platform(leg: Leg) -> tuple[Any, list[bytes | str], list[bytes | str], str]:
    """(dialect, start messages, stop messages, call id) for a leg."""
    rate = leg.rate
    if leg.transport == "audiosocket":
        p = AudioSocketPlatform(str(uuid.uuid4()), rate)
        return p, list(p.send(p.start_event())), [], p.call_uuid
    if leg.transport == "twilio":
        tw = TwilioPlatform("MZ" + uuid.uuid4().hex, "CA" + uuid.uuid4().hex, "AC" + uuid.uuid4().hex)
        start = [*tw.send(Connected()), *tw.send(Start(tw.stream_sid, tw.call_sid))]
        return tw, start, list(tw.send(Stop())), tw.call_sid
    if leg.transport == "telnyx":
        tx = TelnyxPlatform(str(uuid.uuid4()), "v3:" + uuid.uuid4().hex, leg.codec.upper(), rate)
        start = [*tx.send(Connected()), *tx.send(Start(tx.stream_id, tx.call_control_id))]
        return tx, start, list(tx.send(Stop())), tx.call_control_id
    if leg.transport == "plivo":
        ct = "audio/x-mulaw;rate=8000" if leg.codec == "pcmu" else f"audio/x-l16;rate={rate}"
        pv = PlivoPlatform(str(uuid.uuid4()), str(uuid.uuid4()), "MA" + uuid.uuid4().hex, ct)
        return pv, list(pv.send(Start(pv.stream_id, pv.call_id))), [], pv.call_id
    if leg.transport == "rtp":
        return RtpSession(leg.codec, rate, ptime_ms=20), [], [], "rtp-" + uuid.uuid4().hex
    raise ValueError(leg.transport)


@dataclass
class CallSpec:
    leg: Leg
    app: AppSide
    source: np.ndarray
    """Float PCM16 at the leg's rate; frame k = source[k*N:(k+1)*N]."""
    schedule: impair.Schedule
    tail_s: float = 1.5
    close_on_hangup: bool = True
    close_event: trio.Event | None = None
    """When set, the caller hangs up (closes its connection) that very moment."""


async def place_call(daemon: Daemon, spec: CallSpec, rec: CallRecord, *, app_server: AppServer,
                     plan: AppPlan, start_at: float, http: httpx.AsyncClient) -> AppRecord:  # fmt: skip
    """One call: connect, send on the schedule, record, hang up. Never raises for what
    the far end does (``rec.hangup``/``rec.error`` say it)."""
    leg = spec.leg
    platform, start_msgs, stop_msgs, call_id = _platform(leg)
    rec.call_id = call_id
    app_rec = app_server.expect(call_id, plan)
    n = round(leg.rate * PTIME_S)
    frames = [_pcm(spec.source[k * n : (k + 1) * n]) for k in range(len(spec.source) // n)]
    # Pre-encode in frame order (RTP: sequence numbers and timestamps follow the frame
    # index, so a dropped frame is a gap and a reordered one arrives out of sequence).
    wire = [platform.send_audio(f) for f in frames]
    await trio.sleep_until(start_at)
    closer = contextlib.AsyncExitStack()
    send: Any
    receive: Any
    try:
        async with closer:
            if leg.transport == "audiosocket":
                stream = await closer.enter_async_context(
                    await trio.open_tcp_stream("127.0.0.1", daemon.as_port)
                )
                stream.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)

                async def send(m: bytes | str) -> None:
                    assert isinstance(m, bytes)
                    await stream.send_all(m)

                async def receive() -> bytes | str | None:
                    data = await stream.receive_some(65536)
                    return bytes(data) if data else None
            elif leg.transport == "rtp":
                sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
                closer.callback(sock.close)
                await sock.bind(("127.0.0.1", 0))
                lport = sock.getsockname()[1]
                resp = await http.post(daemon.admin + "/v1/streams", json={
                    "call_id": call_id, "route": f"rtp-{spec.app.name}", "codec": leg.codec,
                    "sample_rate": leg.rate, "remote": f"127.0.0.1:{lport}"})  # fmt: skip
                if resp.status_code != 201:
                    raise RuntimeError(f"POST /v1/streams: {resp.status_code} {resp.text[:200]}")
                answer = resp.json()
                rec.stream_id = answer["stream_id"]
                dest = parse_host_port(answer["local"], ip_only=True)

                async def send(m: bytes | str) -> None:
                    assert isinstance(m, bytes)
                    await sock.sendto(m, dest)

                async def receive() -> bytes | str | None:
                    data, _addr = await sock.recvfrom(4096)
                    return bytes(data)
            else:
                url = f"ws://127.0.0.1:{daemon.ws_port}/{leg.transport}/{spec.app.name}"
                ws = await closer.enter_async_context(
                    open_websocket_client(url, ping_interval_s=None, close_timeout_s=2.0)
                )

                async def send(m: bytes | str) -> None:
                    await ws.send(m)

                async def receive() -> bytes | str | None:
                    try:
                        return await ws.receive()
                    except Exception:
                        return None

            await _talk(spec, rec, platform, wire, start_msgs, stop_msgs, send, receive)
    except Exception as exc:
        rec.error = rec.error or f"{type(exc).__name__}: {exc}"[:300]
    finally:
        if rec.stream_id:
            with trio.move_on_after(3), contextlib.suppress(Exception):
                await http.delete(f"{daemon.admin}/v1/streams/{rec.stream_id}")
    return app_rec


async def _talk(spec: CallSpec, rec: CallRecord, platform: Any, wire: list[bytes | str],
                start_msgs: list[bytes | str], stop_msgs: list[bytes | str], send: Any,
                receive: Any) -> None:  # fmt: skip
    leg = spec.leg
    far_side_plays = leg.transport in ("twilio", "telnyx", "plivo")
    play_end = [-math.inf]  # serial playout of what we received so far (mark echoes)
    hung_up = trio.Event()

    async def receiver(nursery: trio.Nursery) -> None:
        while True:
            m = await receive()
            now = trio.current_time()
            if m is None:
                rec.hangup = rec.hangup or "remote_close"
                hung_up.set()
                return
            for ev in platform.receive(m):
                if isinstance(ev, Audio):
                    rec.chunks.append((now, ev.frame.pcm))
                    dur = len(ev.frame.pcm) / 2 / leg.rate
                    play_end[0] = max(now, play_end[0]) + dur
                elif isinstance(ev, Mark):
                    rec.marks.append((now, ev.name))
                    if far_side_plays:
                        # Twilio/Telnyx echo a mark once the audio before it has played.
                        nursery.start_soon(_echo_mark, send, platform, ev.name, play_end[0])
                elif isinstance(ev, (Hangup, Stop)):
                    rec.hangup = rec.hangup or "remote_hangup"
                    hung_up.set()
                    if spec.close_on_hangup:
                        # Hang up at once, as Asterisk does: leaving the nursery closes
                        # the connection this very moment.
                        nursery.cancel_scope.cancel()
                        return

    async def close_when_told(nursery: trio.Nursery, event: trio.Event) -> None:
        await event.wait()
        rec.hangup = rec.hangup or "caller_close"
        hung_up.set()
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for m in start_msgs:
            await send(m)
        nursery.start_soon(receiver, nursery)
        if spec.close_event is not None:
            nursery.start_soon(close_when_told, nursery, spec.close_event)
        t0 = trio.current_time() + 0.005
        rec.t0 = t0
        for s in spec.schedule.sends:
            if hung_up.is_set():
                break
            await trio.sleep_until(t0 + s.t_s)
            now = trio.current_time()
            rec.send_late_ms = max(rec.send_late_ms, (now - t0 - s.t_s) * 1000.0)
            try:
                await send(wire[s.frame])
            except Exception:
                rec.hangup = rec.hangup or "remote_close"
                break
            rec.sent_at.setdefault(s.frame, now)
        if not hung_up.is_set():
            with trio.move_on_after(spec.tail_s):
                await hung_up.wait()
        if not hung_up.is_set():
            rec.hangup = "caller_hangup"
            for m in stop_msgs:
                with contextlib.suppress(Exception):
                    await send(m)
        nursery.cancel_scope.cancel()


async def _echo_mark(send: Any, platform: Any, name: str, at: float) -> None:
    await trio.sleep_until(at)
    for m in platform.send(Mark(name)):
        with contextlib.suppress(Exception):
            await send(m)


# ------------------------------------------------------------------------ the rig's health


@dataclass
class Canary:
    """Wakes every 5 ms and notes every time it woke more than 10 ms late: the rig's own
    event loop (or the machine) stalled, and any frame sent or received meanwhile got a
    late timestamp that is not bridge's doing. Calls that overlap a stall are flagged."""

    stalls: list[tuple[float, float]] = field(default_factory=list)
    """(time, lateness s)."""

    async def run(self) -> None:
        period = 0.005
        while True:
            due = trio.current_time() + period
            await trio.sleep_until(due)
            late = trio.current_time() - due
            if late > 0.010:
                self.stalls.append((due, late))

    def during(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(t - start, round(late * 1000.0, 1)) for t, late in self.stalls if start <= t <= end]


# ------------------------------------------------------------------------ freezing


async def freeze_daemon(pid: int, t0: float, out: list[tuple[float, float]]) -> None:
    """SIGSTOP the daemon for FREEZE_FOR_S at each of FREEZE_AT_S after ``t0``."""
    for at in impair.FREEZE_AT_S:
        await trio.sleep_until(t0 + at)
        start = trio.current_time()
        os.kill(pid, signal.SIGSTOP)
        try:
            await trio.sleep(impair.FREEZE_FOR_S)
        finally:
            os.kill(pid, signal.SIGCONT)
        out.append((start, trio.current_time()))


async def stream_record(http: httpx.AsyncClient, admin: str, stream_id: str) -> dict[str, Any]:
    """The stream's record once it has ended (``DELETE`` was just sent): polled for up
    to 3 s, the live view if it never says ended."""
    last: dict[str, Any] = {}
    with trio.move_on_after(3):
        while True:
            try:
                r = await http.get(f"{admin}/v1/streams/{stream_id}")
                if r.status_code == 200:
                    last = dict(r.json())
                    if last.get("ended_at") or last.get("state") == "closed":
                        break
            except Exception:
                pass
            await trio.sleep(0.1)
    return last
