"""Composite 0-100 rank scores from catalog signals and the match graph (pure; no gRPC).

Formula (documented in docs/RANKING.md):

- quality: the model's task names a primary metric with a floor and a ceiling taken from two reference
  models of the catalog (tasks.json); the sub-score is 100 * (value - floor) / (ceiling - floor), clamped.
- adoption / ecosystem: each signal maps to 0..100 by its catalog scale (linear, or log10 for counts);
  the sub-score is the mean of that dimension's normalised signals. Adoption adds the hub's downloads and
  likes as read by adoption.py (each with its URL, time read and age; "not read (offline)" without one).
- match_graph sub-score = 0.7 * 100 * P(model beats an average opponent in its component, Bradley-Terry
  over all recorded matches) + 0.3 * 100 * (distinct opponents / (models in the graph - 1)).
- composite = sum(weight_d * sub_d) / sum(weight_d) over the dimensions that have data; a dimension
  without data is shown as missing and left out (never counted as zero); confidence = share of the
  total weight that had data.

Same inputs, same scores: nothing here is random, and the time ("now", for a reading's age) is an input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from services.ranker import bt
from services.ranker.adoption import NAMES, OFFLINE, SCALE, UNIT, Adoption, Reading
from services.ranker.catalog import DIMENSIONS, CatalogEntry, Signal, TaskScale, primary_signal
from services.ranker.store import MatchTable

DEFAULT_WEIGHTS = {"adoption": 0.30, "quality": 0.35, "ecosystem": 0.20, "match_graph": 0.15}
ALL_DIMENSIONS = (*DIMENSIONS, "match_graph")
_LABEL = {"adoption": "adoption", "quality": "quality", "ecosystem": "ecosystem", "match_graph": "match graph"}


@dataclass(frozen=True)
class SubScore:
    dimension: str
    score: float
    weight: float
    explanation: str
    missing: bool


@dataclass(frozen=True)
class ModelScore:
    model_id: str
    display_name: str
    composite: float
    sub_scores: tuple[SubScore, ...]
    confidence: float
    times_matched: int
    shared_composite: float = 0.0

    def sub(self, dimension: str) -> SubScore:
        return next(s for s in self.sub_scores if s.dimension == dimension)


@dataclass(frozen=True)
class ScoreReport:
    scores: tuple[ModelScore, ...]
    leaders: dict[str, str]
    verdict: str
    shared_dimensions: tuple[str, ...] = ()
    unshared_dimensions: tuple[str, ...] = ()


@dataclass(frozen=True)
class GraphStats:
    """Per model: win probability against an average opponent and number of distinct opponents."""

    strength: dict[str, float]
    opponents: dict[str, int]
    models_in_graph: int
    matches: int


def parse_weights(text: str) -> dict[str, float]:
    """``adoption=0.3,quality=0.35,...`` → weights (every dimension, each >= 0, sum > 0)."""
    weights = dict(DEFAULT_WEIGHTS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in weights:
            raise ValueError(f"unknown dimension {name!r}; use {', '.join(ALL_DIMENSIONS)}")
        weights[name] = float(value)
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("weights must be >= 0 and not all zero")
    return weights


def graph_stats(table: MatchTable, ridge: float = 1e-4) -> GraphStats:
    """Bradley-Terry strengths over the matches of ``table`` (the store gives real tasks only, never a
    mechanism task's) and distinct opponents per model."""
    ids = sorted(set(table.model_a) | set(table.model_b))
    if not ids:
        return GraphStats({}, {}, 0, 0)
    index = {m: i for i, m in enumerate(ids)}
    a = np.array([index[m] for m in table.model_a])
    b = np.array([index[m] for m in table.model_b])
    w = bt.win_matrix(a, b, table.outcome, len(ids))
    beta = bt.fit(w, ridge)
    strength: dict[str, float] = {}
    for comp in bt.components(w):
        centre = beta[comp].mean()
        for i in comp:
            strength[ids[i]] = float(1.0 / (1.0 + np.exp(-(beta[i] - centre))))
    played = (w + w.T) > 0
    opponents = {ids[i]: int(played[i].sum()) for i in range(len(ids))}
    return GraphStats(strength, opponents, len(ids), len(table.outcome))


def _absent(entry: CatalogEntry, dimension: str) -> str:
    gaps = [f"{a.name} ({a.note})" for a in entry.not_found if a.dimension == dimension]
    return ("; absent: " + "; ".join(gaps)) if gaps else ""


def _cite(s: Signal) -> str:
    return f"{s.source} ({s.locator}), read {s.as_of}"


def _signal_sub(entry: CatalogEntry, dimension: str, weight: float) -> SubScore:
    signals = [s for s in entry.signals if s.dimension == dimension]
    if not signals:
        return SubScore(dimension, 0.0, weight, f"no {_LABEL[dimension]} signal in the catalog"
                        + _absent(entry, dimension), True)
    parts, values = [], []
    for s in signals:
        norm = s.scale.normalise(s.value)
        values.append(norm)
        kind = "measured" if s.measured else "claimed"
        parts.append(f"{s.name} = {s.value:,.6g} {s.unit} ({s.scale.describe()} → {norm:.1f}; {kind}; {_cite(s)})")
    score = float(np.mean(values))
    return SubScore(dimension, score, weight, f"mean of {len(values)}: " + "; ".join(parts)
                    + _absent(entry, dimension), False)


def _age(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} old"
    return f"{seconds:.0f} s old"


def _reading(r: Reading, now: float) -> tuple[float, str]:
    scale = SCALE[r.name]
    norm = scale.normalise(r.value)
    when = datetime.fromtimestamp(r.read_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return norm, (f"{r.name} = {r.value:,.0f} {UNIT[r.name]} ({scale.describe()} → {norm:.1f}; read from the Hub API "
                  f"{r.url} at {when}, {_age(now - r.read_at)})")


def adoption_sub(entry: CatalogEntry, weight: float, adoption: Adoption | None, now: float) -> SubScore:
    """The catalog's adoption signals plus the hub's figures (``adoption``, None when the hub was not asked, as
    for a model without a hub repository); a reading that could not be renewed is shown with its age."""
    if adoption is None:
        return _signal_sub(entry, "adoption", weight)
    values, parts = [], []
    for s in entry.signals:
        if s.dimension == "adoption":
            values.append(s.scale.normalise(s.value))
            parts.append(f"{s.name} = {s.value:,.6g} {s.unit} ({s.scale.describe()} → {values[-1]:.1f}; {_cite(s)})")
    for r in adoption.readings:
        norm, text = _reading(r, now)
        values.append(norm)
        parts.append(text)
    status = adoption.status or OFFLINE
    if not values:
        return SubScore("adoption", 0.0, weight, f"{_join(list(NAMES))} of {entry.hub_id}: {status}; no earlier "
                        "reading (never a guess)", True)
    text = f"mean of {len(values)}: " + "; ".join(parts)
    if adoption.status:
        text += (f"; not read again now ({adoption.status}): the figures shown are the last dated readings, with "
                 "their age")
    unread = [n for n in NAMES if n not in {r.name for r in adoption.readings}]
    if unread:
        text += f"; {_join(unread)}: {status}"
    return SubScore("adoption", float(np.mean(values)), weight, text, False)


def _quality_value(s: Signal) -> str:
    kind = "measured" if s.measured else "claimed"
    return (f"{s.name} = {s.value:g} {s.unit} ({kind}; protocol {s.protocol}; {_cite(s)}"
            + (f"; {s.conditions}" if s.conditions else "") + ")")


def _apart(entry: CatalogEntry, metric: str, protocol: str | None) -> str:
    """The model's quality values other than the placed one (``metric`` of the scale's ``protocol``; all of
    them when there is no scale): secondary metrics and other teams' runs, shown, never placed."""
    other = [s for s in entry.signals
             if s.dimension == "quality" and not (protocol and s.name == metric and s.protocol == protocol)]
    if not other:
        return ""
    why = "another metric or protocol" if protocol else "no scale to place them on"
    if protocol and all(s.name == metric for s in other):
        why = "another protocol"
    return f"; shown apart, not placed ({why}): " + "; ".join(_quality_value(s) for s in other)


def quality_sub(entry: CatalogEntry, weight: float, tasks: Mapping[str, TaskScale]) -> SubScore:
    """Where the model's sourced primary metric (of its task's protocol) falls between the task's floor and
    ceiling, 0..100. Values from another protocol are listed apart; a task without a scale has none."""
    scale = tasks.get(entry.type)
    if scale is None:
        return SubScore("quality", 0.0, weight, f"task {entry.type!r} defines no primary metric", True)
    metric, protocol = scale.task.primary_metric, scale.task.protocol
    apart = _apart(entry, metric, None if scale.floor is None else protocol)
    if scale.floor is None or scale.ceiling is None:
        return SubScore("quality", 0.0, weight, f"task {scale.task.id} has no quality scale: {scale.task.scale_absent}"
                        + (apart or f"; no sourced {metric} for this model") + _absent(entry, "quality"), True)
    s = primary_signal(entry, metric, protocol)
    if s is None:
        return SubScore("quality", 0.0, weight, f"no sourced {metric} of protocol {protocol} for this model" + apart
                        + _absent(entry, "quality"), True)
    lo, hi = scale.floor.signal.value, scale.ceiling.signal.value
    score = scale.place(s.value)
    text = (_quality_value(s) + " placed between the "
            f"{scale.task.id} floor {lo:g} ({scale.floor.model_id}; {_cite(scale.floor.signal)}) and ceiling "
            f"{hi:g} ({scale.ceiling.model_id}; {_cite(scale.ceiling.signal)}): "
            f"100 × ({s.value:g} − {lo:g}) / ({hi:g} − {lo:g}) = {score:.1f}" + apart)
    return SubScore("quality", score, weight, text, False)


def _graph_sub(model_id: str, stats: GraphStats, weight: float) -> SubScore:
    if model_id not in stats.strength:
        return SubScore("match_graph", 0.0, weight, "no recorded matches", True)
    p = stats.strength[model_id]
    opp = stats.opponents[model_id]
    centrality = opp / max(1, stats.models_in_graph - 1)
    score = 70.0 * p + 30.0 * centrality
    text = (f"0.7 × 100 × P(beats an average opponent) = 0.7 × {100 * p:.1f} (Bradley-Terry over {stats.matches} "
            f"matches) + 0.3 × 100 × centrality = 0.3 × {100 * centrality:.1f} ({opp} of {stats.models_in_graph - 1} "
            "possible opponents)")
    return SubScore("match_graph", score, weight, text, False)


def score_model(entry: CatalogEntry, weights: Mapping[str, float], stats: GraphStats, times_matched: int,
                tasks: Mapping[str, TaskScale], adoption: Adoption | None = None, now: float = 0.0) -> ModelScore:
    subs = [quality_sub(entry, weights[d], tasks) if d == "quality"
            else adoption_sub(entry, weights[d], adoption, now) if d == "adoption"
            else _signal_sub(entry, d, weights[d]) for d in DIMENSIONS]
    subs.append(_graph_sub(entry.id, stats, weights["match_graph"]))
    present = [s for s in subs if not s.missing and s.weight > 0]
    total = sum(weights.values())
    used = sum(s.weight for s in present)
    return ModelScore(entry.id, entry.display_name, _blend(present), tuple(subs), round(used / total, 3),
                      times_matched)


def _blend(subs: Sequence[SubScore]) -> float:
    """Σ wᵈ·sᵈ / Σ wᵈ over ``subs`` (0 when none has weight), rounded to 0.1."""
    used = sum(s.weight for s in subs)
    return round(sum(s.weight * s.score for s in subs) / used, 1) if used else 0.0


def shared_dimensions(scores: Sequence[ModelScore]) -> tuple[str, ...]:
    """Dimensions every scored model has data for (and that carry weight): the pairwise ranking's basis."""
    return tuple(d for d in ALL_DIMENSIONS if all(not s.sub(d).missing and s.sub(d).weight > 0 for s in scores))


def leaders(scores: Sequence[ModelScore]) -> dict[str, str]:
    """Per dimension, the model with the highest sub-score among those with data (ties: first id)."""
    out = {}
    for dim in ALL_DIMENSIONS:
        have = [s for s in scores if not s.sub(dim).missing]
        if have:
            out[dim] = max(sorted(have, key=lambda s: s.model_id), key=lambda s: s.sub(dim).score).model_id
    return out


def _join(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict(scores: Sequence[ModelScore], shared: Sequence[str]) -> str:
    """One or two sentences in the seed's form, from the scores sorted on ``shared`` dimensions only; it
    names the dimensions it could not compare."""
    if len(scores) == 1:
        s = scores[0]
        return f"{s.display_name} scores {s.composite:.0f}/100 (confidence {s.confidence:.0%})."
    first, second = scores[0], scores[1]
    basis = f" on {_join([_LABEL[d] for d in shared])}" if shared else ""
    if not shared:
        head = (f"{first.display_name} and {second.display_name} have no dimension with data in common, so they are "
                "not ranked against each other.")
    elif round(first.shared_composite) == round(second.shared_composite):
        head = f"{first.display_name} and {second.display_name} tie at {first.shared_composite:.0f}/100{basis}."
    elif len(scores) == 2:
        head = (f"{first.display_name} scores higher at {first.shared_composite:.0f}/100 vs {second.display_name} at "
                f"{second.shared_composite:.0f}/100{basis}.")
    else:
        rest = ", ".join(f"{s.display_name} ({s.shared_composite:.0f})" for s in scores[1:])
        head = f"{first.display_name} ranks first at {first.shared_composite:.0f}/100{basis}, ahead of {rest}."
    second_leads = [_LABEL[d] for d in shared if second.sub(d).score > first.sub(d).score]
    first_leads = [_LABEL[d] for d in shared if first.sub(d).score > second.sub(d).score]
    if second_leads and first_leads:
        tail = (f" {second.display_name} leads on {_join(second_leads)}, while {first.display_name} is stronger on "
                f"{_join(first_leads)}.")
    elif first_leads:
        tail = f" {first.display_name} leads on {_join(first_leads)}."
    elif second_leads:
        tail = f" {second.display_name} leads on {_join(second_leads)}."
    else:
        tail = ""
    gaps = [f"{s.display_name} has no {_join([_LABEL[x.dimension] for x in s.sub_scores if x.missing])} data"
            for s in scores[:2] if any(x.missing for x in s.sub_scores)]
    unshared = [_LABEL[d] for d in ALL_DIMENSIONS if d not in shared]
    not_compared = f" Not compared: {_join(unshared)} ({'; '.join(gaps)})." if gaps and unshared else ""
    return head + tail + not_compared


def score_report(entries: Sequence[CatalogEntry], weights: Mapping[str, float], stats: GraphStats,
                 times: Mapping[str, int], tasks: Mapping[str, TaskScale],
                 adoption: Mapping[str, Adoption] | None = None, now: float = 0.0) -> ScoreReport:
    """Each model's own composite, plus a shared composite over the dimensions every model has; the
    ranking (and the verdict) uses the shared one, so a missing fact never lifts one model over another.
    ``adoption``: the hub's figures per model id (adoption.py), read at or before ``now`` (Unix seconds)."""
    adoption = adoption or {}
    own = [score_model(e, weights, stats, times.get(e.id, 0), tasks, adoption.get(e.id), now) for e in entries]
    shared = shared_dimensions(own)
    scores = sorted((replace(s, shared_composite=_blend([s.sub(d) for d in shared])) for s in own),
                    key=lambda s: (-s.shared_composite, -s.composite, s.model_id))
    unshared = tuple(d for d in ALL_DIMENSIONS if d not in shared)
    return ScoreReport(tuple(scores), leaders(scores), verdict(scores, shared), shared, unshared)
