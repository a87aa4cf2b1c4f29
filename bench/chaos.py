"""Chaos scenarios against the real daemon, each printing its figures.

Every scenario runs ``bridge run`` as a process with an sln app leg to ``bridge
echo-server`` and real calls from ``bridge call`` (every frame watermarked: a frame that
never comes back is *lost*), and prints the same four headline figures: calls dropped,
caller frames lost, events lost, and the drain outcome (``n/a`` where a scenario has no
such thing), then its own details and OK/FAILED.

Scenarios (``--scenario NAME``, default all; ``--quick`` scales each down to seconds):

* ``app-restart``: the app server (echo-server) is SIGKILLed and restarted on the same
  port every 10 s during 50 calls; bridge reconnects and replays the caller's audio.
* ``callback-outage``: the status-callback receiver is down for minutes (connection
  refused) while calls cycle; then up: every event must arrive (at least once).
* ``sigkill``: with the receiver down (events piling up in the outbox) and calls live,
  the daemon is SIGKILLed, then restarted on the same records file with the receiver up:
  every event that was in the outbox at the kill must be delivered.
* ``garbage``: 1,000 garbage connections on each listener (AudioSocket TCP, the carrier
  WebSocket listener, the RTP port of a live stream, the admin HTTP API) while good calls
  run: the good calls lose no frame, bridge stays healthy, and the log lines per bad peer
  are counted.
* ``drain``: SIGTERM with live calls: the calls end with reason ``shutdown`` after
  ``drain_timeout``; the exit code and the time it took.

    .venv/bin/python bench/chaos.py                          # all, full size (~10 min)
    .venv/bin/python bench/chaos.py --quick                  # all, ~1.5 min
    .venv/bin/python bench/chaos.py --scenario drain --quick

The callback scenario of bench/chaos_callbacks.py (a simulated store under 200 streams,
120 s outage) is the unit-level counterpart of ``callback-outage``; its receiver process
(``--serve-receiver``) is reused here.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import _procs as P

RATE = 30.9  # new calls per second; spreads the calls' 20 ms phases (see headline.py)
#: bridge on core 0, the load and the app on core 1 (when there are two cores).
SUT_CPUS, LOAD_CPUS = ([0], [1]) if P.NCPU >= 2 else (None, None)


# =====================================================================================
# pieces
# =====================================================================================


class Receiver:
    """The callback receiver of chaos_callbacks.py in its own process, driven by lines
    on stdin (up, down, dump, quit): a real HTTP server that records every delivery."""

    def __init__(self, logdir: Path) -> None:
        self.proc = subprocess.Popen(
            [P.PY, str(P.REPO / "bench" / "chaos_callbacks.py"), "--serve-receiver", "0"],
            cwd=P.REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=open(logdir / "receiver.err", "ab"),  # noqa: SIM115
            text=True,
        )  # fmt: skip
        self.url = self._line()

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("callback receiver exited")
        return line.strip()

    def command(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._line()

    def up(self) -> None:
        self.command("up")

    def down(self) -> None:
        self.command("down")

    def delivered(self) -> tuple[list[str], int]:
        data = json.loads(self.command("dump"))
        return data["ids"], data["requests"]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.command("quit")
                self.proc.wait(timeout=5)
        except (OSError, RuntimeError, subprocess.TimeoutExpired):
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def outbox(db: Path) -> dict[str, Any]:
    """What the records file says: events by status, their ids, streams by reason."""
    if not db.exists():
        return {"events": {}, "ids": {}, "streams": {}}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        ids: dict[str, list[str]] = collections.defaultdict(list)
        for eid, status in conn.execute("SELECT event_id, status FROM events ORDER BY seq"):
            ids[status].append(eid)
        reasons: collections.Counter[str] = collections.Counter()
        for (rec,) in conn.execute("SELECT record FROM streams"):
            reasons[json.loads(rec).get("reason", "?")] += 1
        events_by_name: collections.Counter[str] = collections.Counter(
            name for (name,) in conn.execute("SELECT event FROM events")
        )
    finally:
        conn.close()
    return {
        "events": {k: len(v) for k, v in ids.items()},
        "ids": dict(ids),
        "streams": dict(reasons),
        "by_event": dict(events_by_name),
    }


class Scenario:
    """Workdir, processes (all stopped in ``close``), and the printed result."""

    def __init__(self, name: str, scale: str, keep: bool = False) -> None:
        self.name = name
        self.scale = scale
        self.quick = scale != "full"
        self._wd = P.workdir(f"bridge-chaos-{name}-", keep=keep)
        self.wd = self._wd.__enter__()
        self.procs: list[P.Proc] = []
        self.receiver: Receiver | None = None
        self.figures: dict[str, Any] = {
            "scenario": name,
            "calls_dropped": "n/a",
            "caller_frames_lost": "n/a",
            "events_lost": "n/a",
            "drain": "n/a",
        }
        self.details: dict[str, Any] = {}
        self.ok = True
        self.started = time.monotonic()

    def close(self) -> None:
        P.kill_on_exit(self.procs)
        if self.receiver is not None:
            self.receiver.close()
        self._wd.__exit__(None, None, None)

    def echo(self, port: int | None = None, extra: tuple[str, ...] = ()) -> tuple[P.Proc, str]:
        proc, url = P.echo_server(f"echo-{len(self.procs)}", self.wd, port=port, cpus=LOAD_CPUS,
                                  extra=extra)  # fmt: skip
        self.procs.append(proc)
        return proc, url

    def bridge(self, name: str = "bridge", **kw: Any) -> P.Bridge:
        admin = kw.pop("admin_port", None) or P.free_port()
        cfg = P.bridge_config(self.wd / f"{name}.toml", admin_port=admin, **kw)
        br = P.Bridge(name, cfg, admin, self.wd, cpus=SUT_CPUS)
        self.procs.append(br)
        br.wait_ready()
        return br

    def calls(self, name: str, transport: str, target: str, *, calls: int, duration_s: float,
              rate: float = RATE, extra: tuple[str, ...] = ()) -> P.Proc:  # fmt: skip
        g = P.Proc(name, P.call_argv(transport, target, calls=calls, duration_s=duration_s,
                                     rate=rate, extra=extra), self.wd, cpus=LOAD_CPUS)  # fmt: skip
        self.procs.append(g)
        return g

    def call_figures(self, reports: list[dict[str, Any]], *, expect: str = "caller_hangup",
                     bridges: tuple[P.Bridge, ...] = (), records: Path | None = None) -> int:  # fmt: skip
        """Fill the call figures; returns the caller frames lost that bridge does not
        account for (its playout's trims, read from each bridge's metrics, are not loss)."""
        placed = sum(r["calls"] for r in reports)
        dropped = sum(n for r in reports for h, n in r["hangups"].items() if h != expect)
        lost = sum(r["lost"] for r in reports)
        sent = sum(r["frames_sent"] for r in reports)
        trimmed = 0
        for br in bridges:
            try:
                trimmed += br.playout_trimmed()
            except OSError:
                pass  # the bridge is gone (killed on purpose): nothing to subtract
        if records is not None:  # a bridge that has exited: its stream records say
            trimmed += sum(r.get("playout", {}).get("trimmed_frames", 0)
                           + r.get("playout", {}).get("altered_frames", 0) for r in _records(records))  # fmt: skip
        unexplained = max(0, lost - trimmed)
        self.figures["calls_dropped"] = dropped
        self.figures["caller_frames_lost"] = unexplained
        if trimmed:
            self.details["trimmed"] = (f"{trimmed} frames trimmed or cross-faded by bridge's playout "
                                       f"(standing latency after bursts): {lost} missing at the caller "
                                       f"in all")  # fmt: skip
        hangups: collections.Counter[str] = collections.Counter()
        for r in reports:
            hangups.update(r["hangups"])
        self.details["calls"] = f"{placed} placed, hangups " + ", ".join(f"{h} {n}" for h, n in hangups.items())
        self.details["frames"] = (f"{sent} sent, {sum(r['frames_echoed'] for r in reports)} echoed, "
                                  f"{lost} lost, {sum(r['late'] for r in reports)} late")  # fmt: skip
        rtt = [r["latency_ms"] for r in reports]
        self.details["round trip ms"] = ", ".join(f"p50 {x['p50']} p99 {x['p99']} max {x['max']}" for x in rtt)
        return unexplained

    def check(self, cond: bool, what: str) -> None:
        if not cond:
            self.ok = False
            self.details.setdefault("FAILED", []).append(what)

    def report(self) -> dict[str, Any]:
        f = self.figures
        print(f"\n== {self.name}{'' if self.scale == 'full' else f' ({self.scale})'}: "
              f"{time.monotonic() - self.started:.0f} s")  # fmt: skip
        print(f"  {'calls dropped':<22} {f['calls_dropped']}")
        print(f"  {'caller frames lost':<22} {f['caller_frames_lost']}")
        print(f"  {'events lost':<22} {f['events_lost']}")
        print(f"  {'drain outcome':<22} {f['drain']}")
        for k, v in self.details.items():
            if k != "FAILED":
                print(f"  {k:<22} {v}")
        for what in self.details.get("FAILED", []):
            print(f"  FAILED: {what}")
        print(f"  {'result':<22} {'OK' if self.ok else 'FAILED'}")
        return {"figures": f, "details": self.details, "ok": self.ok, "scale": self.scale}


def wait_report(g: P.Proc, timeout_s: float) -> dict[str, Any]:
    g.wait(timeout_s)
    return dict(P.read_report(g)["summary"])


def log_counts(br: P.Bridge) -> collections.Counter[str]:
    return collections.Counter(str(line.get("logger", "?")) for line in br.log_lines())


# =====================================================================================
# scenarios
# =====================================================================================


def app_restart(scale: str) -> dict[str, Any]:
    sc = Scenario("app-restart", scale)
    n, every, restarts = {"full": (50, 10.0, 6), "quick": (10, 3.0, 3), "smoke": (4, 2.0, 2)}[scale]
    duration = every * (restarts + 1) + 2
    try:
        port = P.free_port()
        echo, url = sc.echo(port)
        # An app that restarts needs a retry budget longer than its restart (~0.7 s here):
        # attempts at 0, 0.2, 0.6, 1.4, 3.0, 6.2 s.
        br = sc.bridge(audiosocket_port=(asp := P.free_port()), app_url=url + "/",
                       stream='retries = 5\nbackoff = "200ms"')  # fmt: skip
        # The echo app answers the replayed backlog at once, and bridge plays all of it:
        # each restart adds its outage to the round trip. The caller waits long enough
        # after its last frame for that, so "lost" counts only frames that never return.
        g = sc.calls("calls", "audiosocket", f"127.0.0.1:{asp}", calls=n, duration_s=duration,
                     extra=("--tail", "8s"))  # fmt: skip
        P.wait_until(lambda: P.established(asp) >= n, n / RATE + 10, 0.1)
        down_s = []
        for _ in range(restarts):
            time.sleep(every)
            echo.kill()  # SIGKILL: no closing handshake, in-flight frames die with it
            t0 = time.monotonic()
            echo, _ = sc.echo(port)
            down_s.append(time.monotonic() - t0)
        rep = wait_report(g, duration + 60)
        unexplained = sc.call_figures([rep], bridges=(br,))
        time.sleep(1.0)
        br.stop()
        ob = outbox(sc.wd / "bridge.sqlite3")
        recs = _records(sc.wd / "bridge.sqlite3")
        sc.details["app restarts"] = f"{restarts}, every {every:g} s; app down {min(down_s):.2f}-{max(down_s):.2f} s each"
        sc.details["bridge reconnects"] = (f"{sum(r.get('reconnects', 0) for r in recs)} over {len(recs)} "
                                           f"streams; stream ends {ob['streams']}")  # fmt: skip
        sc.details["events"] = str(ob["by_event"])
        # A SIGKILLed app takes with it what bridge had already written to its socket and
        # it had not echoed yet (sln has no acknowledgement, so neither side can know):
        # at most one frame per call per kill. Everything after is buffered and replayed.
        sc.details["frames lost"] = (f"{rep['lost']}: in flight to the app at its kills "
                                     f"(at most 1 per call per kill, {n * restarts}, allowed)")  # fmt: skip
        sc.check(unexplained <= n * restarts, f"{unexplained} caller frames lost")
        sc.check(sc.figures["calls_dropped"] == 0, "calls dropped")
        sc.details["restarts"] = restarts
    finally:
        sc.close()
    return sc.report()


def _records(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [json.loads(r) for (r,) in conn.execute("SELECT record FROM streams")]
    finally:
        conn.close()


def _delivery(sc: Scenario, db: Path, timeout_s: float, *, known: set[str] | None = None) -> None:
    """Wait until the outbox has nothing pending (or ``timeout_s``), then compare what was
    emitted with what the receiver got. Fills ``events_lost``."""
    assert sc.receiver is not None
    t0 = time.monotonic()
    P.wait_until(lambda: not outbox(db)["events"].get("pending"), timeout_s, 0.5)
    took = time.monotonic() - t0
    ob = outbox(db)
    emitted = {eid for ids in ob["ids"].values() for eid in ids}
    if known:
        emitted |= known
    ids, requests = sc.receiver.delivered()
    unique = set(ids)
    held = set(ob["ids"].get("pending", []))
    lost = len(emitted - unique - held)
    sc.figures["events_lost"] = lost if not held else f"{lost} (and {len(held & emitted)} still pending in the outbox)"
    sc.details["events"] = (f"{len(emitted)} emitted {ob['by_event']}, {len(unique & emitted)} delivered "
                            f"({len(ids) - len(unique)} duplicates, {requests} requests); outbox "
                            f"{ob['events']}; waited {took:.1f} s for it to drain")  # fmt: skip
    sc.check(lost == 0, f"{lost} events neither delivered nor pending")


def callback_outage(scale: str) -> dict[str, Any]:
    sc = Scenario("callback-outage", scale)
    down_s, live, call_s = {"full": (120.0, 20, 5.0), "quick": (5.0, 5, 2.0), "smoke": (2.0, 3, 1.5)}[scale]
    quick = scale != "full"
    rate = live / call_s
    try:
        sc.receiver = Receiver(sc.wd)
        _, url = sc.echo()
        db = sc.wd / "bridge.sqlite3"
        br = sc.bridge(audiosocket_port=(asp := P.free_port()), app_url=url + "/",
                       callback_url=sc.receiver.url,
                       callbacks='timeout = "2s"\nbackoff = "200ms"\nmax_backoff = "2s"')  # fmt: skip
        total = 2.0 + down_s + 3.0
        g = sc.calls("calls", "audiosocket", f"127.0.0.1:{asp}", calls=max(1, round(rate * total)),
                     duration_s=call_s, rate=rate)  # fmt: skip
        time.sleep(2.0)
        sc.receiver.down()
        time.sleep(down_s)
        pending_at_up = outbox(db)["events"].get("pending", 0)
        sc.receiver.up()
        rep = wait_report(g, total + call_s + 60)
        unexplained = sc.call_figures([rep], bridges=(br,))
        _delivery(sc, db, 30 if quick else 120)
        sc.details["outage"] = f"{down_s:g} s, ~{live} calls live; {pending_at_up} events pending at its end"
        sc.check(unexplained == 0 and sc.figures["calls_dropped"] == 0, "calls hurt by the outage")
        br.stop()
    finally:
        sc.close()
    return sc.report()


def sigkill(scale: str) -> dict[str, Any]:
    sc = Scenario("sigkill", scale)
    n_short, n_live = {"full": (40, 20), "quick": (10, 5), "smoke": (4, 2)}[scale]
    quick = scale != "full"
    try:
        sc.receiver = Receiver(sc.wd)
        sc.receiver.down()
        _, url = sc.echo()
        db = sc.wd / "bridge.sqlite3"
        admin, asp = P.free_port(), P.free_port()
        kw: dict[str, Any] = {
            "admin_port": admin, "audiosocket_port": asp, "app_url": url + "/",
            "callback_url": sc.receiver.url, "records": db,
            "callbacks": 'timeout = "2s"\nbackoff = "200ms"\nmax_backoff = "1s"',
        }  # fmt: skip
        br = sc.bridge(**kw)
        # Short calls that end before the kill (Start + Stop pending), and long ones live at it.
        short = sc.calls("short", "audiosocket", f"127.0.0.1:{asp}", calls=n_short, duration_s=1.0)
        live = sc.calls("live", "audiosocket", f"127.0.0.1:{asp}", calls=n_live, duration_s=30.0)
        wait_report(short, 60)
        P.wait_until(lambda: P.established(asp) >= n_live, 10, 0.1)
        time.sleep(1.0)
        before = outbox(db)
        pending = set(before["ids"].get("pending", []))
        br.stop(sig=signal.SIGKILL)
        killed_rc = br.returncode
        after_kill = outbox(db)
        in_file = set(after_kill["ids"].get("pending", []))
        live_rep = wait_report(live, 90)
        t0 = time.monotonic()
        sc.receiver.up()
        br2 = sc.bridge("bridge2", **kw)
        restart_s = time.monotonic() - t0
        _delivery(sc, db, 30 if quick else 60, known=pending | in_file)
        ids, _ = sc.receiver.delivered()
        missing = (pending | in_file) - set(ids)
        final = outbox(db)
        started = {json.loads(b)["stream_id"] for b in _bodies(db, "StartStream")}
        ended = {json.loads(b)["stream_id"] for b in _bodies(db, "StopStream")} | {
            json.loads(b)["stream_id"] for b in _bodies(db, "DroppedStream")
        }
        sc.figures["calls_dropped"] = f"{n_live} (live at the SIGKILL: expected)"
        sc.figures["caller_frames_lost"] = (f"{live_rep['lost']} on the calls live at the kill "
                                            f"(expected), 0 required on the others")  # fmt: skip
        sc.details["kill"] = (f"exit status {killed_rc}; {len(pending)} events pending before the kill, "
                              f"{len(in_file)} pending in the file after it")  # fmt: skip
        sc.details["restart"] = f"ready {restart_s:.2f} s after; pending then {final['events']}"
        sc.details["after restart"] = (f"{len((pending | in_file) - missing)} of {len(pending | in_file)} "
                                       f"delivered; streams with a Start but no final event: "
                                       f"{len(started - ended)} (the {n_live} killed live)")  # fmt: skip
        sc.check(not missing, f"{len(missing)} events pending at the kill never delivered")
        br2.stop()
    finally:
        sc.close()
    return sc.report()


def _bodies(db: Path, event: str) -> list[bytes]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [b for (b,) in conn.execute("SELECT body FROM events WHERE event = ?", (event,))]
    finally:
        conn.close()


def garbage(scale: str) -> dict[str, Any]:
    sc = Scenario("garbage", scale)
    per_listener, good, duration = {"full": (1000, 20, 40.0), "quick": (100, 5, 12.0),
                                    "smoke": (30, 3, 6.0)}[scale]  # fmt: skip
    try:
        _, url = sc.echo()
        asp, wsp = P.free_port(), P.free_port()
        rtp = P.free_udp_range(20)
        br = sc.bridge(audiosocket_port=asp, websocket_port=wsp, app_url=url + "/", rtp_ports=rtp,
                       log_level="info")  # fmt: skip
        fds_idle = P.fd_count(br.pid)
        g_as = sc.calls("good-as", "audiosocket", f"127.0.0.1:{asp}", calls=good, duration_s=duration)
        g_tw = sc.calls("good-twilio", "twilio", f"ws://127.0.0.1:{wsp}/twilio", calls=2, duration_s=duration)
        g_rtp = sc.calls("good-rtp", "rtp", br.admin, calls=1, duration_s=duration,
                         extra=("--route", "rtp-sln"))  # fmt: skip
        P.wait_until(lambda: _udp_ports(rtp), 10, 0.1)
        time.sleep(2.0)
        live_rtp = sorted(_udp_ports(rtp))
        admin_port = int(br.admin.rsplit(":", 1)[1])
        lines_before = log_counts(br)
        targets = {"audiosocket": asp, "websocket": wsp, "admin": admin_port,
                   "rtp": live_rtp[0] if live_rtp else 0}  # fmt: skip
        t0 = time.monotonic()
        gc = P.Proc("garbage", [P.PY, __file__, "--garbage-client", json.dumps(targets),
                                str(per_listener)], sc.wd, cpus=LOAD_CPUS)  # fmt: skip
        sc.procs.append(gc)
        gc.wait(duration + 120)
        took = time.monotonic() - t0
        sent = json.loads(gc.stdout().strip().splitlines()[-1])
        healthy = _get_ok(br.admin + "/readyz")
        reports = [wait_report(g, duration + 60) for g in (g_as, g_tw, g_rtp)]
        sc.call_figures(reports, bridges=(br,))
        # Bad peers that went silent are closed by first_frame_timeout (5 s) at the latest.
        P.wait_until(lambda: P.fd_count(br.pid) <= fds_idle, 8.0, 0.2)
        lines = log_counts(br) - lines_before
        fds_after = P.fd_count(br.pid)
        total = sum(sent.values())
        sc.details["garbage"] = (f"{total} bad peers in {took:.1f} s: " + ", ".join(f"{k} {v}" for k, v in sent.items())
                                 + f"; rtp port {targets['rtp']}")  # fmt: skip
        sc.details["log lines"] = (f"{sum(lines.values())} during the garbage, "
                                   f"{sum(lines.values()) / max(1, total):.2f} per bad peer: "
                                   + ", ".join(f"{k} {v}" for k, v in lines.most_common(8)))  # fmt: skip
        sc.details["after"] = (f"/readyz {'200' if healthy else 'NOT 200'}; fds idle {fds_idle}, "
                               f"after the calls and the garbage {fds_after}")  # fmt: skip
        sc.check(fds_after <= fds_idle, "file descriptors not back to idle")
        sc.check(healthy, "bridge not ready after the garbage")
        sc.check(sc.figures["caller_frames_lost"] == 0, "good calls lost frames")
        sc.check(sc.figures["calls_dropped"] == 0, "good calls dropped")
        br.stop()
    finally:
        sc.close()
    return sc.report()


def _udp_ports(rng: tuple[int, int]) -> set[int]:
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    port = int(line.split()[1].rsplit(":", 1)[1], 16)
                    if rng[0] <= port <= rng[1]:
                        ports.add(port)
        except OSError:
            pass
    return ports


def _get_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def drain(scale: str) -> dict[str, Any]:
    sc = Scenario("drain", scale)
    n, drain_s = {"full": (20, 5.0), "quick": (5, 2.0), "smoke": (3, 1.0)}[scale]
    try:
        sc.receiver = Receiver(sc.wd)
        _, url = sc.echo()
        db = sc.wd / "bridge.sqlite3"
        br = sc.bridge(audiosocket_port=(asp := P.free_port()), app_url=url + "/",
                       callback_url=sc.receiver.url, drain_timeout=f"{drain_s:g}s")  # fmt: skip
        g = sc.calls("calls", "audiosocket", f"127.0.0.1:{asp}", calls=n, duration_s=60.0)
        P.wait_until(lambda: P.established(asp) >= n, 10, 0.1)
        time.sleep(1.0)
        t0 = time.monotonic()
        br.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        readyz = _status(br.admin + "/readyz")
        late = sc.calls("late", "audiosocket", f"127.0.0.1:{asp}", calls=1, duration_s=1.0)
        rc = br.wait(drain_s + 30)
        took = time.monotonic() - t0
        rep = wait_report(g, 30)
        late_rep = wait_report(late, 30)
        unexplained = sc.call_figures([rep], expect="remote_hangup", records=db)
        ob = outbox(db)
        ids, _ = sc.receiver.delivered()
        deferred = set(ob["ids"].get("pending", []))
        sc.details["at exit"] = (f"{len(set(ids))} events delivered, {len(deferred)} left pending in "
                                 f"the outbox {collections.Counter(ob['by_event'])}")  # fmt: skip
        # Those are delivered by the next process on the same records file:
        br2 = sc.bridge("bridge2", audiosocket_port=P.free_port(), app_url=url + "/",
                        callback_url=sc.receiver.url, records=db)  # fmt: skip
        _delivery(sc, db, 30.0)
        br2.stop()
        sc.figures["drain"] = (f"exit {rc} after {took:.2f} s (drain_timeout {drain_s:g} s); streams ended "
                               f"{ob['streams']}; {len(deferred)} StopStream callbacks not sent before "
                               f"exit (sent by the next start)")  # fmt: skip
        sc.details["during drain"] = (f"/readyz {readyz}; a new call: {late_rep['hangups']} "
                                      f"{late_rep['calls'] - late_rep['connected']} not connected")  # fmt: skip
        sc.check(rc == 0, f"exit status {rc}")
        sc.check(ob["streams"].get("shutdown", 0) == n, "not every call ended with reason shutdown")
        sc.check(drain_s <= took <= drain_s + 5, f"drain took {took:.2f} s")
        sc.check(readyz == 503, "readyz not 503 while draining")
        # A frame the caller sent in the last round trip before the hangup cannot come back.
        sc.check(unexplained <= n, f"{unexplained} frames lost before the drain ended the calls")
        sc.figures["caller_frames_lost"] = f"{unexplained} (in flight at the hangup; at most 1 per call allowed)"
    finally:
        sc.close()
    return sc.report()


def _status(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


SCENARIOS: dict[str, Callable[[str], dict[str, Any]]] = {
    "app-restart": app_restart,
    "callback-outage": callback_outage,
    "sigkill": sigkill,
    "garbage": garbage,
    "drain": drain,
}


# =====================================================================================
# the garbage client (a child process)
# =====================================================================================


def garbage_client(targets: dict[str, int], per_listener: int) -> dict[str, int]:
    """Open ``per_listener`` bad connections (datagrams for RTP) on each listener,
    ``CONCURRENCY`` at a time; each does one of a few kinds of wrong."""
    import trio

    rnd = random.Random(7)
    done: collections.Counter[str] = collections.Counter()

    def junk(lo: int = 1, hi: int = 600) -> bytes:
        return rnd.randbytes(rnd.randint(lo, hi))

    async def tcp(port: int, payloads: list[bytes], linger: float) -> None:
        try:
            with trio.move_on_after(3):
                s = await trio.open_tcp_stream("127.0.0.1", port)
                async with s:
                    for p in payloads:
                        await s.send_all(p)
                    with trio.move_on_after(linger):
                        while await s.receive_some(65536):
                            pass
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def audiosocket_case(i: int) -> tuple[list[bytes], float]:
        k = i % 5
        if k == 0:
            return [junk()], 0.05
        if k == 1:
            return [], 0.0  # connect and close
        if k == 2:
            return [b"\x10\xff\xff" + junk(10, 100)], 0.05  # an audio frame claiming 65535 bytes
        if k == 3:
            return [b"\x01\x00\x10" + rnd.randbytes(16) + b"\x77\x00\x04junk"], 0.3  # UUID, then a bad kind
        return [b"\x01"], 0.5  # a partial header, then silence

    def websocket_case(i: int) -> tuple[list[bytes], float]:
        k = i % 4
        if k == 0:
            return [junk()], 0.05
        if k == 1:
            return [b"GET /twilio HTTP/1.1\r\nHost: x\r\n" + junk(1, 80) + b"\r\n\r\n"], 0.2
        if k == 2:
            key = b"dGhlIHNhbXBsZSBub25jZQ=="
            up = (b"GET /twilio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
            return [up, junk(10, 200)], 0.3  # a handshake, then frames that are not frames
        return [b"GET /nowhere HTTP/1.0\r\n\r\n"], 0.2

    def admin_case(i: int) -> tuple[list[bytes], float]:
        k = i % 4
        if k == 0:
            return [junk()], 0.1
        if k == 1:
            return [b"GET /v1/streams/" + rnd.randbytes(8).hex().encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"], 0.2
        if k == 2:
            body = junk(1, 200)
            return [b"POST /v1/streams HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body], 0.2  # fmt: skip
        return [b"GET / HTTP/1.1\r\nHost: " + b"x" * 5000 + b"\r\n\r\n"], 0.2

    async def main() -> None:
        limit = trio.CapacityLimiter(CONCURRENCY)
        cases = {"audiosocket": audiosocket_case, "websocket": websocket_case, "admin": admin_case}

        async def one(kind: str, i: int) -> None:
            async with limit:
                payloads, linger = cases[kind](i)
                await tcp(targets[kind], payloads, linger)
                done[kind] += 1

        async with trio.open_nursery() as nursery:
            for i in range(per_listener):
                for kind in cases:
                    if targets.get(kind):
                        nursery.start_soon(one, kind, i)
            if targets.get("rtp"):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for i in range(per_listener):
                    if i % 2:
                        pkt = junk(1, 300)
                    else:  # RTP-shaped: version 2, a random payload type, SSRC and sequence
                        pkt = struct.pack("!BBHII", 0x80, rnd.randint(0, 127), rnd.randint(0, 65535),
                                          rnd.randint(0, 2**32 - 1), rnd.randint(0, 2**32 - 1)) + junk(0, 200)  # fmt: skip
                    sock.sendto(pkt, ("127.0.0.1", targets["rtp"]))
                    done["rtp"] += 1
                    if i % 20 == 0:
                        await trio.sleep(0.01)
                sock.close()

    trio.run(main)
    return dict(done)


CONCURRENCY = 32


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--scenario", choices=list(SCENARIOS), action="append",
                        help="run this scenario (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="scaled down: seconds, not minutes")
    parser.add_argument("--smoke", action="store_true", help="smaller still (the make test smoke tests)")
    parser.add_argument("--garbage-client", nargs=2, metavar=("TARGETS", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.garbage_client:
        print(json.dumps(garbage_client(json.loads(args.garbage_client[0]), int(args.garbage_client[1]))))
        return 0
    P.install_sigterm_exit()
    P.pin_self(LOAD_CPUS)
    results = {}
    for name in args.scenario or list(SCENARIOS):
        try:
            results[name] = SCENARIOS[name]("smoke" if args.smoke else "quick" if args.quick else "full")
        except Exception as exc:  # one broken scenario must not hide the others' figures
            print(f"\n== {name}: ERROR {exc!r}")
            results[name] = {"ok": False, "error": repr(exc)}
    if not args.smoke:
        P.save_json("chaos-quick.json" if args.quick else "chaos.json", results)
    bad = [k for k, v in results.items() if not v["ok"]]
    print(f"\nchaos: {len(results) - len(bad)} of {len(results)} scenarios OK" + (f"; FAILED: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
