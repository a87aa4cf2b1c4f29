"""Mark names that are numbers keep their JSON type through the stream, also across a
carrier call leg whose mark names are strings (the dialect sends 5 as "5"; the echo
"5" goes back to the app as 5)."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from bridge.dialects import Audio, Mark
from bridge.media import Frame

from .fakes import FakeAppConnection, FakeCallLeg, ScriptedConnector
from .test_stream import clock, numbered_frame, run_stream

__all__ = ["clock"]  # the fixture, re-exported for pytest


def marks_with_types(conn: FakeAppConnection) -> list[tuple[Any, type]]:
    return [(x.name, type(x.name)) for x in conn.received if isinstance(x, Mark)]


async def test_bridge_played_marks_come_back_with_their_json_type(
    clock: trio.testing.MockClock,
) -> None:
    call = FakeCallLeg()  # AudioSocket/RTP: bridge plays the audio and answers marks
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.2)
        for name in (5, "5", 2.5):
            conn.feed(Audio(Frame(numbered_frame(1), 8000)))
            conn.feed(Mark(name))
        await trio.sleep(0.3)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    assert marks_with_types(conn) == [(5, int), ("5", str), (2.5, float)]


async def test_carrier_echoes_are_mapped_back_to_the_apps_names(
    clock: trio.testing.MockClock,
) -> None:
    call = FakeCallLeg(far_side_buffers=True)  # a carrier: it buffers and echoes marks
    conn = FakeAppConnection()
    async with trio.open_nursery() as nursery:
        stream, _, _ = await run_stream(nursery, call, ScriptedConnector([conn]))
        await trio.sleep(0.2)
        conn.feed(Audio(Frame(numbered_frame(1) * 2, 8000)))
        for name in ("5", 5, 2.5):
            conn.feed(Mark(name))
        await trio.sleep(0.2)
        assert [e.name for e in call.events_sent if isinstance(e, Mark)] == ["5", 5, 2.5]
        # The carrier echoes strings, in order.
        for echoed in ("5", "5", "2.5"):
            call.inject(Mark(echoed))
        await trio.sleep(0.05)
        call.hang_up()
        await stream.closed_event.wait()
        nursery.cancel_scope.cancel()
    assert marks_with_types(conn) == [("5", str), (5, int), (2.5, float)]
