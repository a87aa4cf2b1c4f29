"""What terminating TLS on the carrier listener costs: CPU per call-frame with and without.

Same layout as the headline (``bench/headline.py``) on this 2-core VM:

* core 0: ``bridge run`` alone, its ``[websocket]`` listener either plain (``ws://``) or
  serving TLS itself (``wss://``, a throwaway trustme CA and server certificate, ECDSA
  P-256, TLS 1.3 negotiated);
* core 1: ``bridge call --transport twilio`` (N Twilio-format calls, every frame
  watermarked and timed) and this script (which sleeps); with ``--app echo-server`` also
  ``bridge echo-server`` (the app, sln over plain ``ws://``).

The call path: ``bridge call`` → Twilio media stream (JSON over WebSocket, over TLS or
not) → bridge → the built-in ``echo:`` app (or an sln app leg to the echo-server) → back.
The default leaves core 1 to the generator: its own TLS client costs about as much per
frame as bridge's side, and with the echo-server beside it the load side falls behind at
N=100 on this VM. Only the carrier leg changes between the two variants, so the
difference is what TLS costs there: the record layer each way
(AES-GCM or ChaCha20 on ~250-byte JSON frames), ``trio.SSLStream``'s extra task
switches, and the reader-task fallback (a TLS socket has no raw fd for the read poller;
every frame out goes through ``serve_writer``'s backlog).

Measured per variant, in a steady window (every call connected, ``--settle`` s, then
``--window`` s): CPU of the bridge process (``/proc/PID/stat`` utime+stime) per
call-frame (CPU s / the call frames bridge took in during the window, read from each
stream's ``frames_in`` in ``GET /v1/streams``: a load side that falls behind sends fewer
than N * 50 a second, and dividing by the nominal count would flatter the figure);
round trip p50/p99 and frames lost from
``bridge call --json``; CPU other processes used meanwhile (the machine is shared).
The variants alternate (plain, TLS, plain, TLS, ...) and the medians are compared: the
ratio is the figure to quote, the absolute values move with the machine's load.

    .venv/bin/python bench/tls_cost.py                 # N=100, 3 rounds, ~4 min
    .venv/bin/python bench/tls_cost.py --quick         # N=20, 1 round, ~1 min
    .venv/bin/python bench/tls_cost.py --transport     # the transport alone, ~30 s

``--transport`` measures the WebSocket transport alone, in one process: bridge's server
and client on one Trio loop, echo round trips of a Twilio-sized text message (a media
message is ~230 bytes of JSON), plain and TLS interleaved, CPU time of the process per
round trip (both ends: each side receives and sends one message). Process CPU time is
what the machine's other load disturbs least, so this is the steadier figure of what
TLS adds per message; the whole-daemon run above says what it adds per call-frame.

Results: ``bench/out/tls_cost.json``.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _procs as P

SUT_CPU = 0
LOAD_CPU = 1
#: A point during which other processes used more than this (% of one core) is measured
#: again (up to ``retries`` more times) and the quietest attempt kept: on a shared
#: machine a TLS run that is starved of CPU misses its 2 s send deadlines and drops calls.
NOISE_PERCENT = 25.0
DEFAULT_RATE = round(50.0 / 1.6180339887, 2)  # spread call phases, as bench/headline.py


def _certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """(CA, certificate chain, key) files from a fresh trustme CA."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca_file, cert_file, key_file = (workdir / n for n in ("ca.pem", "fullchain.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file


def _config(path: Path, *, admin: int, ws: int, app_url: str, tls: tuple[Path, Path] | None) -> Path:
    tls_keys = f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n' if tls else ""
    path.write_text(
        f"""[daemon]
log_level = "warning"
log_format = "json"
max_streams = 5000

[admin]
listen = "127.0.0.1:{admin}"

[audiosocket]
listen = ""

[websocket]
listen = "127.0.0.1:{ws}"
max_handshakes = 1024
{tls_keys}
[records]
path = "{path.with_suffix(".sqlite3")}"

[[routes]]
name = "twilio-sln"
match = {{ listener = "websocket", path = "/twilio" }}
carrier = "twilio"
app = {{ url = "{app_url}", encapsulation = "sln", sample_rate = 8000 }}
"""
    )
    return path


