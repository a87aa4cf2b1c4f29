"""The cluster frame: round trips, a wrong secret or a replayed challenge refused, and
hostile bytes never raising anything but HandoffFailed (fuzzed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import HandoffFailed
from bridge.cluster._wire import (
    _REQUEST_LABEL,
    FrameParser,
    Handoff,
    Request,
    decode_request,
    encode_frame,
)

SECRET = b"s" * 24
CHALLENGE = b"c" * 16


def _request() -> Request:
    handoff = Handoff(kind="carrier", stream_id="s1", route="twilio", path="/twilio", peer=("192.0.2.1", 4000))
    return Request(op="handoff", nonce="00" * 16, handoff=handoff, mode="fd")


def test_round_trip() -> None:
    frame = encode_frame(SECRET, _REQUEST_LABEL, CHALLENGE, _request(), b"payload")
    parser = FrameParser(SECRET, _REQUEST_LABEL, CHALLENGE)
    out = None
    for i in range(len(frame)):  # one byte at a time
        out = parser.feed(frame[i : i + 1])
        assert (out is None) == (i < len(frame) - 1)
    assert out is not None
    body, payload = out
    assert payload == b"payload"
    assert decode_request(body) == _request()


@pytest.mark.parametrize(
    "secret, challenge",
    [(b"t" * 24, CHALLENGE), (SECRET, b"d" * 16)],
    ids=["wrong secret", "replayed to another challenge"],
)
def test_wrong_secret_or_challenge_is_refused(secret: bytes, challenge: bytes) -> None:
    frame = encode_frame(secret, _REQUEST_LABEL, challenge, _request())
    with pytest.raises(HandoffFailed, match="MAC"):
        FrameParser(SECRET, _REQUEST_LABEL, CHALLENGE).feed(frame)


def test_oversize_frame_is_refused_from_its_header() -> None:
    with pytest.raises(HandoffFailed, match="too large"):
        FrameParser(SECRET, _REQUEST_LABEL, CHALLENGE).feed(b"\xff\xff\xff\xff\x00\x00\x00\x00")


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_hostile_bytes_only_ever_fail_as_handoff_failed(chunks: list[bytes]) -> None:
    parser = FrameParser(SECRET, _REQUEST_LABEL, CHALLENGE)
    try:
        for chunk in chunks:
            done = parser.feed(chunk)
            if done is not None:
                decode_request(done[0])
                break
    except HandoffFailed:
        pass
