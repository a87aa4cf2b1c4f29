"""The alert rules and the Grafana dashboard use only metrics that a running daemon
exports: every metric name in their PromQL is looked up in a real scrape of ``/metrics``.

(``promtool check rules`` and ``promtool test rules`` run in ``make test``; this test
catches the other way rules rot: a renamed or never-exported metric, which PromQL
accepts silently and which then never fires.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
import yaml

from bridge.daemon._daemon import Daemon

from ..daemon.conftest import make_config
from ..daemon.scrape import names, scrape

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "bridge-rules.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "bridge.json"

#: Series Prometheus itself makes for every target (not in the scrape).
PROMETHEUS_SERIES = {"up"}

_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a small tokenizer, not a parser: it
    drops strings, label matchers, ranges and grouping clauses, then keeps every
    identifier that is not a function call or a keyword)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", expr
    )
    out = set()
    for m in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", expr):
        if expr[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation: sum(...), rate(...)
        if m.group().lower() in _KEYWORDS:
            continue
        out.add(m.group())
    return out


def test_the_tokenizer() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{x=~"y|z", le!="1"}[5m])))'
        " > 0.005 and sum by (instance) (rate(b_count[5m] offset 1h)) > 1e-9"
    ) == {"a_bucket", "b_count"}
    assert metric_names("(x / y > 0.9) and on (instance) z > 0") == {"x", "y", "z"}
    assert metric_names('sum(rate(c_total{i=~"$instance"}[$__rate_interval])) by (le)') == {
        "c_total"
    }


def rule_groups() -> dict[str, list[dict[str, Any]]]:
    doc = yaml.safe_load(RULES.read_text())
    return {g["name"]: g["rules"] for g in doc["groups"]}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            out.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if isinstance(query, str) and (m := re.match(r"label_values\((\w+)", query)):
            out.append(m.group(1))
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Metric names in a real scrape of a running daemon (every listener on, a route on
    each: the embedded default's shape)."""
    routes = """
[[routes]]
name = "as-echo"
match = { listener = "audiosocket" }
app = { url = "echo:", encapsulation = "sln" }

[[routes]]
name = "twilio-echo"
match = { listener = "websocket", path = "/twilio" }
carrier = "twilio"
app = { url = "echo:", encapsulation = "sln" }

[[routes]]
name = "rtp-echo"
match = { listener = "rtp" }
app = { url = "echo:", encapsulation = "sln" }
"""

    async def run() -> set[str]:
        config = make_config(tmp_path_factory.mktemp("monitoring"), routes=routes)
        async with trio.open_nursery() as nursery:
            daemon = Daemon(config)
            with trio.fail_after(15):
                await nursery.start(daemon.serve)
                samples = await scrape(daemon.bound["admin"])
            nursery.cancel_scope.cancel()
        return names(samples)

    return trio.run(run)


def missing(exprs: list[str], exported: set[str]) -> dict[str, set[str]]:
    out = {}
    for expr in exprs:
        gone = metric_names(expr) - exported - PROMETHEUS_SERIES
        if gone:
            out[expr] = gone
    return out


def test_every_metric_in_the_alert_rules_is_exported(exported: set[str]) -> None:
    exprs = [r["expr"] for rules in rule_groups().values() for r in rules]
    assert len(exprs) >= 15
    assert missing(exprs, exported) == {}


def test_every_metric_on_the_dashboard_is_exported(exported: set[str]) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    assert missing(exprs, exported) == {}


def test_every_alert_has_a_severity_summary_and_description() -> None:
    for rules in rule_groups().values():
        for rule in rules:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
