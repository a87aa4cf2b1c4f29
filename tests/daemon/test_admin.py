"""The admin API (called directly through an httpx transport, and on a real socket) and the
metrics registry."""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from bridge._errors import StreamRefused
from bridge._version import __version__
from bridge.daemon._admin import AdminApp, create_admin_app, serve_admin
from bridge.daemon._metrics import Metrics, _ProcessCollector, trio_task_count
from bridge.media import LatenessHistogram
from bridge.transports import HttpRequest

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@attrs.define
class FakeBackend:
    ready: bool = True
    live: list[dict[str, Any]] = attrs.field(factory=list)
    ended: list[dict[str, Any]] = attrs.field(factory=list)
    stopped: list[str] = attrs.field(factory=list)
    opened: list[dict[str, Any]] = attrs.field(factory=list)
    list_calls: list[dict[str, Any]] = attrs.field(factory=list)
    refuse: str | None = None
    crash: bool = False

    def live_streams(self) -> list[dict[str, Any]]:
        if self.crash:
            raise RuntimeError("backend bug")
        return list(self.live)

    async def get_stream(self, stream_id: str) -> dict[str, Any] | None:
        await trio.lowlevel.checkpoint()
        for stream in self.live + self.ended:
            if stream["stream_id"] == stream_id:
                return stream
        return None

    async def list_streams(
        self, *, state: str | None, since: datetime | None, limit: int
    ) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        self.list_calls.append({"state": state, "since": since, "limit": limit})
        pool = {"live": self.live, "ended": self.ended, None: self.live + self.ended}[state]
        return [s for s in pool if since is None or s["started_at"] >= since][:limit]

    async def stop_stream(self, stream_id: str) -> bool:
        await trio.lowlevel.checkpoint()
        if any(s["stream_id"] == stream_id for s in self.live):
            self.stopped.append(stream_id)
            return True
        return False

    async def list_events(self, *, status: str | None, limit: int) -> list[dict[str, Any]]:
        await trio.lowlevel.checkpoint()
        events = [
            {"event_id": "e1", "event": "StartStream", "status": "delivered"},
            {"event_id": "e2", "event": "StopStream", "status": "failed", "last_error": "HTTP 400"},
        ]
        return [e for e in events if status is None or e["status"] == status][:limit]

    async def open_rtp_stream(self, request: dict[str, Any]) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if self.refuse:
            raise StreamRefused(self.refuse)
        if request["route"] == "nope":
            raise ValueError("no route named 'nope'")
        self.opened.append(request)
        return {"stream_id": "rtp-1", "local": "127.0.0.1:40000", "route": request["route"]}


