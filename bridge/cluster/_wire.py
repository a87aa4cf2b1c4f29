"""The internal cluster protocol: authenticated request/response frames between bridge
processes, over TCP (``[cluster] listen``) or a Unix socket (same host, with the
connection's descriptor attached as ``SCM_RIGHTS``).

One exchange per connection::

    server -> client   16 random bytes (the server's challenge)
    client -> server   frame: request (JSON) + payload, MAC'd over the challenge
    server -> client   frame: response (JSON), MAC'd over the client's nonce
    (then, for a relayed hand-off only: the carrier's raw bytes, both ways)

A frame is ``u32 json length | u32 payload length | json | payload | 32-byte MAC``,
the MAC being HMAC-SHA256(cluster secret, label | challenge | json | payload). The
challenge makes every request single-use (no replay); the response is MAC'd too, so a
client never hands a connection to something that merely listens on the port. MACs are
compared as bytes in constant time (``hmac.compare_digest``). Frames are bounded
(``MAX_JSON_BYTES``, ``MAX_PAYLOAD_BYTES``) and every read is bounded in time by the
caller.

The framing and the MAC are pure functions (``encode_frame``/``FrameParser``), fuzzed in
the tests; the Trio helpers only move their bytes.
"""

from __future__ import annotations

import array
import hashlib
import hmac
import os
import socket
import struct
from typing import Any, Literal

import msgspec
import trio

from .._errors import HandoffFailed

__all__ = [
    "CHALLENGE_BYTES",
    "MAX_JSON_BYTES",
    "MAX_PAYLOAD_BYTES",
    "FrameParser",
    "Handoff",
    "Request",
    "Response",
    "encode_frame",
    "mac",
]

CHALLENGE_BYTES = 16
MAC_BYTES = 32
#: A request or response document: a handful of fields, or one stream's snapshot.
MAX_JSON_BYTES = 4 << 20
#: What a handshake may have read before the hand-off (the start message and a few
#: media messages; bounded by the WebSocket listener's max_message_bytes in practice).
MAX_PAYLOAD_BYTES = 8 << 20
_HEADER = struct.Struct("!II")
_REQUEST_LABEL = b"bridge-cluster-v1 request\0"
_RESPONSE_LABEL = b"bridge-cluster-v1 response\0"


