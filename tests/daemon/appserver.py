"""An independent sln app server for tests: trio-websocket, in its own process.

    python tests/daemon/appserver.py PORT [--echo] [--hangup-after N]

Prints one JSON line per event, flushed at once so that a SIGKILL loses nothing that
was printed: {"ready": port}, {"connect": headers}, {"start": msg}, {"frame": n, "len": b}
(n = the first sample of the frame), {"closed": code}.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys

import trio
import trio_websocket


def say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--echo", action="store_true")
    parser.add_argument("--hangup-after", type=int, default=0)
    parser.add_argument("--hangup-message-after", type=int, default=0)
    args = parser.parse_args()

    async def handler(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        say({"connect": {k.decode(): v.decode() for k, v in request.headers if k.lower().startswith(b"x-bridge")}})
        frames = 0
        try:
            while True:
                msg = await ws.get_message()
                if isinstance(msg, str):
                    say({"start" if '"start"' in msg else "text": json.loads(msg)})
                    continue
                frames += 1
                say({"frame": struct.unpack_from("<h", msg)[0], "len": len(msg)})
                if args.echo:
                    await ws.send_message(msg)
                if args.hangup_message_after and frames == args.hangup_message_after:
                    await ws.send_message(json.dumps({"event": "hangup"}))
                    say({"hangup": frames})
                if args.hangup_after and frames >= args.hangup_after:
                    await ws.aclose(1000, "done")
                    say({"closed": 1000})
                    return
        except trio_websocket.ConnectionClosed as exc:
            say({"closed": exc.reason.code if exc.reason else None})

    async with trio.open_nursery() as nursery:
        await nursery.start(trio_websocket.serve_websocket, handler, "127.0.0.1", args.port, None)
        say({"ready": args.port})


if __name__ == "__main__":
    trio.run(main)
