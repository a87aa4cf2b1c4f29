"""Soak: calls cycling through one bridge for a long time; does anything leak?

``bridge run`` (core 0) with an sln app leg to ``bridge echo-server`` (core 1). Calls
cycle continuously: generators (``bridge call``, core 1) each start ``--rate`` calls a
second for ``--chunk`` seconds, every call lasting ``--call`` seconds, and the next
generator starts as the previous one stops starting calls, so about rate x call-length
calls are always live and new ones keep replacing ended ones.

Every ``--sample`` seconds: bridge's RSS, open file descriptors and threads
(``/proc/PID``), the live stream count (``GET /v1/streams``) and ``bridge_streams_active``
(``/metrics``). Reported:

* RSS slope in MB/hour: a least-squares line through the samples after the warm-up
  (the first ``--warmup`` seconds, or 20 % of the run, whichever is less);
* fds, threads, live streams and ``bridge_streams_active`` at idle before the first
  call, and after the last call ended (they must be back: fds to the idle count, streams 0);
* every call ok and 0 frames lost, over all generators.

and ``bridge_tasks`` (``/metrics``: every Trio task alive in the daemon, counted by
walking the nursery tree at scrape time), which must come back to its idle value.

    .venv/bin/python bench/soak.py                      # 1 hour
    .venv/bin/python bench/soak.py --duration 60s       # a short one (CI, run_all --quick)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _procs as P


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def slope_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t seconds, value) in value per hour."""
    if len(samples) < 3:
        return None
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    mv = sum(v for _, v in samples) / n
    den = sum((t - mt) ** 2 for t, _ in samples)
    if den == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in samples) / den * 3600.0


def run(*, duration_s: float = 3600.0, rate: float = 5.0, call_s: float = 10.0,
        chunk_s: float = 60.0, sample_s: float = 10.0, warmup_s: float = 300.0,
        pin: bool = True, save: bool = True, verbose: bool = True) -> dict[str, Any]:  # fmt: skip
    pin = pin and P.NCPU >= 2
    sut, load = ([0], [1]) if pin else (None, None)
    if pin:
        P.pin_self(load)
    chunk_s = min(chunk_s, duration_s)
    sample_s = min(sample_s, max(1.0, duration_s / 10))
    warmup_s = min(warmup_s, 0.2 * duration_s)
    log = print if verbose else (lambda *a, **k: None)
    procs: list[P.Proc] = []
    samples: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    with P.workdir("bridge-soak-") as wd:
        try:
            echo, url = P.echo_server("echo", wd, cpus=load)
            procs.append(echo)
            admin, port = P.free_port(), P.free_port()
            cfg = P.bridge_config(wd / "soak.toml", admin_port=admin, audiosocket_port=port,
                                  app_url=url + "/", records=wd / "soak.sqlite3",
                                  log_level="warning")  # fmt: skip
            br = P.Bridge("bridge", cfg, admin, wd, cpus=sut)
            procs.append(br)
            br.wait_ready()
            time.sleep(0.5)

            def sample(t0: float) -> dict[str, Any]:
                return {
                    "t": round(time.monotonic() - t0, 1),
                    "rss_mb": round(P.rss_mb(br.pid), 2),
                    "fds": P.fd_count(br.pid),
                    "threads": P.thread_count(br.pid),
                    "live": len(br.live_streams()),
                    "streams_active": br.streams_active(),
                    "tasks": br.tasks(),
                }

            t0 = time.monotonic()
            def settled_tasks() -> float | None:
                # The admin API's own connections add a task or two for a moment after
                # each request (measured idle: 40-41): the count that persists is the
                # least of a few reads.
                reads = []
                for _ in range(6):
                    reads.append(br.tasks())
                    time.sleep(0.25)
                return min((r for r in reads if r is not None), default=None)

            before = sample(t0)
            before["tasks"] = settled_tasks()
            log(f"soak: {duration_s:g}s, {rate:g} calls/s of {call_s:g}s (~{rate * call_s:g} live), "
                f"idle: rss {before['rss_mb']} MB, fds {before['fds']}, threads {before['threads']}")  # fmt: skip
            gens: list[P.Proc] = []
            next_gen = t0
            next_sample = t0
            end = t0 + duration_s
            serial = 0
            while True:
                now = time.monotonic()
                if now >= next_gen and now < end:
                    span = min(chunk_s, end - now)
                    calls = max(1, round(rate * span))
                    serial += 1
                    g = P.Proc(f"call-{serial}", P.call_argv("audiosocket", f"127.0.0.1:{port}",
                               calls=calls, duration_s=call_s, rate=rate), wd, cpus=load)  # fmt: skip
                    procs.append(g)
                    gens.append(g)
                    next_gen = now + span
                if now >= next_sample:
                    s = sample(t0)
                    samples.append(s)
                    next_sample += sample_s
                    if verbose and len(samples) % max(1, int(60 / sample_s)) == 0:
                        log(f"  t={s['t']:>6}s rss {s['rss_mb']} MB fds {s['fds']} live {s['live']} "
                            f"tasks {s['tasks']}")  # fmt: skip
                for g in list(gens):
                    if not g.alive():
                        reports.append(P.read_report(g)["summary"])
                        gens.remove(g)
                if now >= end and not gens:
                    break
                if now > end + call_s + 120:
                    raise TimeoutError("generators did not finish")
                time.sleep(0.2)
            # Every call has ended: give the streams a moment to close and write records.
            P.wait_until(lambda: len(br.live_streams()) == 0, 10, 0.2)
            time.sleep(2.0)
            after = sample(t0)
            after["tasks"] = settled_tasks()
            after["trimmed"] = br.playout_trimmed()
        finally:
            P.kill_on_exit(procs)
    steady = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= warmup_s]
    slope = slope_per_hour(steady)
    calls = sum(r["calls"] for r in reports)
    doc = {
        "machine": P.machine(),
        "method": {"duration_s": duration_s, "rate": rate, "call_s": call_s, "chunk_s": chunk_s,
                   "sample_s": sample_s, "warmup_s": warmup_s},
        "before": before,
        "after": after,
        "rss_slope_mb_per_hour": None if slope is None else round(slope, 2),
        "rss_max_mb": max((s["rss_mb"] for s in samples), default=math.nan),
        "calls": calls,
        "calls_ok": sum(r["ok"] for r in reports),
        "frames_sent": sum(r["frames_sent"] for r in reports),
        # Frames the callers missed that bridge's playout trimmed on purpose (standing
        # latency after a burst: P.Bridge.playout_trimmed) are not lost; the rest are.
        "missing": sum(r["lost"] for r in reports),
        "trimmed": after.get("trimmed", 0),
        "lost": max(0, sum(r["lost"] for r in reports) - after.get("trimmed", 0)),
        "calls_failed": sum(r["calls"] - r["connected"] for r in reports)
        + sum(n for r in reports for h, n in r["hangups"].items() if h != "caller_hangup"),
        "late": sum(r["late"] for r in reports),
        "fds_back": after["fds"] <= before["fds"],
        "streams_back": after["live"] == 0 and (after["streams_active"] or 0) == 0,
        "tasks_max": max((s["tasks"] or 0 for s in samples), default=0),
        "tasks_back": after["tasks"] is not None and after["tasks"] <= before["tasks"],
        "samples": samples,
    }
    if save:
        doc["json"] = str(P.save_json("soak.json", doc))
    print_summary(doc)
    return doc


