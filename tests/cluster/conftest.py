"""Fixtures of the cluster tests: a real Redis (one per session, a fresh key prefix per
test), and cluster configs for in-process daemons."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from .redis_server import REDIS, RedisServer, running_redis

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if REDIS is None:
        pytest.skip("redis-server is not installed: run scripts/install-system-deps")
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def prefix() -> str:
    return f"t{next(_prefixes)}"


SECRET = "cluster-test-secret-0123456789"


def cluster_section(
    redis_url: str, prefix: str, node: str, socket_dir: Path | str = "", lease: str = "1s"
) -> str:
    return f"""
[cluster]
enabled = true
redis_url = "{redis_url}"
key_prefix = "{prefix}"
node_id = "{node}"
secret = "{SECRET}"
lease = "{lease}"
listen = "127.0.0.1:0"
socket_dir = "{socket_dir}"
"""
