"""Scrape a running daemon's ``/metrics`` and look samples up (tests only)."""

from __future__ import annotations

import math

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from bridge.daemon._admin import METRICS_MIN_INTERVAL_S

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(admin: tuple[str, int]) -> Samples:
    """A fresh rendering: /metrics serves its last one for METRICS_MIN_INTERVAL_S, so
    wait that out first (a test reads state it has just changed)."""
    await trio.sleep(METRICS_MIN_INTERVAL_S)
    host, port = admin
    async with httpx.AsyncClient(timeout=5) as client:
        r = await client.get(f"http://{host}:{port}/metrics")
    r.raise_for_status()
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; NaN when the series does not exist (unlike 0)."""
    return samples.get((name, frozenset(labels.items())), math.nan)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def label_sets(samples: Samples, name: str) -> set[frozenset[tuple[str, str]]]:
    return {labels for n, labels in samples if n == name}
