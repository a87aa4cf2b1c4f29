"""``parse_host_port``/``format_peer``: the one reader and writer of ``host:port``."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.transports import HOST_PORT_FORM, format_peer, host_problem, parse_host_port


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("media.example.com:443", ("media.example.com", 443)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:9092", ("::", 9092)),
        ("[2001:db8::7]:5004", ("2001:db8::7", 5004)),
    ],
)
def test_reads_host_and_port(text: str, addr: tuple[str, int]) -> None:
    assert parse_host_port(text) == addr
    assert parse_host_port(text, listen=True) == addr
    assert format_peer(addr) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("nohost", f"invalid address 'nohost'; {HOST_PORT_FORM}"),
        ("127.0.0.1", "invalid address"),
        ("[::1]", "invalid address"),
        ("[::1]8080", "invalid address"),
        ("::1:8080", 'an IPv6 address needs brackets, e.g. "[::1]:8080"'),
        ("[nope]:80", "'nope' is not a valid IPv6 address"),
        ("300.1.1.1:80", "'300.1.1.1' is not a valid IPv4 address"),
        ("bad_host:80", "'bad_host' is not a valid hostname or IP address"),
        ("-a.com:80", "is not a valid hostname"),
        (":8080", f"the host is empty; {HOST_PORT_FORM}"),
        ("127.0.0.1:80x", "invalid port '80x' in '127.0.0.1:80x': a port is 1..65535"),
        ("127.0.0.1:70000", "a port is 1..65535"),
        ("127.0.0.1:-1", "invalid port '-1'"),
        ("127.0.0.1:²", "invalid port '²'"),  # isdigit() but not a number int() takes
        ("127.0.0.1:", "invalid port ''"),
        ("127.0.0.1:0", "invalid port '0'"),  # a peer has a real port
    ],
)
def test_rejects_with_a_message_that_names_the_problem(text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_host_port(text)
    assert words in str(info.value)


def test_a_listening_address_may_take_any_free_port() -> None:
    assert parse_host_port("127.0.0.1:0", listen=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError) as info:
        parse_host_port("127.0.0.1:70000", listen=True)
    assert str(info.value) == (
        "invalid port '70000' in '127.0.0.1:70000': a port is 1..65535 (0 = any free port)"
    )
    with pytest.raises(ValueError, match=r"the host is empty \(use 0\.0\.0\.0 for every"):
        parse_host_port(":8080", listen=True)


def test_default_host_stands_in_for_an_empty_one() -> None:
    assert parse_host_port(":9000", listen=True, default_host="127.0.0.1") == ("127.0.0.1", 9000)
    assert parse_host_port("[::1]:9000", default_host="127.0.0.1") == ("::1", 9000)


def test_ip_only_resolves_nothing() -> None:
    assert parse_host_port("192.0.2.7:4000", ip_only=True) == ("192.0.2.7", 4000)
    assert parse_host_port("[::1]:4000", ip_only=True) == ("::1", 4000)
    with pytest.raises(ValueError, match=r"'example\.com' is not a valid IPv4 address"):
        parse_host_port("example.com:4000", ip_only=True)


def test_not_a_string() -> None:
    with pytest.raises(ValueError, match="expected a string"):
        parse_host_port(5)  # type: ignore[arg-type]


def test_host_problem() -> None:
    assert host_problem("0.0.0.0") is None
    assert host_problem("media.example.com") is None
    assert host_problem("") == "the host is empty"
    assert host_problem("", listen=True) == "the host is empty (use 0.0.0.0 for every interface)"
    assert host_problem("localhost", ip_only=True) == "'localhost' is not a valid IPv4 address"


@given(st.text(max_size=64))
def test_any_text_reads_or_is_a_value_error(text: str) -> None:
    # The admin API's "remote" is outside input: nothing but ValueError may come out.
    for kwargs in ({}, {"listen": True}, {"ip_only": True}):
        try:
            host, port = parse_host_port(text, **kwargs)  # type: ignore[arg-type]
        except ValueError:
            continue
        assert 0 <= port <= 65535
        assert parse_host_port(format_peer((host, port)), **kwargs) == (host, port)  # type: ignore[arg-type]


@given(st.ip_addresses(), st.integers(1, 65535))
def test_every_ip_address_round_trips(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    text = format_peer((str(ip), port))
    assert parse_host_port(text, ip_only=True) == (str(ip), port)
