"""SVG charts for the comparison report and the pages (matplotlib, Agg backend).

Each function returns an ``<svg>`` element as text, ready to inline in HTML: no XML prologue, no
DOCTYPE, text kept as text (searchable, and it scales), no external references. Figures are plain
``matplotlib.figure.Figure`` objects (no pyplot), so a long-running gateway accumulates none.

A missing sub-score (no signal for that dimension) is drawn as a hatched placeholder labelled
"missing", never as a zero-height bar: the ranker leaves it out of the composite rather than
scoring it 0, and the chart must not say otherwise.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from versus.ranker.v1 import ranker_pb2

#: The ranker's sub-score dimensions, in the order the charts show them.
DIMENSIONS = ("adoption", "quality", "ecosystem", "match_graph")
#: The text drawn on a missing sub-score.
MISSING_LABEL = "missing"
#: Colour-blind-safe palette (Okabe-Ito), one colour per compared model.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00")

_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.DOTALL)
_ID = re.compile(r'\b(id)="([^"]+)"')
_URL_REF = re.compile(r"url\(#([^)]+)\)")
_HREF_REF = re.compile(r'\b((?:xlink:)?href)="#([^"]+)"')


#: rcParams are process-global: charts drawn from several threads (the web app renders off the event
#: loop) take turns, so one chart's settings never leak into another's.
_LOCK = threading.Lock()


@contextmanager
def _figure(width: float, height: float, salt: str) -> Iterator[tuple[Any, Any]]:
    """A fresh figure and axes under chart-local rc settings (no pyplot: no global figure registry)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    settings = {"svg.fonttype": "none", "svg.hashsalt": salt, "font.size": 9, "axes.spines.top": False,
                "axes.spines.right": False}
    with _LOCK, matplotlib.rc_context(settings):
        fig = Figure(figsize=(width, height))
        yield fig, fig.subplots()


def _to_svg(fig: Any, prefix: str) -> str:
    """The figure as an ``<svg>`` element whose ids (and references to them) start with ``prefix``.

    matplotlib names every figure's groups ``figure_1``, ``axes_1`` …: two charts inlined in one page
    would repeat them, and a reference like ``url(#…)`` could resolve into the other chart.
    """
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight",
                metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = _PROLOGUE.sub("", buffer.getvalue()).strip()
    text = _ID.sub(rf'\1="{prefix}-\2"', text)
    text = _URL_REF.sub(rf"url(#{prefix}-\1)", text)
    return _HREF_REF.sub(rf'\1="#{prefix}-\2"', text)


def dimensions(scores: ranker_pb2.ScoreResponse) -> list[str]:
    """The sub-score dimensions present, the known ones first in their usual order."""
    seen = [s.dimension for m in scores.scores for s in m.sub_scores]
    known = [d for d in DIMENSIONS if d in seen]
    return known + sorted({d for d in seen if d not in DIMENSIONS})


def subscore_values(scores: ranker_pb2.ScoreResponse) -> dict[str, dict[str, float | None]]:
    """``{model_id: {dimension: score or None}}``; None where the sub-score is missing or absent."""
    dims = dimensions(scores)
    table: dict[str, dict[str, float | None]] = {}
    for model in scores.scores:
        by_dim = {s.dimension: (None if s.missing else s.score) for s in model.sub_scores}
        table[model.model_id] = {d: by_dim.get(d) for d in dims}
    return table


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_axis_off()


def _draw_subscores(ax: Any, table: dict[str, dict[str, float | None]]) -> None:
    from matplotlib.patches import Patch

    models = list(table)
    dims = list(next(iter(table.values())))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        colour = PALETTE[i % len(PALETTE)]
        for j, dim in enumerate(dims):
            x = j - 0.4 + width * (i + 0.5)
            value = table[model][dim]
            if value is None:
                ax.bar(x, 100, width * 0.9, fill=False, hatch="///", edgecolor="#9a9a9a",
                       linestyle="--", linewidth=0.8)
                ax.text(x, 50, MISSING_LABEL, rotation=90, ha="center", va="center",
                        color="#555555", fontsize=8)
            else:
                ax.bar(x, value, width * 0.9, color=colour)
                ax.text(x, value + 1.5, f"{value:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(dims)), [d.replace("_", " ") for d in dims])
    ax.set_ylim(0, 108)
    ax.set_ylabel("sub-score (0–100)")
    # Explicit handles: a model whose every sub-score is missing still gets its colour in the legend.
    handles = [Patch(facecolor=PALETTE[i % len(PALETTE)], label=model) for i, model in enumerate(models)]
    handles.append(Patch(fill=False, hatch="///", edgecolor="#9a9a9a", linestyle="--", label="missing (no signal)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def subscores_svg(scores: ranker_pb2.ScoreResponse) -> str:
    """Grouped bars: one group per sub-score dimension, one bar per model (hatched "missing" bars)."""
    table = subscore_values(scores)
    with _figure(7.5, 3.4, "subscores") as (fig, ax):
        if not table or not any(table.values()) or not next(iter(table.values())):
            _empty(ax, "No scores available")
        else:
            _draw_subscores(ax, table)
            ax.set_title("Sub-scores per model (hatched: no signal, left out of the composite)",
                         fontsize=9, loc="left")
        return _to_svg(fig, "subscores")


def _draw_leaderboard(ax: Any, board: ranker_pb2.GetLeaderboardResponse) -> None:
    ratings = sorted(board.ratings, key=lambda r: (r.rank, -r.rating, r.model_id))
    ys = list(range(len(ratings)))[::-1]
    for y, r in zip(ys, ratings, strict=True):
        ax.plot([r.ci_low, r.ci_high], [y, y], color="#0072B2", linewidth=2.5, solid_capstyle="butt")
        ax.plot([r.rating], [y], "o", color="#D55E00", markersize=5)
        ax.text(r.ci_high, y + 0.18, f" {r.rating:.0f} [{r.ci_low:.0f}, {r.ci_high:.0f}]",
                va="bottom", fontsize=7)
    ax.axvline(1000, color="#999999", linestyle=":", linewidth=1)
    ax.set_yticks(ys, [f"#{r.rank} {r.model_id}" for r in ratings])
    low = min(r.ci_low for r in ratings)
    high = max(r.ci_high for r in ratings)
    pad = max(50.0, (high - low) * 0.25)
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(-0.7, len(ratings) - 0.3)
    ax.set_xlabel("rating (Elo scale; bars: 95% bootstrap interval; dotted: 1000)")


def leaderboard_svg(board: ranker_pb2.GetLeaderboardResponse) -> str:
    """Ratings as points with their 95% interval bars, best rank on top; a note when there are none."""
    rows = len(board.ratings)
    with _figure(7.5, 0.45 * rows + 1.0 if rows else 0.8, "leaderboard") as (fig, ax):
        if not rows:
            task = board.task or "all tasks"
            _empty(ax, f"No matches recorded yet ({task})")
        else:
            _draw_leaderboard(ax, board)
            title = f"Leaderboard: {board.task or 'all tasks'} ({board.matches} matches)"
            ax.set_title(title, fontsize=9, loc="left")
        return _to_svg(fig, "leaderboard")
