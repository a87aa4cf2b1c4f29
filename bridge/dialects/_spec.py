"""What a dialect is, described once: the ``SPEC`` object at the top of a dialect module.

The dialect registry (``_registry``) lists every ``SPEC``; the listeners, the app leg,
the configuration, ``bridge call`` and ``bridge echo-server`` read what they need from
it instead of naming dialects. Each field says one thing the wiring needs; the module
docstring of the dialect says where each fact comes from.

A dialect is carried on its *native* transport (``transport``: a WebSocket for the
carriers and ``sln``, TCP for AudioSocket, UDP for RTP) and, when it can be spoken to an
application, over a WebSocket app leg (``app_leg``; AudioSocket and RTP then travel in
BINARY messages beside ``sln``'s TEXT control, ``_encapsulated``). ``call_leg`` says how
bridge answers calls of the dialect, ``app_leg`` how it speaks it to an application.
Roles on a WebSocket are built by the module's factories (``make_platform``,
``make_app``), given a :class:`PlatformParams` or :class:`AppParams`.

Pure data: frozen attrs objects; the only behaviour is looking things up in them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

__all__ = [
    "AppLeg",
    "AppParams",
    "CallLeg",
    "Capabilities",
    "ChunkRule",
    "DialectSpec",
    "FormatError",
    "Listener",
    "Option",
    "OptionError",
    "OptionValue",
    "PlatformParams",
    "Transport",
    "WireFormat",
    "config_codec",
]

Side = Literal["platform", "app", "none"]
Transport = Literal["websocket", "tcp", "udp"]
Listener = Literal["websocket", "audiosocket", "rtp"]
OptionValue = str | int | bool


def config_codec(codec: str) -> str:
    """The configuration's name for a ``bridge.media`` codec: ``pcmu``, ``pcma`` or ``l16``
    (the byte order of L16 is the wire's, never the configuration's)."""
    return "l16" if codec.startswith("l16") else codec


@attrs.frozen(slots=True)
class WireFormat:
    """One audio format the wire can carry.

    ``name`` is the dialect's own spelling (``"slin16"``, ``"audio/l16;rate=16000"``);
    ``codec`` is the ``bridge.media`` codec name (``"pcmu"``, ``"pcma"``, ``"l16le"``).
    """

    name: str
    codec: str
    sample_rate: int

    @property
    def config_codec(self) -> str:
        """``pcmu``, ``pcma`` or ``l16``: what a route's ``codec`` calls this format."""
        return config_codec(self.codec)


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

    A call leg sends each 20 ms frame with the fast path ``send_audio`` when
    :attr:`any_size` (the far side takes whatever it gets), and with ``send(Audio)``
    otherwise, which cuts, carries over and gathers as the rule requires.
    """

    frames: Literal["one", "whole", "any"]
    multiple_of_bytes: int = 1
    min_bytes: int = 0
    max_bytes: int | None = None
    accumulates: bool = False

    @property
    def any_size(self) -> bool:
        return self.frames == "any" and not self.accumulates and self.multiple_of_bytes <= 2


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
    platform can report its queue running out / its queue depth. ``resume``: a re-dial
    that carries the same call and stream ids can be attached to the stream it left
    within the route's ``reconnect_window`` (whether the platform ever re-dials is its
    own matter: Plivo does, Twilio does not); ids that are unique per connection make
    it meaningless.
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


def _no_check(value: OptionValue) -> None:
    return None


@attrs.frozen(slots=True)
class Option:
    """One route key a dialect takes, as ``carrier_options`` (its call leg) or
    ``app.options`` (its app leg) in the configuration.

    ``kind`` is the TOML type; ``choices`` (if any) the allowed values; ``check`` raises
    ``ValueError`` with a message for a value that is of the kind but not allowed.
    """

    name: str
    kind: type[str] | type[int] | type[bool]
    default: OptionValue
    doc: str
    choices: tuple[OptionValue, ...] = ()
    check: Callable[[OptionValue], None] = _no_check

    def validate(self, value: object) -> OptionValue:
        """``value`` if allowed, else ``ValueError`` saying why."""
        # bool is an int subclass: a TOML true is not a number, and 1 is not a flag.
        if type(value) is not self.kind:
            raise ValueError(f"must be a {self.kind.__name__}, got {value!r}")
        assert isinstance(value, str | int | bool)
        if self.choices and value not in self.choices:
            allowed = ", ".join(repr(c) for c in self.choices)
            raise ValueError(f"must be one of {allowed}, got {value!r}")
        self.check(value)
        return value


def _options(
    options: tuple[Option, ...], given: Mapping[str, object], where: str
) -> dict[str, OptionValue]:
    known = {o.name: o for o in options}
    out: dict[str, OptionValue] = {o.name: o.default for o in options}
    for name, value in given.items():
        option = known.get(name)
        if option is None:
            allowed = ", ".join(known)
            hint = f"; allowed keys: {allowed}" if allowed else f" (none are allowed {where})"
            raise OptionError(name, f"unknown key {name!r}{hint}")
        try:
            out[name] = option.validate(value)
        except ValueError as exc:
            raise OptionError(name, str(exc)) from None
    return out


class OptionError(ValueError):
    """An option that is unknown or not allowed: ``name`` says which."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