def _wait_quiet(max_wait_s: float, ours: set[int], verbose: bool) -> float:
    """Wait (up to ``max_wait_s``) until other processes use at most NOISE_PERCENT of a
    core over a 2 s sample; the last sample's figure."""
    deadline = time.monotonic() + max_wait_s
    while True:
        a0, t0 = P.process_cpu(), time.monotonic()
        time.sleep(2.0)
        others = 100 * P.others_cpu_s(a0, P.process_cpu(), ours) / (time.monotonic() - t0)
        if others <= NOISE_PERCENT or time.monotonic() >= deadline:
            return others
        if verbose:
            print(f"  (waiting for a quiet machine: others use {others:.0f}% of a core)", flush=True)
        time.sleep(3.0)


def _streams(bridge: P.Bridge) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Frames each live stream has taken in from its call so far (by stream id), and
    each one's pacing lateness (how late bridge's own clock sent its frames)."""
    streams = bridge.live_streams()
    frames = {s["stream_id"]: int(s["counters"]["frames_in"]) for s in streams}
    return frames, [s["lateness_ms"] for s in streams if s["lateness_ms"]["frames"]]


def measure(
    workdir: Path,
    variant: str,
    n: int,
    *,
    echo_url: str,
    extra_pids: tuple[int, ...],
    ca_file: Path,
    tls: tuple[Path, Path],
    rate: float,
    settle_s: float,
    window_s: float,
    serial: int,
    pin: bool,
    procs: list[P.Proc],
    margin_s: float = 2.5,
) -> dict[str, Any]:
    tag = f"{variant}-{n}-{serial}"
    admin, port = P.free_port(), P.free_port()
    cfg = _config(
        workdir / f"{tag}.toml",
        admin=admin,
        ws=port,
        app_url=echo_url,
        tls=tls if variant == "tls" else None,
    )
    bridge = P.Bridge(tag, cfg, admin, workdir, cpus=[SUT_CPU] if pin else None)
    procs.append(bridge)
    bridge.wait_ready()
    ramp_s = n / rate
    # Calls last ramp + settle + window + margin, so that none ends inside the window.
    duration = math.ceil(ramp_s + settle_s + window_s + margin_s)
    scheme = "wss" if variant == "tls" else "ws"
    extra = ["--tls-ca", str(ca_file)] if variant == "tls" else []
    gen = P.Proc(
        f"{tag}-call",
        P.call_argv(
            "twilio",
            f"{scheme}://127.0.0.1:{port}/twilio",
            calls=n,
            duration_s=duration,
            rate=rate,
            extra=extra,
        ),
        workdir,
        cpus=[LOAD_CPU] if pin else None,
    )
    procs.append(gen)
    result: dict[str, Any] = {"variant": variant, "n": n, "duration_s": duration}
    try:
        cpu_start = P.cpu_s(bridge.pid)
        result["all_connected"] = P.wait_until(lambda: P.established(port) >= n, ramp_s + 15, 0.1)
        # CPU over the ramp, per call: the handshakes, and the audio of the calls already
        # up (so not a handshake cost on its own; compare plain and TLS).
        result["ramp_cpu_ms_per_call"] = round((P.cpu_s(bridge.pid) - cpu_start) * 1000 / n, 2)
        time.sleep(settle_s)
        ours = {os.getpid(), bridge.pid, gen.pid, *extra_pids}
        f0, _ = _streams(bridge)
        c0, w0, a0 = P.cpu_s(bridge.pid), time.monotonic(), P.process_cpu()
        time.sleep(window_s)
        c1, w1, a1 = P.cpu_s(bridge.pid), time.monotonic(), P.process_cpu()
        f1, lateness = _streams(bridge)
        wall = w1 - w0
        cpu = (c1 - c0) / wall
        # Call-frames bridge really moved in the window (a frame in from each call), so a
        # load side that falls behind does not flatter the figure.
        # Streams that ended inside the window (a failing call) are left out.
        frames = sum(f1[k] - v for k, v in f0.items() if k in f1)
        result["cpu_percent"] = round(100 * cpu, 1)
        result["call_frames_in_window"] = frames
        result["call_frames_per_s"] = round(frames / wall, 1)
        result["cpu_us_per_call_frame"] = round((c1 - c0) * 1e6 / frames, 1) if frames else None
        # bridge's own view of its event loop (the generator's round trip includes the
        # generator's TLS client, which is no faster than bridge's side).
        if lateness:
            result["bridge_lateness_p50_ms"] = P.pct([x["p50"] for x in lateness], 50)
            result["bridge_lateness_p99_ms"] = max(x["p99"] for x in lateness)
        result["others_cpu_percent"] = round(100 * P.others_cpu_s(a0, a1, ours) / wall, 1)
        result["live_at_end"] = P.established(port)
        gen.wait(duration + 60)
        report = P.read_report(gen)
        # Frames bridge's playout trimmed on purpose (standing latency after a burst on
        # a loaded machine) are missing at the caller but not lost: counted apart.
        trimmed = bridge.playout_trimmed()
    except Exception as exc:
        raise RuntimeError(
            f"{tag}: {exc!r}; bridge {'alive' if bridge.alive() else f'exited {bridge.returncode}'}"
            f", its log:\n{bridge.stderr()[-3000:]}"
        ) from exc
    finally:
        gen.stop()
        bridge.stop()
    s = report["summary"]
    failed = s["calls"] - s["connected"] + sum(
        v for h, v in s["hangups"].items() if h != "caller_hangup"
    )
    result.update(
        generator=s["generator"],
        calls_ok=s["calls"] - failed,
        calls_failed=failed,
        frames_sent=s["frames_sent"],
        frames_echoed=s["frames_echoed"],
        missing=s["lost"],
        trimmed=trimmed,
        lost=max(0, s["lost"] - trimmed),
        rtt_p50_ms=s["latency_ms"]["p50"],
        rtt_p99_ms=s["latency_ms"]["p99"],
    )
    return result


def run(
    *,
    n: int = 100,
    rounds: int = 3,
    rate: float = DEFAULT_RATE,
    settle_s: float = 1.0,
    window_s: float = 8.0,
    pin: bool = True,
    app: str = "echo",
    margin_s: float = 2.5,
    retries: int = 2,
    wait_quiet_s: float = 0.0,
    save: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    if pin:
        P.pin_self([LOAD_CPU])
    points: dict[str, list[dict[str, Any]]] = {"plain": [], "tls": []}
    with P.workdir("bridge-tls-cost-") as workdir:
        ca_file, cert_file, key_file = _certificates(workdir)
        procs: list[P.Proc] = []
        try:
            if app == "echo-server":
                echo, echo_url = P.echo_server("echo", workdir, cpus=[LOAD_CPU] if pin else None)
                procs.append(echo)
                echo_url, extra_pids = echo_url + "/", (echo.pid,)
            else:
                echo_url, extra_pids = "echo:", ()
            serial = 0
            for _ in range(rounds):
                for variant in ("plain", "tls"):  # interleaved: drift hits both alike
                    tries = []
                    for _ in range(1 + retries):
                        if wait_quiet_s > 0:
                            _wait_quiet(wait_quiet_s, {os.getpid(), *extra_pids}, verbose)
                        serial += 1
                        point = measure(
                            workdir, variant, n, echo_url=echo_url, extra_pids=extra_pids,
                            ca_file=ca_file, tls=(cert_file, key_file), rate=rate,
                            settle_s=settle_s, window_s=window_s, serial=serial, pin=pin,
                            procs=procs, margin_s=margin_s,
                        )  # fmt: skip
                        tries.append(point)
                        if point["others_cpu_percent"] <= NOISE_PERCENT:
                            break
                        if verbose:
                            print(f"  ({variant}: others used {point['others_cpu_percent']}% "
                                  "of a core; again)", flush=True)  # fmt: skip
                    point = min(tries, key=lambda p: p["others_cpu_percent"])
                    point["attempts"] = len(tries)
                    point["noisy"] = point["others_cpu_percent"] > NOISE_PERCENT
                    points[variant].append(point)
                    if verbose:
                        print(
                            f"  {variant:<5} N={n} cpu {point['cpu_percent']}% "
                            f"({point['cpu_us_per_call_frame']} µs/call-frame), ramp "
                            f"{point['ramp_cpu_ms_per_call']} ms/call, rtt p50 "
                            f"{point['rtt_p50_ms']} p99 {point['rtt_p99_ms']} ms, bridge "
                            f"lateness p99 {point.get('bridge_lateness_p99_ms')} ms, lost "
                            f"{point['lost']}, ok {point['calls_ok']}/{n}; generator "
                            f"{point['generator']['cpu_percent']}%, others "
                            f"{point['others_cpu_percent']}%",
                            flush=True,
                        )
        finally:
            P.kill_on_exit(procs)

    def median(variant: str, key: str) -> float:
        values = [p[key] for p in points[variant] if p[key] is not None]
        return float(statistics.median(values)) if values else math.nan

    plain, tls = median("plain", "cpu_us_per_call_frame"), median("tls", "cpu_us_per_call_frame")
    # Each round's TLS point over the plain point measured just before it: the pair saw
    # about the same machine, so its ratio is steadier than a ratio of medians.
    pairs = [
        (round(t["cpu_us_per_call_frame"] / p["cpu_us_per_call_frame"], 3), p, t)
        for p, t in zip(points["plain"], points["tls"], strict=True)
        if p["cpu_us_per_call_frame"] and t["cpu_us_per_call_frame"]
    ]
    ratios = [r for r, _, _ in pairs]
    quiet = [r for r, p, t in pairs if not p["noisy"] and not t["noisy"]]
    doc: dict[str, Any] = {
        "machine": P.machine(),
        "settings": {
            "n": n,
            "rounds": rounds,
            "rate": rate,
            "settle_s": settle_s,
            "window_s": window_s,
            "pinned": pin,
            "app": app,
        },
        "points": points,
        "result": {
            "plain_us_per_call_frame": plain,
            "tls_us_per_call_frame": tls,
            "tls_over_plain": round(tls / plain, 3) if plain else None,
            "tls_over_plain_per_round": ratios,
            "tls_over_plain_median_of_rounds": statistics.median(ratios) if ratios else None,
            "tls_over_plain_quiet_rounds": quiet,
            "tls_extra_us_per_call_frame": round(tls - plain, 1),
            "plain_ramp_cpu_ms_per_call": median("plain", "ramp_cpu_ms_per_call"),
            "tls_ramp_cpu_ms_per_call": median("tls", "ramp_cpu_ms_per_call"),
            "others_cpu_percent_median": float(
                statistics.median(p["others_cpu_percent"] for v in points.values() for p in v)
            ),
            "noisy_points": sum(p["noisy"] for v in points.values() for p in v),
            "all_ok": all(
                p["calls_ok"] == n and p["lost"] == 0 for v in points.values() for p in v
            ),
        },
    }
    if verbose:
        r = doc["result"]
        print(
            f"N={n}: plain {plain} µs/call-frame, TLS {tls} µs/call-frame: "
            f"x{r['tls_over_plain']} (+{r['tls_extra_us_per_call_frame']} µs; per round "
            f"{r['tls_over_plain_per_round']}, quiet rounds {r['tls_over_plain_quiet_rounds']}); ramp "
            f"{r['plain_ramp_cpu_ms_per_call']} vs {r['tls_ramp_cpu_ms_per_call']} ms CPU per call",
            flush=True,
        )
    if save:
        path = P.save_json("tls_cost.json", doc)
        if verbose:
            print(f"-> {path}")
    return doc


_MEDIA = (
    '{"event":"media","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","media":'
    '{"payload":"' + "f" * 212 + '"}}'
)


async def _echo_round_trips(count: int, tls: bool, ca: Any) -> float:
    """CPU µs per echo round trip over bridge's WebSocket transport, TLS or plain."""
    import ssl

    import trio

    from bridge import ConnectionClosed
    from bridge.transports import WebSocketRequest, open_websocket_client, serve_websocket

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send(await ws.receive())
        except ConnectionClosed:
            pass

    server_ctx = client_ctx = None
    if tls:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(
            functools.partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=server_ctx)
        )
        url = f"{'wss' if tls else 'ws'}://127.0.0.1:{bound[0][1]}/bench"
        async with open_websocket_client(url, ping_interval_s=None, ssl_context=client_ctx) as ws:
            for _ in range(200):  # warm up
                await ws.send(_MEDIA)
                await ws.receive()
            cpu0 = time.process_time()
            for _ in range(count):
                await ws.send(_MEDIA)
                await ws.receive()
            cpu = time.process_time() - cpu0
        nursery.cancel_scope.cancel()
    return cpu / count * 1e6


