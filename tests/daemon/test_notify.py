"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from bridge.daemon._notify import SdNotifier, serve_watchdog


def _fields(datagram: bytes) -> dict[str, str]:
    text = datagram.decode()
    assert text.endswith("\n")
    return dict(line.split("=", 1) for line in text.splitlines())


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in tmp_path, like systemd's /run/systemd/notify."""
    path = str(tmp_path / "notify")
    if len(path) >= 100:  # sun_path is 108 bytes
        path = f"/tmp/bridge-notify-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock, path
    finally:
        sock.close()
        if os.path.exists(path):
            os.unlink(path)


def _drain(sock: socket.socket) -> list[dict[str, str]]:
    out = []
    while True:
        try:
            out.append(_fields(sock.recv(4096)))
        except BlockingIOError:
            return out


def test_disabled_without_notify_socket() -> None:
    notifier = SdNotifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.watchdog_interval_s() is None


def test_ready_status_stopping(notify_path: tuple[socket.socket, str]) -> None:
    sock, path = notify_path
    notifier = SdNotifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert notifier.status("3 live streams")
    assert notifier.stopping()
    assert notifier.ready(status="listening")
    assert notifier.reloading()
    notifier.close()
    messages = _drain(sock)
    assert messages[:4] == [
        {"READY": "1"},
        {"STATUS": "3 live streams"},
        {"STOPPING": "1"},
        {"READY": "1", "STATUS": "listening"},
    ]
    assert messages[4]["RELOADING"] == "1"
    assert int(messages[4]["MONOTONIC_USEC"]) > 0


def test_newlines_cannot_inject_fields(notify_path: tuple[socket.socket, str]) -> None:
    sock, path = notify_path
    notifier = SdNotifier.from_environ({"NOTIFY_SOCKET": path})
    notifier.status("evil\nREADY=1")
    notifier.close()
    assert _drain(sock) == [{"STATUS": "evil READY=1"}]


def test_abstract_namespace_socket() -> None:
    name = f"bridge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        notifier = SdNotifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.address == "\0" + name
        assert notifier.ready()
        notifier.close()
        assert _drain(sock) == [{"READY": "1"}]


def test_unsupported_address_disables() -> None:
    assert not SdNotifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_missing_socket_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.daemon.notify")
    notifier = SdNotifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    for _ in range(5):
        assert notifier.watchdog() is False
    notifier.close()
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG


def test_full_socket_never_blocks(notify_path: tuple[socket.socket, str]) -> None:
    sock, path = notify_path
    notifier = SdNotifier.from_environ({"NOTIFY_SOCKET": path})
    # Nobody reads: the receive queue fills and sends start failing instead of blocking.
    results = [notifier.status("x" * 1000) for _ in range(100_000)]
    notifier.close()
    assert results[0] is True
    assert results[-1] is False
    # And it recovers once the queue drains.
    _drain(sock)
    assert notifier.status("ok")
    notifier.close()


def test_watchdog_interval_from_environ(notify_path: tuple[socket.socket, str]) -> None:
    _, path = notify_path
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000"}
    assert SdNotifier.from_environ(env).watchdog_interval_s() == 15.0
    mine = {**env, "WATCHDOG_PID": str(os.getpid())}
    assert SdNotifier.from_environ(mine).watchdog_interval_s() == 15.0
    other = {**env, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SdNotifier.from_environ(other).watchdog_interval_s() is None
    assert SdNotifier.from_environ({**env, "WATCHDOG_USEC": "0"}).watchdog_interval_s() is None
    assert SdNotifier.from_environ({**env, "WATCHDOG_USEC": "x"}).watchdog_interval_s() is None
    # Without a socket, a watchdog interval is meaningless.
    assert SdNotifier.from_environ({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s() is None


async def _collect(sock: socket.socket, out: list[tuple[float, dict[str, str]]]) -> None:
    with trio.socket.from_stdlib_socket(sock) as tsock:
        while True:
            data = await tsock.recv(4096)
            out.append((trio.current_time(), _fields(data)))


async def test_serve_watchdog_pings_on_interval(
    notify_path: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = notify_path
    notifier = SdNotifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    received: list[tuple[float, dict[str, str]]] = []
    live = [0]

    def status() -> str:
        return f"{live[0]} live streams"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_collect, sock.dup(), received)
        start = trio.current_time()
        nursery.start_soon(serve_watchdog, notifier, status)
        await trio.sleep(12.5)
        live[0] = 3
        await trio.sleep(8.0)  # until t = 20.5
        nursery.cancel_scope.cancel()
    notifier.close()

    pings = [t - start for t, f in received if f == {"WATCHDOG": "1"}]
    assert pings == pytest.approx([0.0, 5.0, 10.0, 15.0, 20.0])
    statuses = [(t - start, f["STATUS"]) for t, f in received if "STATUS" in f]
    # Sent at start and then only when the text changes (checked every 5 s).
    assert [text for _, text in statuses] == ["0 live streams", "3 live streams"]
    assert [t for t, _ in statuses] == pytest.approx([0.0, 15.0])


async def test_serve_watchdog_survives_status_fn_errors(
    notify_path: tuple[socket.socket, str], autojump_clock: trio.testing.MockClock
) -> None:
    sock, path = notify_path
    notifier = SdNotifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"})

    def broken() -> str:
        raise RuntimeError("boom")

    with trio.move_on_after(3.5):
        await serve_watchdog(notifier, broken, status_interval_s=1.0)
    notifier.close()
    assert _drain(sock) == [{"WATCHDOG": "1"}] * 4


async def test_serve_watchdog_idles_when_disabled(autojump_clock: trio.testing.MockClock) -> None:
    with trio.move_on_after(1000) as scope:
        await serve_watchdog(SdNotifier.from_environ({}), lambda: "x")
    assert scope.cancelled_caught
