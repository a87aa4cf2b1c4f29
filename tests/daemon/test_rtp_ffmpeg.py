"""ffmpeg as the independent RTP peer: it sends a speech-like signal to bridge's RTP port
(PCMU, its own RTP stack, paced by ``-re``), bridge echoes it, and a second ffmpeg
receives what bridge sends (SDP input) and records it. The recording must match the
original by normalised cross-correlation, at the lag that maximises it.

Skipped only when ffmpeg is not installed (``scripts/install-system-deps`` installs it).
"""

from __future__ import annotations

import array
import errno
import math
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
import trio_websocket

from bridge.media import audioop, write_wav

from .conftest import make_config
from .test_rtp_leg import RTP_ROUTES, opener, parse_addr

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed")

RATE = 8000
SECONDS = 3.0


def speech_like(seconds: float = SECONDS, rate: int = RATE) -> bytes:
    """A voiced signal with a syllable rhythm: a 120-160 Hz fundamental with a slow pitch
    contour, harmonics shaped by two formants (~500 Hz and ~1.5 kHz), and a
    4-syllables-a-second amplitude envelope with pauses between syllables. No two 20 ms
    frames are alike, so a lost, misplaced or repeated frame lowers the correlation."""
    n = int(seconds * rate)
    weights = []
    for k in range(1, 20):
        f = k * 140.0
        weights.append(
            0.25 / k
            + math.exp(-(((f - 500) / 250) ** 2))
            + 0.6 * math.exp(-(((f - 1500) / 400) ** 2))
        )
    out = [0.0] * n
    phase = 0.0
    for i in range(n):
        t = i / rate
        f0 = 140 + 20 * math.sin(2 * math.pi * 0.7 * t)  # intonation
        phase += 2 * math.pi * f0 / rate
        syllable = max(0.0, math.sin(2 * math.pi * 4.0 * t + 0.3 * math.sin(2 * math.pi * 0.9 * t)))
        if syllable == 0.0:
            continue  # the pause between syllables
        envelope = syllable**1.5 * (0.55 + 0.45 * math.sin(2 * math.pi * 0.35 * t) ** 2)
        voiced = sum(
            w * math.sin(k * phase) for k, w in enumerate(weights, 1) if k * f0 < rate / 2 - 200
        )
        out[i] = envelope * voiced
    peak = max(abs(v) for v in out)
    return array.array("h", (round(0.6 * 32767 * v / peak) for v in out)).tobytes()


def best_ncc(original: bytes, recorded: bytes) -> tuple[float, int]:
    """(normalised cross-correlation, lag in samples) at the lag that maximises it.

    ``audioop.findfit`` finds the offset of ``original`` in ``recorded`` that minimises
    ``sum(original^2) * (1 - ncc^2)``, i.e. maximises |ncc| (in C, a quarter of a
    second here); ncc is then computed exactly at that lag. A dropped or repeated
    frame every few hundred ms brings it below 0.3."""
    lag, _factor = audioop.findfit(recorded, original)
    x = array.array("h", original)
    y = array.array("h", recorded[2 * lag : 2 * lag + len(original)])
    xy = sum(a * b for a, b in zip(x, y, strict=False))
    xx = sum(a * a for a in x)
    yy = sum(b * b for b in y)
    return xy / math.sqrt(xx * yy), lag


def free_udp_pair() -> int:
    """An even port p with p and p+1 free (ffmpeg's RTP input binds RTCP on p+1)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1] & ~1
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
            ):
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
                return port
        except OSError:
            continue
    raise RuntimeError("no free UDP port pair")


def port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


async def run(argv: list[str], log: list[bytes]) -> None:
    # ffmpeg's RTP muxer prints the SDP on stdout: captured so it stays out of the log.
    proc = await trio.run_process(
        argv, check=False, capture_stdout=True, capture_stderr=True, stdin=b""
    )
    log.append(proc.stderr)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]


async def ws_echo_app(request: trio_websocket.WebSocketRequest) -> None:
    """An sln echo app written to docs/app-protocol.md with trio-websocket: every binary
    frame straight back, the moment it arrives."""
    ws = await request.accept()
    try:
        while True:
            msg = await ws.get_message()
            if isinstance(msg, bytes):
                await ws.send_message(msg)
    except trio_websocket.ConnectionClosed:
        pass


@pytest.mark.parametrize("app", ["echo:", "websocket"])
async def test_ffmpeg_sends_and_receives_through_bridge(
    daemon_factory: Any, tmp_path: Path, app: str
) -> None:
    """The issue's finding: with an external app that sends audio back, the RTP leg
    fabricated 7-8 frames per 5 s (half-amplitude copies, each shifting everything after
    it by 20 ms; cross-correlation 0.37-0.47) because the playout grid, re-timed to the
    app, clocked the jitter buffer. Now: nothing concealed on a clean loopback, and the
    recording matches the original."""
    assert FFMPEG is not None
    original = speech_like()
    wav = tmp_path / "in.wav"
    write_wav(wav, original, RATE)
    out = tmp_path / "out.raw"
    recv_port = free_udp_pair()
    sdp = tmp_path / "recv.sdp"
    sdp.write_text(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=bridge echo\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {recv_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )
    record_s = 5.0
    logs: list[bytes] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as apps:
            route = "rtp-echo"
            routes = RTP_ROUTES
            if app == "websocket":
                server = await apps.start(
                    trio_websocket.serve_websocket, ws_echo_app, "127.0.0.1", 0, None
                )
                route = "rtp-ws"
                routes += f"""
