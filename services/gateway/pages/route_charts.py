"""SVG charts of a route page (matplotlib through ``charts``): the agreement sequence narrowing as pairs arrive,
and both sides' latency distributions.

They draw what the ranker computed (``RouteState``) and nothing else: no interval is recomputed here.
Non-finite bounds (a quantile sequence is ±inf while it has few observations) are drawn to the axis edge.
"""

from __future__ import annotations

import math
from typing import Any

from versus.ranker.v1 import routes_pb2

from services.gateway.pages import charts

PRIMARY_COLOUR, CANDIDATE_COLOUR = charts.PALETTE[0], charts.PALETTE[1]
HOLDS_COLOUR, VIOLATED_COLOUR = charts.PALETTE[2], charts.PALETTE[5]


def _clip(value: float, low: float, high: float) -> float:
    if math.isnan(value):
        return low
    return min(high, max(low, value))


def agreement_bounds(state: routes_pb2.RouteState) -> list[routes_pb2.BoundDecision]:
    """The decisions on the agreement rate (the bounds the narrowing chart draws)."""
    return [d for d in state.decisions if d.bound.metric == "agreement"]


def _draw_agreement(ax: Any, state: routes_pb2.RouteState) -> None:
    points = sorted(state.agreement_history, key=lambda p: p.n)
    ns = [p.n for p in points]
    lower = [_clip(p.lower, 0.0, 1.0) for p in points]
    upper = [_clip(p.upper, 0.0, 1.0) for p in points]
    ax.fill_between(ns, lower, upper, step="post", color=PRIMARY_COLOUR, alpha=0.18, linewidth=0,
                    label="confidence sequence")
    ax.step(ns, lower, where="post", color=PRIMARY_COLOUR, linewidth=1)
    ax.step(ns, upper, where="post", color=PRIMARY_COLOUR, linewidth=1)
    ax.plot(ns, [_clip(p.estimate, 0.0, 1.0) for p in points], color="#1d2329", linewidth=1, label="agreement rate")
    floor = min(lower[len(lower) // 4:] or lower)
    for d in agreement_bounds(state):
        ax.axhline(d.bound.value, color="#555555", linestyle="--", linewidth=1,
                   label=f"bound: {d.bound.metric} {d.bound.op} {d.bound.value:g}")
        floor = min(floor, d.bound.value)
        if d.decided_at:
            held = d.decided_state == routes_pb2.DECISION_STATE_HOLDS
            at = d.interval_at_decision
            ax.plot([d.decided_after], [_clip(at.estimate, 0.0, 1.0)], marker="D", linestyle="none",
                    color=HOLDS_COLOUR if held else VIOLATED_COLOUR,
                    label=f"{'holds' if held else 'violated'} after {d.decided_after:,} pairs")
    ax.set_ylim(max(0.0, floor - 0.05 * (1.0 - floor) - 0.01), 1.002)
    ax.set_xlim(left=0)
    ax.set_xlabel("paired rows")
    ax.set_ylabel("top-1 agreement")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def agreement_svg(state: routes_pb2.RouteState) -> str:
    """Lower and upper bound of the agreement sequence and the estimate over paired rows; the agreement bounds
    as dashed lines; the moment each was decided as a diamond."""
    with charts._figure(7.5, 3.2, "agreement") as (fig, ax):
        if not state.agreement_history:
            charts._empty(ax, "No paired rows yet: the agreement sequence starts with the first pair")
        else:
            _draw_agreement(ax, state)
            alpha = state.route.alpha
            ax.set_title("Agreement: a confidence sequence that holds at every moment"
                         + (f" (alpha {alpha:g} over all bounds)" if alpha else ""), fontsize=9, loc="left")
        return charts._to_svg(fig, "agreement")


def _hist_edges(summary: routes_pb2.LatencySummary) -> list[float] | None:
    edges = list(summary.edges_s)
    if len(edges) != len(summary.counts) + 1 or not summary.counts or not all(map(math.isfinite, edges)):
        return None
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        return None
    return edges


def _draw_latency(ax: Any, sides: list[tuple[str, str, routes_pb2.LatencySummary, list[float]]]) -> None:
    low = min(edges[0] for *_, edges in sides)
    high = max(edges[-1] for *_, edges in sides)
    for name, colour, summary, edges in sides:
        ms = [e * 1000 for e in edges]
        ax.stairs(list(summary.counts), ms, color=colour, linewidth=1.4, label=f"{name} (n={summary.n:,})")
        if summary.p99_s > 0:
            ax.axvline(summary.p99_s * 1000, color=colour, linestyle="--", linewidth=1,
                       label=f"{name} p99 {summary.p99_s * 1000:.4g} ms")
    if low > 0 and high / low > 20:
        ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def latency_svg(state: routes_pb2.RouteState) -> str:
    """Both sides' latency histograms (shared edges, from the ranker) with each side's p99 as a dashed line."""
    named = (("primary", PRIMARY_COLOUR, state.primary_latency), ("candidate", CANDIDATE_COLOUR,
                                                                   state.candidate_latency))
    sides = [(name, colour, s, edges) for name, colour, s in named if (edges := _hist_edges(s)) is not None]
    with charts._figure(7.5, 2.8, "latency") as (fig, ax):
        if not sides:
            charts._empty(ax, "No latency histogram yet")
        else:
            _draw_latency(ax, sides)
            ax.set_title("Latency of paired requests", fontsize=9, loc="left")
        return charts._to_svg(fig, "latency")