def print_summary(doc: dict[str, Any]) -> None:
    b, a = doc["before"], doc["after"]
    print(f"\nsoak {doc['method']['duration_s']:g}s: {doc['calls']} calls, {doc['calls_ok']} ok, "
          f"{doc['frames_sent']} frames sent, {doc['lost']} lost, {doc['late']} late")  # fmt: skip
    print(f"RSS: idle {b['rss_mb']} MB, max {doc['rss_max_mb']} MB, after {a['rss_mb']} MB; "
          f"slope after warm-up {doc['rss_slope_mb_per_hour']} MB/hour")  # fmt: skip
    print(f"fds: before {b['fds']}, after {a['fds']} ({'back' if doc['fds_back'] else 'NOT back'}); "
          f"threads {b['threads']} -> {a['threads']}; live streams {b['live']} -> {a['live']}; "
          f"bridge_streams_active {b['streams_active']} -> {a['streams_active']} "
          f"({'back to 0' if doc['streams_back'] else 'NOT 0'})")  # fmt: skip
    print(f"tasks (bridge_tasks): idle {b['tasks']}, max {doc['tasks_max']}, after {a['tasks']} "
          f"({'back' if doc['tasks_back'] else 'NOT back'})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--duration", default="1h", help="run length (default 1h), e.g. 60s, 10m")
    parser.add_argument("--rate", type=float, default=5.0, help="new calls per second")
    parser.add_argument("--call", default="10s", help="length of each call")
    parser.add_argument("--chunk", default="60s", help="calls started per generator process")
    parser.add_argument("--sample", default="10s", help="sampling interval")
    parser.add_argument("--warmup", default="5m", help="samples before this are not in the slope")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    P.install_sigterm_exit()
    doc = run(duration_s=_duration(args.duration), rate=args.rate, call_s=_duration(args.call),
              chunk_s=_duration(args.chunk), sample_s=_duration(args.sample),
              warmup_s=_duration(args.warmup), pin=not args.no_pin)  # fmt: skip
    ok = doc["lost"] == 0 and doc["calls_failed"] == 0 and doc["fds_back"] and doc["streams_back"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
