"""The dialect registry: every dialect bridge speaks, described once, and the one
``Dialect`` protocol its roles implement.

Each dialect module starts with a ``SPEC`` (``_spec.DialectSpec``); this module lists
them. Everything that needs to know about dialects asks here instead of naming one:

* the configuration (``daemon._config``): the names a route's ``carrier`` and
  ``app.encapsulation`` may take, the codecs and rates of each, their options;
* the carrier WebSocket listener: the app role that answers a route's ``carrier``,
  whether its far side buffers, how it hangs up, what it accepts a call with;
* the app leg (``streams._wsapp``): the platform role of a route's encapsulation;
* ``bridge call`` and ``bridge echo-server``: their ``--transport``/``--encapsulation``
  choices, defaults, codecs and rates.

Adding a dialect is its module (roles, ``SPEC``, two factories) and one entry in
:data:`SPECS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from . import _asterisk_ws, _audiosocket, _exotel, _plivo, _rtp, _sln, _telnyx, _twilio, _vonage
from ._events import Event, Message
from ._spec import DialectSpec, Listener

__all__ = [
    "DEFAULT_ENCAPSULATION",
    "DEFAULT_TRANSPORT",
    "SPECS",
    "Dialect",
    "UnknownDialect",
    "accept_messages",
    "call_leg_for",
    "carriers",
    "cli_name",
    "dialect",
    "encapsulations",
    "transports",
]


class Dialect(Protocol):
    """The sans-IO connection API every dialect role implements (``_events``).

    Optional members, used where a role has them:

    * ``take_events() -> list[Event]``: events owed without a wire message (the marks a
      clear settled; ``capabilities.settles_marks``), collected after ``send()``;
    * ``accept() -> list[Message]``: what an app role sends once the platform's start
      has been taken (Asterisk's ``ANSWER`` for the ``n`` dial option);
    * ``sample_rate``: the wire rate, once known.
    """

    def receive(self, message: Message) -> list[Event]: ...

    def send(self, event: Event) -> list[Message]: ...

    def send_audio(self, pcm: bytes) -> Message: ...


SPECS: Final[tuple[DialectSpec, ...]] = (
    _sln.SPEC,
    _audiosocket.SPEC,
    _rtp.SPEC,
    _twilio.SPEC,
    _telnyx.SPEC,
    _plivo.SPEC,
    _asterisk_ws.SPEC,
    _exotel.SPEC,
    _vonage.SPEC,
)
"""Every dialect, in the order they are listed to users."""

_BY_NAME: Final[Mapping[str, DialectSpec]] = {spec.name: spec for spec in SPECS}
assert len(_BY_NAME) == len(SPECS), "two dialects share a name"


class UnknownDialect(ValueError):
    """No dialect of that name (the message lists the known ones)."""


def dialect(name: str) -> DialectSpec:
    """The dialect called ``name``; ``-`` may stand for ``_`` (``asterisk-ws``)."""
    spec = _BY_NAME.get(name) or _BY_NAME.get(name.replace("-", "_"))
    if spec is None:
        known = ", ".join(cli_name(s.name) for s in SPECS)
        raise UnknownDialect(f"unknown dialect {name!r} (known: {known})")
    return spec


def cli_name(name: str) -> str:
    """How the command line spells a dialect (``asterisk-ws``)."""
    return name.replace("_", "-")


def carriers() -> tuple[str, ...]:
    """What a websocket route's ``carrier`` may name: the dialects whose calls arrive on
    the WebSocket listener."""
    return tuple(
        s.name for s in SPECS if s.call_leg is not None and s.call_leg.listener == "websocket"
    )


def encapsulations() -> tuple[str, ...]:
    """What a route's ``app.encapsulation`` may name: the dialects bridge can speak to an
    application."""
    return tuple(s.name for s in SPECS if s.app_leg is not None)


def transports() -> tuple[str, ...]:
    """What ``bridge call --transport`` may name: every dialect with a platform role
    (toward one of bridge's call legs, or toward an app)."""
    return tuple(s.name for s in SPECS if s.call_leg is not None or s.app_leg is not None)


def call_leg_for(listener: Listener) -> DialectSpec:
    """The dialect of a listener that speaks only one (``audiosocket``, ``rtp``)."""
    found = [s for s in SPECS if s.call_leg is not None and s.call_leg.listener == listener]
    if len(found) != 1:
        raise ValueError(f"listener {listener!r} speaks {len(found)} dialects, not one")
    return found[0]


def accept_messages(role: object) -> list[Message]:
    """The messages an app role sends once the platform's start is taken (its
    ``accept()``; none for roles without one)."""
    accept = getattr(role, "accept", None)
    return list(accept()) if callable(accept) else []


DEFAULT_ENCAPSULATION: Final = encapsulations()[0]
"""The encapsulation of a route that names none: bridge's own (``sln``)."""

DEFAULT_TRANSPORT: Final = _audiosocket.SPEC.name
"""What ``bridge call`` places when no ``--transport`` is given: an AudioSocket call,
the leg with nothing to configure."""
