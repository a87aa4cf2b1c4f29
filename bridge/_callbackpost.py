"""One status-callback POST attempt, and the delay before the next one.

Shared by the two delivery engines, which differ only in where an event waits between
attempts: the local SQLite outbox (``daemon/_outbox.py``) and, in cluster mode, the
node's Redis stream (``cluster/_events.py``, which also delivers a dead node's events).
Both send the same request and read the answer the same way, so a receiver sees one
behaviour whichever process delivers (docs/callbacks.md):

* ``POST`` of the exact event body, ``X-Bridge-Event-Id`` (the same on every attempt, so
  the receiver can de-duplicate) and, with a secret, ``X-Bridge-Signature`` made afresh
  for every attempt;
* 2xx: delivered. Connect errors, timeouts, 5xx, 408 and 429: retry (``Retry-After``
  honoured). Any other status, or a URL that cannot be sent to: failed for good;
* retries wait a full-jitter exponential backoff.

Below the daemon and the cluster in the layering: the signature function is passed in
(``daemon._events.sign``), so this module imports nothing of either.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final, Literal

import attrs
import httpx
import trio

__all__ = [
    "MAX_ERROR_BODY",
    "MAX_RESPONSE_BYTES",
    "CallbackOutcome",
    "Sign",
    "describe_error",
    "parse_retry_after",
    "post_callback",
    "retry_delay_s",
]

# Enough of an error response to explain it in a log line; the rest is discarded.
MAX_ERROR_BODY: Final = 512
# Bytes read from any response before it is dropped: a receiver cannot make us buffer
# megabytes.
MAX_RESPONSE_BYTES: Final = 64 * 1024

# Statuses that say the receiver as a whole is overloaded or unavailable (as opposed
# to a 500 that may be about this one event).
_ORIGIN_DOWN_STATUSES: Final = frozenset({429, 502, 503, 504})

#: ``sign(body, secret, unix_time)`` -> the ``X-Bridge-Signature`` value.
Sign = Callable[[bytes, str, int], str]


@attrs.frozen(slots=True)
class CallbackOutcome:
    """What one attempt came to. ``error`` says why when it was not delivered."""

    kind: Literal["delivered", "retry", "permanent"]
    error: str = ""
    #: Seconds the receiver asked us to wait (``Retry-After``), if it did.
    retry_after: float | None = None
    # The receiver as a whole is unreachable or overloaded (not just this event): the
    # failure gates every stream sending to the same origin.
    origin_down: bool = False


def describe_error(exc: BaseException) -> str:
    """``"ConnectError: [Errno 111] ..."``; just the type name when the message is empty."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` value (RFC 9110 §10.2.3: delay-seconds or an
    HTTP-date), never negative; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def _retryable_status(status: int) -> bool:
    # 408 is the server saying the request took too long: a timeout like any other.
    return status >= 500 or status in (408, 429)


def retry_delay_s(
    attempts: int, retry_after: float | None, *, backoff_s: float, max_backoff_s: float
) -> float:
    """Seconds to wait after ``attempts`` failed attempts: the receiver's ``Retry-After``
    if it gave one, capped at ``max_backoff_s``; otherwise a full-jitter backoff."""
    if retry_after is not None:
        return min(retry_after, max_backoff_s)
    # Full jitter: uniform over [0, capped exponential] spreads a thundering herd
    # of streams retrying against a receiver that just came back.
    ceiling = min(max_backoff_s, backoff_s * 2.0 ** min(attempts - 1, 60))
    return random.uniform(0.0, ceiling)


async def post_callback(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    *,
    event_id: str,
    secret: str,
    sign: Sign,
    user_agent: str,
    timeout_s: float,
    log: logging.Logger,
) -> CallbackOutcome:
    """POST one event to ``url`` and classify the answer. Never raises (but Cancelled):
    every failure is an outcome, and the whole exchange is bounded by ``timeout_s``.
    ``log``: the caller's logger, for the one error logged here (each engine keeps its
    own logger name)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": user_agent,
        "X-Bridge-Event-Id": event_id,
    }
    if secret:
        # Signed per attempt: the timestamp must be fresh for the receiver's tolerance.
        headers["X-Bridge-Signature"] = sign(body, secret, int(time.time()))
    status = 0
    retry_after: str | None = None
    snippet = b""
    # The cancel scope bounds the whole exchange; httpx's own timeouts are per phase
    # and a receiver trickling bytes could outlast them.
    with trio.move_on_after(timeout_s) as scope:
        try:
            async with client.stream("POST", url, content=body, headers=headers) as response:
                status = response.status_code
                retry_after = response.headers.get("retry-after")
                read = 0
                async for chunk in response.aiter_raw():
                    if read < MAX_ERROR_BODY:
                        snippet += chunk[: MAX_ERROR_BODY - read]
                    read += len(chunk)
                    if read > MAX_RESPONSE_BYTES:
                        break
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return CallbackOutcome("permanent", f"bad callback URL: {describe_error(exc)}")
        except (httpx.ConnectError, httpx.TimeoutException) as exc:
            # Refused, unresolvable, unreachable, or not answering in time.
            return CallbackOutcome("retry", describe_error(exc), origin_down=True)
        except httpx.HTTPError as exc:
            return CallbackOutcome("retry", describe_error(exc))
        except Exception as exc:
            # Not a network failure but something about this event httpx refused
            # (e.g. a header it cannot encode). Retrying would loop forever; keep it
            # as failed (visible via the API) instead of crashing the daemon.
            log.exception("callback POST raised unexpectedly")
            return CallbackOutcome("permanent", f"unexpected error: {describe_error(exc)}")
    if scope.cancelled_caught:
        if status:
            return CallbackOutcome(
                "retry",
                f"HTTP {status}, response not finished in {timeout_s:g}s",
                origin_down=True,
            )
        return CallbackOutcome("retry", f"timed out after {timeout_s:g}s", origin_down=True)
    if 200 <= status < 300:
        return CallbackOutcome("delivered")
    detail = f"HTTP {status}"
    text = snippet.decode("utf-8", "replace").strip()
    if text:
        detail += f": {text[:200]}"
    if _retryable_status(status):
        return CallbackOutcome(
            "retry",
            detail,
            parse_retry_after(retry_after),
            origin_down=status in _ORIGIN_DOWN_STATUSES,
        )
    return CallbackOutcome("permanent", detail)
