"""The binary app-leg encapsulations ``audiosocket`` and ``rtp`` over WebSocket.

PROTOCOLS.md §0, last paragraph: an app that prefers AudioSocket frames or RTP packets
to raw PCM gets them in BINARY WebSocket messages, and the same JSON control messages
as ``sln`` in TEXT messages. The rule on this leg is: **BINARY carries media, TEXT
carries every control message** (start, marks, clear, DTMF, stats, drained, stop,
hangup), so one control codec (``_sln``) serves all three app-leg dialects.

Each class combines a binary dialect object (``media``) with an sln one
(``control``); ``receive`` routes ``bytes`` to the first and ``str`` to the second.

bridge's side (``*WsPlatform``):

* ``Start`` gives the sln ``start`` TEXT message first (as in sln, it is the first
  message, and it is the only place the app learns the rate, ``frame_ms``, the
  metadata and ``resumed``/``replayed_ms``; its ``encoding`` names the binary codec:
  ``"L16"`` for AudioSocket slin, ``"PCMU"``/``"PCMA"``/``"L16"`` for RTP). For
  ``audiosocket`` it is followed by the AudioSocket UUID frame, so the BINARY stream is
  a well-formed AudioSocket stream that existing AudioSocket code can parse unchanged.
  AudioSocket needs a UUID: a ``stream_id`` that is not one is mapped to
  ``uuid5(STREAM_UUID_NAMESPACE, stream_id)`` (the TEXT ``start`` has the real id).
* ``Dtmf`` to the app goes as sln TEXT ``{"event":"dtmf","digit":…}`` — not as an
  AudioSocket ``0x03`` frame or an RFC 4733 train (control is TEXT; a train would need
  pacing that a WebSocket does not).
* Received BINARY is what the app may send in that protocol: AudioSocket audio and
  ``0x00`` (-> ``Hangup``), or RTP audio and RFC 4733 DTMF (-> ``Dtmf``).

The app's side (``*WsApp``) mirrors it: it requires the TEXT ``start`` before any
BINARY message, swallows the AudioSocket UUID frame (checking it matches the start's
stream id), and sends audio as BINARY and everything else as sln TEXT (``Hangup``/
``Stop`` as ``{"event":"hangup"}``).
"""

from __future__ import annotations

import uuid
from typing import Final

import attrs

from .._errors import DialectError
from ._audiosocket import AudioSocketApp, AudioSocketPlatform, audio_kind
from ._events import Audio, Event, Message, Start
from ._rtp import ENCODING_NAMES, Codec, RtpSession
from ._sln import SlnApp, SlnPlatform
from ._spec import AppParams, PlatformParams

__all__ = [
    "STREAM_UUID_NAMESPACE",
    "AudioSocketWsApp",
    "AudioSocketWsPlatform",
    "RtpWsApp",
    "RtpWsPlatform",
    "audiosocket_app",
    "audiosocket_platform",
    "rtp_app",
    "rtp_platform",
    "stream_uuid",
]

STREAM_UUID_NAMESPACE: Final = uuid.UUID("9b0f3c43-7c5e-4d39-9a43-5b1f1c0b2e61")
"""Namespace for the AudioSocket UUID of a stream id that is not a UUID."""

_AUDIOSOCKET_ENCODING: Final = "L16"  # slin: PCM16 little-endian, as sln's "L16"


def stream_uuid(stream_id: str) -> str:
    """The AudioSocket UUID for ``stream_id``: itself if it is a UUID, else a uuid5 of it."""
    try:
        return str(uuid.UUID(stream_id))
    except ValueError:
        return str(uuid.uuid5(STREAM_UUID_NAMESPACE, stream_id))


@attrs.define(slots=True, init=False)
class AudioSocketWsPlatform:
    """bridge toward an app speaking AudioSocket-over-WebSocket.

    ``AudioSocketWsPlatform(stream_id, call_id, sample_rate=8000, ptime_ms=20, *,
    max_payload_bytes=8192)``; ``sample_rate`` must be an AudioSocket rate.
    """

    control: SlnPlatform
    media: AudioSocketPlatform

    def __init__(
        self,
        stream_id: str,
        call_id: str,
        sample_rate: int = 8000,
        ptime_ms: int = 20,
        *,
        max_payload_bytes: int = 8192,
    ) -> None:
        audio_kind(sample_rate)
        self.__attrs_init__(
            control=SlnPlatform(
                stream_id, call_id, sample_rate, ptime_ms, encoding=_AUDIOSOCKET_ENCODING
            ),
            media=AudioSocketPlatform(
                stream_uuid(stream_id), sample_rate, max_payload_bytes=max_payload_bytes
            ),
        )

    @property
    def unknown_events(self) -> int:
        return self.control.unknown_events

    @property
    def first_unknown_event(self) -> str | None:
        return self.control.first_unknown_event

    def receive(self, message: Message) -> list[Event]:
        if isinstance(message, str):
            return self.control.receive(message)
        return self.media.receive(message)

    def send(self, event: Event) -> list[Message]:
        if isinstance(event, Audio):
            return self.media.send(event)
        if isinstance(event, Start):
            text = self.control.send(event)
            return [*text, *self.media.send(attrs.evolve(event, stream_id=self.media.call_uuid))]
        return self.control.send(event)

    def send_audio(self, pcm: bytes) -> bytes:
        return self.media.send_audio(pcm)


