"""The admission policy of the call-leg listeners (pure) and the framing-error
classifier of the WebSocket server, fuzzed with hypothesis."""

from __future__ import annotations

import ipaddress
import os
import struct
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from bridge.transports import Admission, Pending, peer_key
from bridge.transports._websocket import FRAMING_ERROR_KINDS, framing_error_kind

# ----------------------------------------------------------------------- peer keys


def test_peer_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert peer_key("192.0.2.7") == "192.0.2.7"
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("2001:db8:1:3::1") != peer_key("2001:db8:1:2::1")
    assert peer_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert peer_key("fe80::1%eth0") == "fe80::/64"
    assert peer_key("") == "" and peer_key("not an address:x") == "not an address:x"


@given(st.ip_addresses(v=6))
def test_peer_key_of_any_ipv6_is_its_64_or_its_ipv4(address: ipaddress.IPv6Address) -> None:
    key = peer_key(str(address))
    if address.ipv4_mapped is not None:
        assert key == str(address.ipv4_mapped)
    else:
        assert address in ipaddress.IPv6Network(key)
        assert key.endswith("/64")


# ----------------------------------------------------------------------- admission

HOSTS = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2", "::ffff:10.0.0.1"]


@settings(max_examples=300)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.lists(st.tuples(st.booleans(), st.sampled_from(HOSTS), st.integers(0, 50)), max_size=120),
)
def test_admission_limits_hold_and_nobody_is_evicted(
    max_pending: int, per_peer: int, steps: list[tuple[bool, str, int]]
) -> None:
    """Any interleaving of admits and releases: the totals match the tickets held, no
    peer ever holds more than its share, a refusal gives the right reason, and a
    release is idempotent."""
    admission = Admission(max_pending, per_peer)
    held: list[Pending] = []
    for admit, host, index in steps:
        if admit:
            key = peer_key(host)
            before_peer = sum(1 for p in held if p.key == key)
            result = admission.admit(host)
            if isinstance(result, Pending):
                held.append(result)
            elif result == "too_many_pending_per_peer":
                assert per_peer < max_pending and before_peer >= per_peer
            else:
                assert result == "too_many_pending" and len(held) >= max_pending
        elif held:
            ticket = held.pop(index % len(held))
            ticket.release()
            ticket.release()  # idempotent
            assert not ticket.held
        assert admission.pending == len(held) <= max_pending
        for host_ in HOSTS:
            mine = sum(1 for p in held if p.key == peer_key(host_))
            assert admission.pending_from(host_) == mine
            assert mine <= min(per_peer, max_pending)
    for ticket in held:
        ticket.release()
    assert admission.pending == 0 and admission.peers == 0


def test_admission_per_peer_then_total() -> None:
    admission = Admission(max_pending=3, max_pending_per_peer=2)
    a1, a2 = admission.admit("10.0.0.1"), admission.admit("10.0.0.1")
    assert isinstance(a1, Pending) and isinstance(a2, Pending)
    assert admission.admit("10.0.0.1") == "too_many_pending_per_peer"
    assert isinstance(admission.admit("10.0.0.2"), Pending)
    assert admission.admit("10.0.0.3") == "too_many_pending"
    # Full and over its share: the per-peer reason wins (a reset, not a 503).
    assert admission.admit("10.0.0.1") == "too_many_pending_per_peer"
    a1.release()
    assert isinstance(admission.admit("10.0.0.1"), Pending)


def test_per_peer_equal_to_total_is_no_limit_of_its_own() -> None:
    admission = Admission(max_pending=2, max_pending_per_peer=2)
    assert isinstance(admission.admit("10.0.0.1"), Pending)
    assert isinstance(admission.admit("10.0.0.1"), Pending)
    assert admission.admit("10.0.0.1") == "too_many_pending"


# ----------------------------------------------------------------------- framing errors


def _open_server(max_size: int = 1024) -> ServerProtocol:
    return ServerProtocol(state=State.OPEN, max_size=max_size)


