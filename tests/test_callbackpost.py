"""One status-callback POST (``bridge/_callbackpost.py``), against real HTTP servers on
127.0.0.1: the outcome both delivery engines (the SQLite outbox and cluster mode) act on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
import trio

from bridge._callbackpost import (
    MAX_RESPONSE_BYTES,
    CallbackOutcome,
    parse_retry_after,
    post_callback,
    retry_delay_s,
)
from bridge.daemon._events import sign, verify_signature

from .daemon.callback_receiver import CallbackReceiver, open_callback_receiver

_LOG = logging.getLogger("tests.callbackpost")
_BODY = b'{"event":"StartStream"}'


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(follow_redirects=False) as c:
        yield c


@pytest.fixture
async def rx() -> AsyncIterator[CallbackReceiver]:
    async with open_callback_receiver() as receiver:
        yield receiver


async def _post(
    client: httpx.AsyncClient, url: str, *, secret: str = "", timeout_s: float = 5.0
) -> CallbackOutcome:
    with trio.fail_after(timeout_s + 5):
        return await post_callback(
            client,
            url,
            _BODY,
            event_id="ev-1",
            secret=secret,
            sign=sign,
            user_agent="bridge/test",
            timeout_s=timeout_s,
            log=_LOG,
        )


async def test_2xx_is_delivered_with_the_signed_request(
    client: httpx.AsyncClient, rx: CallbackReceiver
) -> None:
    outcome = await _post(client, rx.url, secret="s3cret")
    assert outcome == CallbackOutcome("delivered")
    [request] = rx.requests
    assert request.method == "POST"
    assert request.body == _BODY
    assert request.headers["x-bridge-event-id"] == "ev-1"
    assert request.headers["user-agent"] == "bridge/test"
    assert request.headers["content-type"] == "application/json"
    assert verify_signature(request.headers["x-bridge-signature"], _BODY, "s3cret")


async def test_no_secret_no_signature(client: httpx.AsyncClient, rx: CallbackReceiver) -> None:
    assert (await _post(client, rx.url)).kind == "delivered"
    assert "x-bridge-signature" not in rx.requests[0].headers


async def test_503_with_retry_after_is_a_retry_with_the_delay(
    client: httpx.AsyncClient, rx: CallbackReceiver
) -> None:
    rx.respond(503, retry_after=7)
    outcome = await _post(client, rx.url)
    assert outcome.kind == "retry"
    assert outcome.retry_after == 7.0
    assert outcome.origin_down  # the receiver as a whole is unavailable
    assert outcome.error == "HTTP 503: error 503"


async def test_500_is_a_retry_of_this_event_only(
    client: httpx.AsyncClient, rx: CallbackReceiver
) -> None:
    rx.respond(500)
    outcome = await _post(client, rx.url)
    assert (outcome.kind, outcome.retry_after, outcome.origin_down) == ("retry", None, False)


async def test_404_is_permanent(client: httpx.AsyncClient, rx: CallbackReceiver) -> None:
    rx.respond(404)
    assert await _post(client, rx.url) == CallbackOutcome("permanent", "HTTP 404: error 404")


async def test_a_receiver_that_never_answers_times_out_as_retry(
    client: httpx.AsyncClient, rx: CallbackReceiver
) -> None:
    rx.respond("hang")
    start = trio.current_time()
    outcome = await _post(client, rx.url, timeout_s=0.3)
    assert trio.current_time() - start < 3.0
    assert outcome == CallbackOutcome("retry", "timed out after 0.3s", origin_down=True)


async def test_a_refused_connection_is_a_retry_with_the_origin_down(
    client: httpx.AsyncClient,
) -> None:
    async with open_callback_receiver(up=False) as dead:
        outcome = await _post(client, dead.url)
    assert outcome.kind == "retry" and outcome.origin_down
    assert outcome.error.startswith("ConnectError")


async def test_a_url_that_cannot_be_sent_to_is_permanent(client: httpx.AsyncClient) -> None:
    outcome = await _post(client, "ftp://127.0.0.1/events")
    assert outcome.kind == "permanent"
    assert outcome.error.startswith("bad callback URL: UnsupportedProtocol")


# -- a receiver that answers with an endless body ---------------------------------------


Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def _serve_raw(handler: Handler, nursery: trio.Nursery) -> str:
    """A bare TCP server on 127.0.0.1 port 0 that reads the request head and hands the
    connection to ``handler``; its URL."""

    async def connection(stream: trio.SocketStream) -> None:
        async with stream:
            head = b""
            while b"\r\n\r\n" not in head:
                data = await stream.receive_some(65536)
                if not data:
                    return
                head += data
            try:
                await handler(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away: what the test is about

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, connection, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}/events"


async def test_a_huge_body_is_not_read_beyond_the_cap(client: httpx.AsyncClient) -> None:
    total = 256 * 1024 * 1024  # far more than any socket buffer between the two
    sent = 0
    server_done = trio.Event()

    async def endless(stream: trio.SocketStream) -> None:
        nonlocal sent
        try:
            await stream.send_all(
                b"HTTP/1.1 500 Internal Server Error\r\n"
                b"Content-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n" % total
            )
            chunk = b"x" * 65536
            while sent < total:
                await stream.send_all(chunk)
                sent += len(chunk)
        finally:
            server_done.set()

    async with trio.open_nursery() as nursery:
        url = await _serve_raw(endless, nursery)
        outcome = await _post(client, url, timeout_s=10.0)
        # Dropping the connection is what stops the server: its send fails.
        with trio.fail_after(10):
            await server_done.wait()
        nursery.cancel_scope.cancel()
    # Classified on what was read (the error snippet capped too), well before the timeout.
    assert outcome.kind == "retry"
    assert outcome.error == "HTTP 500: " + "x" * 200
    assert MAX_RESPONSE_BYTES < sent < total


async def test_headers_then_silence_is_a_retry_that_names_the_status(
    client: httpx.AsyncClient,
) -> None:
    async def stall(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await _serve_raw(stall, nursery)
        outcome = await _post(client, url, timeout_s=0.3)
        nursery.cancel_scope.cancel()
    # The receiver may have taken it, but we cannot know: sent again (at least once).
    assert outcome == CallbackOutcome(
        "retry", "HTTP 200, response not finished in 0.3s", origin_down=True
    )


# -- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("120", 120.0), (" 1.5 ", 1.5), ("-3", 0.0), ("soon", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_retry_delay_honours_retry_after_capped_else_full_jitter() -> None:
    assert retry_delay_s(3, 7.0, backoff_s=1.0, max_backoff_s=300.0) == 7.0
    assert retry_delay_s(3, 900.0, backoff_s=1.0, max_backoff_s=300.0) == 300.0
    for attempts, ceiling in [(1, 1.0), (3, 4.0), (20, 300.0), (10_000, 300.0)]:
        delays = [
            retry_delay_s(attempts, None, backoff_s=1.0, max_backoff_s=300.0) for _ in range(200)
        ]
        assert all(0.0 <= d <= ceiling for d in delays)
