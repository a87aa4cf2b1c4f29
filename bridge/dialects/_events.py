"""The events every dialect turns wire messages into, and back.

A dialect connection in either role exposes the same three calls, in the manner of
h11 and wsproto:

* ``receive(message) -> list[Event]`` takes one wire message (``bytes`` for binary
  frames, datagrams and stream chunks; ``str`` for WebSocket text frames) and returns
  the events in it. Malformed input raises ``DialectError`` naming what was wrong.
* ``send(event) -> list[Message]`` returns the wire messages for one event (a list,
  because some events need several, e.g. the RFC 4733 end packet sent three times;
  an empty list when the wire has no way to say it).
* ``send_audio(pcm) -> Message`` is the per-frame fast path of ``send(Audio(...))``.

Some wires cannot report everything the engine needs: Asterisk ``chan_websocket``
drops pending marks on ``FLUSH_MEDIA`` without a word, and Vonage and Exotel do not
document what happens to theirs on a clear. The app roles of those dialects settle such
marks themselves and expose ``take_events() -> list[Event]``: the events owed that no
wire message carries (the settled ``Mark`` echoes, and ``Cleared`` where the wire has no
acknowledgement). Call it after ``send()``; it returns ``[]`` when nothing is owed.

Roles: the *platform* role owns the call (Asterisk, Twilio, a test caller) and sends
``Start`` and ``Audio``; the *app* role receives them and sends ``Audio``, ``Mark``,
``Clear``. The same classes serve the call leg, the app leg and ``bridge call``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import msgspec

from ..media import Frame, MarkName

__all__ = [
    "Audio",
    "Clear",
    "Cleared",
    "Connected",
    "Drained",
    "Dtmf",
    "Error",
    "Event",
    "FlowControl",
    "Hangup",
    "Mark",
    "MarkName",
    "Message",
    "Start",
    "Stats",
    "StatsRequest",
    "Stop",
    "mark_text",
]

Message = bytes | str
"""One wire message: ``bytes`` (binary frame, datagram or stream chunk) or ``str`` (text frame)."""


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


@attrs.frozen(slots=True)
class Connected:
    """The WebSocket-level greeting some carriers send before ``start`` (Twilio, Telnyx)."""

    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen(slots=True)
class Start:
    """The media stream begins.

    ``stream_id``/``call_id`` are the platform's identifiers (Twilio streamSid/callSid,
    AudioSocket UUID for both, ...). ``sample_rate`` and ``encoding`` describe the wire
    audio; the ``Audio`` events a dialect emits are always PCM16 at ``sample_rate``.
    ``metadata`` carries everything else the dialect knows (customParameters, account
    ids, tracks, extra headers). ``resumed``/``replayed_ms`` are set when a stream is
    started again after an app-leg reconnect (PROTOCOLS.md §0).
    """

    stream_id: str
    call_id: str
    sample_rate: int = 8000
    encoding: str = "L16"
    metadata: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)
    resumed: bool = False
    replayed_ms: int = 0


@attrs.frozen(slots=True)
class Audio:
    """One chunk of audio as PCM16 little-endian mono (``frame``).

    ``seq``/``timestamp`` are the wire's ordering hints when it has them (RTP sequence
    and timestamp, carrier chunk numbers), for reordering above the dialect.
    """

    frame: Frame
    seq: int | None = None
    timestamp: int | None = None


@attrs.frozen(slots=True)
class Dtmf:
    """One DTMF digit: ``0-9 * # A-D``. Emitted once per key press."""

    digit: str
    duration_ms: int | None = None


@attrs.frozen(slots=True)
class Mark:
    """A named point in the app's audio.

    App → platform: "tell me when everything before this has been played".
    Platform → app: the echo — it was played, or cleared (carrier semantics differ;
    PROTOCOLS.md "Design implications" 2).

    ``name`` is what the app chose: a JSON string or number, echoed back as the same
    JSON value. Wires whose names are strings (the carriers') carry :func:`mark_text`.
    """

    name: MarkName


_encode_json = msgspec.json.Encoder().encode


def mark_text(name: MarkName) -> str:
    """A mark name as a string: itself, or a number's JSON text (5 -> "5", 2.5 -> "2.5").

    What goes to a carrier whose mark names are strings; the stream matches the carrier's
    echo back to the name the app sent by this text."""
    if isinstance(name, str):
        return name
    return _encode_json(name).decode()


@attrs.frozen(slots=True)
class Clear:
    """App → platform: drop all queued audio (and return pending marks)."""


@attrs.frozen(slots=True)
class Cleared:
    """Platform → app: a ``Clear`` has been carried out (sln ``cleared``, Plivo ``clearedAudio``)."""


@attrs.frozen(slots=True)
class Drained:
    """Platform → app: the app's queued audio ran out (fires once until more audio arrives)."""


@attrs.frozen(slots=True)
class FlowControl:
    """Platform -> app: the far side's playback queue is full (``paused``) or has room again.

    Asterisk ``chan_websocket`` sends ``MEDIA_XOFF`` when its queue of the app's frames
    reaches 900 (18 s at 20 ms) and ``MEDIA_XON`` when it is back under 800; at 1000 it
    discards whole binary messages. An engine that obeys stops sending audio ahead
    (keeping it queued on its side, where ``Clear`` can still reach it) while
    ``paused``, and resumes on ``FlowControl(paused=False)``. Nothing is lost by
    obeying late: the far side keeps playing what it holds.
    """

    paused: bool


@attrs.frozen(slots=True)
class Error:
    """Platform -> app: a request of the app's could not be carried out. Not fatal: the
    stream goes on.

    ``code`` is a stable short name the app can act on (``"dtmf_unsupported"``: the call
    leg has no way to send DTMF to the caller); ``message`` says it for humans. Each
    app-leg dialect carries it in the form that fits it (sln: ``{"event":"error",...}``),
    or not at all where its platform has no such message.
    """

    code: str
    message: str = ""


@attrs.frozen(slots=True)
class StatsRequest:
    """App → platform: ask for a ``Stats`` answer (sln ``{"event":"stats"}``)."""


@attrs.frozen(slots=True)
class Stats:
    """Platform → app: how much audio is queued each way, how much of the app's audio
    was trimmed to keep latency down, and the call leg's jitter-buffer depth (RTP)."""

    queued_ms: int
    buffered_ms: int
    trimmed_ms: int = 0
    jitter_ms: int | None = None


@attrs.frozen(slots=True)
class Hangup:
    """App → platform: end the stream (and the call, where the leg can)."""


@attrs.frozen(slots=True)
class Stop:
    """The media stream ends. ``reason`` is free text or a bridge hangup reason."""

    reason: str | None = None


Event = (
    Connected
    | Start
    | Audio
    | Dtmf
    | Mark
    | Clear
    | Cleared
    | Drained
    | FlowControl
    | Error
    | StatsRequest
    | Stats
    | Hangup
    | Stop
)
