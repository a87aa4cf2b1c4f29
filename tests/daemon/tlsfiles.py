"""Throwaway PKI for the TLS listener tests: a CA and a server certificate for
127.0.0.1/localhost, written as the PEM files an operator would configure."""

from __future__ import annotations

import ssl
from pathlib import Path

import attrs
import trustme


@attrs.frozen
class ServerCerts:
    ca_file: Path
    """The CA a client pins (``--tls-ca``)."""
    cert_file: Path
    """``tls_cert``: the server's certificate chain, leaf first."""
    key_file: Path
    """``tls_key``."""

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.set_alpn_protocols(["http/1.1"])
        return context

    def websocket_keys(self, **more: str) -> str:
        """``[websocket]`` lines serving this certificate."""
        lines = [f'tls_cert = "{self.cert_file}"', f'tls_key = "{self.key_file}"']
        lines += [f"{k} = {v}" for k, v in more.items()]
        return "\n".join(lines)


def issue(directory: Path, name: str = "a") -> ServerCerts:
    """A new CA and a server certificate from it, in ``directory/name-*.pem``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name=f"bridge test CA {name}")
    server = ca.issue_cert("127.0.0.1", "localhost")
    certs = ServerCerts(
        ca_file=directory / f"{name}-ca.pem",
        cert_file=directory / f"{name}-fullchain.pem",
        key_file=directory / f"{name}-privkey.pem",
    )
    ca.cert_pem.write_to_path(str(certs.ca_file))
    certs.cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(certs.key_file))
    return certs


def install(source: ServerCerts, target: ServerCerts) -> None:
    """Copy ``source``'s certificate and key over ``target``'s files (a renewal that
    replaces the files in place, as certbot's deploy hooks do)."""
    target.cert_file.write_bytes(source.cert_file.read_bytes())
    target.key_file.write_bytes(source.key_file.read_bytes())
