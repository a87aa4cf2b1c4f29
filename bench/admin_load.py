"""The admin port under attack and under load, with live calls: bridge must not notice.

Three parts, each against real ``bridge run`` processes (bridge pinned to core 0, every
load generator to core 1, as bench/headline.py does):

* ``attack`` (a): the external test's crash request 10,000 times, then every admin fuzz
  class of tests/daemon/adminfuzz.py (malformed request lines, huge headers, bad chunked
  bodies, slowloris, pipelining, half-closed sockets, mid-body and mid-response
  disconnects, random bytes, an unauthenticated flood), while 3 AudioSocket calls run
  through the ``echo:`` route with numbered frames. Verdict: the daemon is up, the
  listener never failed, 0 frames lost. Run with ``[admin] rate_limit = 0`` so that every
  request reaches the parser (with the default limit most would be refused at accept).
* ``mixed`` (b): 1,000 admin requests a second (fresh connections; 80 % unauthenticated
  404s, 10 % /healthz, 10 % /metrics; from 127.0.0.2, so the orchestrator's own GET
  /v1/streams on 127.0.0.1 has its own rate bucket) for the whole life of 100 calls
  (``bridge call --transport audiosocket --calls 100`` → bridge → sln app leg →
  ``bridge echo-server``). Phases, one fresh bridge each: no admin load; the admin load
  with the default limits; with the limits off; and (``--old-src``) the hypercorn +
  Starlette bridge of an older checkout. Reported: pacing lateness p99 of the worst call
  (``GET /v1/streams`` ``lateness_ms``, as headline.py), the share of frames more than
  2 ms and 5 ms late (``bridge_pacing_lateness_seconds``), bridge's CPU, the admin answers.
* ``cost``: CPU µs per admin request of each server, per kind (404, /healthz, /metrics),
  fresh connections and keep-alive: a bridge with no calls driven at ``--rate`` req/s for
  ``--window`` s; (CPU used - idle CPU) / requests answered. With ``--old-src`` the old
  server is measured in the same run, interleaved.

    .venv/bin/python bench/admin_load.py attack
    .venv/bin/python bench/admin_load.py mixed --old-src /tmp/bridge-old
    .venv/bin/python bench/admin_load.py cost --old-src /tmp/bridge-old
    .venv/bin/python bench/admin_load.py all --old-src /tmp/bridge-old

``--old-src`` is a checkout of an older bridge (``git archive <commit> | tar -x -C DIR``);
it runs with this virtualenv. Results: ``bench/out/admin_load.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

from bench import _procs as P
from bench.headline import DEFAULT_RATE, _bridge_lateness

SUT_CPU = 0
LOAD_CPU = 1
#: The mixed load: kind -> share of requests.
MIX = {"404": 8, "healthz": 1, "metrics": 1}
REQUESTS = {
    "404": b"GET /nope HTTP/1.1\r\nHost: admin\r\nUser-Agent: bench\r\n\r\n",
    "healthz": b"GET /healthz HTTP/1.1\r\nHost: admin\r\nUser-Agent: bench\r\n\r\n",
    "metrics": b"GET /metrics HTTP/1.1\r\nHost: admin\r\nUser-Agent: bench\r\n\r\n",
}
#: [admin] for the new server: the limits off (every request is served).
NO_LIMITS = 'rate_limit = 0\nmax_connections = 4096\nmax_connections_per_peer = 4096\n'


# ====================================================================================
# the HTTP load generator (runs as its own process: `admin_load.py _loader ...`)
# ====================================================================================


async def _read_response(stream: trio.SocketStream) -> tuple[str, bool]:
    """Read one response: its status code (or why there was none), and whether the
    server closes the connection after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return _status(buf) or "eof", True
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status = _status(head) or "garbled"
    length = 0
    close = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and b"close" in value.lower():
            close = True
    while len(body) < length:
        chunk = await stream.receive_some(65536)
        if not chunk:
            return "short", True
        body += chunk
    return status, close


def _status(head: bytes) -> str | None:
    if head.startswith(b"HTTP/1.1 ") and len(head) >= 12:
        return head[9:12].decode()
    return None