@attrs.define(slots=True, init=False)
class AudioSocketWsApp:
    """An app's side of AudioSocket-over-WebSocket: ``AudioSocketWsApp(*, max_payload_bytes=8192)``.

    The ``start`` TEXT message sets the rate of the audio it sends (``media.sample_rate``).
    """

    control: SlnApp
    media: AudioSocketApp
    _uuid: str | None

    def __init__(self, *, max_payload_bytes: int = 8192) -> None:
        self.__attrs_init__(
            control=SlnApp(encoding=_AUDIOSOCKET_ENCODING),
            media=AudioSocketApp(max_payload_bytes=max_payload_bytes),
            uuid=None,
        )

    @property
    def unknown_events(self) -> int:
        return self.control.unknown_events

    @property
    def first_unknown_event(self) -> str | None:
        return self.control.first_unknown_event

    def receive(self, message: Message) -> list[Event]:
        if isinstance(message, str):
            events = self.control.receive(message)
            if events and isinstance(events[0], Start):
                start = events[0]
                try:
                    audio_kind(start.sample_rate)
                except ValueError:
                    raise DialectError(
                        "audiosocket",
                        f"start announces {start.sample_rate} Hz, not an AudioSocket rate",
                    ) from None
                self.media.sample_rate = start.sample_rate
                self._uuid = stream_uuid(start.stream_id)
            return events
        if self._uuid is None:
            raise DialectError("audiosocket", "binary message before the start message")
        events = self.media.receive(message)
        if events and not isinstance(events[0], Audio):
            # The UUID frame repeats what start said: check it, do not report it twice.
            kept: list[Event] = []
            for event in events:
                if isinstance(event, Start):
                    if event.stream_id != self._uuid:
                        raise DialectError(
                            "audiosocket",
                            f"UUID frame {event.stream_id} does not match start ({self._uuid})",
                        )
                else:
                    kept.append(event)
            return kept
        return events

    def send(self, event: Event) -> list[Message]:
        if isinstance(event, Audio):
            return self.media.send(event)
        return self.control.send(event)

    def send_audio(self, pcm: bytes) -> bytes:
        return self.media.send_audio(pcm)


@attrs.define(slots=True, init=False)
class RtpWsPlatform:
    """bridge toward an app speaking RTP-over-WebSocket.

    ``RtpWsPlatform(stream_id, call_id, codec="pcmu", sample_rate=8000, ptime_ms=20, *,
    payload_type=None, dtmf_payload_type=101, ssrc=None, initial_seq=None,
    initial_timestamp=None)``; the RTP arguments are :class:`RtpSession`'s. Payload
    types are not announced: both sides are configured with them (defaults 0/8/96, 101).
    """

    control: SlnPlatform
    media: RtpSession

    def __init__(
        self,
        stream_id: str,
        call_id: str,
        codec: Codec = "pcmu",
        sample_rate: int = 8000,
        ptime_ms: int = 20,
        *,
        payload_type: int | None = None,
        dtmf_payload_type: int | None = 101,
        ssrc: int | None = None,
        initial_seq: int | None = None,
        initial_timestamp: int | None = None,
    ) -> None:
        media = RtpSession(
            codec,
            sample_rate,
            payload_type=payload_type,
            dtmf_payload_type=dtmf_payload_type,
            ssrc=ssrc,
            ptime_ms=ptime_ms,
            initial_seq=initial_seq,
            initial_timestamp=initial_timestamp,
        )
        self.__attrs_init__(
            control=SlnPlatform(
                stream_id, call_id, sample_rate, ptime_ms, encoding=ENCODING_NAMES[codec]
            ),
            media=media,
        )

    @property
    def unknown_events(self) -> int:
        return self.control.unknown_events

    @property
    def first_unknown_event(self) -> str | None:
        return self.control.first_unknown_event

    def receive(self, message: Message) -> list[Event]:
        if isinstance(message, str):
            return self.control.receive(message)
        return self.media.receive(message)

    def send(self, event: Event) -> list[Message]:
        if isinstance(event, Audio):
            return self.media.send(event)
        return self.control.send(event)

    def send_audio(self, pcm: bytes) -> bytes:
        return self.media.send_audio(pcm)


