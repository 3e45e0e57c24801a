"""A shadow or canary route's page, from a ``gateway_pb2.RouteView`` only: Markdown (``versus routes report``) and
self-contained HTML (the ``/routes/NAME`` page and RenderRoute), plus the ``/routes`` list.

What the page shows: the agreement sequence narrowing over time, both latency distributions, each declared bound's
decision with its interval, pairs and time, accuracy on labelled traffic, the disagreeing requests (their images
where the route keeps inputs, digests otherwise), mirrors dropped by reason, and the rollback. Every interval is a
confidence sequence computed by the ranker; nothing statistical is recomputed here. McNemar's fixed-n p-value is
shown for reference only and says so.

The words for states and intervals are decided here once and shared by both formats and by the CLI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import routes_pb2

#: A decision state as words and the CSS class of its badge.
STATES: dict[int, tuple[str, str]] = {
    routes_pb2.DECISION_STATE_HOLDS: ("holds", "verified"),
    routes_pb2.DECISION_STATE_VIOLATED: ("violated", "contradicted"),
    routes_pb2.DECISION_STATE_UNDECIDED: ("undecided", "claimed"),
}
UNDECIDED = STATES[routes_pb2.DECISION_STATE_UNDECIDED]
#: Why a mirror was never answered (RouteCounters.dropped keys), as people read them.
DROP_REASONS = {"queue_full": "mirror queue full", "deadline": "past the mirror deadline",
                "unavailable": "candidate unavailable", "shutdown": "gateway shutting down"}
#: Image formats a kept input is shown as (by its first bytes); anything else is listed by size and digest.
IMAGE_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
               (b"GIF89a", "image/gif"))
MCNEMAR_NOTE = ("McNemar's exact p-value on the labelled rows now, for reference only: it is a fixed-n test, and "
                "recomputed as labels arrive it would be the repeated p-value these pages avoid. It decides nothing "
                "here; the sequence on the candidate's share of discordant rows does.")
#: Rows of the agreement history the Markdown report lists (spread over the epoch, last one included).
MARKDOWN_HISTORY_ROWS = 12


def state_words(state: int) -> str:
    """A DecisionState as a word (an unknown or unset state reads "undecided")."""
    return STATES.get(state, UNDECIDED)[0]


def state_css(state: int) -> str:
    return STATES.get(state, UNDECIDED)[1]


#: How the pages and the CLI write a bound's operator (plain text in Markdown and terminals alike: no escaping).
OPERATORS = {">=": "≥", "<=": "≤"}


def bound_text(bound: routes_pb2.RouteBound) -> str:
    """``agreement ≥ 0.99``."""
    return f"{bound.metric} {OPERATORS.get(bound.op, bound.op)} {bound.value:g}"


def _bound_value(value: float, digits: int, side: str) -> str:
    if math.isnan(value):
        return "?"
    if math.isinf(value):
        return "−∞" if value < 0 or side == "lower" else "+∞"
    return f"{value:.{digits}g}"


def interval_text(si: routes_pb2.SequenceInterval, *, scale: float = 1.0, unit: str = "", digits: int = 4,
                  with_n: bool = True) -> str:
    """``0.9912 [0.9851, 0.9960] (n=1,234)``; an unbounded side (few observations) reads ±∞; no data: ``—``."""
    if si.n == 0 and si.lower == si.upper == si.estimate == 0:
        return "—"
    lower, upper, estimate = si.lower * scale, si.upper * scale, si.estimate * scale
    suffix = f" {unit}" if unit else ""
    text = (f"{_bound_value(estimate, digits, 'estimate')}{suffix} [{_bound_value(lower, digits, 'lower')}, "
            f"{_bound_value(upper, digits, 'upper')}]")
    return text + (f" (n={si.n:,})" if with_n else "")


def decision_summary(decisions: Iterable[routes_pb2.BoundDecision]) -> str:
    """``agreement >= 0.99: holds; p99_ratio <= 1.1: undecided`` (one line, for lists and the CLI)."""
    return "; ".join(f"{bound_text(d.bound)}: {state_words(d.state)}" for d in decisions) or "no bounds"


def decided_text(d: routes_pb2.BoundDecision) -> str:
    """When a decision was reached, after how many pairs, its interval then, and whether the state later moved."""
    if not d.decided_at:
        return "not yet"
    text = (f"{state_words(d.decided_state)} at {d.decided_at} after {d.decided_after:,} pairs, "
            f"{interval_text(d.interval_at_decision, with_n=False)}")
    if d.decided_state and d.decided_state != d.state:
        text += f"; now {state_words(d.state)} (the record is kept, not rewritten)"
    return text


def image_mime(data: bytes) -> str | None:
    """The MIME type of a kept input that browsers show as an image, by its first bytes; None otherwise."""
    for magic, mime in IMAGE_MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def input_uri(data: bytes) -> str:
    import base64

    mime = image_mime(data)
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii") if mime else ""


def history_rows(points: Sequence[routes_pb2.SequencePoint], limit: int = MARKDOWN_HISTORY_ROWS) -> list[Any]:
    """At most ``limit`` points spread evenly over the history, the first and the last included."""
    ordered = sorted(points, key=lambda p: p.n)
    if len(ordered) <= limit:
        return ordered
    step = (len(ordered) - 1) / (limit - 1)
    return [ordered[round(i * step)] for i in range(limit)]


@dataclass(frozen=True)
class DropRow:
    reason: str
    words: str
    total: int  # over every replica (the ranker's counters)
    local: int  # this replica since it started


def drop_rows(view: gateway_pb2.RouteView) -> list[DropRow]:
    shared = dict(view.state.counters.dropped) if view.HasField("state") else {}
    local = dict(view.local.dropped)
    return [DropRow(reason, DROP_REASONS.get(reason, reason), shared.get(reason, 0), local.get(reason, 0))
            for reason in sorted(set(shared) | set(local))]


def _ms(value_s: float) -> str:
    return f"{value_s * 1000:.4g}" if math.isfinite(value_s) and value_s > 0 else "—"


def context(view: gateway_pb2.RouteView) -> dict[str, Any]:
    route = view.route if view.route.name else view.state.route
    state = view.state if view.HasField("state") else None
    return {"view": view, "r": route, "s": state, "title": f"Route {route.name or '(unnamed)'}",
            "drops": drop_rows(view), "history": history_rows(state.agreement_history) if state else [],
            "mcnemar_note": MCNEMAR_NOTE, "labelled": bool(state and state.accuracy.labelled),
            "canary": route.mode == "canary"}


def environment() -> Any:
    """The pages' Jinja2 environment with the route filters added (idempotent)."""
    from services.gateway.pages.render import environment as base

    env = base()
    env.filters.update(state_words=state_words, state_css=state_css, bound_text=bound_text, interval=interval_text,
                       decided=decided_text, input_uri=input_uri, ms=_ms, decisions=decision_summary)
    return env


def render_route_markdown(view: gateway_pb2.RouteView) -> str:
    """The route's report in Markdown: the same sections as the page, the charts as tables."""
    return environment().get_template("route.md.j2").render(context(view))


def render_route_html(view: gateway_pb2.RouteView, *, links: bool = False) -> str:
    """The route page as one self-contained HTML document (inline CSS and SVG charts, inputs as data: URIs).

    ``links`` adds the web app's navigation (a saved report has none).
    """
    from services.gateway.pages import route_charts

    ctx = context(view)
    state = ctx["s"] or routes_pb2.RouteState()
    ctx.update(agreement_svg=route_charts.agreement_svg(state), latency_svg=route_charts.latency_svg(state),
               links=links)
    return environment().get_template("route.html.j2").render(ctx)


def render_routes_html(views: Sequence[gateway_pb2.RouteView], *, links: bool = True) -> str:
    """The ``/routes`` page: every route this gateway serves, with its decisions in one line each."""
    return environment().get_template("routes.html.j2").render(views=list(views), links=links)