async def load(
    host: str,
    port: int,
    *,
    rate: float,
    duration_s: float,
    mix: dict[str, int],
    keepalive: int = 0,
    source: str | None = None,
    concurrency: int = 512,
) -> dict[str, Any]:
    """``rate`` requests a second for ``duration_s``: on a fresh connection each (closed
    after the answer, as a health checker does) or, with ``keepalive`` = K, spread over
    K kept-alive connections."""
    kinds = [k for k, w in mix.items() for _ in range(w)]
    total = int(rate * duration_s)
    counts: dict[str, int] = {}
    latencies: list[float] = []
    state = {"skipped": 0, "in_flight": 0}

    def done(status: str, t0: float) -> None:
        counts[status] = counts.get(status, 0) + 1
        latencies.append(trio.current_time() - t0)

    async def connect() -> trio.SocketStream:
        return await trio.open_tcp_stream(host, port, local_address=source)

    async def fresh(kind: str) -> None:
        t0 = trio.current_time()
        status = "timeout"
        try:
            with trio.move_on_after(5.0):
                stream = await connect()
                try:
                    await stream.send_all(REQUESTS[kind])
                    status, _ = await _read_response(stream)
                finally:
                    await stream.aclose()
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            status = "reset"
        finally:
            state["in_flight"] -= 1
        done(status, t0)

    start = trio.current_time() + 0.05
    cpu0 = time.process_time()
    if keepalive:

        async def worker(w: int) -> None:
            stream: trio.SocketStream | None = None
            for i in range(w, total, keepalive):
                if trio.current_time() > start + duration_s + 1.0:
                    # Behind schedule (the server slows this client down): the rest
                    # is not sent.
                    state["skipped"] += len(range(i, total, keepalive))
                    break
                await trio.sleep_until(start + i / rate)
                kind = kinds[i % len(kinds)]
                t0 = trio.current_time()
                try:
                    with trio.fail_after(5.0):
                        if stream is None:
                            stream = await connect()
                        await stream.send_all(REQUESTS[kind])
                        status, close = await _read_response(stream)
                    if status in ("eof", "short"):
                        raise trio.BrokenResourceError
                    if close:  # e.g. the server's request cap per connection
                        await stream.aclose()
                        stream = None
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
                    status = "reset"
                    if stream is not None:
                        await stream.aclose()
                    stream = None
                done(status, t0)
            if stream is not None:
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            for w in range(keepalive):
                nursery.start_soon(worker, w)
    else:
        async with trio.open_nursery() as nursery:
            i = 0
            while i < total:
                await trio.sleep_until(start + i / rate)
                # Everything due now (one wake-up per batch, not per request).
                now = trio.current_time()
                while i < total and start + i / rate <= now:
                    if state["in_flight"] >= concurrency:
                        state["skipped"] += 1
                    else:
                        state["in_flight"] += 1
                        nursery.start_soon(fresh, kinds[i % len(kinds)])
                    i += 1
    wall = trio.current_time() - start
    latencies.sort()
    return {
        "rate_asked": rate,
        "sent": total - state["skipped"],
        # Fresh connections: not sent because 512 were in flight; kept alive: not sent
        # in time because the server slowed this client down.
        "skipped_client_busy": state["skipped"],
        "answered_per_s": round(sum(v for k, v in counts.items() if k.isdigit()) / wall, 1),
        "statuses": counts,
        "latency_ms": {
            "p50": round(1000 * P.pct(latencies, 50), 2),
            "p99": round(1000 * P.pct(latencies, 99), 2),
        },
        "wall_s": round(wall, 2),
        "client_cpu_s": round(time.process_time() - cpu0, 2),
    }


