"""A Comparison as the seed-style Markdown page and as a self-contained HTML page (Jinja2 templates).

The templates only lay out; what a value *means* (an evidence mark's words, how a weights digest is
shortened, which measurements belong in the evidence table) is decided here, once, and handed to
both formats. HTML is autoescaped; Markdown text goes through the ``md`` filter, so hostile text
(a claim holding ``<script>`` or ``|``) can neither inject markup nor break a table.

The HTML page needs nothing outside itself: CSS is inline, generated images are ``data:`` URIs and
the charts are inline SVG. Source URLs stay as plain ``<a href>`` citations.
"""

from __future__ import annotations

import base64
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.gateway.pages import charts

TEMPLATES = Path(__file__).resolve().parent / "templates"
MARKDOWN_MIME = "text/markdown; charset=utf-8"
HTML_MIME = "text/html; charset=utf-8"
#: Hex characters of a weights digest shown in tables (the full digest is in the JSON).
DIGEST_CHARS = 12
#: Content-Security-Policy of every page: inline styles and data: images, nothing else.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'"
#: What a page says about numbers measured on weights that are not real.
MECHANISM_NOTE = ("Rows marked “mechanism check” ran on random or project-trained weights: they show that the "
                  "serving path works (shapes, determinism, speed of the code path), not how good the model is. "
                  "They never feed the quality score or give the leaderboard meaning.")


@dataclass(frozen=True)
class Mark:
    """How an evidence mark reads on a page."""

    words: str
    icon: str
    css: str


MARKS: dict[int, Mark] = {
    gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE: Mark("verified live", "✔", "verified"),
    gateway_pb2.EVIDENCE_MARK_SUPPORTED: Mark("supported", "☑", "supported"),
    gateway_pb2.EVIDENCE_MARK_CONTRADICTED: Mark("contradicted", "✘", "contradicted"),
    gateway_pb2.EVIDENCE_MARK_CLAIMED: Mark("claimed", "○", "claimed"),
    gateway_pb2.EVIDENCE_MARK_UNAVAILABLE: Mark("unavailable", "⚠", "unavailable"),
}
UNMARKED = Mark("not assessed", "·", "claimed")

OUTCOMES = {
    ranker_pb2.OUTCOME_A_WINS: "{a} wins",
    ranker_pb2.OUTCOME_B_WINS: "{b} wins",
    ranker_pb2.OUTCOME_TIE: "tie",
}


@dataclass
class EvidenceRow:
    """One live number for the evidence table: the model, the capabilities it backs, and the measurement."""

    model_id: str
    measurement: gateway_pb2.Measurement
    backs: list[str] = field(default_factory=list)


def mark(value: int) -> Mark:
    return MARKS.get(value, UNMARKED)


def num(value: float | None, digits: int = 4) -> str:
    """A number as people read it: ``digits`` significant digits, thousands separated, no exponent for sizes."""
    if value is None or not math.isfinite(value):
        return "—"
    if float(value).is_integer() or abs(value) >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def pct(value: float, digits: int = 0) -> str:
    """A 0..1 fraction as a percentage."""
    return f"{value * 100:.{digits}f}%"


def digest(weights: gateway_pb2.ServedWeights) -> str:
    """``abcdef012345… (random)``: the short digest and the kind of weights."""
    short = f"{weights.digest[:DIGEST_CHARS]}…" if weights.digest else (
        f"reported {weights.reported_digest[:DIGEST_CHARS]}…, not computed" if weights.reported_digest else "no digest")
    return f"{short} ({weights.kind or 'unknown'})"


def outcome(duel: gateway_pb2.Duel) -> str:
    text = OUTCOMES.get(duel.outcome, "undecided")
    return text.format(a=duel.model_a, b=duel.model_b)


def optional(message: Any, field: str) -> Any:
    """The value of an ``optional`` proto field, or None when it is unset."""
    return getattr(message, field) if message.HasField(field) else None


def detailed(cap: gateway_pb2.CapabilityEvidence) -> bool:
    """Whether a capability has numbers or reasons to list under the capability table."""
    return bool(cap.HasField("claimed_value") or cap.sources or cap.measurements or cap.unavailable_reason)


def datauri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def md(text: object) -> str:
    """Text safe inside a Markdown table cell: no raw HTML, no cell breaks, one line."""
    out = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return out.replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_url(url: str) -> str:
    """A URL as a Markdown link target (spaces and parentheses would end it early)."""
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29").replace("<", "%3C").replace(">", "%3E")


def evidence_rows(c: gateway_pb2.Comparison) -> list[EvidenceRow]:
    """Every live measurement once, with the capabilities it backs (none: a number about the model)."""
    rows: dict[tuple[str, str, str, str, float], EvidenceRow] = {}
    for report in c.models:
        model_id = report.entry.id or report.score.model_id
        tagged = [("", m) for m in report.measurements]
        tagged += [(cap.title or cap.capability_id, m) for cap in report.capabilities for m in cap.measurements]
        for capability, m in tagged:
            row = rows.setdefault((model_id, m.name, m.probe, m.measured_at, m.value), EvidenceRow(model_id, m))
            if capability and capability not in row.backs:
                row.backs.append(capability)
    return list(rows.values())


