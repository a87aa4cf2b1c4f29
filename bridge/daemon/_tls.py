"""TLS of the ``[websocket]`` listener: the server's ``ssl.SSLContext``, built from the
configured files and checked field by field.

Carriers dial ``wss://`` (Twilio, Vonage and Exotel accept nothing else), so the listener
either terminates TLS itself (``tls_cert``/``tls_key``) or sits behind a proxy that does
(``trusted_proxies``). The same function serves ``bridge check-config``, start-up and
the SIGHUP reload, so a file that passes the check is one the listener can load, and an
error names the key: ``websocket.tls_cert: cannot read /etc/bridge/tls/fullchain.pem:
Permission denied``, ``websocket.tls_key: does not match the certificate in tls_cert``.

Reload: the listener asks :class:`ServerTls` for the current context at every TLS
handshake, so replacing it (SIGHUP) serves the new certificate to new connections while
live ones keep the session they negotiated.
"""

from __future__ import annotations

import logging
import re
import ssl

import attrs

from .._errors import ConfigError
from ._config import WebSocketConfig

__all__ = ["ServerTls", "check_tls_files", "load_server_context"]

logger = logging.getLogger("bridge.daemon.tls")

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
# RFC 7468 §2: the label of a PEM block. The first block of tls_cert must be the server's
# own certificate (RFC 8446 §4.4.2: the sender's certificate comes first in the list).
_PEM_BEGIN_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
# A certificate chain or a key file is a few KiB; a bound keeps a wrong path (a log
# file, a device) from being read whole.
_MAX_PEM_BYTES = 1 << 20


def _read(path: str, field: str, file: str | None) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.strerror or exc}", path=field, file=file
        ) from None
    if len(data) > _MAX_PEM_BYTES:
        raise ConfigError(f"{path} is over 1 MiB: not a PEM file", path=field, file=file)
    return data


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal (and block the daemon).
    raise ValueError("encrypted")


def load_server_context(
    cfg: WebSocketConfig, *, section: str = "websocket", file: str | None = None
) -> ssl.SSLContext | None:
    """The listener's server context, or None when ``cfg`` has no TLS.

    Raises ``ConfigError`` naming ``<section>.tls_cert`` or ``<section>.tls_key``: a file
    that cannot be read, holds no PEM certificate (or does not start with one), a key
    that is not a PEM private key, is encrypted, or does not match the certificate.
    """
    if not cfg.tls:
        return None
    cert_field, key_field = f"{section}.tls_cert", f"{section}.tls_key"
    cert_pem = _read(cfg.tls_cert, cert_field, file)
    first = _PEM_BEGIN_RE.search(cert_pem)
    if first is None or first[1] != b"CERTIFICATE":
        found = f"its first PEM block is {first[1].decode()!r}" if first else "it has no PEM block"
        raise ConfigError(
            f"{cfg.tls_cert} must start with the server's certificate "
            f"(-----BEGIN CERTIFICATE-----), then any intermediates; {found}",
            path=cert_field,
            file=file,
        )
    try:
        # Parses every certificate in the file: a damaged one fails here, not later as
        # an anonymous "PEM lib" error from load_cert_chain.
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=cert_pem.decode("ascii", "replace")
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{cfg.tls_cert}: not a valid PEM certificate chain ({exc.reason or exc})",
            path=cert_field,
            file=file,
        ) from None
    key_pem = _read(cfg.tls_key, key_field, file)
    if b"PRIVATE KEY-----" not in key_pem:
        raise ConfigError(
            f"{cfg.tls_key} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
            path=key_field,
            file=file,
        )

    # Mozilla's "intermediate" profile: TLS 1.2+, and for TLS 1.2 only ECDHE key
    # exchange with AEAD ciphers (the default context also allows CBC suites). TLS 1.3
    # suites are all AEAD and not affected by set_ciphers. No compression, no SSLv2/3.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = _MIN_VERSIONS[cfg.tls_min_version]
    context.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL")
    # RFC 5746 renegotiation is a CPU amplification lever for a client and nothing a
    # media stream needs (TLS 1.3 has none at all).
    context.options |= ssl.OP_NO_RENEGOTIATION
    # RFC 7301: say which protocol runs inside; a WebSocket upgrade is HTTP/1.1
    # (RFC 6455 §4.1). A client that offers only h2 gets no ALPN answer, not an error.
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key, password=_no_password)
    except ValueError:
        raise ConfigError(
            f"{cfg.tls_key} is encrypted; bridge needs an unencrypted key "
            "(keep it private with file permissions, see docs/operations.md)",
            path=key_field,
            file=file,
        ) from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            message = (
                f"{cfg.tls_key} does not match the certificate in tls_cert "
                f"({cfg.tls_cert}: its first certificate must be the server's own)"
            )
        else:
            message = f"{cfg.tls_key}: not a usable private key ({exc.reason or exc})"
        raise ConfigError(message, path=key_field, file=file) from None
    except OSError as exc:  # the file vanished between the check and the load
        raise ConfigError(f"cannot load: {exc.strerror or exc}", path=cert_field, file=file) from None
    return context


def check_tls_files(cfg: WebSocketConfig, *, file: str | None = None) -> None:
    """``bridge check-config`` and ``bridge run``: the TLS files load (ConfigError if not)."""
    load_server_context(cfg, file=file)


@attrs.define(eq=False)
class ServerTls:
    """The listener's current TLS context. The listener calls :meth:`current` at every
    handshake; :meth:`swap` (SIGHUP) serves a new certificate from the next one on."""

    context: ssl.SSLContext
    cert_file: str

    def current(self) -> ssl.SSLContext:
        return self.context

    def swap(self, context: ssl.SSLContext, cert_file: str) -> None:
        self.context = context
        self.cert_file = cert_file