@attrs.frozen(slots=True)
class CallLeg:
    """How bridge answers calls of the dialect: it plays the app role.

    ``listener``: where the calls arrive (``websocket``: the carrier WebSocket listener,
    routed by a route's ``carrier``; ``audiosocket``/``rtp``: their own listeners).
    ``far_side_buffers``: the platform keeps its own playout queue (carriers,
    ``chan_websocket``): bridge sends ahead and lets it echo marks, instead of pacing to
    the wire and echoing marks itself. ``hangup_on_close``: when the app or bridge ends
    the call, the dialect's ``send(Hangup())`` goes out before the close (AudioSocket
    ``00 00 00``, Asterisk ``HANGUP``); otherwise closing the socket is the way.
    ``path``: the conventional route path (``default.toml``, ``bridge call``'s default
    target). ``signs_handshake``: the platform signs its upgrade request the way Twilio
    does (``auth.twilio_auth_token``). ``options``: the route's ``carrier_options``.
    """

    listener: Listener
    far_side_buffers: bool
    hangup_on_close: bool
    path: str = ""
    signs_handshake: bool = False
    options: tuple[Option, ...] = ()

    def resolve_options(self, given: Mapping[str, object]) -> dict[str, OptionValue]:
        """Every option with its value (``given`` over the defaults); ``OptionError``."""
        return _options(self.options, given, "in carrier_options")


@attrs.frozen(slots=True)
class AppLeg:
    """How the dialect is spoken to an application over a WebSocket: bridge plays the
    platform role (the app leg; ``bridge call`` plays it toward bridge's call legs).

    ``default_codec``: what a route's empty ``app.codec`` means (``pcmu``, ``pcma`` or
    ``l16``); the formats a route may choose are the spec's ``formats``.
    ``options``: the route's ``app.options``.
    """

    default_codec: str
    options: tuple[Option, ...] = ()

    def resolve_options(self, given: Mapping[str, object]) -> dict[str, OptionValue]:
        return _options(self.options, given, "in app.options")


def _mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


@attrs.frozen(slots=True)
class PlatformParams:
    """What a platform-role factory is given (``DialectSpec.platform_role``).

    ``stream_id``/``call_id``: bridge's ids of the stream and the call; a dialect whose
    ids have a shape of their own (Twilio's ``MZ…``/``CA…``) derives them from these.
    ``codec`` is a configuration codec name (``pcmu``, ``pcma``, ``l16``) and, with
    ``sample_rate``, names one of the spec's formats (``""``: the app leg's default).
    ``options``: the route's ``app.options`` with every default filled in.
    ``wall_clock_ms``: Unix time in ms at the start of the stream, for dialects whose
    timestamps are wall-clock time (sans-IO code has no clock of its own). ``route``:
    the route's name, for ids that are the same for every call of a route.
    """

    stream_id: str
    call_id: str
    sample_rate: int = 8000
    codec: str = ""
    ptime_ms: int = 20
    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    wall_clock_ms: int = 0
    route: str = ""


@attrs.frozen(slots=True)
class AppParams:
    """What an app-role factory is given (``DialectSpec.app_role``).

    ``options``: the route's ``carrier_options``, defaults filled in. ``query`` and
    ``headers`` (lower-case names): the upgrade request the platform sent, when it
    dialled bridge. ``call_id``: a call id for wires that carry none of their own.
    ``codec``/``sample_rate``: what an emulated application answers in (``bridge
    echo-server --codec``; ``""``/0: as received).
    """

    options: Mapping[str, Any] = attrs.field(factory=dict, converter=_mapping)
    query: Mapping[str, str] = attrs.field(factory=dict, converter=_mapping)
    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_mapping)
    call_id: str = ""
    codec: str = ""
    sample_rate: int = 0