@attrs.define(slots=True, init=False)
class RtpWsApp:
    """An app's side of RTP-over-WebSocket: ``RtpWsApp(codec=None, sample_rate=8000,
    ptime_ms=20, *, payload_type=None, dtmf_payload_type=101, ssrc=None, ...)``.

    With a ``codec``, the ``start`` message must announce it and this rate
    (``DialectError`` otherwise). Without one (``None``), the session takes the codec
    (``PCMU``/``PCMA``/``L16``) and rate that ``start`` announces.
    """

    control: SlnApp
    _media: RtpSession | None
    _session_args: dict[str, int | None]

    def __init__(
        self,
        codec: Codec | None = None,
        sample_rate: int = 8000,
        ptime_ms: int = 20,
        *,
        payload_type: int | None = None,
        dtmf_payload_type: int | None = 101,
        ssrc: int | None = None,
        initial_seq: int | None = None,
        initial_timestamp: int | None = None,
    ) -> None:
        args: dict[str, int | None] = {
            "payload_type": payload_type,
            "dtmf_payload_type": dtmf_payload_type,
            "ssrc": ssrc,
            "ptime_ms": ptime_ms,
            "initial_seq": initial_seq,
            "initial_timestamp": initial_timestamp,
        }
        media = None if codec is None else _session(codec, sample_rate, args)
        self.__attrs_init__(
            control=SlnApp(encoding=None if codec is None else ENCODING_NAMES[codec]),
            media=media,
            session_args=args,
        )

    @property
    def media(self) -> RtpSession:
        """The RTP session (``DialectError`` before ``start`` chose its codec)."""
        if self._media is None:
            raise DialectError("rtp", "no RTP session before the start message")
        return self._media

    @property
    def unknown_events(self) -> int:
        return self.control.unknown_events

    @property
    def first_unknown_event(self) -> str | None:
        return self.control.first_unknown_event

    def receive(self, message: Message) -> list[Event]:
        if isinstance(message, str):
            events = self.control.receive(message)
            if events and isinstance(events[0], Start):
                self._started(events[0])
            return events
        if not self.control.started or self._media is None:
            raise DialectError("rtp", "binary message before the start message")
        return self._media.receive(message)

    def _started(self, start: Start) -> None:
        media = self._media
        if media is None:
            codec = _CODEC_OF.get(start.encoding.upper())
            if codec is None:
                raise DialectError("rtp", f"start announces encoding {start.encoding!r}")
            try:
                self._media = _session(codec, start.sample_rate, self._session_args)
            except ValueError as exc:
                raise DialectError("rtp", str(exc)) from None
        elif start.sample_rate != media.sample_rate:
            raise DialectError(
                "rtp",
                f"start announces {start.sample_rate} Hz, this session runs at {media.sample_rate} Hz",
            )

    def send(self, event: Event) -> list[Message]:
        if isinstance(event, Audio):
            return self.media.send(event)
        return self.control.send(event)  # Stop goes out as hangup (SlnApp.send)

    def send_audio(self, pcm: bytes) -> bytes:
        return self.media.send_audio(pcm)


_CODEC_OF: Final[dict[str, Codec]] = {"PCMU": "pcmu", "PCMA": "pcma", "L16": "l16"}
"""An encapsulation's start ``encoding`` (``ENCODING_NAMES``) -> the RTP codec."""
assert all(_CODEC_OF[name] == codec for codec, name in ENCODING_NAMES.items())


def _session(codec: Codec, sample_rate: int, args: dict[str, int | None]) -> RtpSession:
    ptime = args["ptime_ms"]
    return RtpSession(
        codec,
        sample_rate,
        payload_type=args["payload_type"],
        dtmf_payload_type=args["dtmf_payload_type"],
        ssrc=args["ssrc"],
        ptime_ms=20 if ptime is None else ptime,
        initial_seq=args["initial_seq"],
        initial_timestamp=args["initial_timestamp"],
    )


# ------------------------------------------------------------------------ factories
# The registry builds the WebSocket roles of ``audiosocket`` and ``rtp`` with these
# (their SPECs are in ``_audiosocket`` and ``_rtp``; the classes are here).


def audiosocket_platform(params: PlatformParams) -> AudioSocketWsPlatform:
    return AudioSocketWsPlatform(
        params.stream_id, params.call_id, params.sample_rate, params.ptime_ms
    )


def audiosocket_app(params: AppParams) -> AudioSocketWsApp:
    return AudioSocketWsApp()


def rtp_platform(params: PlatformParams) -> RtpWsPlatform:
    codec = _CODEC_OF[params.codec.upper()]
    return RtpWsPlatform(params.stream_id, params.call_id, codec, params.sample_rate, params.ptime_ms)


def rtp_app(params: AppParams) -> RtpWsApp:
    codec = _CODEC_OF.get(params.codec.upper()) if params.codec else None
    return RtpWsApp(codec)
