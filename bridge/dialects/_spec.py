"""What a dialect is, described once: the ``SPEC`` object at the top of a dialect module.

A dialect registry (a later change) picks these up to wire a dialect into the
listeners, the app leg, ``bridge call`` and ``bridge echo-server`` without repeating its
facts. Each field says one thing the wiring needs; the module docstring of the dialect
says where each fact comes from.

Pure data: frozen attrs objects, no behaviour.
"""

from __future__ import annotations

import importlib
from typing import Literal

import attrs

__all__ = ["Capabilities", "ChunkRule", "DialectSpec", "WireFormat"]

Side = Literal["platform", "app"]


@attrs.frozen(slots=True)
class WireFormat:
    """One audio format the wire can carry.

    ``name`` is the dialect's own spelling (``"slin16"``, ``"audio/l16;rate=16000"``);
    ``codec`` is the ``bridge.media`` codec name (``"pcmu"``, ``"pcma"``, ``"l16le"``).
    """

    name: str
    codec: str
    sample_rate: int


@attrs.frozen(slots=True)
class ChunkRule:
    """What the platform takes in one audio message from the app.

    ``frames``: ptime frames per message: ``"one"`` (exactly one), ``"whole"`` (a whole
    number: a partial frame is dropped) or ``"any"``. ``multiple_of_bytes``, ``min_bytes``,
    ``max_bytes``: wire-byte bounds per message (``None``: none documented).
    ``accumulates``: the app role's ``send(Audio)`` holds whole frames back until a
    message can comply (beyond carrying a partial frame over, which every role that
    needs it does); ``send_audio`` never holds anything back: it sends what it is given,
    checked.
    """

    frames: Literal["one", "whole", "any"]
    multiple_of_bytes: int = 1
    min_bytes: int = 0
    max_bytes: int | None = None
    accumulates: bool = False


@attrs.frozen(slots=True)
class Capabilities:
    """What the wire can say, each way.

    ``marks``: what a mark echo means: ``"played"``, ``"played_or_cleared"``,
    ``"handed_over"`` (reached the far side's media core, not necessarily heard) or
    ``"none"``. ``marks_on_clear``: what the far side does with pending marks on a clear:
    ``"echoed"``, ``"dropped"`` (silently), ``"unconfirmed"``; when not ``"echoed"`` the
    app role settles them itself (``settles_marks``: see ``take_events()`` in ``_events``).
    ``cleared_ack``: the far side acknowledges a clear on the wire. ``dtmf_in``: the
    platform reports caller DTMF; ``dtmf_out``: the app can send DTMF on this wire.
    ``flow_control``: the platform sends ``FlowControl``. ``drained`` / ``stats``: the
    platform can report its queue running out / its queue depth. ``resume``: a dropped
    socket can be resumed as the same stream.
    """

    marks: Literal["played", "played_or_cleared", "handed_over", "none"]
    marks_on_clear: Literal["echoed", "dropped", "unconfirmed", "none"]
    settles_marks: bool
    clear: bool
    cleared_ack: bool
    dtmf_in: bool
    dtmf_out: bool
    flow_control: bool
    drained: bool
    stats: bool
    hangup: bool
    resume: bool


@attrs.frozen(slots=True)
class DialectSpec:
    """One dialect, both roles, as the wiring needs to know it.

    ``platform`` / ``app``: the role classes as ``"module:Class"`` (so that ``SPEC`` can
    stand at the top of its module, before the classes; :meth:`roles` imports them).
    ``dialer``: who opens the WebSocket
    (``"either"``: both setups exist). ``subprotocol``: the ``Sec-WebSocket-Protocol``
    value, if any. ``greets_first``: who sends the first message; ``start``: the
    messages from the first to the one that gives ``Start``; ``stop``: how each side
    ends the stream. ``formats``: every format the dialect accepts; ``default_format``:
    the ``WireFormat.name`` used when nothing is configured; ``format_choice``: who
    picks the format and how it is announced. ``ptime_ms``: the audio per message the
    platform sends. ``send_rule``: the sizes the platform takes from the app.
    """

    name: str
    platform: str
    app: str
    dialer: Literal["platform", "app", "either"]
    subprotocol: str | None
    greets_first: Side
    start: tuple[str, ...]
    stop: str
    formats: tuple[WireFormat, ...]
    default_format: str
    format_choice: str
    ptime_ms: int
    send_rule: ChunkRule
    capabilities: Capabilities
    transport: Literal["websocket"] = "websocket"

    def roles(self) -> tuple[type, type]:
        """The (platform, app) role classes."""
        return _load(self.platform), _load(self.app)

    def format(self, name: str) -> WireFormat:
        """The format called ``name`` (the dialect's spelling), or ``KeyError``."""
        for fmt in self.formats:
            if fmt.name == name:
                return fmt
        raise KeyError(name)


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type)
    return cls