def _stream(stream_id: str, started: datetime, state: str = "streaming") -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "call_id": f"call-{stream_id}",
        "state": state,
        "started_at": started,
    }


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend(
        live=[_stream("a", T0), _stream("b", T0.replace(hour=13))],
        ended=[_stream("z", T0.replace(hour=11), state="closed")],
    )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def app_client(app: AdminApp) -> httpx.AsyncClient:
    """An httpx client that calls ``app`` directly (no socket, no HTTP server)."""

    async def handle(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        answer = await app(
            HttpRequest.build(
                request.method,
                request.url.raw_path.decode("ascii"),
                [(k.lower(), v) for k, v in request.headers.raw],
                body,
                ("127.0.0.1", 40000),
            )
        )
        return httpx.Response(
            answer.status,
            headers=[
                *([("content-type", answer.content_type)] if answer.content_type else []),
                *answer.headers,
            ],
            content=b"" if request.method == "HEAD" else answer.body,
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(handle), base_url="http://admin")


@pytest.fixture
async def client(backend: FakeBackend, metrics: Metrics) -> AsyncIterator[httpx.AsyncClient]:
    app = create_admin_app(backend, metrics, token=TOKEN)
    async with app_client(app) as c:
        yield c


# -- health, readiness, metrics ------------------------------------------------------


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


async def test_readyz_follows_backend(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    r = await client.get("/readyz")
    assert (r.status_code, r.json()) == (200, {"status": "ready"})
    backend.ready = False
    r = await client.get("/readyz")
    assert (r.status_code, r.json()) == (503, {"status": "draining"})
    backend.ready = True
    assert (await client.get("/readyz")).status_code == 200


async def test_health_needs_no_token(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await client.get(path)).status_code == 200


async def test_task_count_walks_the_nursery_tree() -> None:
    idle = trio_task_count()
    assert idle >= 1
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        assert trio_task_count() == idle + 5
        nursery.cancel_scope.cancel()
    assert trio_task_count() == idle
    assert math.isnan(await trio.to_thread.run_sync(trio_task_count))  # outside a run


async def test_metrics_exposition(client: httpx.AsyncClient, metrics: Metrics) -> None:
    metrics.stream_started("audiosocket", "agents")
    metrics.stream_ended("agents", "call_hangup")
    metrics.stream_refused("rtp", "max_streams")
    metrics.add_frames("call_to_app", 50)
    metrics.add_frames("app_to_call", 49)
    # Streams record into their clock's histogram, which records into the total.
    stream_lateness = LatenessHistogram()
    stream_lateness.attach(metrics.lateness_total)
    for late_s in (0.0001, 0.003, 0.2):
        stream_lateness.record(late_s)
    metrics.set_draining(True)

    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert any(name.startswith("process_") for name in families)
    assert "process_resident_memory_bytes" in families
    assert "python_info" in families
    assert families["bridge_tasks"].samples[0].value >= 1  # counted in this very run
    [info] = families["bridge_build_info"].samples
    assert info.labels["version"] == __version__

    def value(family: str, sample: str, **labels: str) -> float:
        for s in families[family].samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
        raise AssertionError(f"{sample}{labels} missing")

    assert (
        value(
            "bridge_streams_started",
            "bridge_streams_started_total",
            listener="audiosocket",
            route="agents",
        )
        == 1
    )
    assert value("bridge_streams_ended", "bridge_streams_ended_total", reason="call_hangup") == 1
    assert (
        value("bridge_streams_refused", "bridge_streams_refused_total", reason="max_streams") == 1
    )
    assert value("bridge_streams_active", "bridge_streams_active") == 0
    assert value("bridge_frames", "bridge_frames_total", direction="call_to_app") == 50
    assert value("bridge_frames", "bridge_frames_total", direction="app_to_call") == 49
    assert value("bridge_pacing_lateness_seconds", "bridge_pacing_lateness_seconds_count") == 3
    assert (
        value("bridge_pacing_lateness_seconds", "bridge_pacing_lateness_seconds_bucket", le="0.005")
        == 2
    )
    assert value("bridge_draining", "bridge_draining") == 1
    for name in (
        "bridge_bad_input",
        "bridge_app_reconnects",
        "bridge_app_connect_failures",
        "bridge_frames_concealed",
        "bridge_uplink_buffer_fill_ratio",
        "bridge_ticker_lag_seconds",
    ):
        assert name in families, name


async def test_metrics_openmetrics_on_request(client: httpx.AsyncClient) -> None:
    r = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.endswith("# EOF\n")


def test_registries_are_private() -> None:
    a, b = Metrics(), Metrics()
    a.add_frames("call_to_app", 5)
    assert a.registry is not b.registry
    assert b.registry.get_sample_value("bridge_frames_total", {"direction": "call_to_app"}) == 0
    assert a.registry.get_sample_value("bridge_frames_total", {"direction": "call_to_app"}) == 5


def test_process_metrics_without_proc_stat(tmp_path: Path) -> None:
    """Under ProcSubset=pid /proc/stat is hidden; process metrics must still appear."""
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no procfs")
    (tmp_path / "self").symlink_to("/proc/self")
    assert not (tmp_path / "stat").exists()
    collector = _ProcessCollector(proc=str(tmp_path), registry=None)
    samples = {s.name: s.value for family in collector.collect() for s in family.samples}
    assert samples["process_resident_memory_bytes"] > 0
    start = samples["process_start_time_seconds"]
    assert abs(start - datetime.now(UTC).timestamp()) < 24 * 3600


# -- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
        ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token"),
        ({"Authorization": "Bearer "}, "missing bearer token"),
    ],
)
async def test_v1_requires_token(
    client: httpx.AsyncClient, backend: FakeBackend, headers: dict[str, str], message: str
) -> None:
    for method, path in [
        ("GET", "/v1/streams"),
        ("GET", "/v1/streams/a"),
        ("DELETE", "/v1/streams/a"),
        ("POST", "/v1/streams"),
    ]:
        r = await client.request(method, path, headers=headers, json={"call_id": "c", "route": "r"})
        assert r.status_code == 401, (method, path)
        assert r.json() == {"error": "unauthorized", "message": message}
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert backend.stopped == [] and backend.opened == []


