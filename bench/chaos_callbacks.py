"""Chaos run for status callbacks: a receiver outage, and a SIGKILLed process.

Default mode: N simulated streams run their lifecycle (Start, Degraded, Recovered, Stop,
then a record; a new stream takes each ended one's place) on a shared 20 ms ticker, the
way the media path does, for the whole run. The receiver (tests/daemon/callback_receiver)
answers for a second, goes down (connection refused, open connections cut) for
``--down`` seconds, then comes back. At the end every emitted event must have arrived
at least once, in order per stream::

    python bench/chaos_callbacks.py --quick           # 3 s outage
    python bench/chaos_callbacks.py                   # 120 s outage
    python bench/chaos_callbacks.py --sigkill --quick

``--sigkill``: a child process emits events against the dead receiver, is SIGKILLed
mid-run, and the store is reopened here against the live receiver.

Exit status 0 when nothing was lost and per-stream order held.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import attrs
import trio
from prometheus_client import CollectorRegistry

from bridge.daemon._events import EventSource, HangupReason, StreamEvent, StreamRecord, log_entry
from bridge.daemon._outbox import EventStore, open_event_store
from tests.daemon.callback_receiver import open_callback_receiver

TICK = 0.020


def pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * q) - 1))]


@attrs.define
class SimStream:
    """One simulated call: its events fire on ticks, like the real stream's would."""

    source: EventSource
    started: datetime
    ticks_left: int
    degrade_at: int
    recover_at: int
    tick: int = 0


