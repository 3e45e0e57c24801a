"""Validation of route requests (routes.proto limits) before any database work; no gRPC, no I/O.

Every problem is a (field path, what is wrong) pair, reported together as INVALID_ARGUMENT; client input in
a message is quoted through ``quote`` (bounded), so a 20,000-character name never becomes a huge status.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time

from versus.ranker.v1 import routes_pb2

from services.common import route_stats
from services.common.errors import InvalidArgument, quote
from services.ranker.route_store import ROUTE_PREFIX, PairRecord

MAX_NAME_CHARS = 64
_NAME = re.compile(rf"[a-z0-9][a-z0-9._-]{{0,{MAX_NAME_CHARS - 1}}}")
NAME_RULE = f"must be 1..{MAX_NAME_CHARS} characters of [a-z0-9._-], starting with a letter or digit"
MAX_PAIRS = 10_000
MAX_ITEMS = 10_000
MAX_ROWS = 4_096
MAX_INPUT_BYTES = 1 << 20
MAX_REQUEST_ID_CHARS = 256
MAX_IDENTITY_CHARS = 1_024
MAX_LABEL_CHARS = 256
MAX_LABELS = 100_000
MAX_BOUNDS = 16
MAX_BATCH_ID_CHARS = 128
#: A latency above a day is not a latency (and a recorded_at more than a day ahead is not a clock).
MAX_LATENCY_S = 86_400.0
#: Violations reported per call (a 10,000-pair batch with a bad field everywhere stays a small status).
MAX_VIOLATIONS = 20
METRICS = route_stats.METRICS
#: Bounds whose violation rolls a canary back (the candidate's error rate or latency).
ROLLBACK_METRICS = ("error_rate_diff", "p50_ratio", "p90_ratio", "p99_ratio")
STATUSES = frozenset((
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"))
_DROP_REASON = re.compile(r"[a-z0-9_]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Violation = tuple[str, str]


def raise_violations(violations: list[Violation]) -> None:
    if violations:
        (field, problem), *more = violations[:MAX_VIOLATIONS]
        if len(violations) > MAX_VIOLATIONS:
            more.append(("", f"and {len(violations) - MAX_VIOLATIONS} more problems"))
        raise InvalidArgument(field, problem, more=more)


def name_problem(name: str) -> str | None:
    if len(name) > MAX_NAME_CHARS:
        return f"is {len(name)} characters long; a route name {NAME_RULE}"
    return None if _NAME.fullmatch(name) else f"{quote(name)} is not a route name: it {NAME_RULE}"


def route_key(name: str) -> str:
    """The store key of a route (kept apart from tasks and matches under ``route.``)."""
    return ROUTE_PREFIX + name


def text_problem(value: str, limit: int, *, required: bool = True) -> str | None:
    if required and not value:
        return "is required"
    if len(value) > limit:
        return f"is {len(value)} characters long; at most {limit}"
    if _CONTROL.search(value):
        return "must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
    return None


def _number_problem(value: float, low: float, high: float, *, open_low: bool = False) -> str | None:
    if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
        return f"must be a number in {'(' if open_low else '['}{low:g}, {high:g}] (got {value!r})"
    return None


def _bound_problem(b: routes_pb2.RouteBound) -> str | None:
    try:
        route_stats.Bound(b.metric, b.op, b.value)  # the statistics' own rules (finite, 0..1 for a rate, …)
    except ValueError as exc:
        return str(exc)
    return None


def check_declaration(d: routes_pb2.RouteDeclaration) -> list[Violation]:
    out = [("route.name", name_problem(d.name)),
           ("route.mode", None if d.mode in ("shadow", "canary") else "must be 'shadow' or 'canary'"),
           ("route.share", _number_problem(d.share, 0.0, 1.0)),
           ("route.primary_id", text_problem(d.primary_id, MAX_IDENTITY_CHARS)),
           ("route.candidate_id", text_problem(d.candidate_id, MAX_IDENTITY_CHARS)),
           ("route.primary_identity", text_problem(d.primary_identity, MAX_IDENTITY_CHARS, required=False)),
           ("route.candidate_identity", text_problem(d.candidate_identity, MAX_IDENTITY_CHARS, required=False)),
           ("route.alpha", None if d.alpha == 0 else _number_problem(d.alpha, 0.0, 0.5, open_low=True)),
           ("route.bounds", f"at most {MAX_BOUNDS} bounds (got {len(d.bounds)})" if len(d.bounds) > MAX_BOUNDS
            else None),
           ("route.labels", f"at most {MAX_LABELS} labels (got {len(d.labels)})" if len(d.labels) > MAX_LABELS
            else None)]
    seen: set[tuple[str, str, float]] = set()
    for i, b in enumerate(d.bounds[:MAX_BOUNDS]):
        field = f"route.bounds[{i}]"
        out += [(f"{field}.metric", None if b.metric in METRICS else
                 f"{quote(b.metric)} is not a metric: one of {', '.join(METRICS)}"),
                (f"{field}.op", None if b.op in (">=", "<=") else f"{quote(b.op)}: must be '>=' or '<='"),
                (f"{field}.value", _bound_problem(b) if b.metric in METRICS and b.op in (">=", "<=") else None),
                (field, "repeats an earlier bound" if (b.metric, b.op, b.value) in seen else None)]
        seen.add((b.metric, b.op, b.value))
    if len(d.labels) <= MAX_LABELS:
        out += [(f"route.labels[{i}]", p) for i, label in enumerate(d.labels)
                if (p := text_problem(label, MAX_LABEL_CHARS))]
    return [(f, p) for f, p in out if p]


def check_pair(i: int, p: routes_pb2.RoutePair, keep_inputs: bool, now: float) -> list[Violation]:
    field = f"pairs[{i}]"
    out = [(f"{field}.request_id", text_problem(p.request_id, MAX_REQUEST_ID_CHARS)),
           (f"{field}.recorded_at", _number_problem(p.recorded_at, 0.0, now + MAX_LATENCY_S, open_low=True)),
           (f"{field}.primary_latency_s", _number_problem(p.primary_latency_s, 0.0, MAX_LATENCY_S)),
           (f"{field}.candidate_latency_s", _number_problem(p.candidate_latency_s, 0.0, MAX_LATENCY_S)),
           (f"{field}.input_digest", None if not p.input_digest or _DIGEST.fullmatch(p.input_digest)
            else "must be a sha256: 64 lower-case hex characters"),
           (f"{field}.answered_by", None if p.answered_by in ("", "primary", "candidate")
            else "must be 'primary' or 'candidate'"),
           (f"{field}.rows", f"at most {MAX_ROWS} rows (got {len(p.rows)})" if len(p.rows) > MAX_ROWS else None),
           (f"{field}.kept_input", f"at most {MAX_INPUT_BYTES} bytes (got {len(p.kept_input)})"
            if len(p.kept_input) > MAX_INPUT_BYTES else None),
           (f"{field}.kept_input", "the route does not keep inputs (keep_inputs is false)"
            if p.kept_input and not keep_inputs else None)]
    for side in ("primary_status", "candidate_status"):
        status = getattr(p, side)
        out.append((f"{field}.{side}", None if status in STATUSES else
                    f"{quote(status)} is not 'OK' or a gRPC status code name (e.g. 'INTERNAL')"))
    if len(p.rows) <= MAX_ROWS:
        for j, r in enumerate(p.rows):
            out += [(f"{field}.rows[{j}].primary_label", text_problem(r.primary_label, MAX_LABEL_CHARS)),
                    (f"{field}.rows[{j}].candidate_label", text_problem(r.candidate_label, MAX_LABEL_CHARS)),
                    (f"{field}.rows[{j}].top5_overlap", None if -1 <= r.top5_overlap <= 5 else
                     f"must be -1 (labels only) or 0..5 (got {r.top5_overlap})")]
    return [(f, q) for f, q in out if q]


def check_counters(c: routes_pb2.RouteCounters) -> tuple[list[Violation], dict[str, int]]:
    out: list[Violation] = []
    counts = {"requests": c.requests, "mirrored": c.mirrored, "answered_by_candidate": c.answered_by_candidate,
              "records_lost": c.records_lost}
    if len(c.dropped) > 16:
        out.append(("counters.dropped", f"at most 16 reasons (got {len(c.dropped)})"))
    else:
        for reason, n in sorted(c.dropped.items()):
            if not _DROP_REASON.fullmatch(reason):
                out.append(("counters.dropped", f"{quote(reason)} is not a reason: 1..64 of [a-z0-9_]"))
            counts[f"dropped.{reason}"] = n
    out += [(f"counters.{name}" if not name.startswith("dropped.") else "counters.dropped",
             f"must be >= 0 (got {n})") for name, n in counts.items() if n < 0]
    return out, {k: v for k, v in counts.items() if v}


def fingerprint(d: routes_pb2.RouteDeclaration) -> str:
    """What the comparison is: a change starts a new epoch (the share and keep_inputs are not part of it)."""
    doc = [d.mode, d.primary_id, d.primary_identity, d.candidate_id, d.candidate_identity,
           [[b.metric, b.op, b.value] for b in d.bounds], d.alpha, list(d.labels)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def checked_batch(request) -> tuple[list[PairRecord], dict[str, int]]:  # RecordRoutePairsRequest
    """Everything checked before any write: (pairs, counter increments) or INVALID_ARGUMENT."""
    d = request.route
    out = check_declaration(d)
    out += [("batch_id", text_problem(request.batch_id, MAX_BATCH_ID_CHARS))]
    if len(request.pairs) > MAX_PAIRS:
        out.append(("pairs", f"at most {MAX_PAIRS} pairs per call (got {len(request.pairs)})"))
    else:
        now = time.time()
        for i, p in enumerate(request.pairs):
            out += check_pair(i, p, d.keep_inputs, now)
            if len(out) > MAX_VIOLATIONS:
                break
    problems, counters = check_counters(request.counters)
    raise_violations([(f, p) for f, p in out + problems if p])
    pairs = [PairRecord(p.request_id, p.recorded_at, p.primary_status, p.candidate_status, p.primary_latency_s,
                        p.candidate_latency_s, tuple((r.primary_label, r.candidate_label, r.top5_overlap)
                                                     for r in p.rows),
                        p.input_digest, p.kept_input, p.answered_by or "primary") for p in request.pairs]
    return pairs, counters


def checked_feedback(request) -> list[tuple[str, int, str]]:  # RecordFeedbackRequest
    out: list[Violation] = [("route", name_problem(request.route) if request.route else None)]
    if not request.items:
        out.append(("items", "at least one item is required"))
    elif len(request.items) > MAX_ITEMS:
        out.append(("items", f"at most {MAX_ITEMS} items per call (got {len(request.items)})"))
    else:
        for i, item in enumerate(request.items):
            out += [(f"items[{i}].request_id", text_problem(item.request_id, MAX_REQUEST_ID_CHARS)),
                    (f"items[{i}].row", None if 0 <= item.row < MAX_ROWS else f"must be 0..{MAX_ROWS - 1}"),
                    (f"items[{i}].label", text_problem(item.label, MAX_LABEL_CHARS))]
    raise_violations([(f, p) for f, p in out if p])
    return [(item.request_id, item.row, item.label) for item in request.items]