async def test_right_token_passes(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/streams", headers={"authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200


async def test_no_token_configured_means_open(backend: FakeBackend, metrics: Metrics) -> None:
    app = create_admin_app(backend, metrics)
    async with app_client(app) as c:
        assert (await c.get("/v1/streams")).status_code == 200


# -- streams ---------------------------------------------------------------------------


async def test_list_defaults_to_live_snapshot(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    r = await client.get("/v1/streams", headers=AUTH)
    assert r.status_code == 200
    assert [s["stream_id"] for s in r.json()["streams"]] == ["a", "b"]
    assert r.json()["streams"][0]["started_at"] == "2024-05-01T12:00:00Z"
    assert backend.list_calls == []  # served by live_streams(), no await
    r = await client.get("/v1/streams?limit=1", headers=AUTH)
    assert [s["stream_id"] for s in r.json()["streams"]] == ["a"]


async def test_list_with_state_and_since(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    r = await client.get("/v1/streams", params={"state": "ended"}, headers=AUTH)
    assert [s["stream_id"] for s in r.json()["streams"]] == ["z"]
    assert backend.list_calls[-1] == {"state": "ended", "since": None, "limit": 100}

    r = await client.get("/v1/streams", params={"state": "all", "limit": "1000"}, headers=AUTH)
    assert {s["stream_id"] for s in r.json()["streams"]} == {"a", "b", "z"}
    assert backend.list_calls[-1]["state"] is None

    since = T0.replace(hour=12, minute=30)
    for text in (
        "2024-05-01T12:30:00Z",
        "2024-05-01T14:30:00+02:00",
        "2024-05-01T12:30:00",
        str(since.timestamp()),
    ):
        r = await client.get("/v1/streams", params={"since": text}, headers=AUTH)
        assert r.status_code == 200, text
        assert [s["stream_id"] for s in r.json()["streams"]] == ["b"], text
        assert backend.list_calls[-1] == {"state": "live", "since": since, "limit": 100}


@pytest.mark.parametrize(
    "query",
    [
        {"state": "dead"},
        {"since": "yesterday"},
        {"since": "nan"},
        {"since": "1e300"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "ten"},
        {"limit": "-1"},
    ],
)
async def test_list_rejects_bad_query(client: httpx.AsyncClient, query: dict[str, str]) -> None:
    r = await client.get("/v1/streams", params=query, headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request"
    assert r.json()["message"]


async def test_get_stream(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/streams/z", headers=AUTH)
    assert (r.status_code, r.json()["state"]) == (200, "closed")
    r = await client.get("/v1/streams/nope", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    assert r.json()["stream_id"] == "nope"


async def test_delete_stream(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    r = await client.delete("/v1/streams/a", headers=AUTH)
    assert (r.status_code, r.json()) == (202, {"stream_id": "a", "status": "stopping"})
    assert backend.stopped == ["a"]
    r = await client.delete("/v1/streams/z", headers=AUTH)  # ended: not live
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await client.delete("/v1/streams/unknown", headers=AUTH)
    assert r.status_code == 404


async def test_open_rtp_stream(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    body = {
        "call_id": "c-1",
        "route": "rtp-in",
        "codec": "pcma",
        "sample_rate": 8000,
        "ptime": 20,
        "remote": "192.0.2.7:4000",
    }
    r = await client.post("/v1/streams", json=body, headers=AUTH)
    assert r.status_code == 201
    assert r.json() == {"stream_id": "rtp-1", "local": "127.0.0.1:40000", "route": "rtp-in"}
    assert backend.opened == [body]
    # Optional fields left out are not passed on (the route's defaults apply).
    r = await client.post(
        "/v1/streams",
        json={"call_id": "c-2", "route": "r", "remote": "[2001:db8::1]:5004"},
        headers=AUTH,
    )
    assert r.status_code == 201
    assert backend.opened[-1] == {"call_id": "c-2", "route": "r", "remote": "[2001:db8::1]:5004"}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"route": "r"}',
        b'{"call_id": "c"}',
        b'{"call_id": "", "route": "r"}',
        b'{"call_id": 5, "route": "r"}',
        b'{"call_id": "c", "route": "r", "codec": "opus"}',
        b'{"call_id": "c", "route": "r", "sample_rate": 11025}',
        b'{"call_id": "c", "route": "r", "ptime": 25}',
        b'{"call_id": "c", "route": "r", "remote": "example.com:5000"}',
        b'{"call_id": "c", "route": "r", "remote": "10.0.0.1"}',
        b'{"call_id": "c", "route": "r", "remote": "10.0.0.1:0"}',
        b'{"call_id": "c", "route": "r", "remote": "::1:5000"}',
        b'{"call_id": "c", "route": "r", "extra": 1}',
        b'{"call_id": "c", "route": "bad route"}',
        b'{"call_id": "c", "route": "nope"}',  # the backend's ValueError
    ],
)
async def test_open_rtp_stream_validation(
    client: httpx.AsyncClient, backend: FakeBackend, body: bytes
) -> None:
    r = await client.post(
        "/v1/streams", content=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bad_request"
    assert r.json()["message"]
    assert backend.opened == []


async def test_open_rtp_stream_too_big(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/streams", content=b" " * 100_000, headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (413, "payload_too_large")


async def test_open_rtp_stream_refused(client: httpx.AsyncClient, backend: FakeBackend) -> None:
    backend.refuse = "draining"
    r = await client.post("/v1/streams", json={"call_id": "c", "route": "r"}, headers=AUTH)
    assert r.status_code == 503
    assert r.json()["error"] == "refused"
    assert r.json()["reason"] == "draining"


async def test_errors_are_json(client: httpx.AsyncClient) -> None:
    r = await client.get("/nowhere")
    assert (r.status_code, r.json()["error"]) == (404, "not_found")
    r = await client.put("/v1/streams/a", headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
    assert "allow" in r.headers


async def test_backend_crash_is_a_json_500(
    client: httpx.AsyncClient, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.crash = True
    r = await client.get("/v1/streams", headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (500, "internal_error")
    assert "backend bug" not in r.text
    assert any(rec.name == "bridge.admin" and rec.exc_info for rec in caplog.records)


# -- the real server -------------------------------------------------------------------


async def test_real_server_on_port_0(backend: FakeBackend, metrics: Metrics) -> None:
    app = create_admin_app(backend, metrics, token=TOKEN)
    fds_before = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve_admin, app, "127.0.0.1", 0))
            assert host == "127.0.0.1" and port > 0
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as c:
                r = await c.get("/healthz")
                assert (r.status_code, r.json()) == (200, {"status": "ok"})
                backend.ready = False
                assert (await c.get("/readyz")).status_code == 503
                r = await c.get("/metrics")
                names = {f.name for f in text_string_to_metric_families(r.text)}
                assert "bridge_build_info" in names and "process_cpu_seconds" in names
                assert (await c.get("/v1/streams")).status_code == 401
                r = await c.delete("/v1/streams/b", headers=AUTH)
                assert r.status_code == 202

            # A chunked upload (no Content-Length) is cut off by the read cap. Raw socket:
            # httpx would complain about its unfinished request body generator.
            chunk = b" " * 1000
            body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(100))
            async with await trio.open_tcp_stream(host, port) as raw:
                await raw.send_all(
                    b"POST /v1/streams HTTP/1.1\r\nHost: admin\r\nTransfer-Encoding: chunked\r\n"
                    + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
                    + body
                    + b"0\r\n\r\n"
                )
                answer = b""
                while b"payload_too_large" not in answer:
                    data = await raw.receive_some()
                    assert data, answer
                    answer += data
                assert answer.startswith(b"HTTP/1.1 413 ")
                assert "server" not in r.headers
            nursery.cancel_scope.cancel()
    # Cancelled cleanly: the port is free again and no fd leaked.
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert len(os.listdir("/proc/self/fd")) == fds_before


async def test_real_server_reuse_port_and_address_in_use(metrics: Metrics) -> None:
    app = create_admin_app(FakeBackend(), metrics)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(
                partial(serve_admin, app, "127.0.0.1", 0, reuse_port=True)
            )
            # A second instance may share the port with SO_REUSEPORT ...
            await nursery.start(partial(serve_admin, app, host, port, reuse_port=True))
            # ... but without it the bind fails, inside nursery.start().
            with pytest.raises(OSError):
                await nursery.start(partial(serve_admin, app, host, port))
            async with httpx.AsyncClient() as c:
                for _ in range(4):
                    assert (await c.get(f"http://{host}:{port}/healthz")).status_code == 200
            nursery.cancel_scope.cancel()


async def test_server_logs_through_bridge_logger(
    metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.setLevel(logging.DEBUG)  # loggers decide
    app = create_admin_app(FakeBackend(), metrics)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            host, port = await nursery.start(partial(serve_admin, app, "127.0.0.1", 0))
            async with httpx.AsyncClient() as c:
                await c.get(f"http://{host}:{port}/healthz")
                # The access log is DEBUG on its own logger: off at the default level,
                # on when that logger (or bridge) is set to debug.
                logging.getLogger("bridge.admin.access").setLevel(logging.DEBUG)
                try:
                    await c.get(f"http://{host}:{port}/healthz?probe=1")
                finally:
                    logging.getLogger("bridge.admin.access").setLevel(logging.NOTSET)
            nursery.cancel_scope.cancel()
    names = {r.name for r in caplog.records}
    assert "bridge.admin.http" in names  # "admin API listening on http://…"
    access = [r.getMessage() for r in caplog.records if r.name == "bridge.admin.access"]
    assert access == ["GET /healthz?probe=1 200"]


async def test_list_events_by_status(client: httpx.AsyncClient) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert (await client.get("/v1/events")).status_code == 401
    r = await client.get("/v1/events", params={"status": "failed"}, headers=auth)
    assert r.status_code == 200
    assert [e["event_id"] for e in r.json()["events"]] == ["e2"]
    r = await client.get("/v1/events", headers=auth)
    assert len(r.json()["events"]) == 2
    r = await client.get("/v1/events", params={"status": "lost"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"


# -- routing details (kept from the Starlette app this replaced) -------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("POST", "/healthz", 405, "GET, HEAD"),
        ("OPTIONS", "/readyz", 405, "GET, HEAD"),
        ("PATCH", "/v1/streams", 405, "GET, HEAD, POST"),
        ("PUT", "/v1/streams/a", 405, "DELETE, GET, HEAD"),
        ("DELETE", "/v1/log-level", 405, "GET, HEAD, PUT"),
    ],
)
async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, status: int, allow: str
) -> None:
    # The method is checked before the token (as before): no token needed to learn it.
    r = await client.request(method, path)
    assert r.status_code == status
    assert r.json() == {"error": "method_not_allowed", "message": "Method Not Allowed"}
    assert r.headers["allow"] == allow


async def test_head_answers_like_get_without_a_body(client: httpx.AsyncClient) -> None:
    r = await client.head("/healthz")
    assert (r.status_code, r.content) == (200, b"")
    assert (await client.head("/v1/streams")).status_code == 401
    assert (await client.head("/v1/streams", headers=AUTH)).status_code == 200


async def test_unknown_paths_are_404_before_auth(client: httpx.AsyncClient) -> None:
    for path in ("/nowhere", "/v1/nowhere", "//healthz", "/v1/streams/a/b", "/healthzz"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json() == {"error": "not_found", "message": "Not Found"}


async def test_trailing_slash_redirects(client: httpx.AsyncClient) -> None:
    for path, location in [
        ("/healthz/", "/healthz"),
        ("/v1/streams/?limit=1", "/v1/streams?limit=1"),
        ("/v1/streams/a/", "/v1/streams/a"),
    ]:
        r = await client.get(path, follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (307, location), path
        assert "content-type" not in r.headers


async def test_stream_ids_are_percent_decoded_and_queries_keep_the_last(
    client: httpx.AsyncClient, backend: FakeBackend
) -> None:
    backend.live.append(_stream("a b", T0))
    r = await client.get("/v1/streams/a%20b", headers=AUTH)
    assert (r.status_code, r.json()["stream_id"]) == (200, "a b")
    r = await client.get("/v1/streams?limit=x&limit=1", headers=AUTH)
    assert r.status_code == 200 and len(r.json()["streams"]) == 1


async def test_metrics_render_at_most_every_100ms(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bridge.daemon import _admin

    renders: list[str] = []
    real = _admin.render_metrics

    async def counting(metrics: Metrics, accept: str = "") -> tuple[bytes, str]:
        renders.append(accept)
        return await real(metrics, accept)

    monkeypatch.setattr(_admin, "render_metrics", counting)
    for _ in range(20):  # a scrape storm: one rendering
        assert (await client.get("/metrics")).status_code == 200
    om = {"Accept": "application/openmetrics-text; version=1.0.0"}
    r = await client.get("/metrics", headers=om)  # the other format: its own rendering
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert len(renders) == 2
    await trio.sleep(0.15)
    await client.get("/metrics")
    assert len(renders) == 3


async def test_metrics_in_slices_equal_one_rendering(metrics: Metrics) -> None:
    """render_metrics yields to the loop between slices, and says the same as
    Metrics.render (bar the process's own counters, which move meanwhile)."""
    from bridge.daemon._admin import render_metrics

    metrics.stream_started("audiosocket", "agents")
    for accept in ("", "application/openmetrics-text; version=1.0.0"):
        whole, whole_type = metrics.render(accept)
        sliced, sliced_type = await render_metrics(metrics, accept)
        assert sliced_type == whole_type

        def shape(body: bytes) -> list[str]:
            return [
                line.rsplit(" ", 1)[0]
                for line in body.decode().splitlines()
                if not line.startswith(("process_", "python_gc_", "bridge_tasks"))
            ]

        assert shape(sliced) == shape(whole)
        assert sliced.count(b"# EOF") == whole.count(b"# EOF")
