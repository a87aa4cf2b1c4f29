"""GET/PUT /v1/log-level: the log level changes at runtime, and a SIGHUP reload keeps it."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bridge.daemon._admin import create_admin_app
from bridge.daemon._metrics import Metrics

from .proc import BridgeProcess, write_config
from .test_admin import AUTH, TOKEN, FakeBackend, app_client


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    loggers = [logging.getLogger("bridge")] + [
        item
        for name, item in logging.Logger.manager.loggerDict.items()
        if name.startswith("bridge.") and isinstance(item, logging.Logger)
    ]
    saved = {lg: lg.level for lg in loggers}
    logging.getLogger("bridge").setLevel(logging.INFO)
    yield
    for lg, level in saved.items():
        lg.setLevel(level)
    for name, item in logging.Logger.manager.loggerDict.items():
        if name.startswith("bridge.") and isinstance(item, logging.Logger) and item not in saved:
            item.setLevel(logging.NOTSET)


async def test_get_and_put_log_level() -> None:
    app = create_admin_app(FakeBackend(), Metrics(), token=TOKEN)
    async with app_client(app) as c:
        r = await c.get("/v1/log-level", headers=AUTH)
        assert r.status_code == 200
        assert r.json()["level"] == "info"
        # Loggers the daemon pins on purpose (the websockets library's per-handshake
        # chatter) are reported as they are; the PUTs below must leave them alone.
        pinned = r.json()["loggers"]

        r = await c.put("/v1/log-level", json={"level": "debug"}, headers=AUTH)
        assert (r.status_code, r.json()["level"]) == (200, "debug")
        assert logging.getLogger("bridge.streams").isEnabledFor(logging.DEBUG)

        r = await c.put(
            "/v1/log-level", json={"level": "error", "logger": "bridge.streams"}, headers=AUTH
        )
        assert r.status_code == 200
        assert r.json()["loggers"]["bridge.streams"] == "error"
        assert not logging.getLogger("bridge.streams").isEnabledFor(logging.WARNING)
        assert logging.getLogger("bridge.daemon").isEnabledFor(logging.DEBUG)

        # null: the named logger follows "bridge" again.
        r = await c.put(
            "/v1/log-level", json={"level": None, "logger": "bridge.streams"}, headers=AUTH
        )
        assert r.status_code == 200 and "bridge.streams" not in r.json()["loggers"]
        assert logging.getLogger("bridge.streams").isEnabledFor(logging.DEBUG)

        r = await c.get("/v1/log-level", headers=AUTH)
        assert r.json() == {"level": "debug", "loggers": pinned}


@pytest.mark.parametrize(
    "body",
    [
        b'{"level": "verbose"}',
        b'{"level": "DEBUG"}',
        b'{"level": null}',  # "bridge" itself cannot inherit from the root
        b'{"level": "debug", "logger": "httpx"}',
        b'{"level": "debug", "logger": "bridge..x"}',
        b'{"level": "debug", "extra": 1}',
        b"{}",
        b"not json",
    ],
)
async def test_put_log_level_rejects_bad_bodies(body: bytes) -> None:
    app = create_admin_app(FakeBackend(), Metrics(), token=TOKEN)
    async with app_client(app) as c:
        r = await c.put("/v1/log-level", content=body, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request" and r.json()["message"]
    assert logging.getLogger("bridge").level == logging.INFO


async def test_log_level_needs_the_token() -> None:
    app = create_admin_app(FakeBackend(), Metrics(), token=TOKEN)
    async with app_client(app) as c:
        assert (await c.get("/v1/log-level")).status_code == 401
        r = await c.put("/v1/log-level", json={"level": "debug"})
        assert r.status_code == 401
    assert logging.getLogger("bridge").level == logging.INFO


def test_runtime_level_survives_a_sighup_reload(tmp_path: Path) -> None:
    """Decision: a reload re-reads routes and stream defaults, not the log level; the
    level an operator set at runtime stays until they set it again or restart."""
    proc = BridgeProcess(write_config(tmp_path))
    try:
        proc.wait_ready()
        with httpx.Client(base_url=proc.url(""), timeout=5) as http:
            r = http.put("/v1/log-level", json={"level": "debug"})
            assert r.status_code == 200
            proc.wait_for("log level of bridge set to debug")
            proc.proc.send_signal(signal.SIGHUP)
            proc.wait_for("reloaded")
            assert http.get("/v1/log-level").json()["level"] == "debug"
            # ... and DEBUG lines now come out (the access log, for one).
            http.get("/healthz")
            proc.wait_for("GET /healthz 200")
    finally:
        proc.kill()
