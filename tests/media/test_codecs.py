"""G.711 and L16 codecs: bit-exact over every input, byte order, names, errors."""

from __future__ import annotations

import array
import itertools
import sys

import pytest

from bridge.media import L16_BE, L16_LE, PCMA, PCMU, Codec, audioop, codec_for

ALL_SAMPLES = array.array("h", range(-32768, 32768)).tobytes()
ALL_CODES = bytes(range(256))


# An independent pure-Python transcription of the classic CCITT/Sun reference G.711
# coder (g711.c), which is the algorithm ITU-T G.711 tabulates. audioop feeds it the
# 16-bit sample shifted down to 14 bits (µ-law) or 13 bits (A-law).
_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)


def _segment(value: int, table: tuple[int, ...]) -> int:
    for i, end in enumerate(table):
        if value <= end:
            return i
    return len(table)


def ref_ulaw_encode(sample: int) -> int:
    pcm = sample >> 2  # 14-bit, arithmetic shift
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 8159) + (0x84 >> 2)  # clip, add the bias
    seg = _segment(pcm, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask


def ref_ulaw_decode(code: int) -> int:
    code = ~code & 0xFF
    t = (((code & 0x0F) << 3) + 0x84) << ((code & 0x70) >> 4)
    return 0x84 - t if code & 0x80 else t - 0x84


def ref_alaw_encode(sample: int) -> int:
    pcm = sample >> 3  # 13-bit
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    seg = _segment(pcm, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    aval = seg << 4
    aval |= (pcm >> 1 if seg < 2 else pcm >> seg) & 0x0F
    return aval ^ mask


def ref_alaw_decode(code: int) -> int:
    code ^= 0x55
    t = (code & 0x0F) << 4
    seg = (code & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if code & 0x80 else -t


def samples(pcm: bytes) -> list[int]:
    return array.array("h", pcm).tolist()


@pytest.mark.parametrize(
    ("codec", "ref_encode", "ref_decode", "lin2x", "x2lin"),
    [
        (PCMU, ref_ulaw_encode, ref_ulaw_decode, audioop.lin2ulaw, audioop.ulaw2lin),
        (PCMA, ref_alaw_encode, ref_alaw_decode, audioop.lin2alaw, audioop.alaw2lin),
    ],
    ids=["pcmu", "pcma"],
)
class TestG711:
    def test_encode_every_sample_matches_audioop_and_reference(
        self, codec: Codec, ref_encode, ref_decode, lin2x, x2lin
    ) -> None:
        encoded = codec.encode(ALL_SAMPLES)
        assert len(encoded) == 65536
        assert encoded == lin2x(ALL_SAMPLES, 2)
        assert encoded == bytes(ref_encode(s) for s in range(-32768, 32768))

    def test_decode_every_code_matches_audioop_and_reference(
        self, codec: Codec, ref_encode, ref_decode, lin2x, x2lin
    ) -> None:
        decoded = codec.decode(ALL_CODES)
        assert decoded == x2lin(ALL_CODES, 2)
        assert samples(decoded) == [ref_decode(c) for c in range(256)]

    def test_codes_round_trip(self, codec: Codec, ref_encode, ref_decode, lin2x, x2lin) -> None:
        # G.711 decodes each code to a value inside its own quantisation interval, so
        # re-encoding gives the code back; µ-law's "negative zero" 0x7F is the one
        # code that decodes to 0, which encodes as +0 (0xFF).
        again = codec.encode(codec.decode(ALL_CODES))
        expected = bytearray(ALL_CODES)
        if codec is PCMU:
            expected[0x7F] = 0xFF
        assert again == bytes(expected)

    def test_quantisation_error_bounded_and_monotonic(
        self, codec: Codec, ref_encode, ref_decode, lin2x, x2lin
    ) -> None:
        decoded = samples(codec.decode(codec.encode(ALL_SAMPLES)))
        # Monotonic: a larger input never decodes to a smaller value.
        assert all(a <= b for a, b in itertools.pairwise(decoded))
        top = max(decoded)
        assert min(decoded) == -top  # the code set is symmetric
        for x, y in zip(range(-32768, 32768), decoded, strict=True):
            if abs(x) <= top:
                # G.711 has 16 steps per segment and each segment doubles the range, so
                # the step is at most 1/16 of the value (half-step 1/32), plus 8 near zero
                # (half of A-law's smallest step of 16 in 16-bit units; µ-law's is 8).
                assert abs(x - y) <= abs(x) / 32 + 8, (x, y)
            else:
                assert y == (top if x > 0 else -top)  # beyond full scale: clipped

    def test_sizes(self, codec: Codec, ref_encode, ref_decode, lin2x, x2lin) -> None:
        assert codec.bytes_per_sample == 1
        assert codec.payload_bytes(160) == 160
        assert codec.payload_samples(160) == 160
        assert len(codec.encode(bytes(320))) == 160
        assert len(codec.decode(bytes(160))) == 320

    def test_odd_pcm_rejected(self, codec: Codec, ref_encode, ref_decode, lin2x, x2lin) -> None:
        with pytest.raises(ValueError, match="16-bit"):
            codec.encode(b"\x00\x01\x02")
        # A G.711 payload is one byte per sample: any length decodes.
        assert len(codec.decode(b"\x00\x01\x02")) == 6


def test_l16_be_is_network_byte_order() -> None:
    pcm = array.array("h", [1, -2, 0x1234, -32768, 32767])
    assert sys.byteorder == "little"  # bridge's internal PCM16 is little-endian
    big = L16_BE.encode(pcm.tobytes())
    assert big == b"".join(v.to_bytes(2, "big", signed=True) for v in pcm)
    assert L16_BE.decode(big) == pcm.tobytes()


def test_l16_be_round_trip_every_sample() -> None:
    wire = L16_BE.encode(ALL_SAMPLES)
    assert wire != ALL_SAMPLES
    assert wire[:4] == (-32768).to_bytes(2, "big", signed=True) + (-32767).to_bytes(
        2, "big", signed=True
    )
    assert L16_BE.decode(wire) == ALL_SAMPLES


def test_l16_le_is_passthrough_without_copy() -> None:
    pcm = bytes(range(200)) * 2
    assert L16_LE.encode(pcm) is pcm
    assert L16_LE.decode(pcm) is pcm
    assert L16_LE.payload_bytes(160) == 320
    assert L16_LE.payload_samples(320) == 160


@pytest.mark.parametrize("codec", [L16_BE, L16_LE])
def test_l16_odd_length_rejected(codec: Codec) -> None:
    with pytest.raises(ValueError, match="16-bit"):
        codec.encode(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="16-bit"):
        codec.decode(b"\x00")


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("pcmu", PCMU),
        ("PCMU", PCMU),
        ("ulaw", PCMU),
        ("pcma", PCMA),
        ("alaw", PCMA),
        ("l16", L16_BE),
        ("L16", L16_BE),
        ("l16be", L16_BE),
        ("l16le", L16_LE),
        ("slin", L16_LE),
    ],
)
def test_codec_for(name: str, codec: Codec) -> None:
    assert codec_for(name) is codec


def test_codec_for_unknown() -> None:
    with pytest.raises(ValueError, match="g722"):
        codec_for("g722")


def test_codec_is_frozen() -> None:
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        PCMU.name = "x"  # type: ignore[misc]
    assert repr(PCMU).startswith("Codec(name='pcmu'")
