"""An app hangup always gets ``{"event":"stop","reason":"app_hangup"}`` before the close
(docs/app-protocol.md), whatever the call leg does meanwhile.

The issue: with a call leg that closes at once (real Asterisk answers bridge's AudioSocket
hangup by closing), 2 of 14 app hangups got close 1000 without the stop. The app here is
trio-websocket (an independent implementation), in the test's own process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from .asclient import AudioSocketCaller
from .conftest import make_config

ROUTE = """
[[routes]]
name = "as-app"
match = {{ listener = "audiosocket" }}
app = {{ url = "ws://127.0.0.1:{port}/", encapsulation = "sln", sample_rate = 8000 }}
"""


async def caller_that_closes_at_once(host: str, port: int, frames: int) -> None:
    """Asterisk-like: sends audio until bridge hangs up, then closes the socket at once."""
    caller = await AudioSocketCaller.connect(host, port)
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await caller.receive_forever()  # returns at the hangup frame's EOF or close
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        for _ in range(frames):
            if not await caller.send_frame(b"\x01\x00" * 160):
                break
            await trio.sleep(0.02)
            if caller.hung_up:
                break
        nursery.cancel_scope.cancel()
    await caller.aclose()


@pytest.mark.parametrize("how", ["message", "message_then_close"])
async def test_app_hangup_gets_stop_before_close(
    daemon_factory: Any, tmp_path: Path, how: str
) -> None:
    results: list[tuple[list[str], int | None]] = []

    async def app(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        seen: list[str] = []
        code: int | None = None
        try:
            frames = 0
            while True:
                msg = await ws.get_message()
                if isinstance(msg, str):
                    seen.append(json.loads(msg)["event"] + ":" + str(json.loads(msg).get("reason")))
                    continue
                frames += 1
                if frames == 3:
                    await ws.send_message(json.dumps({"event": "hangup"}))
                    if how == "message_then_close":
                        # The app says hangup and then waits for bridge's close, reading
                        # what comes first (the stop) like any app that hangs up.
                        pass
        except trio_websocket.ConnectionClosed as exc:
            code = exc.reason.code if exc.reason else None
        results.append((seen, code))

    async with trio.open_nursery() as servers:
        server = await servers.start(
            trio_websocket.serve_websocket, app, "127.0.0.1", 0, None
        )
        port = server.port
        daemon = await daemon_factory(make_config(tmp_path, routes=ROUTE.format(port=port)))
        host, as_port = daemon.bound["audiosocket"]
        with trio.fail_after(60):
            for _ in range(25):
                await caller_that_closes_at_once(host, as_port, 50)
                while len(results) < _ + 1:
                    await trio.sleep(0.01)
        servers.cancel_scope.cancel()
    assert len(results) == 25
    for seen, code in results:
        assert "stop:app_hangup" in seen, (seen, code)
        assert seen[-1] == "stop:app_hangup", seen
        assert code == 1000


async def test_app_hangup_from_another_process_gets_stop_before_close(
    daemon_factory: Any, tmp_path: Path
) -> None:
    """The same with the app in its own process (tests/daemon/appserver.py, trio-websocket):
    real scheduling between the two, as with the Node ``ws`` app of the finding."""
    import socket as stdlib_socket

    from .test_app_leg import AppServer

    with stdlib_socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = AppServer(port, "--hangup-message-after", "3")
    async with trio.open_nursery() as nursery:
        await nursery.start(app.run)
        daemon = await daemon_factory(make_config(tmp_path, routes=ROUTE.format(port=port)))
        host, as_port = daemon.bound["audiosocket"]
        with trio.fail_after(90):
            for i in range(20):
                await caller_that_closes_at_once(host, as_port, 50)
                while sum(1 for ln in app.lines if "closed" in ln) < i + 1:
                    await trio.sleep(0.01)
        app.kill()
        nursery.cancel_scope.cancel()
    # Each connection: its texts, then its close code.
    sessions: list[list[dict[str, Any]]] = [[]]
    for ln in app.lines:
        if "ready" in ln or "connect" in ln:
            continue
        sessions[-1].append(ln)
        if "closed" in ln:
            sessions.append([])
    sessions = [s for s in sessions if s]
    assert len(sessions) == 20
    for s in sessions:
        texts = [ln["text"]["event"] + ":" + str(ln["text"].get("reason")) for ln in s if "text" in ln]
        assert texts and texts[-1] == "stop:app_hangup", s
        assert s[-1] == {"closed": 1000}, s