def _any_mechanism(c: gateway_pb2.Comparison, rows: list[EvidenceRow]) -> bool:
    return (any(r.measurement.mechanism_only for r in rows) or any(q.mechanism_only for q in c.quality)
            or any(d.task.startswith("mechanism.") for d in c.duels))


def _scores_by_model(c: gateway_pb2.Comparison) -> dict[str, ranker_pb2.ModelScore]:
    scores = {s.model_id: s for s in c.scores.scores}
    for report in c.models:
        if report.score.model_id and report.score.model_id not in scores:
            scores[report.score.model_id] = report.score
    return scores


@dataclass(frozen=True)
class Headline:
    """A model's headline card: the score the verdict ranks on, and its own composite as a secondary figure."""

    rank: str  # "74/100", or why there is none
    basis: str  # the dimensions the rank was computed on
    own: str  # "own composite 69/100 (its own dimensions: …)", or ""


def _label(dimension: str) -> str:
    return dimension.replace("_", " ")


def headlines(c: gateway_pb2.Comparison) -> dict[str, Headline]:
    """Per model, the headline the verdict agrees with: the composite on the dimensions every compared model
    has (``shared_composite``); each model's own composite is secondary and labelled as such."""
    shared = [_label(d) for d in c.scores.shared_dimensions]
    out = {}
    for mid, s in _scores_by_model(c).items():
        own_dims = [_label(x.dimension) for x in s.sub_scores if not x.missing and x.weight > 0]
        own = f"own composite {s.composite:.0f}/100 (its own dimensions: {', '.join(own_dims) or 'none'})"
        if shared and any(x.model_id == mid for x in c.scores.scores):
            out[mid] = Headline(f"{s.shared_composite:.0f}/100", "on " + ", ".join(shared), own)
        elif len(c.model_ids) == 1:
            out[mid] = Headline(f"{s.composite:.0f}/100", "on " + (", ".join(own_dims) or "no dimension"), "")
        else:
            out[mid] = Headline("not ranked", "no dimension with data is shared by every compared model", own)
    return out


def _names(c: gateway_pb2.Comparison) -> dict[str, str]:
    names = {mid: mid for mid in c.model_ids}
    for report in c.models:
        if report.entry.id and report.entry.display_name:
            names[report.entry.id] = report.entry.display_name
    return names


def _context(c: gateway_pb2.Comparison) -> dict[str, Any]:
    names = _names(c)
    rows = evidence_rows(c)
    return {
        "c": c,
        "title": " vs ".join(names.get(mid, mid) for mid in c.model_ids) or "Comparison",
        "names": names,
        "reports": {r.entry.id: r for r in c.models if r.entry.id},
        "subs": {s.model_id: {sub.dimension: sub for sub in s.sub_scores} for s in c.scores.scores},
        "scores": _scores_by_model(c),
        "headlines": headlines(c),
        "dimensions": charts.dimensions(c.scores),
        "evidence": rows,
        "mechanism": _any_mechanism(c, rows),
        "mechanism_note": MECHANISM_NOTE,
        "contradicted": gateway_pb2.EVIDENCE_MARK_CONTRADICTED,
    }


@functools.cache
def environment() -> Any:
    """The Jinja2 environment (built on first use, not at import): HTML autoescaped, undefined is an error."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(mark=mark, num=num, pct=pct, digest=digest, outcome=outcome, datauri=datauri, md=md,
                       md_url=md_url)
    env.tests["detailed"] = detailed
    env.globals.update(optional=optional, csp=CSP)
    return env


def render_markdown(c: gateway_pb2.Comparison) -> str:
    """The seed-style page: headline, feature table, capabilities with marks, verdict, evidence, leaderboard."""
    if c.HasField("eval"):  # registered deployments measured on an eval set: a page of its own
        from services.gateway.pages import byo_render

        return byo_render.render_markdown(c)
    return environment().get_template("comparison.md.j2").render(_context(c))


def render_html(c: gateway_pb2.Comparison, *, links: bool = False) -> str:
    """The same content as one self-contained HTML document, with the sub-score and leaderboard charts.

    ``links`` adds navigation to the gateway's other pages (for the web app; a saved file has none).
    """
    if c.HasField("eval"):
        from services.gateway.pages import byo_render

        return byo_render.render_html(c, links=links)
    context = _context(c)
    context.update(subscores_svg=charts.subscores_svg(c.scores), leaderboard_svg=charts.leaderboard_svg(c.leaderboard)
                   if c.leaderboard.task else "", mechanism_svg=charts.leaderboard_svg(c.mechanism_leaderboard)
                   if c.mechanism_leaderboard.task else "", links=links)
    return environment().get_template("comparison.html.j2").render(context)


def render_page(template: str, **context: Any) -> str:
    """One of the web app's other pages (start, leaderboard, error) in the same layout."""
    return environment().get_template(template).render(links=True, **context)
