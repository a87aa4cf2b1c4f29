"""WebSocket transport cost: bridge.transports vs trio-websocket, side by side.

Two measurements, 160-byte binary messages (one 20 ms G.711 frame) over loopback, both
ends in this process on one Trio loop (so "CPU µs" is the whole cost: sender + receiver):

* one-way stream: a client sends as fast as the transport allows, the server's handler
  counts. msg/s is what one core sustains; batching in the kernel helps whoever can use
  it (the sender fills the socket, the receiver takes many messages per read).
* echo round trip: the client sends one message and waits for it to come back, so no
  batching is possible: every message pays a full wake-up, read, parse, frame and write.
  This is the shape of paced media (one frame per stream per 20 ms tick).

Runs are interleaved (A B B A A B ...) so drift in the noisy 2-core VM hits both sides
alike; the tables report medians and the ratio.

    .venv/bin/python bench/bench_websocket.py            # ~45 s
    .venv/bin/python bench/bench_websocket.py --quick    # ~6 s
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
import trio_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bridge import ConnectionClosed
from bridge.transports import WebSocketRequest, open_websocket_client, serve_websocket

PAYLOAD = b"\xff" * 160

Result = tuple[float, float]  # (messages or round trips per second, CPU µs per one)
Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[object]]


async def _one_way(send: Send, received: trio.Event, count: int) -> Result:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(count):
        await send(PAYLOAD)
    await received.wait()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return count / wall, cpu / count * 1e6


async def _echo(send: Send, receive: Receive, count: int) -> Result:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(count):
        await send(PAYLOAD)
        await receive()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return count / wall, cpu / count * 1e6


async def bridge_one_way(count: int) -> Result:
    done = trio.Event()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for _ in range(count):
            await ws.receive()
        done.set()
        try:
            await ws.receive()  # until the client closes
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve_websocket, handler, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{addresses[0][1]}/bench"
        async with open_websocket_client(url, ping_interval_s=None) as ws:
            result = await _one_way(ws.send, done, count)
        nursery.cancel_scope.cancel()
    return result


async def bridge_echo(count: int) -> Result:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send(await ws.receive())
        except ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(serve_websocket, handler, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{addresses[0][1]}/bench"
        async with open_websocket_client(url, ping_interval_s=None) as ws:
            result = await _echo(ws.send, ws.receive, count)
        nursery.cancel_scope.cancel()
    return result


async def _tws_server(nursery: trio.Nursery, handler: Callable[..., Awaitable[None]]) -> str:
    server = await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/bench"


async def tws_one_way(count: int) -> Result:
    done = trio.Event()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        for _ in range(count):
            await ws.get_message()
        done.set()
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        url = await _tws_server(nursery, handler)
        async with trio_websocket.open_websocket_url(url) as ws:
            result = await _one_way(ws.send_message, done, count)
        nursery.cancel_scope.cancel()
    return result


async def tws_echo(count: int) -> Result:
    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except trio_websocket.ConnectionClosed:
            pass

    async with trio.open_nursery() as nursery:
        url = await _tws_server(nursery, handler)
        async with trio_websocket.open_websocket_url(url) as ws:
            result = await _echo(ws.send_message, ws.get_message, count)
        nursery.cancel_scope.cancel()
    return result


BRIDGE = "bridge (websockets sans-IO)"
TWS = "trio-websocket"
SCENARIOS: dict[str, dict[str, Callable[[int], Awaitable[Result]]]] = {
    "one-way stream": {BRIDGE: bridge_one_way, TWS: tws_one_way},
    "echo round trip": {BRIDGE: bridge_echo, TWS: tws_echo},
}


async def main(count: int, rounds: int) -> None:
    for scenario, runners in SCENARIOS.items():
        names = list(runners)
        n = count if scenario == "one-way stream" else count // 4
        for name in names:  # warm-up: imports, code paths, socket buffers
            await runners[name](min(n, 1000))
        results: dict[str, list[Result]] = {name: [] for name in names}
        for round_ in range(rounds):
            for name in names if round_ % 2 == 0 else names[::-1]:
                results[name].append(await runners[name](n))

        unit = "msg/s" if scenario == "one-way stream" else "trips/s"
        per = "CPU µs/msg" if scenario == "one-way stream" else "CPU µs/trip"
        print(f"\n{scenario}: 160-byte binary messages over loopback, "
              f"{n} per run, median of {rounds} interleaved runs")
        print(f"{'transport':<28}  {unit:>9}  {per:>11}")
        print(f"{'-' * 28}  {'-' * 9}  {'-' * 11}")
        medians: dict[str, Result] = {}
        for name in names:
            rate = statistics.median(r[0] for r in results[name])
            cpu = statistics.median(r[1] for r in results[name])
            medians[name] = (rate, cpu)
            print(f"{name:<28}  {rate:>9.0f}  {cpu:>11.1f}")
        ours, theirs = medians[BRIDGE], medians[TWS]
        print(f"ratio bridge / trio-websocket: {ours[0] / theirs[0]:.2f}x {unit}, "
              f"{theirs[1] / ours[1]:.2f}x less CPU")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="short run (~6 s)")
    parser.add_argument("--messages", type=int, default=None, help="messages per one-way run")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    args = parser.parse_args()
    messages = args.messages or (5_000 if args.quick else 30_000)
    rounds = args.rounds or (3 if args.quick else 7)
    trio.run(main, messages, rounds)
