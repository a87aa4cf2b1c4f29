"""The carrier WebSocket listener serving ``wss://`` itself: Twilio-format calls over TLS
(``bridge call`` and trio-websocket as an independent client), the TLS handshake
deadline, the certificate reload on SIGHUP, and ``check-config`` on the TLS files."""

from __future__ import annotations

import json
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from bridge import HandshakeError
from bridge._cli import main
from bridge.daemon._daemon import Daemon
from bridge.dialects import Connected, Start, Stop
from bridge.dialects._twilio import TwilioPlatform
from bridge.tools import CallOptions, place_call, place_calls
from bridge.transports import open_websocket_client

from .conftest import config_text, make_config
from .proc import BridgeProcess, write_config
from .test_app_leg import wait_until
from .test_carrier_leg import carrier_routes, tone_frame
from .tlsfiles import ServerCerts, install, issue


@pytest.fixture
def certs(tmp_path: Path) -> ServerCerts:
    return issue(tmp_path / "tls", "a")


DaemonAt = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def daemon_at(tmp_path: Path) -> AsyncIterator[DaemonAt]:
    """``await start(websocket=..., routes=...)``: a daemon run from a config *file*
    (so that ``reload()`` re-reads it), stopped when the test ends."""
    async with trio.open_nursery() as nursery:

        async def start(*, websocket: str, routes: str | None = None) -> Daemon:
            path = tmp_path / "bridge.toml"
            routes = routes or carrier_routes()
            path.write_text(config_text(tmp_path, routes=routes, websocket=websocket))
            daemon = Daemon(make_config(tmp_path, routes=routes, websocket=websocket), str(path))
            await nursery.start(daemon.serve)
            return daemon

        yield start
        nursery.cancel_scope.cancel()


def _wss(daemon: Daemon, path: str = "/twilio") -> str:
    host, port = daemon.bound["websocket"]
    return f"wss://{host}:{port}{path}"


async def _handshake_ok(url: str, context: ssl.SSLContext) -> None:
    async with open_websocket_client(url, ssl_context=context, handshake_timeout_s=5) as ws:
        assert not ws.closed


# ---------------------------------------------------------------------- calls over wss://


async def test_twilio_calls_over_wss_with_bridge_call(
    daemon_at: DaemonAt, certs: ServerCerts
) -> None:
    """``bridge call --transport twilio --tls-ca`` against bridge's own TLS listener:
    every frame of every call comes back. The TLS leg cannot be read through the read
    poller (no raw fd to read): it runs in the reader-task fallback."""
    daemon = await daemon_at(websocket=certs.websocket_keys())
    assert daemon.poller is not None  # read_poller = true (the default) in this daemon
    with trio.fail_after(30):
        report = await place_calls(
            CallOptions(
                transport="twilio",
                target=_wss(daemon),
                tls_ca=str(certs.ca_file),
                duration_s=1.0,
                calls=3,
                rate=20,
            )
        )
    assert report.ok, report.calls
    for call in report.calls:
        assert call.frames_sent == call.frames_echoed
        assert call.frames_sent + call.pacing_skipped == 50
    assert daemon.metrics.streams_started.labels("websocket", "twilio")._value.get() == 3


async def test_tls_leg_reads_in_the_fallback_mode(daemon_at: DaemonAt, certs: ServerCerts) -> None:
    daemon = await daemon_at(websocket=certs.websocket_keys())
    assert daemon.poller is not None
    twilio = TwilioPlatform("MZ1", "CA1", "AC1")
    with trio.fail_after(15):
        async with open_websocket_client(_wss(daemon), ssl_context=certs.client_context()) as ws:
            for msg in twilio.send(Start("MZ1", "CA1")):
                await ws.send(msg)
            await wait_until(lambda: daemon.manager.live_count == 1)
            await ws.send(twilio.send_audio(tone_frame(1)))
            stream = next(iter(daemon.manager.live()))
            await wait_until(lambda: stream.frames_in > 0)
            # The call leg's reader is a task of its own, not a poller registration.
            assert stream.call.pipe.fileno() == -1
            assert daemon.poller.registered == 0