@attrs.define
class Chaos:
    store: EventStore
    url: str
    n_streams: int
    secret: str
    emitted: list[StreamEvent] = attrs.field(factory=list)
    emit_ns: list[int] = attrs.field(factory=list)
    lateness: list[tuple[str, float]] = attrs.field(factory=list)
    phase: str = "warmup"
    serial: int = 0
    streams: list[SimStream] = attrs.field(factory=list)

    def new_stream(self) -> SimStream:
        self.serial += 1
        life = random.randint(50, 250)  # 1-5 s of 20 ms ticks
        return SimStream(
            source=EventSource(
                stream_id=f"chaos-{self.serial:06d}",
                call_id=f"call-{self.serial}",
                app_url="ws://127.0.0.1:9/app",
                route="chaos",
                callback_url=self.url,
                callback_secret=self.secret,
            ),
            started=datetime.now(UTC),
            ticks_left=life,
            degrade_at=random.randint(1, life // 2),
            recover_at=random.randint(life // 2 + 1, life - 1),
        )

    def emit(self, ev: StreamEvent) -> None:
        t0 = time.perf_counter_ns()
        self.store.emit(ev)
        self.emit_ns.append(time.perf_counter_ns() - t0)
        self.emitted.append(ev)

    def end(self, s: SimStream, reason: HangupReason = "call_hangup") -> None:
        ended = datetime.now(UTC)
        duration = (ended - s.started).total_seconds()
        self.emit(s.source.stop(reason=reason, duration_s=duration))
        self.store.record_stream(
            StreamRecord(
                stream_id=s.source.stream_id,
                call_id=s.source.call_id,
                route="chaos",
                app_url=s.source.app_url,
                listener="audiosocket",
                encapsulation="sln",
                started_at=s.started,
                ended_at=ended,
                reason=reason,
                frames_in=s.tick,
                frames_out=s.tick,
                events=[log_entry("open", time=s.started), log_entry("closed", time=ended)],
            )
        )

    def step(self, s: SimStream) -> bool:
        if s.tick == 0:
            self.emit(s.source.start())
        s.tick += 1
        if s.tick == s.degrade_at:
            self.emit(s.source.degraded(buffer_percent=30))
        if s.tick == s.recover_at:
            self.emit(s.source.recovered(buffer_percent=0))
        if s.tick >= s.ticks_left:
            self.end(s)
            return False
        return True

    async def run_ticker(self, stop: trio.Event) -> None:
        self.streams = [self.new_stream() for _ in range(self.n_streams)]
        deadline = trio.current_time()
        while not stop.is_set():
            deadline += TICK
            await trio.sleep_until(deadline)
            self.lateness.append((self.phase, trio.current_time() - deadline))
            for i, s in enumerate(self.streams):
                if not self.step(s):
                    self.streams[i] = self.new_stream()
        for s in self.streams:  # the run ends: every live stream hangs up
            if s.tick:
                self.end(s, "shutdown")


class RemoteReceiver:
    """The callback receiver, run in its own process (``--serve-receiver``) so that its
    HTTP parsing does not compete with the store and the ticker for this process's core:
    this loop then holds what the daemon's would, the media clock and the store."""

    def __init__(self, proc: trio.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self._buf = b""

    @classmethod
    async def start(cls, latency_s: float) -> RemoteReceiver:
        cmd = [sys.executable, __file__, "--serve-receiver", str(latency_s)]
        proc = await trio.lowlevel.open_process(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        rx = cls(proc, "")
        rx.url = await rx._line()
        return rx

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive_some(1 << 20)
            if not chunk:
                raise RuntimeError("receiver process exited")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    async def command(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(cmd.encode() + b"\n")
        return await self._line()

    async def up(self) -> None:
        await self.command("up")

    async def down(self) -> None:
        await self.command("down")

    async def delivered_ids(self) -> tuple[list[str], int]:
        """Event ids answered 2xx, in arrival order (duplicates kept); all requests."""
        data = json.loads(await self.command("dump"))
        return data["ids"], data["requests"]

    async def aclose(self) -> None:
        with trio.move_on_after(5):
            await self.command("quit")
            await self.proc.wait()
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def serve_receiver(latency_s: float) -> None:
    """``--serve-receiver``: a receiver driven by commands on stdin, one per line."""
    stdin = trio.lowlevel.FdStream(os.dup(0))
    async with open_callback_receiver() as rx:
        # A little latency keeps requests in flight, so the outage cuts some of them after
        # the receiver processed them: those come back as duplicates.
        rx.latency = lambda _req: random.uniform(0.0, latency_s)
        print(rx.url, flush=True)
        buf = b""
        while True:
            while b"\n" not in buf:
                chunk = await stdin.receive_some(4096)
                if not chunk:
                    return
                buf += chunk
            line, _, buf = buf.partition(b"\n")
            cmd = line.decode().strip()
            if cmd == "up":
                await rx.up()
                print("ok", flush=True)
            elif cmd == "down":
                await rx.down()
                print("ok", flush=True)
            elif cmd == "dump":
                print(json.dumps({"ids": rx.event_ids(), "requests": len(rx.requests)}), flush=True)
            elif cmd == "quit":
                print("bye", flush=True)
                return


def check_delivery(
    ids: list[str], emitted: list[StreamEvent], still_held: set[str]
) -> tuple[int, int, int, int]:
    """(unique delivered, duplicates, lost, streams out of order). Lost = emitted, not
    delivered, and not still held (pending or failed) in the outbox."""
    unique = set(ids)
    emitted_ids = {e.event_id for e in emitted}
    expected: dict[str, list[str]] = defaultdict(list)
    for e in emitted:
        expected[e.stream_id].append(e.event_id)
    stream_of = {e.event_id: e.stream_id for e in emitted}
    got: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for eid in ids:
        if eid not in seen:
            seen.add(eid)
            got[stream_of.get(eid, "?")].append(eid)
    # A stream is in order if what arrived is a prefix of what was emitted (a prefix,
    # because a stream whose tail is still held in the outbox is not wrong yet).
    violations = sum(
        1 for sid, order in expected.items() if got.get(sid, []) != order[: len(got.get(sid, []))]
    )
    lost = len(emitted_ids - unique - still_held)
    return len(unique & emitted_ids), len(ids) - len(unique), lost, violations


async def outage(args: argparse.Namespace) -> int:
    registry = CollectorRegistry()
    rx = await RemoteReceiver.start(0.03)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = str(Path(tmp) / "chaos.sqlite3")
            async with open_event_store(
                db,
                registry=registry,
                backoff_s=args.backoff,
                max_backoff_s=args.max_backoff,
                callback_timeout_s=2.0,
                concurrency=args.concurrency,
            ) as store:
                chaos = Chaos(store, rx.url, args.streams, "chaos-secret")
                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(chaos.run_ticker, stop)
                    await trio.sleep(args.warmup)
                    chaos.phase = "outage"
                    await rx.down()
                    print(f"receiver down for {args.down:g}s ...", flush=True)
                    await trio.sleep(args.down)
                    peak = store.pending_count
                    failed_attempts = registry.get_sample_value("bridge_events_retried_total") or 0
                    chaos.phase = "recovery"
                    up_at = trio.current_time()
                    await rx.up()
                    await trio.sleep(args.after)
                    stop.set()
                with trio.move_on_after(args.drain_timeout) as scope:
                    await store.wait_delivered()
                drained_s = trio.current_time() - up_at
                retried = registry.get_sample_value("bridge_events_retried_total") or 0
                failed = sum(
                    registry.get_sample_value("bridge_events_failed_total", {"cause": c}) or 0
                    for c in ("permanent", "expired")
                )
                records = len(await store.list_streams(limit=1_000_000))
                held = {
                    r["event_id"]
                    for status in ("pending", "failed")
                    for r in await store.list_events(status=status, limit=1_000_000)
                }
                still_pending = store.pending_count
        ids, requests = await rx.delivered_ids()
    finally:
        await rx.aclose()

    delivered, duplicates, lost, violations = check_delivery(ids, chaos.emitted, held)
    emit_us = [n / 1000 for n in chaos.emit_ns]
    late_out = [v * 1000 for p, v in chaos.lateness if p == "outage"]
    late_all = [v * 1000 for _, v in chaos.lateness]
    print()
    print(f"outage                       {args.down:g} s, {args.streams} streams live")
    print(f"backoff / max backoff        {args.backoff:g} s / {args.max_backoff:g} s")
    print(f"events emitted               {len(chaos.emitted)}")
    print(f"events delivered (unique)    {delivered}")
    print(f"duplicates received          {duplicates}")
    print(f"lost (emitted - delivered)   {lost}")
    print(f"still pending (not drained)  {still_pending}")
    print(f"failed events                {failed:.0f}")
    print(f"streams out of order         {violations} of {chaos.serial}")
    print(f"requests seen by receiver    {requests}")
    print(f"pending at end of outage     {peak}")
    print(f"failed attempts in outage    {failed_attempts:.0f}")
    print(f"failed attempts, whole run   {retried:.0f}")
    print(f"stream records stored        {records}")
    print(f"drained after up             {drained_s:.2f} s")
    print(f"max emit()                   {max(emit_us):.1f} µs")
    print(f"mean emit()                  {sum(emit_us) / len(emit_us):.2f} µs")
    print(f"ticker lateness (outage)     p50 {pct(late_out, 0.5):.2f} ms  "
          f"p99 {pct(late_out, 0.99):.2f} ms  max {max(late_out):.2f} ms")  # fmt: skip
    print(f"ticker lateness (whole run)  p50 {pct(late_all, 0.5):.2f} ms  "
          f"p99 {pct(late_all, 0.99):.2f} ms  max {max(late_all):.2f} ms")  # fmt: skip
    ok = lost == 0 and violations == 0 and not scope.cancelled_caught
    print("result                       " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


# --------------------------------------------------------------------------- sigkill


async def child(db: str, url: str, streams: int, per_stream: int) -> None:
    """The process that gets SIGKILLed: commits a batch, reports, then keeps emitting."""
    async with open_event_store(
        db, registry=CollectorRegistry(), backoff_s=0.01, max_backoff_s=0.1
    ) as store:
        for i in range(per_stream):
            for s in range(streams):
                store.emit(
                    StreamEvent.degraded(
                        stream_id=f"s{s:03d}",
                        call_id=f"c{s}",
                        app_url="ws://app",
                        buffer_percent=i,
                        event_id=f"s{s:03d}-{i:06d}",
                        callback_url=url,
                        callback_secret="k",
                    )
                )
            await trio.lowlevel.checkpoint()
        await store.flush()
        print("ready", store.pending_count, flush=True)
        # Keep writing (and retrying) until killed, so the kill lands mid-work.
        i = per_stream
        while True:
            for s in range(streams):
                store.emit(
                    StreamEvent.degraded(
                        stream_id=f"s{s:03d}",
                        call_id=f"c{s}",
                        app_url="ws://app",
                        buffer_percent=i,
                        event_id=f"s{s:03d}-{i:06d}",
                        callback_url=url,
                        callback_secret="k",
                    )
                )
            i += 1
            await trio.sleep(TICK)


async def sigkill(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "crash.sqlite3")
        async with open_callback_receiver(up=False) as rx:
            cmd = [sys.executable, __file__, "--child", db, rx.url,
                   str(args.streams), str(args.per_stream)]  # fmt: skip
            proc = await trio.lowlevel.open_process(cmd, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            line = b""
            with trio.fail_after(60):
                while not line.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some(256)
                    if not chunk:
                        break
                    line += chunk
            reported = int(line.split()[1])
            await trio.sleep(args.run_before_kill)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            conn = sqlite3.connect(db)
            try:
                pending_ids = [
                    r[0]
                    for r in conn.execute(
                        "SELECT event_id FROM events WHERE status = 'pending' ORDER BY seq"
                    )
                ]
            finally:
                conn.close()
            print(f"child exit status            {proc.returncode} (SIGKILL = -9)")
            print(f"committed at 'ready'         {reported}")
            print(f"pending in the file at kill  {len(pending_ids)}")

            await rx.up()
            started = trio.current_time()
            async with open_event_store(
                db, registry=CollectorRegistry(), backoff_s=0.01, max_backoff_s=0.1
            ) as store:
                loaded = store.pending_count
                with trio.move_on_after(60):
                    await store.wait_delivered()
            took = trio.current_time() - started

        ids = rx.event_ids()
        unique = set(ids)
        lost = len(set(pending_ids) - unique)
        order_bad = 0
        by_stream: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for eid in ids:
            if eid not in seen:
                seen.add(eid)
                by_stream[eid.split("-")[0]].append(eid)
        order_bad = sum(1 for v in by_stream.values() if v != sorted(v))
        print(f"loaded on restart            {loaded}")
        print(
            f"delivered after restart      {len(unique)} unique ({len(ids) - len(unique)} duplicates)"
        )
        print(f"lost                         {lost}")
        print(f"streams out of order         {order_bad}")
        print(f"redelivery took              {took:.2f} s")
        ok = lost == 0 and order_bad == 0 and len(pending_ids) >= reported
        print("result                       " + ("OK" if ok else "FAILED"))
        return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s outage, fewer streams")
    parser.add_argument("--down", type=float, help="outage length, s (default 120; quick 3)")
    parser.add_argument(
        "--streams", type=int, help="simulated live streams (default 200; quick 50)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="receiver up before the outage, s"
    )
    parser.add_argument(
        "--after", type=float, help="emitting after the outage, s (default 10; quick 1)"
    )
    parser.add_argument("--backoff", type=float, default=0.2, help="first retry delay, s")
    parser.add_argument("--max-backoff", type=float, default=2.0, help="retry delay cap, s")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sigkill", action="store_true", help="run the SIGKILL scenario")
    parser.add_argument(
        "--per-stream", type=int, default=200, help="--sigkill: events per stream before 'ready'"
    )
    parser.add_argument(
        "--run-before-kill",
        type=float,
        default=0.5,
        help="--sigkill: s between 'ready' and the kill",
    )
    parser.add_argument(
        "--drain-timeout", type=float, help="s to wait for the backlog (default 300; quick 30)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve-receiver", type=float, metavar="LATENCY", help=argparse.SUPPRESS)
    parser.add_argument(
        "--child", nargs=4, metavar=("DB", "URL", "STREAMS", "PER_STREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    random.seed(args.seed)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.serve_receiver is not None:
        trio.run(serve_receiver, args.serve_receiver)
        return 0
    if args.child:
        db, url, streams, per_stream = args.child
        trio.run(child, db, url, int(streams), int(per_stream))
        return 0
    args.down = args.down if args.down is not None else (3.0 if args.quick else 120.0)
    args.after = args.after if args.after is not None else (1.0 if args.quick else 10.0)
    if args.drain_timeout is None:
        args.drain_timeout = 30.0 if args.quick else 300.0
    if args.streams is None:
        args.streams = (10 if args.sigkill else 50) if args.quick else (20 if args.sigkill else 200)
    if args.sigkill and args.quick:
        args.per_stream = min(args.per_stream, 50)
    print(f"chaos_callbacks: {'sigkill' if args.sigkill else 'receiver outage'}"
          f"{' (quick)' if args.quick else ''}", flush=True)  # fmt: skip
    return trio.run(sigkill if args.sigkill else outage, args)


if __name__ == "__main__":
    sys.exit(main())
