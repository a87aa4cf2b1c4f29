"""Listener supervision: a failure in a listener is logged, counted and contained; the
listener serves again on the socket it holds; a live call never notices. Binding at
start-up still fails start-up, naming the listener and the address."""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from bridge import ListenerError
from bridge.daemon import _audiosocket
from bridge.daemon._daemon import Daemon
from bridge.daemon._listeners import ListenerSupervisor
from bridge.transports import PeerLimiter

from .adminfuzz import EchoCall
from .conftest import make_config
from .proc import REPO, write_config


@pytest.fixture
def bridge_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(logging.getLogger("bridge"), "propagate", True)
    caplog.set_level(logging.INFO, logger="bridge")
    return caplog


def failures(daemon: Daemon, listener: str) -> float:
    value = daemon.metrics.registry.get_sample_value(
        "bridge_listener_failures_total", {"listener": listener}
    )
    return value or 0.0


async def wait_until(pred: Any, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not pred():
            await trio.sleep(0.01)


# -- injected failures, in-process ------------------------------------------------------


async def test_audiosocket_listener_failure_is_contained_and_it_serves_again(
    daemon_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bridge_logs: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        daemon: Daemon = await daemon_factory(make_config(tmp_path))
        address = daemon.bound["audiosocket"]
        stop = trio.Event()
        live = EchoCall(*address, frames=1000, stop=stop)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.run)
            await live.streaming.wait()

            # The next connection's handler raises: the listener's nursery fails.
            real = _audiosocket._handle

            async def broken(*args: Any) -> None:
                monkeypatch.setattr(_audiosocket, "_handle", real)
                raise RuntimeError("injected listener bug")

            monkeypatch.setattr(_audiosocket, "_handle", broken)
            poison = await trio.open_tcp_stream(*address)
            await wait_until(lambda: daemon.supervisors["audiosocket"].failures == 1)
            await poison.aclose()
            await wait_until(lambda: daemon.supervisors["audiosocket"].serving)

            # The same address serves a new call, while the live one goes on.
            assert daemon.bound["audiosocket"] == address
            again = EchoCall(*address, frames=50)
            await again.run()
            assert again.lost == 0 and again.in_order and again.sent == 50
            await trio.sleep(0.3)
            stop.set()
        assert not live.hung_up and live.lost == 0 and live.in_order and live.sent > 30
        assert failures(daemon, "audiosocket") == 1
        assert failures(daemon, "admin") == 0

    errors = [r for r in bridge_logs.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "bridge.daemon.listeners"
    assert (
        errors[0].getMessage().startswith(f"audiosocket listener {address[0]}:{address[1]} failed")
    )
    assert errors[0].exc_info is not None  # the traceback, once


async def test_admin_listener_failure_is_contained_and_it_serves_again(
    daemon_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bridge_logs: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(30):
        daemon: Daemon = await daemon_factory(make_config(tmp_path))
        admin = daemon.bound["admin"]
        stop = trio.Event()
        live = EchoCall(*daemon.bound["audiosocket"], frames=1000, stop=stop)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(live.run)
            await live.streaming.wait()

            # The accept loop itself fails (not one connection): the whole server ends.
            real = PeerLimiter.admit
            calls = 0

            def admit(self: PeerLimiter, peer: str, now: float) -> str | None:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("injected accept-loop bug")
                return real(self, peer, now)

            monkeypatch.setattr(PeerLimiter, "admit", admit)
            async with httpx.AsyncClient(base_url=f"http://{admin[0]}:{admin[1]}") as http:
                with pytest.raises(httpx.TransportError):
                    await http.get("/healthz")
                await wait_until(lambda: daemon.supervisors["admin"].failures == 1)
                await wait_until(lambda: daemon.supervisors["admin"].serving)
                r = await http.get("/healthz")
                assert r.status_code == 200
                r = await http.get("/metrics")
                assert 'bridge_listener_failures_total{listener="admin"} 1.0' in r.text
            await trio.sleep(0.3)
            stop.set()
        assert not live.hung_up and live.lost == 0 and live.in_order
    [error] = [r for r in bridge_logs.records if r.levelno >= logging.ERROR]
    assert "admin listener" in error.getMessage() and error.exc_info


# -- the supervisor alone, on the autojump clock --------------------------------------------


async def test_supervisor_backoff_counting_and_log_throttle(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.daemon.listeners")
    attempts: list[float] = []
    counted: list[int] = []

    async def serve(
        listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus[None]
    ) -> None:
        attempts.append(trio.current_time())
        task_status.started()
        if len(attempts) % 3 == 0:
            raise ValueError("another kind")
        raise RuntimeError("always fails")

    supervisor = ListenerSupervisor(
        "test", "127.0.0.1:1", serve, on_failure=lambda: counted.append(1)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(attempts)]
    assert gaps[:8] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0]
    assert set(gaps[8:]) == {10.0}
    assert supervisor.failures == len(counted) == len(attempts)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    # One line at the first failure (with its traceback), then at most one a minute; a
    # new kind of failure shows its traceback once too.
    assert 3 <= len(errors) <= 5
    assert errors[0].exc_info is not None
    assert sum(1 for r in errors if r.exc_info) == 2
    assert "more failures since the last line" in errors[1].getMessage()


async def test_supervisor_start_up_failure_names_the_listener() -> None:
    async def serve(listeners: list[trio.SocketListener], *, task_status: Any) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    supervisor = ListenerSupervisor("rtp", "127.0.0.1 ports 40000-40999", serve)
    with pytest.raises(BaseException) as info:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
    [leaf] = _leaves(info.value)
    assert isinstance(leaf, ListenerError)
    assert str(leaf) == "rtp listener 127.0.0.1 ports 40000-40999: [Errno 13] Permission denied"


# -- binding at start-up -----------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["admin", "audiosocket", "websocket"])
async def test_port_in_use_fails_start_up_naming_listener_and_address(
    tmp_path: Path, listener: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path)
        import msgspec

        section = getattr(config, listener)
        config = msgspec.structs.replace(
            config, **{listener: msgspec.structs.replace(section, listen=f"127.0.0.1:{port}")}
        )
        daemon = Daemon(config)
        with trio.fail_after(10), pytest.raises(BaseException) as info:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.serve)
        leaves = _leaves(info.value)
        assert len(leaves) == 1 and isinstance(leaves[0], ListenerError), leaves
        assert str(leaves[0]) == (
            f"{listener} listener 127.0.0.1:{port}: [Errno 98] Address already in use"
        )


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def test_bridge_run_exits_1_with_the_listener_and_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path)
        config.write_text(
            config.read_text().replace(
                '[admin]\nlisten = "127.0.0.1:0"', f'[admin]\nlisten = "127.0.0.1:{port}"'
            )
        )
        out = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "-c", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert f"admin listener 127.0.0.1:{port}: [Errno 98] Address already in use" in text
    assert "Traceback" not in text
