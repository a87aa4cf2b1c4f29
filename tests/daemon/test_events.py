"""Event bodies, records and signatures (pure; no I/O)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from bridge.daemon._events import (
    EventSource,
    StreamEvent,
    StreamRecord,
    iso_utc,
    log_entry,
    parse_iso_utc,
    sign,
    verify_signature,
)

HERE = Path(__file__).parent
REPO_ROOT = HERE.parent.parent
SHARED_SCHEMA = REPO_ROOT.parent / "shared" / "contract" / "callback.schema.json"
#: The schema shipped in the repo (docs/callbacks.md links it); the tests use it.
LOCAL_SCHEMA = REPO_ROOT / "docs" / "callback.schema.json"

SCHEMA: dict[str, Any] = json.loads(LOCAL_SCHEMA.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
# The contract says "other event names may be added; receivers ignore names they do not
# know": an event name outside the enum is checked with the name check relaxed
# (everything else still enforced).
_RELAXED = copy.deepcopy(SCHEMA)
_RELAXED["properties"]["event"] = {"type": "string"}
RELAXED_VALIDATOR = jsonschema.Draft202012Validator(_RELAXED)

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
T0 = datetime(2026, 11, 21, 6, 16, 21, 123456, tzinfo=UTC)
IDENT: dict[str, Any] = {
    "stream_id": "st-1",
    "call_id": "call-1",
    "app_url": "wss://app.example/ws",
}


def validate(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    if data["event"] in SCHEMA["properties"]["event"]["enum"]:
        VALIDATOR.validate(data)
    else:
        RELAXED_VALIDATOR.validate(data)
    return data


def test_schema_copy_matches_shared_contract() -> None:
    if not SHARED_SCHEMA.exists():
        pytest.skip("shared/contract not present next to the checkout")
    assert json.loads(SHARED_SCHEMA.read_text()) == SCHEMA


def test_start_body_is_compact_schema_valid_and_omits_unset_fields() -> None:
    ev = StreamEvent.start(
        **IDENT, route="r1", callback_url="http://cb", callback_secret="s", timestamp=T0
    )
    body = ev.body()
    assert b" " not in body  # compact
    data = validate(body)
    assert data == {
        "event": "StartStream",
        "event_id": ev.event_id,
        "stream_id": "st-1",
        "call_id": "call-1",
        "timestamp": "2026-11-21T06:16:21.123Z",
        "app_url": "wss://app.example/ws",
        "route": "r1",
    }
    # Delivery fields never leak into the body.
    assert b"http://cb" not in body and b'"s"' not in body
    assert "callback_secret" not in repr(ev)


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        (
            StreamEvent.stop(**IDENT, reason="call_hangup", duration_s=12.34567, timestamp=T0),
            {"event": "StopStream", "reason": "call_hangup", "duration_s": 12.346},
        ),
        (
            StreamEvent.dropped(
                **IDENT, reason="connection_error", error="refused", attempts=3, duration_s=4.0
            ),
            {
                "event": "DroppedStream",
                "reason": "connection_error",
                "error": "refused",
                "attempts": 3,
                "duration_s": 4.0,
            },
        ),
        (
            StreamEvent.degraded(**IDENT, buffer_percent=60),
            {"event": "DegradedStream", "buffer_percent": 60},
        ),
        (
            StreamEvent.recovered(**IDENT, buffer_percent=0, attempts=2),
            {"event": "RecoveredStream", "buffer_percent": 0, "attempts": 2},
        ),
    ],
)
def test_factories(ev: StreamEvent, expected: dict[str, Any]) -> None:
    data = validate(ev.body())
    assert {k: data[k] for k in expected} == expected
    assert ISO_MS.match(data["timestamp"])
    assert "route" not in data  # empty route omitted


def test_event_source_builds_the_same_events() -> None:
    src = EventSource(**IDENT, route="r", callback_url="http://cb", callback_secret="k")
    evs = [
        src.start(),
        src.degraded(buffer_percent=30),
        src.recovered(buffer_percent=5),
        src.dropped(reason="slow_connection", error="buffer full"),
        src.stop(reason="shutdown", duration_s=1.0),
    ]
    assert [e.event for e in evs] == [
        "StartStream",
        "DegradedStream",
        "RecoveredStream",
        "DroppedStream",
        "StopStream",
    ]
    assert len({e.event_id for e in evs}) == len(evs)
    for e in evs:
        assert (e.stream_id, e.callback_url, e.callback_secret, e.route) == (
            "st-1",
            "http://cb",
            "k",
            "r",
        )
        validate(e.body())


def test_event_validation() -> None:
    with pytest.raises(ValueError, match="reason"):
        StreamEvent(event="StopStream", **IDENT)
    with pytest.raises(ValueError, match="buffer_percent"):
        StreamEvent(event="DegradedStream", **IDENT)
    with pytest.raises(ValueError, match="hangup reason"):
        StreamEvent.stop(**IDENT, reason="bored", duration_s=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StreamEvent(event="Nope", **IDENT)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="aware"):
        StreamEvent.start(**IDENT, timestamp=datetime(2026, 1, 1))


def test_timestamps_are_utc_with_z() -> None:
    plus2 = timezone(timedelta(hours=2))
    ev = StreamEvent.start(**IDENT, timestamp=datetime(2026, 11, 21, 8, 16, 21, 5000, tzinfo=plus2))
    assert json.loads(ev.body())["timestamp"] == "2026-11-21T06:16:21.005Z"
    assert iso_utc(T0) == "2026-11-21T06:16:21.123Z"
    assert parse_iso_utc("2026-11-21T06:16:21.123Z") == T0.replace(microsecond=123000)


def test_event_id_is_stable_and_unique() -> None:
    a = StreamEvent.start(**IDENT)
    b = StreamEvent.start(**IDENT)
    assert a.event_id != b.event_id
    assert json.loads(a.body())["event_id"] == json.loads(a.body())["event_id"] == a.event_id


# --------------------------------------------------------------------------- signatures


def test_sign_matches_an_independent_hmac() -> None:
    body = StreamEvent.start(**IDENT).body()
    t = 1_790_000_000
    header = sign(body, "s3cret", t)
    expected = hmac.new(b"s3cret", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={expected}"


def test_verify_signature() -> None:
    body = b'{"event":"StartStream"}'
    now = time.time()
    header = sign(body, "k", int(now))
    assert verify_signature(header, body, "k")
    assert verify_signature(header, body, "k", now=now + 299)
    assert not verify_signature(header, body, "k", now=now + 301)  # replayed too late
    assert not verify_signature(header, body, "k", now=now - 301)  # from the future
    assert not verify_signature(header, body, "other", now=now)
    assert not verify_signature(header, body + b" ", "k", now=now)  # body re-serialized
    # Secret rotation: any matching v1 is accepted.
    old = sign(body, "old", int(now)).split(",")[1]
    assert verify_signature(f"{header},{old}", body, "old", now=now)
    for bad in ["", "t=abc,v1=00", "v1=00", f"t={int(now)}", "garbage", f"t={int(now)},v1=é"]:
        assert not verify_signature(bad, body, "k", now=now)


def test_documented_recipe_and_example_are_right() -> None:
    """docs/callbacks.md: its Python snippet and its example header verify its example body."""
    doc = (REPO_ROOT / "docs" / "callbacks.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", doc, re.S)
    assert snippet is not None
    namespace: dict[str, Any] = {}
    exec(snippet.group(1), namespace)
    verify = namespace["verify"]
    example_body = re.search(r'^(\{"event":"StartStream".*\})$', doc, re.M)
    example_header = re.search(r"^X-Bridge-Signature: (.*)$", doc, re.M)
    assert example_body is not None and example_header is not None
    body, header = example_body.group(1).encode(), example_header.group(1)
    t = int(header.split(",")[0].removeprefix("t="))
    assert verify_signature(header, body, "change-me", now=t + 10)
    assert not verify_signature(header, body, "wrong", now=t + 10)
    # The snippet uses the real clock, so check it on a fresh signature.
    fresh = sign(body, "change-me", int(time.time()))
    assert verify(fresh, body, "change-me")
    assert not verify(fresh, body + b" ", "change-me")
    assert not verify(header, body, "change-me")  # too old
    assert not verify("t=x,v1=00", body, "change-me")
    assert not verify("", body, "change-me")
    assert not verify(f"{fresh},garbage", body, "change-me")
    # Every example body in the document is schema-valid.
    for line in re.findall(r'^\{"event":.*\}$', doc, re.M):
        validate(line.encode())


# --------------------------------------------------------------------------- records


def make_record(**overrides: Any) -> StreamRecord:
    fields: dict[str, Any] = {
        "stream_id": "st-9",
        "call_id": "call-9",
        "route": "twilio-agent",
        "app_url": "wss://app/ws",
        "listener": "websocket",
        "encapsulation": "twilio",
        "started_at": datetime(2026, 11, 21, 6, 0, 0, 250000, tzinfo=UTC),
        "ended_at": datetime(2026, 11, 21, 6, 1, 30, 750000, tzinfo=UTC),
        "reason": "call_hangup",
        "frames_in": 4500,
        "frames_out": 4400,
        "bytes_in": 720000,
        "bytes_out": 704000,
        "reconnects": 1,
        "max_buffer_percent": 42.5,
        "max_buffer_ms": 17000,
        "lateness_p50_ms": 0.9,
        "lateness_p99_ms": 1.4,
        "lateness_max_ms": 7.5,
        "jitter": {"received": 4500, "late": 3, "lost": 2},
        "events": [
            log_entry("connecting", time=datetime(2026, 11, 21, 6, 0, 0, tzinfo=UTC)),
            log_entry("app_dropped", {"code": 1006}),
        ],
    }
    fields.update(overrides)
    return StreamRecord(**fields)


def test_record_to_dict_round_trip() -> None:
    rec = make_record()
    d = rec.to_dict()
    assert msgspec.json.decode(msgspec.json.encode(d)) == d  # JSON-able
    assert d["duration_s"] == 90.5  # computed from start/end
    assert d["started_at"] == "2026-11-21T06:00:00.250Z"
    assert d["jitter"] == {"received": 4500, "late": 3, "lost": 2, "concealed": 0, "reordered": 0}
    assert d["events"][0] == {
        "time": "2026-11-21T06:00:00.000Z",
        "name": "connecting",
        "detail": "",
    }
    assert d["events"][1]["detail"] == {"code": 1006}
    assert StreamRecord.from_dict(d) == rec
    assert StreamRecord.from_dict(d).to_dict() == d


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="hangup reason"):
        make_record(reason="lunch")
    with pytest.raises(ValueError, match="aware"):
        make_record(ended_at=datetime(2026, 1, 1))
    assert make_record(duration_s=3).duration_s == 3.0
