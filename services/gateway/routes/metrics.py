"""Prometheus metrics per route (the names the Grafana row and the alerts read: docs/SHADOW.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge
from versus.ranker.v1 import routes_pb2

from services.common.metrics import Metrics

#: versus_route_decision's values.
DECISION_VALUE = {routes_pb2.DECISION_STATE_HOLDS: 1, routes_pb2.DECISION_STATE_VIOLATED: 2}


class RouteMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.requests = Counter("versus_route_requests", "Requests a route served, by the side that answered.",
                                ("route", "answered_by"), registry=r)
        self.mirrored = Counter("versus_route_mirrored", "Requests mirrored to the other side.", ("route",),
                                registry=r)
        self.dropped = Counter("versus_route_mirror_dropped", "Mirrors never answered, by reason (queue_full, "
                               "deadline, unavailable, shutdown).", ("route", "reason"), registry=r)
        self.pending = Gauge("versus_route_mirrors_pending", "Mirrors queued or in flight.", ("route",), registry=r)
        self.pairs = Gauge("versus_route_pairs", "Paired requests of the route's epoch (all replicas, from the "
                           "ranker).", ("route",), registry=r)
        self.agreement_lower = Gauge("versus_route_agreement_lower", "Lower end of the agreement confidence "
                                     "sequence.", ("route",), registry=r)
        self.agreement_upper = Gauge("versus_route_agreement_upper", "Upper end of the agreement confidence "
                                     "sequence.", ("route",), registry=r)
        self.decision = Gauge("versus_route_decision", "Each bound's state: 0 undecided, 1 holds, 2 violated.",
                              ("route", "bound"), registry=r)
        self.rolled_back = Gauge("versus_route_rolled_back", "1 once a canary was rolled back to 0%.", ("route",),
                                 registry=r)
        self.records_lost = Counter("versus_route_records_lost", "Pairs dropped because the buffer toward the "
                                    "ranker was full.", ("route",), registry=r)

    def state(self, route: str, state: routes_pb2.RouteState, bound_text: dict[tuple[str, str, float], str]) -> None:
        """Gauges from the ranker's view of the route (shared by every replica)."""
        self.pairs.labels(route).set(state.pairs)
        if state.HasField("agreement") and state.agreement.n:
            self.agreement_lower.labels(route).set(state.agreement.lower)
            self.agreement_upper.labels(route).set(state.agreement.upper)
        for d in state.decisions:
            key = (d.bound.metric, d.bound.op, round(d.bound.value, 12))
            text = bound_text.get(key, f"{d.bound.metric} {d.bound.op} {d.bound.value:g}")
            self.decision.labels(route, text).set(DECISION_VALUE.get(d.state, 0))
        self.rolled_back.labels(route).set(1 if state.rolled_back else 0)
