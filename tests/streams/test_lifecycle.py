"""The typed lifecycle events a stream reports: their names and the detail its event log
keeps (the shape ``GET /v1/streams/{id}`` and the stream record have always shown)."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from bridge.streams import (
    DegradedStream,
    DroppedStream,
    LifecycleEvent,
    RecoveredStream,
    StartStream,
    StopStream,
    Stream,
    StreamSettings,
    StreamState,
    Ticker,
)

from .fakes import FakeCallLeg, ScriptedConnector


@pytest.mark.parametrize(
    ("event", "name", "detail"),
    [
        (StartStream(), "StartStream", {}),
        (StopStream("call_hangup", 1.5), "StopStream", {"reason": "call_hangup", "duration_s": 1.5}),
        (
            StopStream("call_hangup", 2.0, "call leg send failed: x"),
            "StopStream",
            {"reason": "call_hangup", "duration_s": 2.0, "error": "call leg send failed: x"},
        ),
        (
            DroppedStream("connection_error", 1.0, None, 3),
            "DroppedStream",
            {"reason": "connection_error", "duration_s": 1.0, "error": None, "attempts": 3},
        ),
        (DegradedStream(60), "DegradedStream", {"buffer_percent": 60}),
        (RecoveredStream(), "RecoveredStream", {}),
    ],
)
def test_name_and_detail(event: LifecycleEvent, name: str, detail: dict[str, object]) -> None:
    assert event.name == name
    assert event.detail() == detail
    assert list(event.detail()) == list(detail)  # the log's key order too


def test_events_are_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DegradedStream(30).buffer_percent = 60  # type: ignore[misc]


@attrs.define
class TypedRecorder:
    events: list[LifecycleEvent] = attrs.field(factory=list)

    def stream_event(self, stream: Stream, event: LifecycleEvent) -> None:
        self.events.append(event)

    def stream_state(self, stream: Stream, state: StreamState) -> None:
        pass

    def stream_closed(self, stream: Stream) -> None:
        pass

    def stream_bad_input(self, stream: Stream, leg: str, kind: str, message: str) -> None:
        pass


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_the_observer_gets_the_typed_event_and_the_log_its_detail(
    clock: trio.testing.MockClock,
) -> None:
    rec = TypedRecorder()
    call = FakeCallLeg()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            ticker = Ticker()
            nursery.start_soon(ticker.serve)
            stream = Stream(
                stream_id="s-1",
                call=call,
                connector=ScriptedConnector(),
                ticker=ticker,
                settings=StreamSettings(retries=0, backoff_s=0.0),
                observer=rec,
            )
            nursery.start_soon(stream.run)
            await stream.closed_event.wait()
            nursery.cancel_scope.cancel()
    (event,) = rec.events
    assert type(event) is DroppedStream
    assert (event.reason, event.attempts) == ("connection_error", 1)
    logged = [entry for entry in stream.log if entry["event"] == "DroppedStream"]
    assert len(logged) == 1
    assert {k: v for k, v in logged[0].items() if k != "at"} == {
        "event": "DroppedStream",
        **event.detail(),
    }
