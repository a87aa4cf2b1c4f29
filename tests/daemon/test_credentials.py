"""Credentials are compared as bytes: a non-ASCII token, signature or accept-mode token is
a 401 and a counted auth failure, never a 500 and a traceback; the config refuses
non-ASCII tokens and secrets, naming the field."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge._errors import ConfigError
from bridge.daemon._carrier import twilio_signature
from bridge.daemon._config import parse_config
from bridge.daemon._daemon import Daemon
from bridge.daemon._events import sign, verify_signature

from .asclient import AudioSocketCaller
from .conftest import make_config
from .test_check_config_cli import check_config
from .test_garbage import read_to_eof, wait_until

TWILIO_ROUTE = """
[[routes]]
name = "tw"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "echo:", encapsulation = "sln" }
auth = { token = "s3cret", twilio_auth_token = "tw-token" }
"""

ACCEPT_ROUTE = """
[[routes]]
name = "as-accept"
match = { listener = "audiosocket" }
app = { mode = "accept", token = "app-token", encapsulation = "sln" }
stream = { accept_timeout = "5s" }
"""


async def raw_upgrade(host: str, port: int, target: bytes, headers: bytes = b"") -> bytes:
    """An upgrade request written byte by byte (so it can carry what an HTTP client would
    refuse to send); returns the daemon's whole answer."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET " + target + b" HTTP/1.1\r\n"
        b"Host: " + f"{host}:{port}".encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + headers + b"\r\n"
    )
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request)
        return await read_to_eof(stream)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer[9:12])


def auth_failures(daemon: Daemon, route: str) -> float:
    return float(daemon.metrics.auth_failures.labels("websocket", route)._value.get())


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]


async def test_non_ascii_query_token_is_401(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(15):
        daemon: Daemon = await daemon_factory(make_config(tmp_path, routes=TWILIO_ROUTE))
        host, port = daemon.bound["websocket"]
        answer = await raw_upgrade(host, port, b"/twilio?token=%C3%A9")
        assert status_of(answer) == 401
        assert b"Traceback" not in answer and len(answer) < 600
        # The bearer header path with raw non-ASCII bytes, too.
        answer = await raw_upgrade(host, port, b"/twilio", b"Authorization: Bearer \xc3\xa9\r\n")
        assert status_of(answer) == 401
    assert auth_failures(daemon, "tw") == 2
    no_errors(bridge_logs)


async def test_non_ascii_twilio_signature_is_401(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(15):
        daemon: Daemon = await daemon_factory(make_config(tmp_path, routes=TWILIO_ROUTE))
        host, port = daemon.bound["websocket"]
        answer = await raw_upgrade(
            host, port, b"/twilio?token=s3cret", b"X-Twilio-Signature: \xc3\xa9\xff==\r\n"
        )
        assert status_of(answer) == 401
        # The right signature still opens the stream (bytes compare the same as before).
        good = twilio_signature("tw-token", f"ws://{host}:{port}/twilio?token=s3cret")
        answer = await raw_upgrade(
            host, port, b"/twilio?token=s3cret", f"X-Twilio-Signature: {good}\r\n".encode()
        )
        assert status_of(answer) == 101
    assert auth_failures(daemon, "tw") == 1
    no_errors(bridge_logs)


async def test_non_ascii_accept_mode_token_is_401(
    daemon_factory: Any, tmp_path: Path, bridge_logs: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(15):
        daemon: Daemon = await daemon_factory(make_config(tmp_path, routes=ACCEPT_ROUTE))
        caller = await AudioSocketCaller.connect(*daemon.bound["audiosocket"])
        await wait_until(lambda: daemon.manager.live_count == 1)
        stream_id = daemon.live_streams()[0]["stream_id"]
        host, port = daemon.bound["websocket"]
        target = f"/v1/streams/{stream_id}/media?token=%C3%A9".encode()
        assert status_of(await raw_upgrade(host, port, target)) == 401
        await caller.aclose()
        await wait_until(lambda: daemon.manager.live_count == 0)
    assert auth_failures(daemon, "as-accept") == 1
    no_errors(bridge_logs)


@pytest.mark.parametrize(
    ("fragment", "path"),
    [
        (
            TWILIO_ROUTE.replace('token = "s3cret"', 'token = "s3crét"'),
            "routes[0].auth.token",
        ),
        (
            TWILIO_ROUTE.replace('"tw-token"', '"tw-tökén"'),
            "routes[0].auth.twilio_auth_token",
        ),
        (ACCEPT_ROUTE.replace('"app-token"', '"app-tokén"'), "routes[0].app.token"),
        (
            ACCEPT_ROUTE + 'callback = { url = "http://127.0.0.1:9/e", secret = "sécret" }\n',
            "routes[0].callback.secret",
        ),
    ],
)
def test_config_rejects_non_ascii_credentials(fragment: str, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(fragment)
    assert info.value.path == path, str(info.value)
    assert "ASCII" in info.value.message
    # The error never echoes the secret itself.
    assert "é" not in str(info.value) and "ö" not in str(info.value)


def test_config_rejects_non_ascii_admin_token() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[admin]\ntoken = "tökén"\n')
    assert info.value.path == "admin.token"


def test_check_config_names_the_non_ascii_route_token(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(TWILIO_ROUTE.replace('token = "s3cret"', 'token = "s3crét"'), "utf-8")
    proc = check_config(bad)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith(f"error: {bad}: routes[0].auth.token: "), proc.stderr


@pytest.mark.parametrize("candidate", ["é" * 64, "\udce9" * 64, "", "v1"])
def test_callback_signature_check_never_raises(candidate: str) -> None:
    body = b'{"event": "StartStream"}'
    header = sign(body, "secret", 1_700_000_000)
    assert verify_signature(header, body, "secret", now=1_700_000_000)
    forged = f"t=1700000000,v1={candidate}"
    assert not verify_signature(forged, body, "secret", now=1_700_000_000)