[[routes]]
name = "rtp-ws"
match = {{ listener = "rtp" }}
app = {{ url = "ws://127.0.0.1:{server.port}/", encapsulation = "sln", sample_rate = 8000 }}
"""
            config = make_config(tmp_path, routes=routes)
            config = msgspec.structs.replace(
                config, rtp=msgspec.structs.replace(config.rtp, ports="41200-41209")
            )
            daemon = await daemon_factory(config)
            record = await _run_call(daemon, route, wav, out, sdp, recv_port, record_s, logs)
            apps.cancel_scope.cancel()
    jitter = record["jitter"]
    print("jitter", jitter, "playout", record["playout"])
    assert jitter["concealed"] == 0 and jitter["lost"] == 0 and jitter["late"] == 0, jitter
    recorded = out.read_bytes()
    assert len(recorded) >= 2 * RATE * (record_s - 0.1)
    assert sys.byteorder == "little"  # s16le, and audioop works in native order
    # bridge latches onto ffmpeg after 4 packets and, like Asterisk's strict RTP, does not
    # play the 3 before (docs/rtp.md): match from 100 ms into the original.
    ncc, lag = best_ncc(original[2 * RATE // 10 :], recorded)
    print(f"normalised cross-correlation {ncc:.4f} at lag {lag / RATE * 1000:.1f} ms")
    assert ncc >= 0.99, (ncc, lag)


async def _run_call(
    daemon: Any,
    route: str,
    wav: Path,
    out: Path,
    sdp: Path,
    recv_port: int,
    record_s: float,
    logs: list[bytes],
) -> dict[str, Any]:
    assert FFMPEG is not None
    admin_host, admin_port = daemon.bound["admin"]
    http = httpx.AsyncClient(base_url=f"http://{admin_host}:{admin_port}", timeout=5)
    async with http, trio.open_nursery() as nursery:
        # The receiver: bridge's output, decoded by ffmpeg's own RTP/PCMU stack.
        receiver = [
            FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error",
            "-protocol_whitelist", "file,udp,rtp", "-i", str(sdp),
            "-t", str(record_s), "-ar", str(RATE), "-ac", "1",
            "-f", "s16le", "-y", str(out),
        ]  # fmt: skip
        receiver_done = trio.Event()

        async def receive() -> None:
            await run(receiver, logs)
            receiver_done.set()

        nursery.start_soon(receive)
        while not port_taken(recv_port):
            await trio.sleep(0.02)

        r = await http.post(
            "/v1/streams",
            json={"call_id": "ffmpeg", "route": route, "remote": f"127.0.0.1:{recv_port}"},
        )
        assert r.status_code == 201, r.text
        stream_id = r.json()["stream_id"]
        host, port = parse_addr(r.json()["local"])
        # The sender: -re paces it in real time; asetnsamples makes one 20 ms packet
        # per 160 samples (ffmpeg's WAV demuxer reads 256 ms blocks and would send them
        # as 1460-byte bursts).
        sender = [
            FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
            "-f", "lavfi", "-i", f"amovie={wav},asetnsamples=n=160:p=0",
            "-ar", str(RATE), "-ac", "1", "-c:a", "pcm_mulaw",
            "-payload_type", "0", "-ssrc", "4660",
            "-f", "rtp", f"rtp://{host}:{port}",
        ]  # fmt: skip
        await run(sender, logs)
        with trio.fail_after(record_s + 2):
            await receiver_done.wait()
        # The receiver stopped after record_s of bridge's output: end the stream.
        r = await http.delete(f"/v1/streams/{stream_id}")
        assert r.status_code == 202
        while daemon.manager.get(stream_id) is not None:
            await trio.sleep(0.01)
    assert opener(daemon).pool.in_use == 0
    await daemon.store.flush()
    record = await daemon.get_stream(stream_id)
    assert record is not None
    return dict(record)