def _raw_frame(first: int, payload: bytes, *, mask: bool, declared: int | None = None) -> bytes:
    n = len(payload) if declared is None else declared
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, bit | n])
    elif n < 1 << 16:
        head = bytes([first, bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


frames = st.builds(
    _raw_frame,
    st.integers(0, 255),  # FIN, RSV1-3 and every opcode, defined or not
    st.binary(max_size=200),
    mask=st.booleans(),
    declared=st.none() | st.integers(0, 5000),
)


@settings(max_examples=500)
@given(st.lists(frames, max_size=4), st.binary(max_size=64))
def test_framing_error_kind_is_bounded_and_matches_the_close_code(
    chunks: list[bytes], tail: bytes
) -> None:
    """Whatever a client sends, the classification is one of the bounded kinds (or
    None), and it agrees with the close code the protocol answered (RFC 6455 §7.4.1)."""
    protocol = _open_server()
    protocol.receive_data(b"".join(chunks) + tail)
    protocol.events_received()
    exc = protocol.parser_exc
    kind = framing_error_kind(exc)
    assert kind is None or kind in FRAMING_ERROR_KINDS
    if exc is None:
        assert kind is None
        return
    assert kind is not None
    assert protocol.close_sent is not None
    code = protocol.close_sent.code
    expected_codes = {"message_too_big": {1009}, "bad_frame": {1002, 1011}, "bad_close": {1002, 1007}}
    assert code in expected_codes[kind], (kind, code, exc)


@given(
    st.lists(
        st.one_of(
            st.builds(lambda t: Frame(Opcode.TEXT, t.encode()), st.text(max_size=100)),
            st.builds(lambda b: Frame(Opcode.BINARY, b), st.binary(max_size=100)),
            st.builds(lambda b: Frame(Opcode.PING, b), st.binary(max_size=125)),
        ),
        max_size=5,
    )
)
def test_valid_masked_frames_are_never_bad_input(good: list[Frame]) -> None:
    protocol = _open_server()
    protocol.receive_data(b"".join(f.serialize(mask=True) for f in good))
    assert framing_error_kind(protocol.parser_exc) is None


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (_raw_frame(0x83, b"x", mask=True), "bad_frame"),  # opcode 3 is reserved
        (_raw_frame(0x81, b"hi", mask=False), "bad_frame"),  # an unmasked client frame
        (_raw_frame(0xC1, b"hi", mask=True), "bad_frame"),  # RSV1 without an extension
        (_raw_frame(0x89, bytes(126), mask=True), "bad_frame"),  # control frame > 125
        (_raw_frame(0x81, b"", mask=True, declared=5000), "message_too_big"),
        (_raw_frame(0x88, struct.pack("!H", 1005), mask=True), "bad_close"),
        (_raw_frame(0x88, b"\x03", mask=True), "bad_close"),
        (_raw_frame(0x88, struct.pack("!H", 1000) + b"\xff", mask=True), "bad_close"),
        (_raw_frame(0x81, b"ab", mask=True)[:4], None),  # incomplete: no verdict yet
    ],
)
def test_framing_error_kind_examples(data: bytes, kind: str | None) -> None:
    protocol = _open_server()
    protocol.receive_data(data)
    assert framing_error_kind(protocol.parser_exc) == kind
    protocol.receive_eof()  # EOF mid-frame is a lost connection, not bad input
    if kind is None:
        assert framing_error_kind(protocol.parser_exc) is None


# ----------------------------------------------------------------------- fd limit


def test_raise_open_files_limit_raises_the_soft_limit_to_the_hard_one() -> None:
    """In a child process (the test process keeps its limits): soft lowered to 256, then
    raised back to the hard limit and reported."""
    code = textwrap.dedent(
        """
        import resource
        from bridge.transports import raise_open_files_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        before, after, hard2 = raise_open_files_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(before, after, hard2 == hard, now == after)
        print(raise_open_files_limit()[:2])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    ).stdout.splitlines()
    before, after, same_hard, applied = out[0].split()
    assert before == "256" and int(after) > 256 and same_hard == "True" and applied == "True"
    assert out[1] == f"({after}, {after})"  # already at the hard limit: unchanged
