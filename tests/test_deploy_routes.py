"""Shadow and canary routes on Kubernetes: the dashboard's "Shadow routes" row and the route alerts read exactly the
series the gateway exports for a route (names and labels)."""

from __future__ import annotations

import json
import re

from test_observability import DASHBOARD, ROUTE_PREFIX, ROUTES_ROW, alert_rules, dashboard_panels, metric_names

#: Labels Prometheus' scrape adds to every series (the ServiceMonitors' target labels), besides the gateway's own.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}
#: The route metrics as docs/SHADOW.md and the gateway's routes wing name them: exported name → labels.
ROUTE_METRICS = {
    "versus_route_requests_total": {"route", "answered_by"},
    "versus_route_mirrored_total": {"route"},
    "versus_route_mirror_dropped_total": {"route", "reason"},
    "versus_route_mirrors_pending": {"route"},
    "versus_route_pairs": {"route"},
    "versus_route_agreement_lower": {"route"},
    "versus_route_agreement_upper": {"route"},
    "versus_route_decision": {"route", "bound"},
    "versus_route_rolled_back": {"route"},
    "versus_route_records_lost_total": {"route"},
}
ROUTE_ALERTS = {"VersusRouteViolated", "VersusRouteRolledBack", "VersusRouteMirrorsDropping"}
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_ANNOTATION = re.compile(r"\$labels\.(\w+)")


def exported() -> dict[str, set[str]]:
    """Exported name → label names of every route metric the gateway registers."""
    return ROUTE_METRICS


def route_queries() -> list[tuple[str, str, str]]:
    """(where, expr, the text that shows its labels: legend or annotations) of the routes row's panels and the
    route alerts."""
    out, row = [], ""
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        row = panel["title"] if panel["type"] == "row" else row
        if panel["type"] != "row" and row == ROUTES_ROW:
            out += [(f"{row}/{panel['title']}", t["expr"], t.get("legendFormat", "")) for t in panel["targets"]]
    out += [(r["alert"], r["expr"], " ".join(r["annotations"].values())) for r in alert_rules()
            if r["alert"] in ROUTE_ALERTS]
    return out


def test_the_routes_row_and_alerts_exist() -> None:
    titles = [title for row, title, _ in dashboard_panels() if row == ROUTES_ROW]
    assert len(titles) >= 6, titles
    assert ROUTE_ALERTS <= {r["alert"] for r in alert_rules()}
    used = set().union(*(metric_names(e) for _, e, _ in route_queries()))
    # The list: requests, mirrored, dropped; agreement lower and upper; decision state (+ rollback).
    assert {"versus_route_requests_total", "versus_route_mirrored_total", "versus_route_mirror_dropped_total",
            "versus_route_agreement_lower", "versus_route_agreement_upper", "versus_route_decision",
            "versus_route_rolled_back"} <= used


def test_every_route_series_the_dashboard_and_alerts_read_is_one_the_gateway_exports() -> None:
    """Each metric name is registered by the gateway; each label a query groups by, a legend shows or an alert's
    annotation prints is one of that metric's labels (or one the scrape adds): a renamed metric or label leaves
    a panel silently empty, so it fails here instead."""
    metrics = exported()
    checked = 0
    for where, expr, labelled in route_queries():
        names = metric_names(expr)
        assert names and all(n.startswith(ROUTE_PREFIX) for n in names), f"{where}: {sorted(names)}"
        unknown = names - set(metrics)
        assert not unknown, f"{where}: the gateway exports no {sorted(unknown)}"
        labels = set().union(*(metrics[n] for n in names)) | TARGET_LABELS
        for group in _GROUPING.findall(expr):
            grouped = {g.strip() for g in group.split(",") if g.strip()}
            assert grouped <= labels, f"{where}: groups by {sorted(grouped - labels)}, not labels of {sorted(names)}"
        outer = {g.strip() for g in _GROUPING.findall(expr)[0].split(",")} if _GROUPING.search(expr) else labels
        shown = set(_LEGEND.findall(labelled)) | set(_ANNOTATION.findall(labelled))
        assert shown <= outer, f"{where}: shows {sorted(shown - outer)}, which the query does not keep"
        checked += 1
    assert checked >= 10