@attrs.frozen(slots=True)
class DialectSpec:
    """One dialect, both roles, as the wiring needs to know it.

    ``platform`` / ``app``: the role classes on the native transport as
    ``"module:Class"`` (so that ``SPEC`` can stand at the top of its module, before the
    classes; :meth:`roles` imports them). ``dialer``: who opens the connection
    (``"either"``: both setups exist). ``subprotocol``: the ``Sec-WebSocket-Protocol``
    value, if any. ``greets_first``: who sends the first message; ``start``: the
    messages from the first to the one that gives ``Start``; ``stop``: how each side
    ends the stream. ``formats``: every format the dialect accepts; ``default_format``:
    the ``WireFormat.name`` used when nothing is configured; ``format_choice``: who
    picks the format and how it is announced. ``ptime_ms``: the audio per message the
    platform sends. ``send_rule``: the sizes the platform takes from the app.
    ``transport``: the native transport. ``call_leg``/``app_leg``: see :class:`CallLeg`
    and :class:`AppLeg` (``None``: not used that way). ``make_platform``/``make_app``:
    the factories of the roles over a WebSocket, ``"module:function"`` taking
    :class:`PlatformParams` / :class:`AppParams`. ``make_native_platform``: the
    platform role on a native transport that is not a WebSocket (``bridge call`` over
    TCP or UDP).
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
    transport: Transport = "websocket"
    call_leg: CallLeg | None = None
    app_leg: AppLeg | None = None
    make_platform: str = ""
    make_app: str = ""
    make_native_platform: str = ""

    def roles(self) -> tuple[type, type]:
        """The (platform, app) role classes."""
        return _load(self.platform), _load(self.app)

    def format(self, name: str) -> WireFormat:
        """The format called ``name`` (the dialect's spelling), or ``KeyError``."""
        for fmt in self.formats:
            if fmt.name == name:
                return fmt
        raise KeyError(name)

    # ------------------------------------------------------------------ formats

    def codecs(self) -> tuple[str, ...]:
        """The configuration codec names this dialect carries, in ``formats`` order."""
        return tuple(dict.fromkeys(f.config_codec for f in self.formats))

    def rates(self, codec: str | None = None) -> tuple[int, ...]:
        """The sample rates of ``codec`` (a configuration name), or of any codec."""
        return tuple(
            dict.fromkeys(
                f.sample_rate for f in self.formats if codec is None or f.config_codec == codec
            )
        )

    def default_codec(self) -> str:
        if self.app_leg is not None:
            return self.app_leg.default_codec
        return self.format(self.default_format).config_codec

    def resolve_format(self, codec: str, sample_rate: int) -> WireFormat:
        """The format for a configuration ``codec`` (``""``: the default) at ``sample_rate``.

        ``FormatError`` says which of the two is wrong and what would do: ``field``
        is ``"codec"`` when the dialect carries another codec at this rate (or not this
        codec at all), ``"sample_rate"`` when nothing it carries runs at this rate.
        """
        wanted = codec or self.default_codec()
        codecs = self.codecs()
        if wanted not in codecs:
            raise FormatError(
                "codec",
                f"{self.name} carries {_either(codecs)}, not {wanted!r}",
            )
        for fmt in self.formats:
            if fmt.config_codec == wanted and fmt.sample_rate == sample_rate:
                return fmt
        rates = self.rates(wanted)
        others = [c for c in codecs if sample_rate in self.rates(c)]
        if not others:
            raise FormatError(
                "sample_rate",
                f"{self.name} runs at {_rates(self.rates())} Hz, not {sample_rate}",
            )
        return_hint = f'; use codec = "{others[0]}" for {sample_rate} Hz'
        raise FormatError(
            "codec",
            f"{wanted} on {self.name} runs at {_rates(rates)} Hz, not {sample_rate}"
            + return_hint,
        )

    # ------------------------------------------------------------------ roles

    def platform_role(self, params: PlatformParams) -> Any:
        """A fresh platform role over a WebSocket (options and codec resolved)."""
        if self.app_leg is None or not self.make_platform:
            raise ValueError(f"{self.name} has no platform role over a WebSocket")
        fmt = self.resolve_format(params.codec, params.sample_rate)
        options = self.app_leg.resolve_options(params.options)
        params = attrs.evolve(params, codec=fmt.config_codec, options=options)
        return _load_function(self.make_platform)(params)

    def native_platform_role(self, params: PlatformParams) -> Any:
        """A fresh platform role on the dialect's native transport (``bridge call``):
        :meth:`platform_role` for WebSocket dialects, ``make_native_platform`` else."""
        if self.transport == "websocket":
            return self.platform_role(params)
        fmt = self.resolve_format(params.codec, params.sample_rate)
        params = attrs.evolve(params, codec=fmt.config_codec)
        return _load_function(self.make_native_platform)(params)

    def app_role(self, params: AppParams | None = None) -> Any:
        """A fresh app role over a WebSocket (options resolved)."""
        if not self.make_app:
            raise ValueError(f"{self.name} has no app role over a WebSocket")
        params = params or AppParams()
        if self.call_leg is not None:
            params = attrs.evolve(params, options=self.call_leg.resolve_options(params.options))
        return _load_function(self.make_app)(params)


class FormatError(ValueError):
    """No format of the dialect fits: ``field`` is ``"codec"`` or ``"sample_rate"``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _either(values: tuple[str, ...]) -> str:
    quoted = [f'"{v}"' for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _rates(rates: tuple[int, ...]) -> str:
    return "/".join(str(r) for r in rates)


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(cls, type)
    return cls


_FUNCTIONS: dict[str, Callable[[Any], Any]] = {}


def _load_function(path: str) -> Callable[[Any], Any]:
    fn = _FUNCTIONS.get(path)
    if fn is None:
        module, _, name = path.partition(":")
        fn = getattr(importlib.import_module(module), name)
        assert callable(fn)
        _FUNCTIONS[path] = fn
    return fn
