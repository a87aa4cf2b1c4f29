"""Per-frame cost of the carrier dialects (Twilio, Telnyx, Plivo) on the media path.

One case = one 20 ms frame: ``send_audio(pcm)`` (PCM16LE -> codec -> base64 -> JSON text)
or ``receive(media message)`` (JSON -> Struct -> base64 -> codec -> ``Audio``), for each
role bridge uses: the app role on the call leg, the platform role on the app leg and in
``bridge call``. Decode cases replay pre-built messages with increasing chunk numbers (the
Telnyx app role reorders by them), starting a fresh connection when the list runs out; the
"replay overhead" row is that harness alone, included in every decode row.

The second table compares ways of encoding the per-frame Twilio ``media`` message: the
string template the dialects use against msgspec encoding a Struct or a dict.

Run: ``python bench/bench_dialects_carriers.py [--quick]``.
"""

from __future__ import annotations

import argparse
import binascii
import os
import sys
from collections.abc import Callable, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import msgspec

from bench._harness import Case, print_table, run_cases
from bridge.dialects._carrier import json_str
from bridge.dialects._events import Event, Message, Start
from bridge.dialects._plivo import PlivoApp, PlivoPlatform
from bridge.dialects._telnyx import TelnyxApp, TelnyxPlatform
from bridge.dialects._twilio import TwilioApp, TwilioPlatform
from bridge.media import frame_bytes

_REPLAY = 20_000
SID = "MZ" + "0123456789abcdef" * 2
CALL = "CA" + "0123456789abcdef" * 2
ACCOUNT = "AC" + "0123456789abcdef" * 2


def _pcm(rate: int) -> bytes:
    """One 20 ms frame of a not-quite-silent signal (G.711 tables are flat-cost anyway)."""
    n = frame_bytes(rate) // 2
    return b"".join(((i * 37) % 2000 - 1000).to_bytes(2, "little", signed=True) for i in range(n))


class _Replay:
    """Feed pre-built messages to a receiver, one per call; a fresh receiver per pass."""

    def __init__(
        self, make: Callable[[], Callable[[Message], list[Event]]], messages: Sequence[str]
    ):
        self._make = make
        self._messages = messages
        self._receive = make()
        self._i = 0

    def __call__(self) -> list[Event]:
        i = self._i
        if i == len(self._messages):
            self._receive = self._make()
            i = 0
        self._i = i + 1
        return self._receive(self._messages[i])


def _started(
    app: TwilioApp | TelnyxApp | PlivoApp, start: Message
) -> Callable[[Message], list[Event]]:
    app.receive(start)
    return app.receive


def _twilio() -> list[Case]:
    pcm = _pcm(8000)
    platform = TwilioPlatform(SID, CALL, ACCOUNT)
    [start] = platform.send(Start(SID, CALL))
    inbound = [platform.send_audio(pcm) for _ in range(_REPLAY)]
    app = TwilioApp()
    app.receive(start)
    outbound = [app.send_audio(pcm)] * _REPLAY
    return [
        (
            "twilio app     decode (media -> Audio)",
            _Replay(lambda: _started(TwilioApp(), start), inbound),
        ),
        ("twilio app     encode (send_audio)", lambda: app.send_audio(pcm)),
        ("twilio platform encode (send_audio)", lambda: platform.send_audio(pcm)),
        (
            "twilio platform decode (media -> Audio)",
            _Replay(lambda: TwilioPlatform(SID, CALL, ACCOUNT).receive, outbound),
        ),
    ]


