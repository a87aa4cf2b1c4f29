"""The RTP call leg's per-packet cost, on real UDP sockets on 127.0.0.1.

    .venv/bin/python bench/bench_rtpleg.py [--quick] [--compare FILE]

Three paths of ``streams.RtpCallLeg``, each per packet:

* ``send``: ``send_audio`` of one 20 ms frame to a destination: encode + ``sendto`` (the
  receiving socket is drained every 32 packets, inside the timing: a full buffer would
  turn the path into EAGAIN drops).
* ``send, no destination``: the same before anything is latched: the Python path alone,
  no syscall.
* ``receive``: datagrams from a peer socket through ``serve_reader`` in Trio, latched,
  in order, into a sink that counts them: CPU time of the whole process per packet
  (the peer's ``sendto`` included), for wake-ups of 1 and of 16 packets.

``--compare FILE`` loads another version of the module (a copy of
``bridge/streams/_rtpleg.py`` with absolute imports, e.g. from ``git show``) and runs both
side by side, interleaved, so that the ratio holds on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import struct
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio

from bench._harness import measure
from bridge.dialects import Event, RtpSession
from bridge.streams._rtpleg import RtpCallLeg


def _pcm() -> bytes:
    return b"".join(struct.pack("<h", (i * 37) % 2000 - 1000) for i in range(160))


def _udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket) -> None:
    try:
        while True:
            sock.recv(2048)
    except BlockingIOError:
        pass


def send_ns(leg_cls: Any, *, destination: bool, min_time_s: float, repeat: int) -> float:
    return trio.run(_send, leg_cls, destination, min_time_s, repeat)


async def _send(leg_cls: Any, destination: bool, min_time_s: float, repeat: int) -> float:
    far = _udp()
    leg = leg_cls(
        sock=_udp(),
        session=RtpSession("pcmu"),
        call_id="bench",
        remote=far.getsockname() if destination else None,
    )
    pcm = _pcm()
    count = [0]

    def one() -> None:
        leg.send_audio(pcm)
        count[0] += 1
        if destination and not count[0] & 31:
            _drain(far)

    try:
        return measure(one, min_time_s=min_time_s, repeat=repeat)
    finally:
        leg.close_now()
        far.close()


class _Sink:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.reached = trio.Event()

    def on_call_event(self, event: Event) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()

    def on_app_event(self, event: Event) -> None:
        raise AssertionError


async def _receive(leg_cls: Any, packets: int, batch: int) -> float:
    peer = _udp()
    leg = leg_cls(
        sock=_udp(),
        session=RtpSession("pcmu"),
        call_id="bench",
        latch_packets=1,
        timeout_s=600.0,
    )
    addr = leg.local_address
    sender = RtpSession("pcmu")
    pcm = _pcm()
    wire = [sender.send_audio(pcm) for _ in range(packets + 1)]
    sink = _Sink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(leg.serve_reader, sink)
        sink.target = 1
        peer.sendto(wire[0], addr)  # latch first: every measured packet is media
        await sink.reached.wait()
        start = time.process_time()
        for i in range(1, packets + 1, batch):
            sink.target = sink.count + len(wire[i : i + batch])
            sink.reached = trio.Event()
            for packet in wire[i : i + batch]:
                peer.sendto(packet, addr)
            await sink.reached.wait()
        spent = time.process_time() - start
        nursery.cancel_scope.cancel()
    leg.close_now()
    peer.close()
    return spent / packets * 1e9


def receive_ns(leg_cls: Any, *, batch: int, packets: int) -> float:
    return trio.run(_receive, leg_cls, packets, batch)


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("_rtpleg_compared", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RtpCallLeg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compare", metavar="FILE", help="another _rtpleg.py to run beside")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (median)")
    args = parser.parse_args()
    legs: list[tuple[str, Any]] = [("this", RtpCallLeg)]
    if args.compare:
        legs.insert(0, ("compared", _load(args.compare)))
    rounds = args.rounds or (1 if args.quick else 5)
    min_time, repeat = (0.01, 2) if args.quick else (0.05, 5)
    packets = 2000 if args.quick else 20000
    cases = {
        "send": lambda cls: send_ns(cls, destination=True, min_time_s=min_time, repeat=repeat),
        "send, no destination": lambda cls: send_ns(
            cls, destination=False, min_time_s=min_time, repeat=repeat
        ),
        "receive, 1 packet per wake-up": lambda cls: receive_ns(cls, batch=1, packets=packets),
        "receive, 16 packets per wake-up": lambda cls: receive_ns(cls, batch=16, packets=packets),
    }
    results: dict[tuple[str, str], list[float]] = {}
    for round_ in range(rounds):
        for case, run in cases.items():
            # Alternate which goes first: the machine warms up and cools down.
            for name, cls in legs if round_ % 2 == 0 else legs[::-1]:
                results.setdefault((case, name), []).append(run(cls))
    width = max(len(c) for c in cases)
    names = [n for n, _ in legs]
    print(f"RtpCallLeg per packet, ns (median of {rounds} interleaved rounds)")
    print(f"{'path':<{width}}  " + "  ".join(f"{n:>10}" for n in names) + ("  ratio" if args.compare else ""))
    for case in cases:
        row = [statistics.median(results[(case, n)]) for n in names]
        ratio = f"  {row[-1] / row[0]:.3f}" if args.compare else ""
        print(f"{case:<{width}}  " + "  ".join(f"{v:>10.0f}" for v in row) + ratio)


if __name__ == "__main__":
    main()
