"""Payload codecs: G.711 µ-law/A-law and 16-bit linear in either byte order.

Every codec converts between its wire payload and bridge's one internal format, PCM16
mono little-endian (see ``Frame``). The work is done by the C functions of ``audioop``
(1.3 µs per 20 ms µ-law encode + decode on the project VM; a pure-Python table lookup is
15-70 times slower, see PERFORMANCE.md).

Byte order is an explicit property of the codec, never a guess (PROTOCOLS.md "Design
implications" 1): RTP L16 is big-endian (RFC 3551 §4.5.11, network byte order), while
AudioSocket, Vonage, Exotel, jambonz and bridge's own ``sln`` carry little-endian PCM.
``audioop.byteswap`` is the conversion. The G.711 functions take and return samples in
native order; bridge only supports little-endian hosts (x86-64, aarch64), so native is
little-endian.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ._audioop import audioop

__all__ = ["L16_BE", "L16_LE", "PCMA", "PCMU", "Codec", "codec_for"]

_SAMPLE_WIDTH = 2  # bytes per PCM16 sample


def _odd(what: str, n: int) -> ValueError:
    return ValueError(f"{what}: {n} bytes is not a whole number of 16-bit samples")


# The wrappers below turn ``audioop.error`` (which is not a ValueError) into ValueError.
# try/except costs nothing on the success path in 3.11 ("zero-cost" exceptions), so the
# hot path is one Python call around one C call.


def _ulaw_encode(pcm: bytes) -> bytes:
    try:
        return audioop.lin2ulaw(pcm, _SAMPLE_WIDTH)
    except audioop.error:
        raise _odd("pcmu encode", len(pcm)) from None


def _ulaw_decode(payload: bytes) -> bytes:
    return audioop.ulaw2lin(payload, _SAMPLE_WIDTH)


def _alaw_encode(pcm: bytes) -> bytes:
    try:
        return audioop.lin2alaw(pcm, _SAMPLE_WIDTH)
    except audioop.error:
        raise _odd("pcma encode", len(pcm)) from None


def _alaw_decode(payload: bytes) -> bytes:
    return audioop.alaw2lin(payload, _SAMPLE_WIDTH)


def _swap16(pcm: bytes) -> bytes:
    # The same operation converts in both directions (BE <-> LE).
    try:
        return audioop.byteswap(pcm, _SAMPLE_WIDTH)
    except audioop.error:
        raise _odd("l16be", len(pcm)) from None


def _passthrough(pcm: bytes) -> bytes:
    # Little-endian L16 is already the internal format: return the very same object.
    if len(pcm) & 1:
        raise _odd("l16le", len(pcm))
    return pcm


def _identity(pcm: bytes) -> bytes:
    return pcm


def _passthrough_raw(pcm: bytes, width: int) -> bytes:
    if len(pcm) % width:
        raise audioop.error("not a whole number of frames")
    return pcm


@attrs.frozen(slots=True)
class Codec:
    """One payload format. ``encode``/``decode`` are plain functions stored as fields.

    ``encode(pcm)`` takes PCM16 little-endian and returns the payload; ``decode(payload)``
    returns PCM16 little-endian. A PCM16 argument of odd length raises ``ValueError``;
    G.711 payloads are one byte per sample, so any length decodes.

    For per-frame paths that check lengths themselves (the dialects do, and raise their
    own errors): ``raw_encode(pcm, 2)`` is the ``audioop`` function under ``encode``
    itself (raises ``audioop.error`` on a torn sample), one Python call less per frame
    (about 40 ns on the project VM, measured with RTP); ``encode_whole``/``decode_whole``
    are ``encode``/``decode`` for input already known to be whole samples: the same
    functions, except for little-endian L16, where they skip the check and are the
    identity (about 25 ns per frame, measured with Asterisk slin16).
    """

    name: str
    encode: Callable[[bytes], bytes] = attrs.field(repr=False)
    decode: Callable[[bytes], bytes] = attrs.field(repr=False)
    bytes_per_sample: int
    raw_encode: Callable[[bytes, int], bytes] = attrs.field(repr=False, kw_only=True)
    encode_whole: Callable[[bytes], bytes] = attrs.field(
        repr=False,
        kw_only=True,
        default=attrs.Factory(lambda self: self.encode, takes_self=True),
    )
    decode_whole: Callable[[bytes], bytes] = attrs.field(
        repr=False,
        kw_only=True,
        default=attrs.Factory(lambda self: self.decode, takes_self=True),
    )

    def payload_bytes(self, samples: int) -> int:
        """Payload size of ``samples`` samples (160 samples of PCMU -> 160 bytes)."""
        return samples * self.bytes_per_sample

    def payload_samples(self, payload_bytes: int) -> int:
        """Samples in a payload of ``payload_bytes`` bytes (the RTP timestamp increment)."""
        return payload_bytes // self.bytes_per_sample


PCMU = Codec("pcmu", _ulaw_encode, _ulaw_decode, 1, raw_encode=audioop.lin2ulaw)
"""G.711 µ-law (RTP static payload type 0, RFC 3551 §4.5.14)."""

PCMA = Codec("pcma", _alaw_encode, _alaw_decode, 1, raw_encode=audioop.lin2alaw)
"""G.711 A-law (RTP static payload type 8, RFC 3551 §4.5.14)."""

L16_BE = Codec("l16be", _swap16, _swap16, 2, raw_encode=audioop.byteswap)
"""16-bit linear, big-endian: RTP L16 (RFC 3551 §4.5.11), Telnyx L16."""

L16_LE = Codec(
    "l16le",
    _passthrough,
    _passthrough,
    2,
    raw_encode=_passthrough_raw,
    encode_whole=_identity,
    decode_whole=_identity,
)
"""16-bit linear, little-endian: AudioSocket/Asterisk slin, Vonage, Exotel, ``sln``."""

_BY_NAME: dict[str, Codec] = {
    "pcmu": PCMU,
    "ulaw": PCMU,
    "mulaw": PCMU,
    "pcma": PCMA,
    "alaw": PCMA,
    # Bare "L16" means what RFC 3551 means: network byte order.
    "l16": L16_BE,
    "l16be": L16_BE,
    "l16le": L16_LE,
    "slin": L16_LE,
}


def codec_for(name: str) -> Codec:
    """The codec called ``name`` (case-insensitive).

    ``pcmu`` (``ulaw``, ``mulaw``), ``pcma`` (``alaw``), ``l16`` = ``l16be`` (RFC 3551
    big-endian), ``l16le`` = ``slin`` (little-endian). Anything else raises ValueError.
    """
    try:
        return _BY_NAME[name.lower()]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise ValueError(f"unknown codec {name!r} (known: {known})") from None
