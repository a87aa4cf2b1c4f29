"""End to end: an sln app names its marks with numbers and the connection stays up.

It used to end the app connection with a protocol error (then a reconnect), although
docs/app-protocol.md showed ``"name": N``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from .test_app_encapsulations import app_frame, sln_call, wait_until


async def test_numeric_mark_names_are_echoed_as_numbers_and_keep_the_app_connected(
    daemon_factory: Any, tmp_path: Path
) -> None:
    names: list[Any] = [5, "5", 2.5, 0]
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            call = await sln_call(nursery, daemon_factory, tmp_path)
            app = call.app
            assert app.ws is not None
            for n, name in enumerate(names):
                await app.ws.send(app_frame(n))
                await app.ws.send(json.dumps({"event": "mark", "name": name}))
            await wait_until(
                lambda: len([m for m in app.controls() if m.get("event") == "mark"]) == 4
            )
            [stream] = call.daemon.manager.live()
            reconnects = stream.reconnects
            closed = app.closed.is_set()
            await call.caller.aclose()
            await wait_until(lambda: call.daemon.manager.live_count == 0)
            nursery.cancel_scope.cancel()
    echoed = [m["name"] for m in app.controls() if m.get("event") == "mark"]
    assert echoed == names
    assert [type(x) for x in echoed] == [int, str, float, int]
    assert reconnects == 0 and not closed
    assert call.daemon.metrics.bad_input.labels("app", "protocol_error")._value.get() == 0
