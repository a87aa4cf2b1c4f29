"""X-Forwarded-* from trusted proxies only, and the URL a Twilio signature is checked
against: the pure resolver (with a fuzz), and end to end through the carrier listener."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import HandshakeRejected
from bridge.daemon._carrier import twilio_signature, twilio_urls
from bridge.daemon._config import parse_networks
from bridge.daemon._forwarded import Origin, resolve_origin
from bridge.transports import open_websocket_client

from .conftest import make_config
from .test_carrier_leg import carrier_routes

PRIVATE = parse_networks(("10.0.0.0/8", "fd00::/8"))


def _resolve(peer: str, *headers: tuple[str, str], trusted: Any = PRIVATE) -> Origin:
    return resolve_origin((peer, 40000), headers, trusted)


# ---------------------------------------------------------------------- the resolver


def test_untrusted_peer_headers_are_ignored() -> None:
    origin = _resolve(
        "198.51.100.9",
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "voice.example.com"),
    )
    assert origin == Origin(client="198.51.100.9", client_port=40000, ignored=True)
    assert origin.label == "198.51.100.9:40000"
    # No trusted proxies configured at all: the same.
    assert _resolve("10.0.0.2", ("X-Forwarded-For", "1.2.3.4"), trusted=()).ignored


def test_trusted_proxy_reports_client_scheme_and_host() -> None:
    origin = _resolve(
        "10.0.0.2",
        ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "voice.example.com"),
    )
    assert origin == Origin(
        client="203.0.113.7",
        client_port=0,
        scheme="wss",
        host="voice.example.com",
        proxy="10.0.0.2:40000",
    )
    assert origin.label == "203.0.113.7 via 10.0.0.2:40000"


def test_forwarded_for_is_read_from_the_right() -> None:
    # The client wrote "6.6.6.6" itself; the outer proxy 10.1.1.1 appended the real
    # client, the inner proxy (the TCP peer) appended 10.1.1.1.
    origin = _resolve(
        "10.0.0.2",
        ("X-Forwarded-For", "6.6.6.6, 203.0.113.7"),
        ("X-Forwarded-For", "10.1.1.1"),  # a second header line continues the list
        ("X-Forwarded-Proto", "https, http"),  # each hop appended: the outer one counts
    )
    assert origin.client == "203.0.113.7"
    assert origin.scheme == "wss"
    # Ports and brackets as some proxies write them; IPv4-mapped peers unwrapped.
    assert _resolve("::ffff:10.0.0.2", ("X-Forwarded-For", "203.0.113.7:5555")).client == "203.0.113.7"
    assert _resolve("fd00::1", ("X-Forwarded-For", "[2001:db8::5]:5555")).client == "2001:db8::5"
    # Garbage stops the walk at the last hop that could be named (the trusted peer).
    assert _resolve("10.0.0.2", ("X-Forwarded-For", "1.2.3.4, unknown")).client == "10.0.0.2"


def test_bad_forwarded_values_are_dropped() -> None:
    origin = _resolve(
        "10.0.0.2",
        ("X-Forwarded-Proto", "gopher"),
        ("X-Forwarded-Host", "evil.example.com/path?x"),
    )
    assert origin.scheme is None and origin.host is None
    assert origin.client == "10.0.0.2" and origin.client_port == 40000
    assert origin.label == "10.0.0.2:40000"
    ok = _resolve("10.0.0.2", ("X-Forwarded-Host", "[2001:db8::1]:8443"))
    assert ok.host == "[2001:db8::1]:8443"


def test_rfc7239_forwarded_is_not_read() -> None:
    origin = _resolve("10.0.0.2", ("Forwarded", "for=203.0.113.7;proto=https;host=voice.example.com"))
    assert origin == Origin(client="10.0.0.2", client_port=40000)


_header_names = st.sampled_from(
    ["X-Forwarded-For", "x-forwarded-proto", "X-FORWARDED-HOST", "Forwarded", "Host"]
)
_header_values = st.one_of(
    st.text(max_size=80),
    st.lists(
        st.one_of(
            st.ip_addresses().map(str),
            st.sampled_from(["https", "http", "wss", "[::1]:80", "a.b:1", "unknown", ""]),
        ),
        max_size=6,
    ).map(", ".join),
)


@settings(max_examples=400, deadline=None)
@given(
    peer=st.one_of(st.ip_addresses().map(str), st.text(max_size=20)),
    headers=st.lists(st.tuples(_header_names, _header_values), max_size=6),
    trust_all=st.booleans(),
)
def test_resolver_fuzz(peer: str, headers: list[tuple[str, str]], trust_all: bool) -> None:
    trusted = parse_networks(("0.0.0.0/0", "::/0")) if trust_all else PRIVATE
    origin = resolve_origin((peer, 1234), headers, trusted)
    assert origin.scheme in (None, "ws", "wss")
    try:
        peer_ip: Any = ipaddress.ip_address(peer)
    except ValueError:
        peer_ip = None
    if peer_ip is None or not any(
        peer_ip.version == n.version and peer_ip in n for n in trusted
    ):
        # Nothing a client writes is believed.
        assert origin.scheme is None and origin.host is None and not origin.proxy
        assert origin.client_port == 1234
    else:
        ipaddress.ip_address(origin.client)  # always an address, never header text
    if origin.host is not None:
        assert "/" not in origin.host and " " not in origin.host and "@" not in origin.host
    assert isinstance(origin.label, str)


# ---------------------------------------------------------------------- signed URLs


def test_twilio_urls() -> None:
    assert twilio_urls("/twilio", "voice.example.com", ("wss",)) == [
        "wss://voice.example.com/twilio",
        "wss://voice.example.com:443/twilio",
    ]
    assert twilio_urls("/t?a=1", "h:443", ("wss", "ws")) == [
        "wss://h:443/t?a=1",
        "wss://h/t?a=1",
        "ws://h:443/t?a=1",
    ]
    assert twilio_urls("/t", "[::1]:8443", ("wss",)) == ["wss://[::1]:8443/t"]
    assert twilio_urls("/t", "[::1]", ("wss",)) == ["wss://[::1]/t", "wss://[::1]:443/t"]
    assert twilio_urls("/twilio", "ignored", ("ws",), "wss://pub.example.com/bridge/") == [
        "wss://pub.example.com/bridge/twilio"
    ]


# ---------------------------------------------------------------------- end to end

PUBLIC = "wss://voice.example.com/twilio"
PROXY_HEADERS = [
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "voice.example.com"),
    ("X-Forwarded-For", "203.0.113.7"),
]
AUTH = 'auth = { twilio_auth_token = "tw-token" }'


async def _dial(daemon: Any, signed_url: str, headers: list[tuple[str, str]], path: str = "/twilio") -> int:
    """101 → 101; a rejection → its status."""
    host, port = daemon.bound["websocket"]
    sig = twilio_signature("tw-token", signed_url)
    try:
        async with open_websocket_client(
            f"ws://{host}:{port}{path}", headers=[*headers, ("X-Twilio-Signature", sig)]
        ):
            return 101
    except HandshakeRejected as exc:
        return exc.status


@pytest.mark.parametrize(
    "trusted, expected", [('["127.0.0.0/8"]', 101), ('["10.0.0.0/8"]', 401), ("[]", 401)]
)
async def test_signature_over_the_public_url_needs_a_trusted_proxy(
    daemon_factory: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    trusted: str,
    expected: int,
) -> None:
    config = make_config(
        tmp_path, routes=carrier_routes(auth=AUTH), websocket=f"trusted_proxies = {trusted}"
    )
    with trio.fail_after(20):
        daemon = await daemon_factory(config)
        assert await _dial(daemon, PUBLIC, PROXY_HEADERS) == expected
    refused = daemon.metrics.streams_refused.labels("websocket", "bad_signature")._value.get()
    assert refused == (0 if expected == 101 else 1)
    if expected == 401:
        # The refusal names the TCP peer, not the address the headers claim.
        line = next(r for r in caplog.records if "call refused" in r.getMessage())
        assert "203.0.113.7" not in line.getMessage()
        assert "127.0.0.1:" in line.getMessage()
        assert "not in [websocket] trusted_proxies were ignored" in line.getMessage()


async def test_refusal_via_a_trusted_proxy_names_the_client(
    daemon_factory: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        tmp_path, routes=carrier_routes(auth=AUTH), websocket='trusted_proxies = ["127.0.0.1"]'
    )
    with trio.fail_after(20), caplog.at_level(logging.WARNING):
        daemon = await daemon_factory(config)
        assert await _dial(daemon, "wss://elsewhere.example.com/twilio", PROXY_HEADERS) == 401
    line = next(r for r in caplog.records if "call refused" in r.getMessage())
    assert "203.0.113.7 via 127.0.0.1:" in line.getMessage()
    assert line.peer.startswith("203.0.113.7 via")  # type: ignore[attr-defined]


async def test_public_url_override(daemon_factory: Any, tmp_path: Path) -> None:
    # The proxy maps wss://voice.example.com/bridge/twilio to ws://bridge:port/twilio and
    # sends no forwarding headers: the route says what Twilio dialled.
    auth = 'auth = { twilio_auth_token = "tw-token", public_url = "wss://voice.example.com/bridge" }'
    with trio.fail_after(20):
        daemon = await daemon_factory(make_config(tmp_path, routes=carrier_routes(auth=auth)))
        assert await _dial(daemon, "wss://voice.example.com/bridge/twilio", []) == 101
        host, port = daemon.bound["websocket"]
        # With public_url set, the URL bridge would have reconstructed no longer counts.
        assert await _dial(daemon, f"wss://{host}:{port}/twilio", []) == 401


async def test_signature_covers_the_query_as_sent(daemon_factory: Any, tmp_path: Path) -> None:
    """Twilio signs the URL as written in TwiML, percent-encoding and all; bridge used
    to rebuild the query from its decoded parameters and refused such a call."""
    with trio.fail_after(20):
        daemon = await daemon_factory(make_config(tmp_path, routes=carrier_routes(auth=AUTH)))
        host, port = daemon.bound["websocket"]
        path = "/twilio?agent=sales%2Feu&lang=en%20GB"
        assert await _dial(daemon, f"wss://{host}:{port}{path}", [], path=path) == 101