async def test_twilio_over_wss_with_trio_websocket(daemon_at: DaemonAt, certs: ServerCerts) -> None:
    """An independent TLS + WebSocket client stack (trio-websocket on trio's SSLStream)."""
    daemon = await daemon_at(websocket=certs.websocket_keys())
    host, port = daemon.bound["websocket"]
    twilio = TwilioPlatform("MZ0001", "CA0001", "AC0001")
    received: list[dict[str, Any]] = []
    closes: list[int] = []
    with trio.fail_after(20):
        async with trio_websocket.open_websocket(
            host, port, "/twilio", use_ssl=certs.client_context()
        ) as ws:
            for ev in (Connected(), Start("MZ0001", "CA0001")):
                for msg in twilio.send(ev):
                    await ws.send_message(msg)

            async def reader() -> None:
                try:
                    while True:
                        received.append(json.loads(await ws.get_message()))
                except trio_websocket.ConnectionClosed as exc:
                    closes.append(exc.reason.code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for n in range(50):
                    await ws.send_message(twilio.send_audio(tone_frame(n)))
                    await trio.sleep(0.02)
                await trio.sleep(0.3)
                for msg in twilio.send(Stop()):
                    await ws.send_message(msg)
                await wait_until(lambda: daemon.manager.live_count == 0)
                await wait_until(lambda: bool(closes))
                nursery.cancel_scope.cancel()
    probe = TwilioPlatform("MZ0001", "CA0001", "AC0001")
    sent = {json.loads(probe.send_audio(tone_frame(n)))["media"]["payload"] for n in range(50)}
    echoed = {m["media"]["payload"] for m in received if m["event"] == "media"}
    assert sent <= echoed
    assert closes == [1000]


async def test_alpn_and_minimum_version(daemon_at: DaemonAt, certs: ServerCerts) -> None:
    daemon = await daemon_at(websocket=certs.websocket_keys(tls_min_version='"1.3"'))
    host, port = daemon.bound["websocket"]
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        tls = trio.SSLStream(stream, certs.client_context(), server_hostname=host)
        async with tls:
            await tls.do_handshake()
            assert tls.selected_alpn_protocol() == "http/1.1"
            assert tls.version() == "TLSv1.3"
        old = certs.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(HandshakeError):
            await _handshake_ok(_wss(daemon), old)
    await wait_until(
        lambda: daemon.metrics.bad_input.labels("websocket", "tls_handshake_failed")._value.get()
        == 1
    )


async def test_tls12_offers_aead_suites_only(daemon_at: DaemonAt, certs: ServerCerts) -> None:
    daemon = await daemon_at(websocket=certs.websocket_keys())
    gcm, cbc = certs.client_context(), certs.client_context()
    for context in (gcm, cbc):
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    gcm.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")  # trustme's keys are ECDSA
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA256")
    with trio.fail_after(10):
        await _handshake_ok(_wss(daemon), gcm)
        with pytest.raises(HandshakeError):
            await _handshake_ok(_wss(daemon), cbc)


async def test_plain_ws_to_a_tls_listener_fails_and_is_counted(
    daemon_at: DaemonAt, certs: ServerCerts
) -> None:
    daemon = await daemon_at(websocket=certs.websocket_keys())
    host, port = daemon.bound["websocket"]
    with trio.fail_after(10), pytest.raises(HandshakeError):
        await _handshake_ok(f"ws://{host}:{port}/twilio", certs.client_context())
    await wait_until(
        lambda: daemon.metrics.bad_input.labels("websocket", "tls_handshake_failed")._value.get()
        == 1
    )


async def test_a_peer_that_never_finishes_the_tls_handshake_is_dropped(
    daemon_at: DaemonAt, certs: ServerCerts
) -> None:
    daemon = await daemon_at(
        websocket=certs.websocket_keys(tls_handshake_timeout='"300ms"', max_handshakes="2")
    )
    host, port = daemon.bound["websocket"]
    with trio.fail_after(10):
        # Two silent TCP connections hold both handshake places...
        silent = [await trio.open_tcp_stream(host, port) for _ in range(2)]
        for stream in silent:
            # ...until the deadline: then bridge closes them (EOF, or a reset).
            try:
                assert await stream.receive_some(1) == b""
            except trio.BrokenResourceError:
                pass
            await stream.aclose()
        # The places are free again: a real client gets in.
        await _handshake_ok(_wss(daemon), certs.client_context())
    timeouts = daemon.metrics.bad_input.labels("websocket", "tls_handshake_timeout")
    assert timeouts._value.get() == 2


# ---------------------------------------------------------------------- reload on SIGHUP


async def test_sighup_serves_the_new_certificate_and_keeps_live_calls(
    daemon_at: DaemonAt, certs: ServerCerts, tmp_path: Path
) -> None:
    daemon = await daemon_at(websocket=certs.websocket_keys())
    renewed = issue(tmp_path / "tls", "b")  # another CA: a client can tell them apart
    url = _wss(daemon)
    with trio.fail_after(30):
        await _handshake_ok(url, certs.client_context())
        with pytest.raises(HandshakeError, match="certificate verify failed"):
            await _handshake_ok(url, renewed.client_context())

        # A call that is live across the reload keeps its TLS session and its audio.
        twilio = TwilioPlatform("MZ-live", "CA-live", "AC1")
        got: list[Any] = []
        async with open_websocket_client(url, ssl_context=certs.client_context()) as live:
            for msg in twilio.send(Start("MZ-live", "CA-live")):
                await live.send(msg)

            async def reader() -> None:
                while True:
                    got.append(json.loads(await live.receive()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for n in range(10):
                    await live.send(twilio.send_audio(tone_frame(n)))
                    await trio.sleep(0.02)

                install(renewed, certs)  # the renewal replaces the files in place
                assert daemon.reload()

                await _handshake_ok(url, renewed.client_context())
                # The files of `certs` now hold the renewed certificate; its CA file
                # is still the old CA, which no longer verifies what bridge serves.
                with pytest.raises(HandshakeError, match="certificate verify failed"):
                    await _handshake_ok(url, certs.client_context())
                for n in range(10, 20):
                    await live.send(twilio.send_audio(tone_frame(n)))
                    await trio.sleep(0.02)
                await trio.sleep(0.3)
                nursery.cancel_scope.cancel()
            assert not live.closed
    probe = TwilioPlatform("MZ-live", "CA-live", "AC1")
    sent = {json.loads(probe.send_audio(tone_frame(n)))["media"]["payload"] for n in range(20)}
    echoed = {m["media"]["payload"] for m in got if m.get("event") == "media"}
    assert sent <= echoed
    assert daemon.metrics.config_reloads.labels("applied")._value.get() == 1


@pytest.mark.parametrize("breakage", ["key_mismatch", "missing_key", "garbage_cert"])
async def test_a_bad_new_certificate_keeps_the_old_one(
    daemon_at: DaemonAt,
    certs: ServerCerts,
    tmp_path: Path,
    breakage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = await daemon_at(websocket=certs.websocket_keys())
    other = issue(tmp_path / "tls", "other")
    if breakage == "key_mismatch":
        certs.cert_file.write_bytes(other.cert_file.read_bytes())  # the key was not copied
        field = "websocket.tls_key"
    elif breakage == "missing_key":
        certs.key_file.unlink()
        field = "websocket.tls_key"
    else:
        certs.cert_file.write_text("not a certificate\n")
        field = "websocket.tls_cert"
    assert not daemon.reload()
    assert any(
        "reload rejected" in r.getMessage() and field in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert daemon.metrics.config_reloads.labels("rejected")._value.get() == 1
    with trio.fail_after(10):
        # Still the certificate loaded at start (from memory: the files are broken).
        await _handshake_ok(_wss(daemon), certs.client_context())


async def test_reload_applies_trusted_proxies_but_not_tls_on_off(
    daemon_at: DaemonAt, certs: ServerCerts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await daemon_at(websocket="")
    path = tmp_path / "bridge.toml"
    path.write_text(
        config_text(
            tmp_path,
            routes=carrier_routes(),
            websocket=certs.websocket_keys(trusted_proxies='["10.0.0.0/8"]'),
        )
    )
    assert daemon.reload()
    assert daemon.tls is None  # turning TLS on needs a restart, and says so
    assert any("TLS turned on" in r.getMessage() for r in caplog.records)
    assert not any("[websocket] changed" in r.getMessage() for r in caplog.records)
    assert daemon.config.websocket.trusted_proxies == ("10.0.0.0/8",)
    assert daemon.config.websocket.tls_cert == ""


# ---------------------------------------------------------------------- check-config


def _check(tmp_path: Path, websocket: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "check.toml"
    path.write_text(config_text(tmp_path, websocket=websocket))
    code = main(["check-config", "-c", str(path)])
    return code, capsys.readouterr().err


def test_check_config_accepts_good_tls_files(
    tmp_path: Path, certs: ServerCerts, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = _check(tmp_path, certs.websocket_keys(), capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "case, field, words",
    [
        ("missing_cert", "websocket.tls_cert", "cannot read"),
        ("unreadable_key", "websocket.tls_key", "cannot read"),
        ("key_as_cert", "websocket.tls_cert", "must start with the server's certificate"),
        ("garbage_cert", "websocket.tls_cert", "has no PEM block"),
        ("damaged_cert", "websocket.tls_cert", "not a valid PEM certificate chain"),
        ("cert_as_key", "websocket.tls_key", "holds no PEM private key"),
        ("mismatch", "websocket.tls_key", "does not match the certificate"),
        ("encrypted", "websocket.tls_key", "is encrypted"),
        ("cert_only", "websocket.tls_key", "is required when tls_cert is set"),
        ("bad_version", "websocket.tls_min_version", "allowed: '1.2', '1.3'"),
        ("bad_cidr", "websocket.trusted_proxies[1]", "did you mean '10.0.0.0/8'"),
        ("not_cidr", "websocket.trusted_proxies[0]", "expected an address or a CIDR block"),
    ],
)
def test_check_config_names_the_tls_field(
    tmp_path: Path,
    certs: ServerCerts,
    capsys: pytest.CaptureFixture[str],
    case: str,
    field: str,
    words: str,
) -> None:
    cert, key = certs.cert_file, certs.key_file
    extra: dict[str, str] = {}
    other = issue(tmp_path / "tls", "other")
    if case == "missing_cert":
        cert = tmp_path / "nowhere.pem"
    elif case == "unreadable_key":
        key = tmp_path / "tls"  # a directory: reading it fails
    elif case == "key_as_cert":
        cert = certs.key_file
    elif case == "garbage_cert":
        cert = tmp_path / "garbage.pem"
        cert.write_text("hello\n")
    elif case == "damaged_cert":
        cert = tmp_path / "damaged.pem"
        text = certs.cert_file.read_text().splitlines()
        text[3] = "A" * len(text[3])
        cert.write_text("\n".join(text[:-3] + text[-1:]) + "\n")
    elif case == "cert_as_key":
        key = certs.cert_file
    elif case == "mismatch":
        key = other.key_file
    elif case == "encrypted":
        from cryptography.hazmat.primitives import serialization

        private = serialization.load_pem_private_key(certs.key_file.read_bytes(), None)
        key = tmp_path / "encrypted.pem"
        key.write_bytes(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            )
        )
    elif case == "bad_version":
        extra["tls_min_version"] = '"1.1"'
    elif case == "bad_cidr":
        extra["trusted_proxies"] = '["127.0.0.1", "10.0.0.1/8"]'
    elif case == "not_cidr":
        extra["trusted_proxies"] = '["proxy.internal"]'
    lines = [f'tls_cert = "{cert}"']
    if case != "cert_only":
        lines.append(f'tls_key = "{key}"')
    lines += [f"{k} = {v}" for k, v in extra.items()]
    code, err = _check(tmp_path, "\n".join(lines), capsys)
    assert code == 2, err
    assert f": {field}: " in err, err
    assert words in err, err


async def test_bridge_call_tls_options(daemon_at: DaemonAt, certs: ServerCerts) -> None:
    daemon = await daemon_at(websocket=certs.websocket_keys())
    url = _wss(daemon)
    with trio.fail_after(20):
        # The system store does not know the test CA.
        call = await place_call(CallOptions(transport="twilio", target=url, duration_s=0.2))
        assert call.hangup == "connect_failed" and "certificate verify failed" in call.error
        # --insecure: encrypted, unverified (a self-signed test listener).
        call = await place_call(
            CallOptions(transport="twilio", target=url, duration_s=0.4, insecure=True)
        )
        assert call.ok, call
    with pytest.raises(ValueError, match="not both"):
        CallOptions(transport="twilio", target=url, tls_ca="x", insecure=True)
    with pytest.raises(ValueError, match="wss://"):
        CallOptions(transport="twilio", target="ws://127.0.0.1:1/twilio", insecure=True)
    with pytest.raises(ValueError, match="--tls-ca"):
        CallOptions(transport="twilio", target=url, tls_ca="/nonexistent/ca.pem").ssl_context()
    assert main(["call", "--transport", "twilio", "--target", url, "--tls-ca", "/nonexistent"]) == 2


# ---------------------------------------------------------------------- a real SIGHUP


def _tls_handshake_blocking(addr: tuple[str, int], certs: ServerCerts) -> None:
    """A TLS handshake pinned to ``certs``' CA (raises ssl.SSLError if not trusted)."""
    with (
        socket.create_connection(addr, timeout=5) as raw,
        certs.client_context().wrap_socket(raw, server_hostname=addr[0]) as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"


def test_sighup_to_the_process_reloads_the_certificate(tmp_path: Path) -> None:
    old, new = issue(tmp_path / "tls", "old"), issue(tmp_path / "tls", "new")
    live = issue(tmp_path / "tls", "live")  # the files the config names
    install(old, live)
    config = write_config(tmp_path)
    config.write_text(
        config.read_text().replace(
            '[websocket]\nlisten = ""',
            f'[websocket]\nlisten = "127.0.0.1:0"\ntls_cert = "{live.cert_file}"\n'
            f'tls_key = "{live.key_file}"',
        )
    )
    proc = BridgeProcess(config)
    try:
        proc.wait_ready()
        addr = proc.listeners["websocket"]
        _tls_handshake_blocking(addr, old)
        with pytest.raises(ssl.SSLError):
            _tls_handshake_blocking(addr, new)

        install(new, live)
        proc.proc.send_signal(signal.SIGHUP)
        proc.wait_for("reload: the WebSocket listener serves")
        _tls_handshake_blocking(addr, new)
        with pytest.raises(ssl.SSLError):
            _tls_handshake_blocking(addr, old)

        live.key_file.write_bytes(old.key_file.read_bytes())  # a key that does not match
        proc.proc.send_signal(signal.SIGHUP)
        line = proc.wait_for("reload rejected")
        assert "websocket.tls_key" in line["msg"] and "does not match" in line["msg"]
        _tls_handshake_blocking(addr, new)  # the certificate loaded before stays

        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=10) == 0
    finally:
        proc.kill()
