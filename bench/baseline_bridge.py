"""The baseline for the headline benchmark: bridge's job done the straightforward way.

AudioSocket TCP in, an sln app leg out on trio-websocket, written the way the Trio
documentation teaches: one task per role, memory channels between them, and a per-call
``trio.sleep_until`` loop that paces the audio back to the caller. It is honest and
idiomatic, and it gets the latency-sensitive details right the way bridge does, so that
the comparison is about the cost of the shape, not about a handicap:

* bridge's playout policy, the same constants: the return grid follows the app's phase,
  a frame near its slot goes out on arrival, a streaming app's late frame is waited for
  and the grid follows it, a stream a slot behind catches up (see ``pacer``);
* TCP_NODELAY (Trio sets it on every socket stream), one ``send_all`` per frame;
* the caller's audio is buffered (40 s, like bridge) while the app is slow.

What it does not do (and bridge does): reconnects and replay, events and records,
other call legs, resampling, marks/clear/DTMF. None of it is on the per-frame path.

Per call::

    handle_call ─┬─ call_reader   TCP receive -> parse AudioSocket -> uplink channel
                 ├─ app_writer    uplink channel -> ws.send_message
                 ├─ app_reader    ws.get_message -> 20 ms frames -> downlink channel
                 └─ pacer         downlink channel (or sleep_until the slot) -> TCP send

    python bench/baseline_bridge.py --listen 127.0.0.1:9092 --app ws://127.0.0.1:9000/

It prints ``ready HOST:PORT`` when listening, and at SIGTERM/SIGINT one line
``stats {json}``: calls, frames and the pacer's lateness (how late each 20 ms wake-up
was behind its deadline), over every frame and per call.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import signal
import struct
import sys
import uuid

import trio
import trio_websocket

PTIME_S = 0.020
FRAME_BYTES = 320  # 20 ms of 8 kHz PCM16
SILENCE = bytes(FRAME_BYTES)
PHASE_MARGIN_S = 0.0015  # the grid sits this long after the app's first frame
SEND_EARLY_S = 0.005  # a frame this close to its slot goes out on arrival
HOLD_S = 0.06  # how long an empty slot of a streaming app waits for its late frame
STREAMING_S = 0.03  # "streaming": audio from the app within this long
PHASE_WINDOW = 10  # frames per phase-tracking window
PHASE_SLACK_S = 0.002  # tolerated extra wait before the grid moves earlier
FIRST_AUDIO_WAIT_S = 0.1  # the grid starts anyway if the app stays silent
UPLINK_FRAMES = 2000  # 40 s of caller audio held while the app is slow
DOWNLINK_FRAMES = 250  # 5 s of the app's audio queued to the caller
KIND_HANGUP, KIND_UUID, KIND_AUDIO_8K = 0x00, 0x01, 0x10
HEADER = struct.Struct(">BH")
AUDIO_HEADER = HEADER.pack(KIND_AUDIO_8K, FRAME_BYTES)


class Stats:
    """Lateness of every paced frame, in 0.1 ms buckets (cheap to record)."""

    def __init__(self) -> None:
        self.calls = 0
        self.live = 0
        self.failed = 0
        self.frames_in = 0
        self.frames_out = 0
        self.buckets = [0] * 501  # 0.0 .. 50.0 ms, the last one is "50 ms or more"
        self.max_ms = 0.0
        self.per_call: list[tuple[float, float]] = []  # (p50, p99) of each ended call

    def summary(self) -> dict[str, object]:
        def q(buckets: list[int], p: float) -> float:
            total = sum(buckets)
            if not total:
                return 0.0
            rank, seen = max(1, math.ceil(p / 100 * total)), 0
            for i, n in enumerate(buckets):
                seen += n
                if seen >= rank:
                    return round((i + 1) * 0.1, 2)
            return 50.0

        p50s = sorted(p for p, _ in self.per_call)
        p99s = sorted(p for _, p in self.per_call)
        mid = len(p50s) // 2
        return {
            "calls": self.calls,
            "failed": self.failed,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "lateness_ms": {
                "p50": q(self.buckets, 50),
                "p99": q(self.buckets, 99),
                "max": round(self.max_ms, 2),
            },
            "per_call_lateness_ms": {
                "p50_median": p50s[mid] if p50s else 0.0,
                "p99_median": p99s[mid] if p99s else 0.0,
                "p99_max": p99s[-1] if p99s else 0.0,
            },
        }


STATS = Stats()


class CallLateness:
    def __init__(self) -> None:
        self.buckets = [0] * 501

    def record(self, late_s: float) -> None:
        ms = late_s * 1000.0 if late_s > 0 else 0.0
        i = min(int(ms * 10), 500)
        self.buckets[i] += 1
        STATS.buckets[i] += 1
        if ms > STATS.max_ms:
            STATS.max_ms = ms

    def percentile(self, p: float) -> float:
        total = sum(self.buckets)
        rank, seen = max(1, math.ceil(p / 100 * total)), 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return (i + 1) * 0.1
        return 50.0


class Hangup(Exception):
    pass


#: How a call normally ends: the caller hangs up or closes, or the app closes.
ENDS_CALL = (
    Hangup,
    trio_websocket.ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


async def read_frame(stream: trio.SocketStream, buf: bytearray) -> tuple[int, bytes]:
    """One AudioSocket frame (kind, payload)."""
    while True:
        if len(buf) >= 3:
            kind, length = HEADER.unpack_from(buf)
            if len(buf) >= 3 + length:
                payload = bytes(buf[3 : 3 + length])
                del buf[: 3 + length]
                return kind, payload
        data = await stream.receive_some(65536)
        if not data:
            raise Hangup("caller closed")
        buf += data


async def call_reader(
    stream: trio.SocketStream, buf: bytearray, uplink: trio.MemorySendChannel[bytes]
) -> None:
    async with uplink:
        while True:
            kind, payload = await read_frame(stream, buf)
            if kind == KIND_AUDIO_8K:
                STATS.frames_in += 1
                await uplink.send(payload)
            elif kind == KIND_HANGUP:
                return


async def app_writer(ws: trio_websocket.WebSocketConnection, uplink: trio.MemoryReceiveChannel[bytes]) -> None:
    async for pcm in uplink:
        await ws.send_message(pcm)


#: (arrival time, one 20 ms frame of the app's audio)
Downlink = tuple[float, bytes]


async def app_reader(ws: trio_websocket.WebSocketConnection, downlink: trio.MemorySendChannel[Downlink]) -> None:
    pending = b""
    async with downlink:
        while True:
            message = await ws.get_message()
            if isinstance(message, str):
                continue  # control (marks, ...): not used here
            pending += message
            now = trio.current_time()
            while len(pending) >= FRAME_BYTES:
                frame, pending = pending[:FRAME_BYTES], pending[FRAME_BYTES:]
                await downlink.send((now, frame))


async def pacer(stream: trio.SocketStream, downlink: trio.MemoryReceiveChannel[Downlink]) -> None:
    """bridge's playout policy (bridge/streams/_stream.py), as one task per call:

    * the grid starts PHASE_MARGIN_S after the app's first frame;
    * a frame that arrives at most SEND_EARLY_S before its slot goes out on arrival, an
      earlier one waits for its slot;
    * a streaming app's late frame is waited for (the slot holds up to HOLD_S) and the
      grid follows it, instead of a silence frame and a permanent extra 20 ms;
    * a real-time stream a whole slot behind catches up one extra frame per slot;
    * over windows of PHASE_WINDOW frames that all waited longer than needed, the grid
      moves earlier by the excess.
    """
    lateness = CallLateness()
    try:
        arrived, frame = -math.inf, SILENCE
        with trio.move_on_after(FIRST_AUDIO_WAIT_S):
            arrived, frame = await downlink.receive()
        deadline = trio.current_time() + PHASE_MARGIN_S
        last_audio = arrived
        got: Downlink | None = (arrived, frame) if frame is not SILENCE else None
        waits: list[float] = []
        while True:
            held = False
            if got is None:
                # Wake on the frame's arrival, or at the slot; a streaming app's slot
                # holds for its late frame.
                hold = HOLD_S if trio.current_time() - last_audio < STREAMING_S else 0.0
                with trio.move_on_at(deadline + hold):
                    got = await downlink.receive()
                held = hold > 0.0 and trio.current_time() > deadline
            now = trio.current_time()
            if got is not None and now < deadline - SEND_EARLY_S:
                await trio.sleep_until(deadline)  # too early: it waits for its slot
                now = trio.current_time()
            if held:
                deadline = now  # the grid follows the hold (frame or, at its end, silence)
            else:
                lateness.record(now - deadline)
            if got is None:
                await stream.send_all(AUDIO_HEADER + SILENCE)
                STATS.frames_out += 1
            else:
                arrived, frame = got
                got = None
                await stream.send_all(AUDIO_HEADER + frame)
                STATS.frames_out += 1
                last_audio = arrived
                waited = now - arrived
                if waited > PHASE_MARGIN_S:
                    waits.append(waited)
                    if len(waits) == PHASE_WINDOW:
                        excess = min(waits) - PHASE_MARGIN_S
                        if excess > PHASE_SLACK_S:
                            deadline -= excess  # the grid is later than the app needs
                        waits.clear()
                else:
                    waits.clear()
                if waited >= PTIME_S + PHASE_MARGIN_S:
                    # A real-time stream a whole slot behind (a burst after a stall):
                    # catch up by sending the next frame now too, if it is here.
                    with contextlib.suppress(trio.WouldBlock):
                        last_audio, frame = downlink.receive_nowait()
                        await stream.send_all(AUDIO_HEADER + frame)
                        STATS.frames_out += 1
            deadline += PTIME_S
    finally:
        if sum(lateness.buckets):
            STATS.per_call.append((lateness.percentile(50), lateness.percentile(99)))


async def handle_call(stream: trio.SocketStream, app_url: str) -> None:
    STATS.calls += 1
    STATS.live += 1
    buf = bytearray()
    try:
        kind, payload = await read_frame(stream, buf)
        if kind != KIND_UUID or len(payload) != 16:
            return
        call_id = str(uuid.UUID(bytes=payload))
        stream_id = uuid.uuid4().hex
        start = {
            "event": "start", "stream_id": stream_id, "call_id": call_id, "encoding": "L16",
            "sample_rate": 8000, "channels": 1, "frame_ms": 20,
        }  # fmt: skip
        async with trio_websocket.open_websocket_url(
            app_url, connect_timeout=5, disconnect_timeout=2
        ) as ws:
            await ws.send_message(json.dumps(start))
            up_send, up_recv = trio.open_memory_channel[bytes](UPLINK_FRAMES)
            down_send, down_recv = trio.open_memory_channel[Downlink](DOWNLINK_FRAMES)
            async with trio.open_nursery() as nursery:

                async def role(fn, *args) -> None:  # type: ignore[no-untyped-def]
                    # Whichever side ends first ends the call.
                    try:
                        await fn(*args)
                    except ENDS_CALL:
                        pass
                    finally:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(role, call_reader, stream, buf, up_send)
                nursery.start_soon(role, app_writer, ws, up_recv)
                nursery.start_soon(role, app_reader, ws, down_send)
                nursery.start_soon(role, pacer, stream, down_recv)
            with trio.move_on_after(1) as scope:
                scope.shield = True
                try:
                    await ws.send_message(json.dumps({"event": "stop", "reason": "call_hangup"}))
                except trio_websocket.ConnectionClosed:
                    pass
    except ENDS_CALL:
        pass  # the caller hung up before the app leg was up
    except Exception as exc:  # a handshake failure, or a bug: one line, keep serving
        STATS.failed += 1
        print(f"call failed: {exc!r}", file=sys.stderr, flush=True)
    finally:
        STATS.live -= 1
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def main(host: str, port: int, app_url: str) -> None:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, functools.partial(handle_call, app_url=app_url),
                              port, host=host)
        )
        bound = listeners[0].socket.getsockname()
        print(f"ready {bound[0]}:{bound[1]}", flush=True)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    print("stats " + json.dumps(STATS.summary()), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--listen", default="127.0.0.1:9092", help="AudioSocket HOST:PORT")
    parser.add_argument("--app", default="ws://127.0.0.1:9000/", help="the sln app's ws:// URL")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    trio.run(main, host, int(port), args.app)