def _loader_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="admin_load.py _loader")
    parser.add_argument("--target", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--mix", default="404:8,healthz:1,metrics:1")
    parser.add_argument("--keepalive", type=int, default=0)
    parser.add_argument("--source", default=None)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    mix = {k: int(v) for k, v in (p.split(":") for p in args.mix.split(","))}
    result = trio.run(
        lambda: load(
            host,
            int(port),
            rate=args.rate,
            duration_s=args.duration,
            mix=mix,
            keepalive=args.keepalive,
            source=args.source,
        )
    )
    print(json.dumps(result), flush=True)
    return 0


def loader_proc(name: str, workdir: Path, target: tuple[str, int], *, rate: float,
                duration_s: float, mix: dict[str, int], keepalive: int = 0,
                source: str | None = "127.0.0.2", cpus: list[int] | None = None) -> P.Proc:  # fmt: skip
    argv = [P.PY, str(Path(__file__).resolve()), "_loader", "--target", f"{target[0]}:{target[1]}",
            "--rate", f"{rate:g}", "--duration", f"{duration_s:g}",
            "--mix", ",".join(f"{k}:{v}" for k, v in mix.items()), "--keepalive", str(keepalive)]  # fmt: skip
    if source:
        argv += ["--source", source]
    return P.Proc(name, argv, workdir, cpus=cpus)


def loader_result(proc: P.Proc) -> dict[str, Any]:
    for line in reversed(proc.stdout().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise RuntimeError(f"{proc.name}: no result (exit {proc.returncode}):\n{proc.stderr()[-2000:]}")


# ====================================================================================
# bridges
# ====================================================================================


def start_bridge(name: str, workdir: Path, *, app_url: str = "echo:", admin: str = "",
                 src: str | None = None, cpus: list[int] | None = None,
                 log_level: str = "warning", stream: str = "") -> tuple[P.Bridge, int, int]:  # fmt: skip
    """A bridge (this checkout, or ``src``) with an AudioSocket route to ``app_url``;
    ``admin`` lines are added to ``[admin]`` and ``stream`` lines to ``[stream]`` (this
    checkout only: older ones reject them)."""
    admin_port, as_port = P.free_port(), P.free_port()
    cfg = P.bridge_config(workdir / f"{name}.toml", admin_port=admin_port, audiosocket_port=as_port,
                          app_url=app_url, records=workdir / f"{name}.sqlite3",
                          log_level=log_level, stream=stream)  # fmt: skip
    if admin:
        text = cfg.read_text()
        cfg.write_text(text.replace("[admin]\n", "[admin]\n" + admin, 1))
    if src:
        old = os.environ.get("BENCH_BRIDGE_SRC")
        os.environ["BENCH_BRIDGE_SRC"] = src
    try:
        br = P.Bridge(name, cfg, admin_port, workdir, cpus=cpus)
    finally:
        if src:
            if old is None:
                os.environ.pop("BENCH_BRIDGE_SRC", None)
            else:
                os.environ["BENCH_BRIDGE_SRC"] = old
    br.wait_ready()
    return br, admin_port, as_port


def lateness_histogram(admin_url: str) -> dict[float, float]:
    """Cumulative ``bridge_pacing_lateness_seconds`` buckets (le -> count)."""
    out: dict[float, float] = {}
    for line in P.http_text(admin_url + "/metrics", timeout=30).splitlines():
        if line.startswith("bridge_pacing_lateness_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[math.inf if le == "+Inf" else float(le)] = float(line.rsplit(None, 1)[1])
    return out


def late_shares(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    delta = {le: after.get(le, 0.0) - before.get(le, 0.0) for le in after}
    total = delta.get(math.inf, 0.0)
    if not total:
        return {"frames": 0}

    def over(le: float) -> float:
        return round(100.0 * (total - delta.get(le, 0.0)) / total, 3)

    p99 = next((le for le in sorted(delta) if delta[le] >= 0.99 * total), math.inf)
    return {
        "frames": int(total),
        "over_2ms_percent": over(0.002),
        "over_5ms_percent": over(0.005),
        "p99_bucket_ms": None if p99 == math.inf else p99 * 1000,
    }


# ====================================================================================
# (a) attack
# ====================================================================================


def attack(workdir: Path, *, crash_requests: int = 10_000, fuzz_rounds: int = 2_000,
           seed: int = 20240501, pin: bool = True, verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    from tests.daemon.adminfuzz import CRASH, EchoCall, run_fuzz, summary

    sut, load_cpus = ([SUT_CPU], [LOAD_CPU]) if pin else (None, None)
    # The calls check every numbered frame comes back once and in order. With the load
    # generator in the same process, its own stalls send bursts; bridge would then trim
    # the standing latency they leave (deliberately, and counted), which an exact echo
    # count cannot tell from loss. This bench is about the admin port, so trimming is off.
    br, admin_port, as_port = start_bridge("attack", workdir, admin=NO_LIMITS, cpus=sut,
                                           stream="trim_latency = false\n")  # fmt: skip
    result: dict[str, Any] = {"crash_requests": crash_requests, "fuzz_rounds": fuzz_rounds}
    try:
        cpu0 = P.cpu_s(br.pid)

        async def main() -> None:
            stop = trio.Event()
            calls = [EchoCall("127.0.0.1", as_port, frames=10**6, stop=stop) for _ in range(3)]
            async with trio.open_nursery() as nursery:
                for call in calls:
                    nursery.start_soon(call.run)
                for call in calls:
                    await call.streaming.wait()
                t0 = time.monotonic()
                limiter = trio.CapacityLimiter(16)
                answers: dict[str, int] = {}

                async def crash_once() -> None:
                    async with limiter:
                        try:
                            stream = await trio.open_tcp_stream("127.0.0.1", admin_port)
                        except OSError:
                            answers["refused"] = answers.get("refused", 0) + 1
                            return
                        try:
                            await stream.send_all(CRASH)
                            with trio.move_on_after(5):
                                data = await stream.receive_some(65536)
                                key = data[9:12].decode() if data.startswith(b"HTTP/1.1 ") else "none"
                                answers[key] = answers.get(key, 0) + 1
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            answers["reset"] = answers.get("reset", 0) + 1
                        finally:
                            await stream.aclose()

                async with trio.open_nursery() as crashes:
                    for _ in range(crash_requests):
                        await limiter.acquire()  # pace by completion, 16 in flight
                        limiter.release()
                        crashes.start_soon(crash_once)
                result["crash_s"] = round(time.monotonic() - t0, 1)
                result["crash_answers"] = answers
                if verbose:
                    print(f"  {crash_requests} crash requests in {result['crash_s']} s: {answers}", flush=True)
                t1 = time.monotonic()
                result["fuzz_ran"] = await run_fuzz("127.0.0.1", admin_port, seed=seed,
                                                    rounds=fuzz_rounds, concurrency=16)  # fmt: skip
                result["fuzz_s"] = round(time.monotonic() - t1, 1)
                await trio.sleep(1.0)
                stop.set()
            result["calls"] = summary(calls)

        if pin:
            P.pin_self(load_cpus)
        trio.run(main)
        result["daemon_alive"] = br.alive()
        result["healthz"] = P.http_json(br.admin + "/healthz")
        metrics = P.http_text(br.admin + "/metrics")
        result["listener_failures"] = [ln for ln in metrics.splitlines()
                                       if ln.startswith("bridge_listener_failures_total{")]  # fmt: skip
        result["admin_errors"] = [ln for ln in metrics.splitlines()
                                  if ln.startswith("bridge_admin_connection_errors_total{")]  # fmt: skip
        result["daemon_cpu_s"] = round(P.cpu_s(br.pid) - cpu0, 1)
        errors = [ln for ln in br.log_lines() if ln.get("level") in ("error", "critical")]
        result["error_log_lines"] = len(errors)
        result["ok"] = bool(
            result["daemon_alive"] and result["calls"]["lost"] == 0 and result["calls"]["in_order"]
            and not result["calls"]["hung_up"] and not errors
            and all(ln.endswith(" 0.0") for ln in result["listener_failures"])
        )  # fmt: skip
    finally:
        br.stop()
    if verbose:
        print(f"  attack: daemon alive {result.get('daemon_alive')}, calls {result.get('calls')}, "
              f"listener failures {result.get('listener_failures')}, ERROR lines "
              f"{result.get('error_log_lines')}", flush=True)  # fmt: skip
    return result


# ====================================================================================
# (b) mixed load with 100 calls
# ====================================================================================


def wait_quiet(max_wait_s: float, *, percent: float = 25.0, sample_s: float = 2.0) -> float:
    """Wait (at most ``max_wait_s``) until the other processes on the machine use less
    than ``percent`` of a core; their share in the last sample."""
    deadline = time.monotonic() + max_wait_s
    ours = {os.getpid()}
    while True:
        a0, t0 = P.process_cpu(), time.monotonic()
        time.sleep(sample_s)
        share = 100 * P.others_cpu_s(a0, P.process_cpu(), ours) / (time.monotonic() - t0)
        if share < percent or time.monotonic() >= deadline:
            return round(share, 1)


def mixed_phase(workdir: Path, tag: str, *, echo_url: str, calls: int, admin_rate: float,
                admin: str = "", src: str | None = None, settle_s: float, window_s: float,
                pin: bool, verbose: bool, quiet_s: float = 0.0,
                keepalive: int = 0) -> dict[str, Any]:  # fmt: skip
    sut, load_cpus = ([SUT_CPU], [LOAD_CPU]) if pin else (None, None)
    others_before = wait_quiet(quiet_s) if quiet_s else None
    app_url = echo_url if echo_url == "echo:" else echo_url + "/"
    br, admin_port, as_port = start_bridge(tag, workdir, app_url=app_url, admin=admin, src=src,
                                           cpus=sut)  # fmt: skip
    ramp_s = calls / DEFAULT_RATE
    duration = math.ceil(ramp_s + settle_s + window_s + 3)
    procs: list[P.Proc] = []
    point: dict[str, Any] = {"phase": tag, "calls": calls, "admin_rate": admin_rate,
                             "others_cpu_percent_before": others_before}  # fmt: skip
    try:
        if admin_rate:
            loader = loader_proc(f"{tag}-loader", workdir, ("127.0.0.1", admin_port), rate=admin_rate,
                                 duration_s=duration + 2, mix=MIX, keepalive=keepalive,
                                 cpus=load_cpus)  # fmt: skip
            procs.append(loader)
            time.sleep(0.5)
        gen = P.Proc(f"{tag}-call", P.call_argv("audiosocket", f"127.0.0.1:{as_port}", calls=calls,
                                                 duration_s=duration, rate=DEFAULT_RATE),
                     workdir, cpus=load_cpus)  # fmt: skip
        procs.append(gen)
        point["all_connected"] = P.wait_until(lambda: P.established(as_port) >= calls, ramp_s + 15, 0.1)
        time.sleep(settle_s)
        hist0 = lateness_histogram(br.admin)
        c0, w0, a0 = P.cpu_s(br.pid), time.monotonic(), P.process_cpu()
        time.sleep(window_s)
        c1, w1, a1 = P.cpu_s(br.pid), time.monotonic(), P.process_cpu()
        hist1 = lateness_histogram(br.admin)
        wall = w1 - w0
        ours = {os.getpid(), br.pid, *(p.pid for p in procs)}
        point["bridge_cpu_percent"] = round(100 * (c1 - c0) / wall, 1)
        point["others_cpu_percent"] = round(100 * P.others_cpu_s(a0, a1, ours) / wall, 1)
        point["lateness"] = _bridge_lateness(br.live_streams())
        point["window_lateness"] = late_shares(hist0, hist1)
        gen.wait(duration + 60)
        report = P.read_report(gen)["summary"]
        # Frames bridge's playout trimmed or cross-faded after a burst are its decision,
        # counted in its metrics, not losses (as in the other benches); so a call is ok
        # when it connected and the caller hung up, and lost frames are judged in sum.
        point["playout_trimmed"] = br.playout_trimmed()
        failed = report["calls"] - report["connected"] + sum(
            v for h, v in report["hangups"].items() if h != "caller_hangup"
        )
        point.update({"calls_ok": report["calls"] - failed, "calls_failed": failed,
                      "frames_sent": report["frames_sent"],
                      "lost": max(0, report["lost"] - point["playout_trimmed"]),
                      "rtt_p99_ms": report["latency_ms"]["p99"]})  # fmt: skip
        if admin_rate:
            procs[0].wait(60)
            point["admin"] = loader_result(procs[0])
        point["daemon_alive"] = br.alive()
    finally:
        for p in procs:
            p.stop()
        br.stop()
    if verbose:
        lat, win = point.get("lateness", {}), point.get("window_lateness", {})
        adm = point.get("admin", {})
        print(f"  {tag:<16} bridge cpu {point.get('bridge_cpu_percent')}%, lateness p99 "
              f"{lat.get('p99_ms')} ms (median call {lat.get('p99_median_ms')}), window frames "
              f">2 ms {win.get('over_2ms_percent')}% >5 ms {win.get('over_5ms_percent')}%, "
              f"lost {point.get('lost')}, ok {point.get('calls_ok')}/{calls}; admin "
              f"{adm.get('answered_per_s')}/s {adm.get('statuses')}; others "
              f"{point.get('others_cpu_percent')}%", flush=True)  # fmt: skip
    return point


def mixed(workdir: Path, *, calls: int = 100, admin_rate: float = 1000.0, old_src: str | None = None,
          settle_s: float = 3.0, window_s: float = 15.0, pin: bool = True, quiet_s: float = 0.0,
          app: str = "ws", keepalive: int = 0, verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    """``app``: "ws" (``bridge echo-server`` over a WebSocket app leg, as headline.py) or
    "echo" (the built-in ``echo:`` route: no app process on the load core)."""
    load_cpus = [LOAD_CPU] if pin else None
    if app == "ws":
        echo: P.Proc | None
        echo, echo_url = P.echo_server("echo", workdir, cpus=load_cpus)
    else:
        echo, echo_url = None, "echo:"
    phases: list[dict[str, Any]] = []
    try:
        plan: list[tuple[str, dict[str, Any]]] = [
            ("no-admin-load", {"admin_rate": 0.0}),
            ("default-limits", {"admin_rate": admin_rate}),
            ("limits-off", {"admin_rate": admin_rate, "admin": NO_LIMITS}),
        ]
        if old_src:
            plan.append(("hypercorn-old", {"admin_rate": admin_rate, "src": old_src}))
        for tag, kw in plan:
            phases.append(mixed_phase(workdir, tag, echo_url=echo_url, calls=calls, settle_s=settle_s,
                                      window_s=window_s, pin=pin, verbose=verbose,
                                      quiet_s=quiet_s, keepalive=keepalive, **kw))  # fmt: skip
    finally:
        if echo is not None:
            echo.stop()
    base = phases[0]["bridge_cpu_percent"]
    for ph in phases[1:]:
        answered = ph.get("admin", {}).get("answered_per_s") or 0
        ph["admin_cpu_percent"] = round(ph["bridge_cpu_percent"] - base, 1)
        if answered:
            ph["admin_us_per_request"] = round(10_000 * ph["admin_cpu_percent"] / answered, 1)
    return {"calls": calls, "admin_rate": admin_rate, "mix": MIX, "app": app,
            "connections": f"keep-alive x{keepalive}" if keepalive else "fresh", "phases": phases}  # fmt: skip


# ====================================================================================
# cost per request
# ====================================================================================


def cost(workdir: Path, *, old_src: str | None = None, rate: float = 300.0, window_s: float = 10.0,
         kinds: tuple[str, ...] = ("404", "healthz", "metrics"), modes: tuple[int, ...] = (0, 8),
         rounds: int = 2, pin: bool = True, verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    sut, load_cpus = ([SUT_CPU], [LOAD_CPU]) if pin else (None, None)
    servers: dict[str, tuple[P.Bridge, int]] = {}
    out: dict[str, Any] = {"rate": rate, "window_s": window_s, "rounds": rounds, "points": []}
    try:
        br, port, _ = start_bridge("cost-new", workdir, admin=NO_LIMITS, cpus=sut)
        servers["h11 (new)"] = (br, port)
        if old_src:
            br, port, _ = start_bridge("cost-old", workdir, src=old_src, cpus=sut)
            servers["hypercorn+starlette (old)"] = (br, port)
        time.sleep(2.0)
        idle: dict[str, float] = {}
        for name, (br, _) in servers.items():
            c0, t0 = P.cpu_s(br.pid), time.monotonic()
            time.sleep(5.0)
            idle[name] = (P.cpu_s(br.pid) - c0) / (time.monotonic() - t0)
        out["idle_cpu_percent"] = {k: round(100 * v, 2) for k, v in idle.items()}
        serial = 0
        for _ in range(rounds):
            for keepalive in modes:
                for kind in kinds:
                    for name, (br, port) in servers.items():
                        serial += 1
                        loader = loader_proc(f"cost-{serial}", workdir, ("127.0.0.1", port), rate=rate,
                                             duration_s=window_s, mix={kind: 1}, keepalive=keepalive,
                                             source=None, cpus=load_cpus)  # fmt: skip
                        c0, t0 = P.cpu_s(br.pid), time.monotonic()
                        loader.wait(window_s + 60)
                        c1, t1 = P.cpu_s(br.pid), time.monotonic()
                        res = loader_result(loader)
                        loader.stop()
                        answered = sum(v for k, v in res["statuses"].items() if k.isdigit())
                        used = (c1 - c0) - idle[name] * (t1 - t0)
                        point = {
                            "server": name, "kind": kind,
                            "connections": f"keep-alive x{keepalive}" if keepalive else "fresh",
                            "answered": answered, "statuses": res["statuses"],
                            "cpu_percent": round(100 * (c1 - c0) / (t1 - t0), 1),
                            "us_per_request": round(1e6 * used / answered, 1) if answered else None,
                            "latency_ms": res["latency_ms"],
                        }  # fmt: skip
                        out["points"].append(point)
                        if verbose:
                            print(f"  {name:<26} {kind:<8} {point['connections']:<14} "
                                  f"{point['us_per_request']} µs/request ({point['cpu_percent']}% "
                                  f"at {answered / window_s:.0f}/s) {res['statuses']}", flush=True)  # fmt: skip
        summary: dict[str, dict[str, float]] = {}
        for p in out["points"]:
            if p["us_per_request"] is None:
                continue
            key = f"{p['kind']} {p['connections']}"
            cur = summary.setdefault(key, {})
            # The best of the rounds: on a shared machine noise only ever adds CPU.
            cur[p["server"]] = min(cur.get(p["server"], math.inf), p["us_per_request"])
        out["summary_us_per_request"] = summary
    finally:
        for br, _ in servers.values():
            br.stop()
    return out


# ====================================================================================


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_loader":
        return _loader_main(sys.argv[2:])
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("part", choices=["attack", "mixed", "cost", "all"])
    parser.add_argument("--old-src", help="an older checkout to measure against (hypercorn)")
    parser.add_argument("--crash-requests", type=int, default=10_000)
    parser.add_argument("--fuzz-rounds", type=int, default=2_000)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--admin-rate", type=float, default=1000.0)
    parser.add_argument("--window", type=float, default=None)
    parser.add_argument("--rate", type=float, default=300.0, help="cost: requests/s")
    parser.add_argument("--rounds", type=int, default=2, help="cost: rounds")
    parser.add_argument("--app", choices=["ws", "echo"], default="ws",
                        help="mixed: echo-server over WebSocket (default) or the echo: route")
    parser.add_argument("--keepalive", type=int, default=0, metavar="K",
                        help="mixed: admin requests over K kept-alive connections (default: fresh)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                        help="mixed: before each phase wait up to S s for the machine to be quiet")  # fmt: skip
    parser.add_argument("--name", default="admin_load")
    args = parser.parse_args()
    P.install_sigterm_exit()
    pin = not args.no_pin and P.NCPU >= 2
    doc: dict[str, Any] = {"machine": P.machine()}
    with P.workdir("bridge-admin-load-") as workdir:
        if args.part in ("attack", "all"):
            print("(a) attack: crash request and admin fuzz with 3 live calls", flush=True)
            doc["attack"] = attack(workdir, crash_requests=args.crash_requests,
                                   fuzz_rounds=args.fuzz_rounds, pin=pin)  # fmt: skip
        if args.part in ("cost", "all"):
            print(f"cost per admin request at {args.rate:g}/s", flush=True)
            doc["cost"] = cost(workdir, old_src=args.old_src, rate=args.rate,
                               window_s=args.window or 10.0, rounds=args.rounds, pin=pin)  # fmt: skip
        if args.part in ("mixed", "all"):
            print(f"(b) {args.admin_rate:g} admin requests/s with {args.calls} calls", flush=True)
            doc["mixed"] = mixed(workdir, calls=args.calls, admin_rate=args.admin_rate,
                                 old_src=args.old_src, window_s=args.window or 15.0, pin=pin,
                                 quiet_s=args.wait_quiet, app=args.app,
                                 keepalive=args.keepalive)  # fmt: skip
    doc["machine"]["load_average_1m_end"] = round(P.load_average(), 2)
    path = P.save_json(f"{args.name}.json", doc)
    print(f"results: {path}", flush=True)
    if "attack" in doc and not doc["attack"]["ok"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
