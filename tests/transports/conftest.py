"""Shared helpers for the transport tests: a WebSocket server on port 0, test TLS certs."""

from __future__ import annotations

import functools
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from bridge import ConnectionClosed
from bridge.transports import WebSocketRequest, serve_websocket

StartServer = Callable[..., Awaitable[int]]


@pytest.fixture
def start_server(nursery: trio.Nursery) -> StartServer:
    """``port = await start_server(handler, **serve_websocket_kwargs)`` on 127.0.0.1:0.

    The server runs in the test's nursery and is cancelled when the test ends.
    """

    async def start(handler: Callable[[WebSocketRequest], Awaitable[object]], **kwargs: Any) -> int:
        addresses = await nursery.start(
            functools.partial(serve_websocket, handler, "127.0.0.1", 0, **kwargs)
        )
        return int(addresses[0][1])

    return start


async def echo_handler(request: WebSocketRequest) -> None:
    """Accept and echo every message until the client closes."""
    ws = await request.accept()
    try:
        while True:
            await ws.send(await ws.receive())
    except ConnectionClosed:
        pass


# ----------------------------------------------------------------------------- TLS


@attrs.frozen
class Pki:
    ca_file: str
    cert_file: str
    key_file: str
    other_ca_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=bridge test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=directory,
    )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost, and an unrelated CA.

    Neither ``trustme`` nor ``cryptography`` is installed, so the ``openssl`` CLI does it.
    """
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    directory = tmp_path_factory.mktemp("pki")
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        cwd=directory,
    )
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
        cwd=directory,
    )
    return Pki(
        ca_file=str(directory / "ca.pem"),
        cert_file=str(directory / "server.pem"),
        key_file=str(directory / "server.key"),
        other_ca_file=str(directory / "other-ca.pem"),
    )
