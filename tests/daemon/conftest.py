"""Shared fixtures: a daemon on ephemeral loopback ports with its records in tmp_path."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.daemon._config import Config, parse_config
from bridge.daemon._daemon import Daemon


def make_config(
    tmp_path: Path,
    extra: str = "",
    *,
    routes: str | None = None,
    websocket: str = "",
    trim_latency: bool = False,
) -> Config:
    """The embedded default's shape on port 0 everywhere, records in tmp_path;
    ``websocket``: more ``[websocket]`` keys (TLS, trusted proxies).

    Playout trimming is off unless asked for: these tests check that every frame is
    delivered once and in order through the legs and dialects, and on a loaded machine
    a scheduler hiccup makes a standing frame that trimming would (rightly) drop. The
    trimming itself is tested frame by frame (tests/media/test_playout_policy.py), on
    the mock clock (tests/streams) and end to end (tests/bench/test_quality_slice.py)."""
    return parse_config(
        config_text(
            tmp_path, extra, routes=routes, websocket=websocket, trim_latency=trim_latency
        ),
        file="test.toml",
    )


def config_text(
    tmp_path: Path,
    extra: str = "",
    *,
    routes: str | None = None,
    websocket: str = "",
    trim_latency: bool = False,
) -> str:
    """The TOML text of :func:`make_config` (for a file a SIGHUP reload re-reads)."""
    trim = f"trim_latency = {'true' if trim_latency else 'false'}"
    if "[stream]" in extra:
        extra = extra.replace("[stream]", f"[stream]\n{trim}", 1)
    else:
        extra = f"{extra}\n[stream]\n{trim}\n"
    tmp_path.mkdir(parents=True, exist_ok=True)
    default_routes = """
[[routes]]
name = "as-echo"
match = { listener = "audiosocket" }
app = { url = "echo:", encapsulation = "sln", sample_rate = 8000 }
"""
    text = f"""
[daemon]
log_level = "debug"
log_format = "console"
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:0"

[audiosocket]
listen = "127.0.0.1:0"
first_frame_timeout = "1s"

[websocket]
listen = "127.0.0.1:0"
{websocket}

[rtp]
bind = "127.0.0.1"
ports = "41000-41099"

[records]
path = "{tmp_path / "bridge.sqlite3"}"

[callbacks]
backoff = "50ms"
max_backoff = "200ms"

{extra}
{default_routes if routes is None else routes}
"""
    return text


@pytest.fixture
async def daemon_factory(tmp_path: Path) -> AsyncIterator[object]:
    """``await start(config)`` runs a Daemon in the test's nursery until the test ends."""
    async with trio.open_nursery() as nursery:

        async def start(config: Config | None = None) -> Daemon:
            daemon = Daemon(config or make_config(tmp_path))
            await nursery.start(daemon.serve)
            return daemon

        yield start
        nursery.cancel_scope.cancel()



@pytest.fixture
def bridge_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Any:
    """caplog, made to see every ``bridge.*`` record at INFO and above even if another
    test configured logging (``configure_logging`` stops propagation to the root)."""
    monkeypatch.setattr(logging.getLogger("bridge"), "propagate", True)
    caplog.set_level(logging.INFO, logger="bridge")
    return caplog