def _telnyx(codec: str, rate: int) -> list[Case]:
    pcm = _pcm(rate)
    tag = f"telnyx {codec}/{rate // 1000}k"
    platform = TelnyxPlatform(SID, CALL, codec, rate)
    [start] = platform.send(Start(SID, CALL))
    inbound = [platform.send_audio(pcm) for _ in range(_REPLAY)]
    app = TelnyxApp()
    app.receive(start)
    outbound = [app.send_audio(pcm)] * _REPLAY
    return [
        (f"{tag} app      decode", _Replay(lambda: _started(TelnyxApp(), start), inbound)),
        (f"{tag} app      encode", lambda: app.send_audio(pcm)),
        (f"{tag} platform encode", lambda: platform.send_audio(pcm)),
        (
            f"{tag} platform decode",
            _Replay(lambda: TelnyxPlatform(SID, CALL, codec, rate).receive, outbound),
        ),
    ]


def _plivo(content_type: str) -> list[Case]:
    rate = int(content_type.rsplit("=", 1)[1])
    pcm = _pcm(rate)
    tag = "plivo " + content_type.split("/")[1].replace(";rate=", "/")[2:]
    platform = PlivoPlatform(SID, CALL, ACCOUNT, content_type, "k=v")
    [start] = platform.send(Start(SID, CALL))
    inbound = [platform.send_audio(pcm) for _ in range(_REPLAY)]
    app = PlivoApp()
    app.receive(start)
    outbound = [app.send_audio(pcm)] * _REPLAY
    return [
        (f"{tag} app      decode", _Replay(lambda: _started(PlivoApp(), start), inbound)),
        (f"{tag} app      encode", lambda: app.send_audio(pcm)),
        (f"{tag} platform encode", lambda: platform.send_audio(pcm)),
        (
            f"{tag} platform decode",
            _Replay(lambda: PlivoPlatform(SID, CALL, ACCOUNT, content_type).receive, outbound),
        ),
    ]


def _replay_overhead() -> Case:
    messages = ["x"] * _REPLAY
    return ("replay overhead (in every decode row)", _Replay(lambda: lambda m: [], messages))


CASES: list[Case] = [
    _replay_overhead(),
    *_twilio(),
    *_telnyx("PCMU", 8000),
    *_telnyx("L16", 16000),
    *_plivo("audio/x-mulaw;rate=8000"),
    *_plivo("audio/x-l16;rate=8000"),
    *_plivo("audio/x-l16;rate=16000"),
]


# --------------------------------------------------------------------------- encoder comparison


class _Payload(msgspec.Struct):
    payload: str


class _OutMedia(msgspec.Struct, tag_field="event", tag="media"):
    streamSid: str
    media: _Payload


def _compare() -> list[Case]:
    from bridge.media import audioop

    pcm = _pcm(8000)
    app = TwilioApp()
    app.receive(TwilioPlatform(SID, CALL, ACCOUNT).send(Start(SID, CALL))[0])
    encode = msgspec.json.Encoder().encode
    prefix = '{"event":"media","streamSid":' + json_str(SID) + ',"media":{"payload":"'

    def b64encode(data: bytes) -> str:
        return binascii.b2a_base64(data, newline=False).decode("ascii")

    def template() -> str:
        return prefix + b64encode(audioop.lin2ulaw(pcm, 2)) + '"}}'

    def struct() -> str:
        payload = b64encode(audioop.lin2ulaw(pcm, 2))
        return encode(_OutMedia(SID, _Payload(payload))).decode()

    def mapping() -> str:
        payload = b64encode(audioop.lin2ulaw(pcm, 2))
        return encode({"event": "media", "streamSid": SID, "media": {"payload": payload}}).decode()

    return [
        ("TwilioApp.send_audio (as shipped)", lambda: app.send_audio(pcm)),
        ("string template", template),
        ("msgspec Encoder, Struct", struct),
        ("msgspec Encoder, dict", mapping),
        ("codec + base64 only", lambda: b64encode(audioop.lin2ulaw(pcm, 2))),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing runs")
    args = parser.parse_args(argv)
    print_table("carrier dialects, one 20 ms frame", run_cases(CASES, quick=args.quick))
    compare = _compare()
    print_table(
        "Twilio media message encoders (µ-law + base64 + JSON)",
        run_cases(compare, quick=args.quick),
    )


if __name__ == "__main__":
    main()
