"""Log formats: JSON lines and the console format both carry stream_id and extras."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.daemon._logging import BadPeerLog, LogBudget, configure_logging, stream_logger


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state; put it back for other tests."""
    bridge, root = logging.getLogger("bridge"), logging.getLogger()
    saved = (bridge.level, bridge.propagate, list(bridge.handlers), list(root.handlers))
    yield
    bridge.setLevel(saved[0])
    bridge.propagate = saved[1]
    bridge.handlers[:] = saved[2]
    root.handlers[:] = saved[3]


def _json_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_line_has_core_fields_and_stream_id() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    log = stream_logger("s-123", call_id="c-9", route="agents")
    log.info("app leg connected after %d attempts", 2, extra={"attempt": 2})

    [line] = _json_lines(buf)
    assert line["msg"] == "app leg connected after 2 attempts"
    assert line["level"] == "info"
    assert line["logger"] == "bridge.streams"
    assert line["stream_id"] == "s-123"
    assert line["call_id"] == "c-9"
    assert line["route"] == "agents"
    assert line["attempt"] == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    ts = datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60
    assert list(line)[:4] == ["ts", "level", "logger", "msg"]


def test_plain_logger_extra_is_printed() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    logging.getLogger("bridge.streams").warning(
        "bad frame", extra={"stream_id": "s-1", "reason": "oversize", "error": "too big"}
    )
    [line] = _json_lines(buf)
    assert (line["stream_id"], line["reason"], line["error"]) == ("s-1", "oversize", "too big")


def test_json_exception_and_odd_values() -> None:
    class Color(Enum):
        RED = 1

    buf = io.StringIO()
    configure_logging("debug", "json", stream=buf)
    log = logging.getLogger("bridge.test")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        log.exception(
            "it broke",
            extra={
                "stream_id": "s",
                "color": Color.RED,
                "when": datetime(2024, 1, 1, tzinfo=UTC),
                "odd": {1: object()},
            },
        )
    [line] = _json_lines(buf)
    assert "RuntimeError: kaput" in line["exc"]
    assert line["level"] == "error"
    assert line["stream_id"] == "s"
    assert line["when"].startswith("2024-01-01T00:00:00")
    assert line["color"] == 1
    assert line["odd"]["1"].startswith("<object object")
    # Something msgspec cannot encode at all degrades to str() instead of raising.
    buf.truncate(0)
    buf.seek(0)
    loop: list[Any] = []
    loop.append(loop)
    log.info("cycle", extra={"weird": loop, "stream_id": "s"})
    [line] = _json_lines(buf)
    assert line["weird"] == "[[...]]"
    assert line["stream_id"] == "s"


def test_extras_cannot_overwrite_core_keys() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    logging.getLogger("bridge.x").info("hello", extra={"level": "fake", "ts": "fake"})
    [line] = _json_lines(buf)
    assert line["level"] == "info"
    assert line["ts"] != "fake"


def test_console_format_shows_stream_id_first() -> None:
    buf = io.StringIO()
    configure_logging("info", "console", stream=buf)
    stream_logger("s-42", route="agents").info("stream opened", extra={"note": "two words"})
    out = buf.getvalue()
    assert out.count("\n") == 1
    assert re.match(
        r"\d{4}-\d\d-\d\dT[\d:.]+Z INFO    bridge\.streams: stream opened stream_id=s-42 route=agents note=\"two words\"$",
        out.strip(),
    ), out


def test_console_exception_follows_line() -> None:
    buf = io.StringIO()
    configure_logging("info", "console", stream=buf)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("bridge.x").exception("math", extra={"stream_id": "s"})
    first, *rest = buf.getvalue().splitlines()
    assert first.endswith("math stream_id=s")
    assert "ZeroDivisionError" in rest[-1]


def test_level_filtering() -> None:
    buf = io.StringIO()
    configure_logging("warning", "json", stream=buf)
    log = logging.getLogger("bridge.streams")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert [line["msg"] for line in _json_lines(buf)] == ["w", "e"]

    configure_logging("debug", "json", stream=buf)
    log.debug("d2")
    assert _json_lines(buf)[-1]["msg"] == "d2"


def test_reconfigure_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    configure_logging("info", "console", stream=second)
    logging.getLogger("bridge").info("once")
    assert first.getvalue() == ""
    assert second.getvalue().count("once") == 1


def test_third_party_warnings_use_the_same_format() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    logging.getLogger("some.library").info("chatter")
    logging.getLogger("some.library").warning("careful")
    assert [(line["logger"], line["msg"]) for line in _json_lines(buf)] == [
        ("some.library", "careful")
    ]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", "json")
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml")  # type: ignore[arg-type]


