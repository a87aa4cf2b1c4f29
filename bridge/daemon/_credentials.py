"""Comparing credentials a peer presents with the configured ones.

``hmac.compare_digest`` on two ``str`` raises ``TypeError`` as soon as either holds a
non-ASCII character, so a hostile ``?token=%C3%A9`` used to become an HTTP 500 with a
traceback instead of a 401. Everything here compares *bytes*: the text is encoded as
UTF-8 with ``surrogatepass`` (so even a lone surrogate from a ``surrogateescape``
decode encodes, and simply never matches). The configured side is visible ASCII
(``_config._credential``), so no encoding question can make a wrong value match.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

__all__ = ["as_bytes", "matches", "matches_any"]


def as_bytes(text: str | bytes) -> bytes:
    """``text`` as UTF-8 bytes; never raises (lone surrogates pass through)."""
    if isinstance(text, bytes):
        return text
    return text.encode("utf-8", "surrogatepass")


def matches(offered: str | bytes, expected: str | bytes) -> bool:
    """Constant-time equality of two credentials, compared as bytes. An empty
    ``offered`` never matches (an unset credential is not a wildcard)."""
    given = as_bytes(offered)
    return bool(given) and hmac.compare_digest(given, as_bytes(expected))


def matches_any(offered: Iterable[str | bytes], expected: str | bytes) -> bool:
    """True when any of ``offered`` matches. Every candidate is compared (no early
    exit), so the time taken does not tell which position matched."""
    want = as_bytes(expected)
    found = False
    for candidate in offered:
        given = as_bytes(candidate)
        found |= bool(given) and hmac.compare_digest(given, want)
    return found