def transport(*, count: int = 20000, rounds: int = 5, verbose: bool = True) -> dict[str, Any]:
    import trio
    import trustme

    ca = trustme.CA()
    runs: dict[str, list[float]] = {"plain": [], "tls": []}
    for i in range(rounds):
        order = ("plain", "tls") if i % 2 == 0 else ("tls", "plain")
        for variant in order:
            us = trio.run(_echo_round_trips, count, variant == "tls", ca)
            runs[variant].append(round(us, 1))
            if verbose:
                print(f"  {variant:<5} {us:.1f} µs CPU per round trip", flush=True)
    plain, tls = statistics.median(runs["plain"]), statistics.median(runs["tls"])
    doc = {
        "what": "bridge's WebSocket server + client in one process: CPU µs per echo round "
        f"trip of a {len(_MEDIA)}-byte text message",
        "runs": runs,
        "plain_us_per_round_trip": plain,
        "tls_us_per_round_trip": tls,
        "tls_over_plain": round(tls / plain, 3),
        "tls_extra_us_per_message_each_side": round((tls - plain) / 2, 1),
    }
    if verbose:
        print(
            f"transport: plain {plain} µs, TLS {tls} µs per round trip: "
            f"x{doc['tls_over_plain']}, +{doc['tls_extra_us_per_message_each_side']} µs "
            "per side per round trip",
            flush=True,
        )
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="N=20, one round, short window")
    parser.add_argument(
        "--transport", action="store_true", help="measure the WebSocket transport alone"
    )
    parser.add_argument("--calls", type=int, default=None, help="N (default 100; quick 20)")
    parser.add_argument("--rounds", type=int, default=None, help="plain/TLS pairs (default 3)")
    parser.add_argument("--window", type=float, default=None, help="steady window, s (default 8)")
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE)
    parser.add_argument("--retries", type=int, default=2, help="re-measure a noisy point")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each point, wait up to S seconds for other processes to quiet down",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument(
        "--app",
        choices=("echo-server", "echo"),
        default="echo",
        help="the app: the built-in echo: (default; no app leg, core 1 left to the "
        "generator, whose own TLS client costs as much as bridge's side), or bridge "
        "echo-server on core 1 (an sln app leg, as the headline)",
    )
    args = parser.parse_args()
    P.install_sigterm_exit()
    if args.transport:
        result = transport(rounds=args.rounds or 5)
        P.save_json("tls_cost_transport.json", {"machine": P.machine(), **result})
        return 0
    doc = run(
        n=args.calls or (20 if args.quick else 100),
        rounds=args.rounds or (1 if args.quick else 3),
        rate=args.rate,
        settle_s=args.settle,
        window_s=args.window or (3.0 if args.quick else 8.0),
        pin=not args.no_pin,
        app=args.app,
        retries=args.retries,
        wait_quiet_s=args.wait_quiet,
    )
    return 0 if doc["result"]["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