def test_bind_and_log_once() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    log = stream_logger("s-1").bind(call_id="c-1")
    assert log.stream_id == "s-1"
    assert log.log_once("unknown:foo", logging.WARNING, "unknown event %s", "foo")
    assert not log.log_once("unknown:foo", logging.WARNING, "unknown event %s", "foo")
    assert log.log_once("unknown:bar", logging.WARNING, "unknown event %s", "bar")
    # Another stream has its own memory.
    assert stream_logger("s-2").log_once("unknown:foo", logging.WARNING, "unknown event foo")
    lines = _json_lines(buf)
    assert [(line["stream_id"], line["msg"]) for line in lines] == [
        ("s-1", "unknown event foo"),
        ("s-1", "unknown event bar"),
        ("s-2", "unknown event foo"),
    ]
    assert lines[0]["call_id"] == "c-1"


def test_log_once_is_bounded() -> None:
    log = stream_logger("s-1", logger=logging.getLogger("bridge.test.bounded"))
    logged = sum(log.log_once(f"k{i}", logging.DEBUG, "x") for i in range(1000))
    assert logged == log.MAX_ONCE_KEYS


# ------------------------------------------------------------------ bad peers, rate limited


@settings(max_examples=300)
@given(
    st.integers(0, 6),
    st.floats(0.1, 10.0),
    st.lists(st.tuples(st.floats(0.0, 5.0), st.sampled_from("abc")), max_size=150),
)
def test_log_budget_never_lets_more_than_max_lines_into_any_interval(
    max_lines: int, interval_s: float, gaps: list[tuple[float, str]]
) -> None:
    budget = LogBudget(max_lines, interval_s)
    now = 0.0
    allowed: list[float] = []
    held = 0
    summarised = 0
    last_summary: float | None = None
    for gap, key in gaps:
        now += gap
        summary = budget.summary(now)
        if summary is not None:
            summarised += sum(summary.values())
            assert last_summary is None or now - last_summary >= interval_s - 1e-9
            last_summary = now
        if budget.allow(key, now):
            allowed.append(now)
        else:
            held += 1
    # Sliding window: any interval of interval_s, wherever it starts, holds <= max_lines.
    for i, t in enumerate(allowed):
        assert sum(1 for u in allowed[i:] if u - t < interval_s) <= max_lines
    final = budget.summary(now, force=True) or {}
    assert summarised + sum(final.values()) == held == budget.held_total
    assert len(allowed) == budget.allowed_total


def test_log_budget_summary_is_due_one_interval_after_the_first_held_line() -> None:
    budget = LogBudget(2, 10.0)
    assert budget.allow("x", 0.0) and budget.allow("x", 1.0)
    assert not budget.allow("x", 2.0) and not budget.allow("y", 3.0)
    assert budget.summary(11.9) is None
    assert budget.summary(12.0) == {"x": 1, "y": 1}
    assert budget.summary(30.0) is None  # nothing held since
    assert budget.allow("x", 10.0)  # the line at 0.0 has left the window


async def test_bad_peer_log_writes_the_summary_when_due_and_at_the_end(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.test")
    log = BadPeerLog.create(logging.getLogger("bridge.test"), 2, 10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.serve)
        written = [log.warning("k", "bad %d", i, extra={"peer": f"p{i}"}) for i in range(5)]
        assert written == [True, True, False, False, False]
        await trio.sleep(10.5)  # the summary falls due with no further line
        messages = [r.getMessage() for r in caplog.records]
        assert messages == ["bad 0", "bad 1", "suppressed 3 bad-input lines in the last 10s: by kind k=3"]
        assert caplog.records[-1].suppressed == 3  # type: ignore[attr-defined]
        await trio.sleep(0.5)  # the first two lines have left the window
        later = [log.warning("j", "late", extra={}) for _ in range(3)]
        assert later == [True, True, False]
        nursery.cancel_scope.cancel()
    # Cancelled before that one fell due: written at the end, not lost.
    assert caplog.records[-1].getMessage() == "suppressed 1 bad-input lines in the last 10s: by kind j=1"


async def test_bad_peer_log_new_limits_on_reload(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bridge.test")
    log = BadPeerLog.create(logging.getLogger("bridge.test"), 1, 10.0)
    assert [log.warning("k", "x", extra={}) for _ in range(3)] == [True, False, False]
    log.configure(1, 10.0)  # unchanged: nothing happens
    assert len(caplog.records) == 1
    log.configure(5, 1.0)  # what was held back is summarised, then the new budget applies
    assert caplog.records[-1].getMessage().startswith("suppressed 2 bad-input lines")
    assert all(log.warning("k", "y", extra={}) for _ in range(5))
