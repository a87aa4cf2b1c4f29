"""Admission of new connections to a listener: pending limits per peer and in all.

A connection is *pending* from TCP accept until it has proved itself (an AudioSocket
UUID frame; a WebSocket upgrade and, for a carrier, its ``start`` message). Pending
connections cost a socket and a task each and prove nothing, so they are what a
slowloris attack piles up. A limit on their total alone lets one address fill it and
lock every caller out (an attacker-style test did exactly that: 1,100 idle connections
from one address, renewed at 13/s, failed 39 of 40 new calls). So there are two:

* ``max_pending_per_peer`` per source address -- an IPv4 address, or an IPv6 /64, the
  smallest block a single host on IPv6 is usually given (RFC 6177) -- and
* ``max_pending`` in all, the backstop against many addresses at once.

A connection over either is refused *at accept*, before a task exists for it; nobody
already admitted is evicted. Pure: no Trio, no sockets.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import attrs

__all__ = ["Admission", "Pending", "Refusal", "peer_key"]

Refusal = Literal["too_many_pending_per_peer", "too_many_pending"]


def peer_key(host: str) -> str:
    """The address the per-peer limit counts by: an IPv4 address as it is; an IPv6
    address by its /64; an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, what a dual
    stack socket reports) as the IPv4 address; anything else (a Unix socket path, "")
    as it is."""
    if ":" not in host:
        return host
    try:
        address = ipaddress.IPv6Address(host.partition("%")[0])
    except ValueError:
        return host
    mapped = address.ipv4_mapped
    if mapped is not None:
        return str(mapped)
    network = ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
    return str(network)


@attrs.define(slots=True, eq=False)
class Pending:
    """One admitted pending connection; :meth:`release` once it is no longer pending
    (it became a call, or it ended). Idempotent."""

    _admission: Admission | None = attrs.field(alias="admission")
    key: str

    @property
    def held(self) -> bool:
        return self._admission is not None

    def release(self) -> None:
        admission = self._admission
        if admission is not None:
            self._admission = None
            admission._release(self.key)


@attrs.define(slots=True, eq=False)
class Admission:
    """Pending-connection counts of one listener."""

    max_pending: int
    max_pending_per_peer: int
    pending: int = attrs.field(init=False, default=0)
    _by_peer: dict[str, int] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.max_pending < 1 or self.max_pending_per_peer < 1:
            raise ValueError("pending limits must be at least 1")

    def pending_from(self, host: str) -> int:
        return self._by_peer.get(peer_key(host), 0)

    @property
    def peers(self) -> int:
        """Distinct peers (per-peer keys) with a pending connection."""
        return len(self._by_peer)

    def admit(self, host: str) -> Pending | Refusal:
        """A :class:`Pending` for a new connection from ``host``, or why it is refused.
        A per-peer limit below the total is checked first: a peer over its own share is
        told so even when the listener is full too. (One equal to the total is no limit
        of its own: the refusal is then ``too_many_pending``.)"""
        key = peer_key(host)
        per_peer = self.max_pending_per_peer
        if per_peer < self.max_pending and self._by_peer.get(key, 0) >= per_peer:
            return "too_many_pending_per_peer"
        if self.pending >= self.max_pending:
            return "too_many_pending"
        self.pending += 1
        self._by_peer[key] = self._by_peer.get(key, 0) + 1
        return Pending(self, key)

    def _release(self, key: str) -> None:
        self.pending -= 1
        left = self._by_peer[key] - 1
        if left:
            self._by_peer[key] = left
        else:
            del self._by_peer[key]  # the table holds only peers with something pending