class Handoff(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A WebSocket connection carried from the process it landed on to the owner of its
    stream. ``kind``: a carrier re-dial (resume key known after the ``start``) or an
    accept-mode app connection (stream id from the path)."""

    kind: Literal["carrier", "app"]
    stream_id: str
    route: str
    path: str
    query: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    #: The original peer ("host", port): logs and metrics keep it through a relay.
    peer: tuple[str, int] = ("", 0)
    #: The process it landed on.
    via: str = ""


class Request(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    op: Literal["handoff", "get_stream", "stop_stream", "live_streams", "ping"]
    nonce: str
    #: The sender's node id (for logs).
    node: str = ""
    stream_id: str = ""
    handoff: Handoff | None = None
    #: "fd": the connection's descriptor rides along (Unix socket); "relay": this very
    #: connection carries its bytes from now on.
    mode: Literal["fd", "relay", ""] = ""


class Response(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    ok: bool
    error: str = ""
    result: Any = None


_encode = msgspec.json.Encoder().encode
_decode_request = msgspec.json.Decoder(Request).decode
_decode_response = msgspec.json.Decoder(Response).decode


def mac(secret: bytes, label: bytes, challenge: bytes, body: bytes, payload: bytes) -> bytes:
    h = hmac.new(secret, label, hashlib.sha256)
    h.update(challenge)
    h.update(_HEADER.pack(len(body), len(payload)))
    h.update(body)
    h.update(payload)
    return h.digest()


def encode_frame(
    secret: bytes, label: bytes, challenge: bytes, doc: msgspec.Struct, payload: bytes = b""
) -> bytes:
    body = _encode(doc)
    if len(body) > MAX_JSON_BYTES or len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError("cluster frame too large")
    return (
        _HEADER.pack(len(body), len(payload))
        + body
        + payload
        + mac(secret, label, challenge, body, payload)
    )


class FrameParser:
    """Sans-IO: feed bytes, get ``(json, payload)`` once one whole frame with a valid MAC
    is in. Raises ``HandoffFailed`` on an oversize frame or a wrong MAC."""

    def __init__(self, secret: bytes, label: bytes, challenge: bytes) -> None:
        self._secret = secret
        self._label = label
        self._challenge = challenge
        self._buf = bytearray()
        self._need: int | None = None
        self._lens: tuple[int, int] = (0, 0)

    @property
    def wanted(self) -> int:
        """Bytes still needed for the frame (at least 1 while incomplete)."""
        if self._need is None:
            return max(1, _HEADER.size - len(self._buf))
        return max(0, self._need - len(self._buf))

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        self._buf += data
        if self._need is None:
            if len(self._buf) < _HEADER.size:
                return None
            json_len, payload_len = _HEADER.unpack_from(self._buf)
            if json_len > MAX_JSON_BYTES or payload_len > MAX_PAYLOAD_BYTES:
                raise HandoffFailed(f"cluster frame too large ({json_len}+{payload_len} bytes)")
            self._lens = (json_len, payload_len)
            self._need = _HEADER.size + json_len + payload_len + MAC_BYTES
        if len(self._buf) < self._need:
            return None
        if len(self._buf) > self._need:
            raise HandoffFailed("bytes after the cluster frame")
        json_len, payload_len = self._lens
        start = _HEADER.size
        body = bytes(self._buf[start : start + json_len])
        payload = bytes(self._buf[start + json_len : start + json_len + payload_len])
        given = bytes(self._buf[start + json_len + payload_len :])
        want = mac(self._secret, self._label, self._challenge, body, payload)
        if not hmac.compare_digest(given, want):
            raise HandoffFailed("bad cluster MAC (wrong secret, or not a bridge process)")
        return body, payload


def decode_request(body: bytes) -> Request:
    try:
        return _decode_request(body)
    except msgspec.DecodeError as exc:
        raise HandoffFailed(f"malformed cluster request: {exc}") from None


def decode_response(body: bytes) -> Response:
    try:
        return _decode_response(body)
    except msgspec.DecodeError as exc:
        raise HandoffFailed(f"malformed cluster response: {exc}") from None


def new_nonce() -> bytes:
    return os.urandom(CHALLENGE_BYTES)


# --------------------------------------------------------------------------- Trio I/O


async def read_exact(sock: trio.socket.SocketType, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = await sock.recv(n - len(out))
        if not chunk:
            raise HandoffFailed("cluster peer closed the connection")
        out += chunk
    return bytes(out)


async def read_frame(
    sock: trio.socket.SocketType, parser: FrameParser, *, want_fds: bool = False
) -> tuple[bytes, bytes, list[int]]:
    """Read one frame, exactly (never a byte past it: a relay's bytes follow). With
    ``want_fds``, descriptors passed as SCM_RIGHTS on the way are collected."""
    fds: list[int] = []
    try:
        while True:
            n = parser.wanted
            if want_fds:
                data, ancdata, _flags, _addr = await sock.recvmsg(
                    n, socket.CMSG_SPACE(4 * array.array("i").itemsize)
                )
                for level, kind, cdata in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        got = array.array("i")
                        got.frombytes(cdata[: len(cdata) - len(cdata) % got.itemsize])
                        fds.extend(got)
            else:
                data = await sock.recv(n)
            if not data:
                raise HandoffFailed("cluster peer closed the connection mid-frame")
            done = parser.feed(data)
            if done is not None:
                return done[0], done[1], fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


async def send_all(sock: trio.socket.SocketType, data: bytes, fd: int | None = None) -> None:
    view = memoryview(data)
    if fd is not None:
        # The descriptor rides on the first byte(s) of the frame.
        sent = await sock.sendmsg(
            [view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())]
        )
        view = view[sent:]
    while view:
        sent = await sock.send(view)
        view = view[sent:]
