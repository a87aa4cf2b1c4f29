"""Tests of bridge.daemon._config: decoding, validation paths, merging, dumping, matching."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge._errors import ConfigError
from bridge.daemon._config import (
    AdminConfig,
    AppConfig,
    AudioSocketConfig,
    AuthConfig,
    CallbackConfig,
    CallbacksConfig,
    Carrier,
    Config,
    DaemonConfig,
    KeyValueMatch,
    Listener,
    MatchConfig,
    RecordsConfig,
    RouteConfig,
    RtpConfig,
    StreamConfig,
    StreamOverrides,
    WebSocketConfig,
    dump_config,
    load_config,
    match_route,
    parse_config,
    parse_duration,
    parse_listen,
)
from bridge.dialects import carriers, dialect

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "bridge.example.toml"
SHARED_EXAMPLE = REPO.parent / "shared" / "contract" / "bridge.example.toml"

# A minimal valid route per listener, to build failing files around.
WS_ROUTE = """
[[routes]]
name = "ws"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "ws://127.0.0.1:9000/agent", encapsulation = "twilio" }
"""
RTP_ROUTE = """
[[routes]]
name = "rtp"
match = { listener = "rtp" }
app = { url = "echo:" }
"""


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), file="test.toml")
    assert info.value.file == "test.toml"
    return info.value


# --------------------------------------------------------------------------- accepted files


def test_example_is_accepted() -> None:
    config = load_config(EXAMPLE)
    assert [r.name for r in config.routes] == ["asterisk-echo", "twilio-agent", "rtp-recorder"]
    assert config.daemon.log_format == "json"
    assert config.admin.listen_addr == ("127.0.0.1", 8081)
    assert config.rtp.ports_range == (40000, 40999)
    assert config.records.retention_s == 7 * 86400


def test_deploy_example_is_the_contract_file() -> None:
    if not SHARED_EXAMPLE.exists():
        pytest.skip("../shared/contract is not checked out next to the repo")
    assert EXAMPLE.read_bytes() == SHARED_EXAMPLE.read_bytes()


def test_embedded_default_is_accepted() -> None:
    config = load_config(None)
    assert config.daemon.log_format == "console"
    assert config.admin.listen_addr == ("127.0.0.1", 8081)
    assert config.audiosocket.listen_addr == ("127.0.0.1", 9092)
    assert config.websocket.listen_addr == ("127.0.0.1", 8080)
    assert config.rtp.bind == "127.0.0.1"
    assert config.rtp.ports_range == (40000, 40999)
    assert config.records.path == "bridge.sqlite3"
    assert all(r.app.url == "echo:" and r.app.encapsulation == "sln" for r in config.routes)
    assert {r.match.listener for r in config.routes} == {"audiosocket", "websocket", "rtp"}
    # One echo route per carrier of the dialect registry, on its conventional path.
    ws = {r.carrier: r.match.path for r in config.routes_for("websocket")}
    expected = {}
    for name in carriers():
        leg = dialect(name).call_leg
        assert leg is not None
        expected[name] = leg.path
    assert ws == expected
    assert expected["twilio"] == "/twilio" and expected["asterisk_ws"] == "/asterisk"


def test_empty_file_gives_the_documented_defaults() -> None:
    config = parse_config("")
    assert config == Config()
    assert config.routes == ()
    assert config.daemon.log_format == "json"
    s = config.stream
    assert (s.ptime_s, s.retries, s.backoff_s, s.buffer_s) == (0.02, 2, 0.5, 40.0)
    assert s.degraded_at == (30, 60, 90)
    assert s.timeout_s == 4 * 3600
    assert s.reconnect_window_s == 0.0
    assert config.callbacks.max_backoff_s == 300.0


def test_structs_are_frozen() -> None:
    config = load_config(None)
    with pytest.raises(AttributeError):
        config.daemon.max_streams = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- durations and addresses


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("4h", 14400.0),
        ("7d", 604800.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "20", "-1s", "1w", "1.s", ".5s", "5 s", "1h30m", "ms"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r'e\.g\. "20ms"'):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("", None),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("media.example.com:443", ("media.example.com", 443)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:9092", ("::", 9092)),
    ],
)
def test_parse_listen(text: str, addr: tuple[str, int] | None) -> None:
    assert parse_listen(text) == addr


@pytest.mark.parametrize(
    "text",
    [
        "nohost",
        "127.0.0.1",
        "127.0.0.1:70000",
        ":8080",
        "::1:8080",
        "[::1]",
        "[nope]:80",
        "300.1.1.1:80",
        "bad_host:80",
        "127.0.0.1:80x",
        "-a.com:80",
    ],
)
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(text)


def test_parse_listen_says_what_a_listener_key_takes() -> None:
    # The shared parser's messages, with the config's own hint where the form is wrong.
    with pytest.raises(ValueError) as info:
        parse_listen("nohost")
    assert str(info.value) == (
        "invalid address 'nohost'; expected \"host:port\","
        ' e.g. "127.0.0.1:8080" or "[::1]:8080" ("" disables)'
    )
    with pytest.raises(ValueError) as info:
        parse_listen(":8080")
    assert str(info.value).startswith("the host is empty (use 0.0.0.0 for every interface); ")
    assert str(info.value).endswith('("" disables)')
    # docs/configuration.md shows this one.
    with pytest.raises(ValueError) as info:
        parse_listen("127.0.0.1:70000")
    assert str(info.value) == (
        "invalid port '70000' in '127.0.0.1:70000': a port is 1..65535 (0 = any free port)"
    )


# --------------------------------------------------------------------------- error paths


@pytest.mark.parametrize(
    ("text", "path"),
    [
        # unknown keys: top level, in a section, inside a route's stream table
        ("bogus = 1", "bogus"),
        ("[daemon]\nlog_levle = 'info'", "daemon.log_levle"),
        (RTP_ROUTE + "stream = { buffer = '10s', bufer = '1s' }", "routes[0].stream.bufer"),
        (RTP_ROUTE + "app2 = 1", "routes[0].app2"),
        # durations
        ("[stream]\nbuffer = '40'", "stream.buffer"),
        ("[stream]\nbuffer = 40", "stream.buffer"),
        ("[stream]\nbuffer = '-40s'", "stream.buffer"),
        ("[stream]\nbuffer = '40x'", "stream.buffer"),
        ("[stream]\nbuffer = ''", "stream.buffer"),
        ("[stream]\nbuffer = '11m'", "stream.buffer"),
        ("[stream]\nptime = '25ms'", "stream.ptime"),
        ("[daemon]\ndrain_timeout = '30 s'", "daemon.drain_timeout"),
        ("[stream]\ntimeout = '0s'", "stream.timeout"),
        (RTP_ROUTE + "stream = { timeout = '4' }", "routes[0].stream.timeout"),
        # ports
        ("[admin]\nlisten = '127.0.0.1:-1'", "admin.listen"),
        ("[websocket]\nlisten = '127.0.0.1:70000'", "websocket.listen"),
        ("[audiosocket]\nlisten = 'nohost'", "audiosocket.listen"),
        ("[audiosocket]\nlisten = '127.0.0.1:8081'", "audiosocket.listen"),  # same as admin
        ("[rtp]\nports = '40999-40000'", "rtp.ports"),
        ("[rtp]\nports = '80-90'", "rtp.ports"),
        ("[rtp]\nports = '40000'", "rtp.ports"),
        ("[rtp]\nbind = '[::1]'", "rtp.bind"),
        # thresholds
        ("[stream]\ndegraded_at = [60, 30]", "stream.degraded_at[1]"),
        ("[stream]\ndegraded_at = [30, 30]", "stream.degraded_at[1]"),
        ("[stream]\ndegraded_at = [0, 50]", "stream.degraded_at[0]"),
        ("[stream]\ndegraded_at = [50, 100]", "stream.degraded_at[1]"),
        (RTP_ROUTE + "stream = { degraded_at = [90, 60] }", "routes[0].stream.degraded_at[1]"),
        # ranges and enums
        ("[daemon]\nmax_streams = 0", "daemon.max_streams"),
        ("[daemon]\nmax_streams = '10'", "daemon.max_streams"),
        ("[daemon]\nlog_level = 'loud'", "daemon.log_level"),
        ("[stream]\nretries = 11", "stream.retries"),
        ("[rtp]\nlatch_packets = 33", "rtp.latch_packets"),
        ("[rtp]\njitter_start = '300ms'", "rtp.jitter_start"),
        ("[callbacks]\nmax_backoff = '100ms'", "callbacks.max_backoff"),
        ("[websocket]\nmax_message_bytes = 100", "websocket.max_message_bytes"),
        ("[websocket]\nmax_handshakes_per_peer = 0", "websocket.max_handshakes_per_peer"),
        ("[audiosocket]\nmax_pending_per_peer = 0", "audiosocket.max_pending_per_peer"),
        ("[daemon]\nbad_input_log_per_interval = -1", "daemon.bad_input_log_per_interval"),
        ("[daemon]\nbad_input_log_interval = '10'", "daemon.bad_input_log_interval"),
        ("[daemon]\nbad_input_log_interval = '2h'", "daemon.bad_input_log_interval"),
        # credentials: visible ASCII only
        ("[admin]\ntoken = 'two words'", "admin.token"),
        (WS_ROUTE + "auth = { token = 'caf\u00e9' }", "routes[0].auth.token"),
        ("[records]\npath = ''", "records.path"),
        # routes
        (WS_ROUTE.replace("ws://", "http://"), "routes[0].app.url"),
        (WS_ROUTE.replace("ws://127.0.0.1:9000/agent", "ws://"), "routes[0].app.url"),
        (
            WS_ROUTE.replace('encapsulation = "twilio"', 'encapsulation = "g729"'),
            "routes[0].app.encapsulation",
        ),
        (
            WS_ROUTE.replace('encapsulation = "twilio"', "sample_rate = 11025"),
            "routes[0].app.sample_rate",
        ),
        (
            WS_ROUTE.replace(
                'encapsulation = "twilio"', 'encapsulation = "twilio", sample_rate = 16000'
            ),
            "routes[0].app.sample_rate",
        ),
        (
            WS_ROUTE.replace(
                'encapsulation = "twilio"', 'encapsulation = "plivo", sample_rate = 16000'
            ),
            "routes[0].app.codec",
        ),
        (WS_ROUTE.replace('carrier = "twilio"', ""), "routes[0].carrier"),
        (WS_ROUTE.replace('carrier = "twilio"', 'carrier = "jambonz"'), "routes[0].carrier"),
        (RTP_ROUTE + "carrier = 'twilio'", "routes[0].carrier"),
        (RTP_ROUTE + RTP_ROUTE, "routes[1].name"),
        (RTP_ROUTE.replace('"rtp"\nmatch', '"r t p"\nmatch'), "routes[0].name"),
        (RTP_ROUTE.replace('name = "rtp"', ""), "routes[0].name"),
        (RTP_ROUTE.replace('app = { url = "echo:" }', ""), "routes[0].app"),
        (
            RTP_ROUTE.replace('listener = "rtp"', 'listener = "rtp", path = "/x"'),
            "routes[0].match.path",
        ),
        (WS_ROUTE.replace('path = "/twilio"', 'path = "twilio"'), "routes[0].match.path"),
        (WS_ROUTE.replace('path = "/twilio"', 'path = "/tw*"'), "routes[0].match.path"),
        (
            WS_ROUTE.replace('listener = "websocket"', 'listener = "sip"'),
            "routes[0].match.listener",
        ),
        (WS_ROUTE + "callback = { url = 'ftp://x/events' }", "routes[0].callback.url"),
        (WS_ROUTE + "callback = { secret = 's' }", "routes[0].callback.url"),
        (RTP_ROUTE + "auth = { token = 't' }", "routes[0].auth"),
        (
            WS_ROUTE.replace("twilio", "plivo") + "auth = { twilio_auth_token = 't' }",
            "routes[0].auth.twilio_auth_token",
        ),
        (
            WS_ROUTE.replace('"ws://127.0.0.1:9000/agent"', '"ws://a/b", mode = "accept"'),
            "routes[0].app.url",
        ),
        (
            WS_ROUTE.replace('encapsulation = "twilio"', 'encapsulation = "twilio", token = "t"'),
            "routes[0].app.token",
        ),
        (
            WS_ROUTE.replace(
                'encapsulation = "twilio"', 'encapsulation = "twilio", ca_file = "ca.pem"'
            ),
            "routes[0].app.ca_file",
        ),
        (
            WS_ROUTE.replace(
                'encapsulation = "twilio"', 'encapsulation = "twilio", headers = { "X A" = "1" }'
            ),
            "routes[0].app.headers",
        ),
    ],
)
def test_error_names_the_field(text: str, path: str) -> None:
    err = error_of(text)
    assert err.path == path, err
    assert err.message
    assert str(err) == f"test.toml: {path}: {err.message}"


def test_duration_error_shows_an_example() -> None:
    for text in ("[stream]\nbuffer = '40'", "[stream]\nbuffer = 40"):
        assert 'e.g. "20ms"' in error_of(text).message


def test_unknown_key_lists_the_allowed_keys() -> None:
    err = error_of("[daemon]\nlog_levle = 'info'")
    assert "log_level" in err.message and "max_streams" in err.message


def test_enum_error_lists_the_allowed_values() -> None:
    err = error_of(WS_ROUTE.replace('encapsulation = "twilio"', 'encapsulation = "g729"'))
    assert "'sln'" in err.message and "'audiosocket'" in err.message


def test_toml_syntax_error_has_line_and_empty_path() -> None:
    err = error_of("[daemon]\nlog_level = 'info'\nmax_streams = = 3\n")
    assert err.path == ""
    assert "line 3" in err.message


def test_load_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.file == str(missing)


def test_load_config_labels_errors_with_the_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[stream]\nbuffer = '1h'\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert (info.value.file, info.value.path) == (str(f), "stream.buffer")


def test_valid_variants_are_accepted() -> None:
    config = parse_config(
        textwrap.dedent(
            """
            [admin]
            listen = ""
            [websocket]
            listen = "[::1]:8080"
            [rtp]
            bind = "::1"
            ports = "50000-50000"
            [stream]
            degraded_at = []
            ptime = "0.03s"
            reconnect_window = "0s"

            [[routes]]
            name = "accept.app_1"
            match = { listener = "websocket", path = "/apps/*", header = { name = "X-Tenant", value = "a" } }
            carrier = "telnyx"
            app = { mode = "accept", token = "secret", encapsulation = "telnyx", codec = "l16", sample_rate = 16000 }
            auth = { token = "carrier-token" }

            [[routes]]
            name = "wss"
            match = { listener = "websocket", query = { name = "app", value = "b" } }
            carrier = "twilio"
            app = { url = "wss://agent.example.com/x", encapsulation = "twilio", ca_file = "/etc/ca.pem", headers = { "X-Api-Key" = "k" } }
            auth = { twilio_auth_token = "tok" }
            callback = { url = "https://hooks.example.com/e", secret = "s" }
            """
        )
    )
    assert config.admin.listen_addr is None
    assert config.websocket.listen_addr == ("::1", 8080)
    assert config.rtp.ports_range == (50000, 50000)
    assert config.stream.degraded_at == ()
    assert math.isclose(config.stream.ptime_s, 0.03)
    accept = config.routes[0]
    assert accept.app.mode == "accept" and accept.app.url == "" and not accept.app.is_echo
    assert config.routes[1].app.headers == {"X-Api-Key": "k"}


# --------------------------------------------------------------------------- route stream overrides


def test_route_overrides_win_and_the_rest_inherits() -> None:
    config = parse_config(
        textwrap.dedent(
            """
            [stream]
            retries = 5
            buffer = "20s"
            degraded_at = [50]
            """
        )
        + RTP_ROUTE
        + "stream = { buffer = '10s', degraded_at = [10, 20], send_ahead = 3 }\n"
        + RTP_ROUTE.replace('"rtp"\nmatch', '"plain"\nmatch')
    )
    overridden, plain = config.routes
    eff = config.route_stream(overridden)
    assert (eff.buffer, eff.buffer_s, eff.degraded_at, eff.send_ahead) == ("10s", 10.0, (10, 20), 3)
    assert eff.retries == 5  # from [stream]
    assert eff.ptime == "20ms"  # built-in default
    assert overridden.stream == StreamOverrides(buffer="10s", degraded_at=(10, 20), send_ahead=3)
    assert config.route_stream(plain) == config.stream
    assert config.route_stream(overridden) is config.route_stream(overridden)  # memoised


def test_example_route_override() -> None:
    config = load_config(EXAMPLE)
    rec = config.route_by_name("rtp-recorder")
    assert rec is not None
    assert config.route_stream(rec).buffer_s == 10.0
    assert config.route_stream(config.routes[0]).buffer_s == 40.0
    assert config.route_by_name("nope") is None


def test_routes_for() -> None:
    config = load_config(None)
    assert [r.carrier for r in config.routes_for("websocket")] == list(carriers())
    assert [r.name for r in config.routes_for("websocket")][:3] == [
        "twilio-echo",
        "telnyx-echo",
        "plivo-echo",
    ]
    assert [r.name for r in config.routes_for("rtp")] == ["rtp-echo"]
    assert config.routes_for("sip") == ()


# --------------------------------------------------------------------------- matching


def _route(name: str, listener: Listener, **match: Any) -> RouteConfig:
    carrier: Carrier | None = "twilio" if listener == "websocket" else None
    return RouteConfig(
        name=name,
        match=MatchConfig(listener=listener, **match),
        carrier=carrier,
        app=AppConfig(url="echo:"),
    )


MATCH_CONFIG = Config(
    routes=(
        _route(
            "hdr", "websocket", path="/twilio", header=KeyValueMatch(name="X-Tenant", value="acme")
        ),
        _route("qry", "websocket", path="/twilio", query=KeyValueMatch(name="app", value="b")),
        _route("exact", "websocket", path="/twilio"),
        _route("prefix", "websocket", path="/apps/*"),
        _route("any-ws", "websocket"),
        _route("as", "audiosocket"),
        _route("rtp", "rtp"),
    )
)


@pytest.mark.parametrize(
    ("listener", "path", "headers", "query", "expected"),
    [
        ("websocket", "/twilio", None, None, "exact"),
        ("websocket", "/twilio", {"x-tenant": "acme"}, None, "hdr"),
        ("websocket", "/twilio", {"X-TENANT": "acme"}, None, "hdr"),
        ("websocket", "/twilio", {"X-Tenant": "ACME"}, None, "exact"),  # values are exact
        ("websocket", "/twilio", None, {"app": "b"}, "qry"),
        ("websocket", "/twilio", None, {"APP": "b"}, "exact"),  # query names are exact
        ("websocket", "/twilio?app=b", None, None, "exact"),  # query string is not the path
        ("websocket", "/twilio/", None, None, "any-ws"),
        ("websocket", "/apps/one", None, None, "prefix"),
        ("websocket", "/apps/", None, None, "prefix"),
        ("websocket", "/apps", None, None, "any-ws"),
        ("websocket", "/other", None, None, "any-ws"),
        ("audiosocket", "", None, None, "as"),
        ("rtp", "", None, None, "rtp"),
        ("sip", "", None, None, None),
    ],
)
def test_match_route(
    listener: str,
    path: str,
    headers: dict[str, str] | None,
    query: dict[str, str] | None,
    expected: str | None,
) -> None:
    route = match_route(MATCH_CONFIG, listener, path, headers=headers, query=query)
    assert (route.name if route else None) == expected


def test_match_route_without_catch_all() -> None:
    config = load_config(None)
    assert match_route(config, "websocket", "/nope") is None
    route = match_route(config, "websocket", "/plivo")
    assert route is not None and route.carrier == "plivo"


# --------------------------------------------------------------------------- dump round trip


def _resolved(config: Config) -> Config:
    """``config`` with every route's overrides replaced by its full effective settings,
    which is what dump_config writes (and so what parsing the dump gives back)."""
    routes = tuple(
        msgspec.structs.replace(
            r, stream=StreamOverrides(**msgspec.structs.asdict(config.route_stream(r)))
        )
        for r in config.routes
    )
    return msgspec.structs.replace(config, routes=routes)


@pytest.mark.parametrize("source", [EXAMPLE, None])
def test_dump_round_trips(source: Path | None) -> None:
    config = load_config(source)
    text = dump_config(config)
    again = parse_config(text)
    assert again == _resolved(config)
    assert dump_config(again) == text
    for a, b in zip(config.routes, again.routes, strict=True):
        assert config.route_stream(a) == again.route_stream(b)


def test_dump_writes_effective_route_stream() -> None:
    text = dump_config(load_config(EXAMPLE))
    routes = text.split("[[routes]]")
    assert len(routes) == 4
    assert 'buffer = "10s"' in routes[3] and 'buffer = "40s"' in routes[1]
    assert routes[3].count("[routes.stream]") == 1
    assert "accept_timeout" in routes[1]


def test_dump_redacts_secrets() -> None:
    text = dump_config(load_config(EXAMPLE), redact=True)
    assert "change-me" not in text and '"<redacted>"' in text
    assert 'token = ""' in text  # empty values stay visible: they mean "no auth"


# codec="utf-8" keeps surrogates out: they cannot be written to a file at all.
_safe_text = st.text(st.characters(codec="utf-8"), max_size=12)
# Tokens and secrets are visible ASCII (they are compared as bytes with what peers send).
_credential = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12)
_header_value = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\0"), max_size=8)
_names = st.from_regex(r"[A-Za-z0-9_.-]{1,10}", fullmatch=True)
_opt = st.none


@st.composite
def _stream_overrides(draw: st.DrawFn) -> StreamOverrides | None:
    if draw(st.booleans()):
        return None
    values: dict[str, Any] = {
        "ptime": draw(_opt() | st.sampled_from(["10ms", "20ms", "0.06s"])),
        "retries": draw(_opt() | st.integers(0, 10)),
        "backoff": draw(_opt() | st.sampled_from(["0s", "250ms", "1.5s"])),
        "buffer": draw(_opt() | st.sampled_from(["1s", "40s", "10m"])),
        "degraded_at": draw(
            _opt() | st.sets(st.integers(1, 99), max_size=4).map(lambda s: tuple(sorted(s)))
        ),
        "timeout": draw(_opt() | st.sampled_from(["1h", "7d"])),
        "hold_audio": draw(_opt() | _safe_text),
        "send_ahead": draw(_opt() | st.integers(0, 50)),
        "reconnect_window": draw(_opt() | st.sampled_from(["0s", "30s"])),
        "max_message_bytes": draw(_opt() | st.integers(1024, 64 * 1024 * 1024)),
    }
    return StreamOverrides(**values)


@st.composite
def _routes(draw: st.DrawFn) -> tuple[RouteConfig, ...]:
    names = draw(st.lists(_names, unique=True, max_size=4))
    routes = []
    for name in names:
        listener: Listener = draw(st.sampled_from(["audiosocket", "websocket", "rtp"]))
        ws = listener == "websocket"
        match = MatchConfig(
            listener=listener,
            path=draw(st.sampled_from(["", "/twilio", "/a/*"])) if ws else "",
            header=draw(_opt() | st.builds(KeyValueMatch, name=st.just("X-K"), value=_safe_text))
            if ws
            else None,
            query=draw(_opt() | st.builds(KeyValueMatch, name=_names, value=_safe_text))
            if ws
            else None,
        )
        carrier: Carrier | None = (
            draw(st.sampled_from(["twilio", "telnyx", "plivo"])) if ws else None
        )
        app = draw(
            st.one_of(
                st.builds(AppConfig, url=st.just("echo:")),
                st.builds(
                    AppConfig,
                    url=st.sampled_from(["ws://127.0.0.1:9000/a", "ws://h.example.com/x?y=1"]),
                    encapsulation=st.sampled_from(["sln", "audiosocket"]),
                    sample_rate=st.sampled_from([8000, 16000, 24000, 48000]),
                    headers=st.dictionaries(
                        st.sampled_from(["X-A", "Authorization"]), _header_value
                    ),
                ),
                st.builds(
                    AppConfig,
                    url=st.just("wss://agent.example.com/"),
                    encapsulation=st.just("telnyx"),
                    codec=st.just("l16"),
                    sample_rate=st.just(16000),
                    ca_file=_safe_text,
                ),
                st.builds(AppConfig, mode=st.just("accept"), token=_credential),
            )
        )
        routes.append(
            RouteConfig(
                name=name,
                match=match,
                carrier=carrier,
                app=app,
                callback=draw(
                    _opt()
                    | st.builds(
                        CallbackConfig, url=st.just("https://e.example.com/cb"), secret=_credential
                    )
                ),
                auth=draw(_opt() | st.builds(AuthConfig, token=_credential)) if ws else None,
                stream=draw(_stream_overrides()),
            )
        )
    return tuple(routes)


_configs = st.builds(
    Config,
    daemon=st.builds(
        DaemonConfig,
        log_level=st.sampled_from(["debug", "info", "warning", "error"]),
        log_format=st.sampled_from(["json", "console"]),
        drain_timeout=st.sampled_from(["0s", "30s", "2.5m"]),
        max_streams=st.integers(1, 1_000_000),
    ),
    admin=st.builds(AdminConfig, listen=st.sampled_from(["", "127.0.0.1:18081"]), token=_credential),
    audiosocket=st.builds(
        AudioSocketConfig, listen=st.sampled_from(["", "[::1]:9092"]), reuse_port=st.booleans()
    ),
    websocket=st.builds(WebSocketConfig, listen=st.sampled_from(["", "0.0.0.0:8080"])),
    rtp=st.builds(RtpConfig, bind=st.sampled_from(["127.0.0.1", "::"]), ports=st.just("2000-2001")),
    records=st.builds(RecordsConfig, path=_safe_text.filter(bool)),
    callbacks=st.builds(CallbacksConfig, concurrency=st.integers(1, 1024)),
    stream=st.builds(StreamConfig, degraded_at=st.just(()), hold_audio=_safe_text),
    routes=_routes(),
)


@settings(max_examples=60, deadline=None)
@given(_configs)
def test_dump_round_trips_generated_configs(config: Config) -> None:
    text = dump_config(config)
    again = parse_config(text)
    assert again == _resolved(config)
    assert dump_config(again) == text


def test_dump_escapes_awkward_strings() -> None:
    awkward = "a\"b\\c\n\t\x7f\x01 é 😀 'q'"
    config = Config(
        stream=StreamConfig(hold_audio=awkward),
        # A credential is visible ASCII, but may hold TOML's own quote and escape.
        admin=AdminConfig(token="a\"b\\c'q'"),
        routes=(_route("ws", "websocket", path="/x"),),
    )
    config = msgspec.structs.replace(
        config,
        routes=(
            msgspec.structs.replace(
                config.routes[0],
                app=AppConfig(url="ws://a.example.com/", headers={"X-Odd": "v'\"\\é"}),
            ),
        ),
    )
    assert parse_config(dump_config(config)) == _resolved(config)


# --------------------------------------------------------------------------- the dialect registry

ASTERISK_ROUTE = """
[[routes]]
name = "asterisk"
match = { listener = "websocket", subprotocol = "media" }
carrier = "asterisk_ws"
carrier_options = { answer = true, call_id_query = "call" }
app = { url = "ws://127.0.0.1:9000/agent", encapsulation = "asterisk_ws", sample_rate = 16000, options = { control_format = "json" } }
"""


def test_carriers_and_encapsulations_come_from_the_registry() -> None:
    config = parse_config(ASTERISK_ROUTE + WS_ROUTE.replace("twilio", "exotel"))
    route = config.routes[0]
    assert route.carrier == "asterisk_ws"
    assert route.carrier_options == {"answer": True, "call_id_query": "call"}
    assert route.app.options == {"control_format": "json"}
    assert config.routes[1].carrier == "exotel"
    # The dump round-trips the dialect's own keys.
    again = parse_config(dump_config(config)).routes[0]
    assert (again.carrier_options, again.app.options) == (route.carrier_options, route.app.options)
    assert again.match.subprotocol == "media"


def test_routes_match_by_subprotocol() -> None:
    config = parse_config(ASTERISK_ROUTE + WS_ROUTE)
    found = match_route(config, "websocket", "/anything", {}, {}, ("media",))
    assert found is not None and found.name == "asterisk"
    found = match_route(config, "websocket", "/twilio", {}, {}, ())
    assert found is not None and found.name == "ws"
    assert match_route(config, "websocket", "/anything", {}, {}, ()) is None


@pytest.mark.parametrize(
    ("text", "path", "words"),
    [
        (
            ASTERISK_ROUTE.replace("answer = true", "anwser = true"),
            "routes[0].carrier_options.anwser",
            "unknown key 'anwser'; allowed keys: answer, call_id_query, command_format",
        ),
        (
            ASTERISK_ROUTE.replace("answer = true", 'answer = "yes"'),
            "routes[0].carrier_options.answer",
            "must be a bool",
        ),
        (
            ASTERISK_ROUTE.replace('control_format = "json"', 'control_format = "xml"'),
            "routes[0].app.options.control_format",
            "must be one of 'plain-text', 'json'",
        ),
        (
            RTP_ROUTE + "carrier_options = { answer = true }",
            "routes[0].carrier_options",
            "only websocket routes",
        ),
        (
            WS_ROUTE + "carrier_options = { x = 1 }",
            "routes[0].carrier_options.x",
            "none are allowed in carrier_options",
        ),
        (
            ASTERISK_ROUTE.replace('subprotocol = "media"', 'subprotocol = "a b"'),
            "routes[0].match.subprotocol",
            "not a valid token",
        ),
        (
            RTP_ROUTE.replace('listener = "rtp"', 'listener = "rtp", subprotocol = "media"'),
            "routes[0].match.subprotocol",
            "only websocket routes",
        ),
        (
            WS_ROUTE.replace('carrier = "twilio"', 'carrier = "sln"'),
            "routes[0].carrier",
            "invalid value 'sln'; allowed: 'twilio', 'telnyx', 'plivo', 'asterisk_ws', 'exotel', 'vonage'",
        ),
        (
            WS_ROUTE.replace("twilio", "exotel") + "auth = { twilio_auth_token = 't' }",
            "routes[0].auth.twilio_auth_token",
            'carrier = "twilio"',
        ),
        # Telnyx L16 runs at 8 and 16 kHz: this was accepted and failed at every connect.
        (
            WS_ROUTE.replace(
                'encapsulation = "twilio"', 'encapsulation = "telnyx", codec = "l16", sample_rate = 24000'
            ),
            "routes[0].app.sample_rate",
            "telnyx runs at 8000/16000 Hz, not 24000",
        ),
        (
            WS_ROUTE.replace('encapsulation = "twilio"', 'encapsulation = "asterisk_ws", codec = "pcma", sample_rate = 16000'),
            "routes[0].app.codec",
            'use codec = "l16" for 16000 Hz',
        ),
    ],
)
def test_registry_rules_name_the_field(text: str, path: str, words: str) -> None:
    err = error_of(text)
    assert err.path == path, err
    assert words in err.message, err


def test_an_empty_codec_is_the_encapsulations_default() -> None:
    route = parse_config(WS_ROUTE).routes[0]
    assert route.app.codec == ""  # twilio: pcmu, the only one it carries
    sln16 = parse_config(RTP_ROUTE.replace('app = { url = "echo:" }', 'app = { url = "echo:", sample_rate = 16000 }'))
    assert sln16.routes[0].app.codec == ""  # sln: l16 at any rate
