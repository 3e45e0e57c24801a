"""Measuring registered deployments live on an eval set, and comparing two of them honestly.

One run reads the endpoint's ModelMetadata afresh and sends it the known-answer reference images (what it
serves, and what it answers to fixed inputs, are its identity), then sends
every usable image of the set to one deployment, one image per ModelInfer request, in the run's seeded,
label-stratified order (so a run cut short has measured a random sample with the set's label
proportions), with at most ``concurrency`` requests in flight (it never floods the user's server), inside
a wall-clock budget. RESOURCE_EXHAUSTED and UNAVAILABLE are retried after the server's RetryInfo delay, or with
exponential back-off when it sends none. A run ends in one of four states:

- ``complete``: every image answered;
- ``partial``: the budget ran out or the endpoint went away part-way; the counts measured so far are
  reported with their intervals, and the report says how many images were not measured;
- ``unavailable``: nothing could be measured (the reason is the error's);
- ``contradicted``: the endpoint answered out of its own contract (wrong shape or size, INTERNAL); what
  it sent is shown and no accuracy is reported for it.

The comparison of two runs uses only images both answered and both can label (images whose label a
model cannot output are counted as unmatched for it, never silently dropped). A difference in accuracy
is called only when McNemar's exact test on the discordant images gives p < ``alpha`` (after Holm's
correction when one run tests several pairs). No image scored decides nothing (UNDECIDED).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from services.common import known_answers
from services.common.errors import ConfigError
from services.common.stats import mcnemar_exact, wilson
from services.gateway.byo.evalset import EvalImage, EvalSet
from services.gateway.deployments import LabelMatch
from services.gateway.oip_client import EndpointFault, EndpointOutage, OipClient

MAX_RETRIES = 6
BACKOFF_START_S, BACKOFF_MAX_S = 0.05, 2.0
ALPHA = 0.05
TOP_K = 5


@dataclass
class Run:
    """One deployment's answers on an eval set."""

    deployment: str
    started_at: str
    state: str = "complete"  # complete | partial | unavailable | contradicted
    reason: str = ""
    top: dict[str, list[int]] = field(default_factory=dict)  # image path → top-5 label indices
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    retries: int = 0
    not_measured: int = 0
    weights_digests: set[str] = field(default_factory=set)  # as reported by the server, never recomputed
    fingerprint: str = ""  # answers to the known-answer reference images (see _fingerprint)
    concurrency: int = 1

    @property
    def answered(self) -> int:
        return len(self.top)


@dataclass
class Progress:
    done: int = 0
    total: int = 0


async def run_deployment(client: OipClient, eval_set: EvalSet, order: list[EvalImage], *, deadline: float,
                         concurrency: int, call_timeout_s: float, progress: Progress | None = None) -> Run:
    """Send the set's images, in ``order``, to one deployment (see the module doc for the states)."""
    run = Run(client.spec.id, datetime.now(UTC).isoformat(timespec="seconds"), concurrency=concurrency)
    problem = await _identify(client, run, deadline, call_timeout_s)
    if problem is not None:
        return _ended(run, *problem, eval_set.size)
    queue: asyncio.Queue[EvalImage] = asyncio.Queue()
    for image in order:
        queue.put_nowait(image)
    stop = asyncio.Event()
    started = time.perf_counter()

    async def worker() -> None:
        while not stop.is_set() and not queue.empty():
            image = queue.get_nowait()
            if not await _guarded(client, eval_set, image, run, deadline, call_timeout_s):
                stop.set()
            if progress is not None:
                progress.done += 1

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return _finished(run, eval_set.size, time.perf_counter() - started)


async def _identify(client: OipClient, run: Run, deadline: float, call_timeout_s: float) -> tuple[str, str] | None:
    """Read what the endpoint serves, afresh every run (a model replaced behind it is another identity):
    ModelMetadata, then the known-answer fingerprint. (end state, reason) when the run cannot go on."""
    try:
        await client.describe(min(call_timeout_s, max(0.0, deadline - time.monotonic())))
    except EndpointOutage as exc:
        return "unavailable", f"ModelMetadata: {exc.details.describe()[:200]}"
    except EndpointFault as exc:
        return "contradicted", exc.seen
    except ConfigError as exc:  # it no longer is the classifier it was at registration
        return "contradicted", str(exc)[:300]
    try:
        run.fingerprint = await _fingerprint(client, run, deadline, call_timeout_s)
    except EndpointFault as exc:
        return "contradicted", f"known-answer reference image: {exc.seen}"[:300]
    except (EndpointOutage, TimeoutError) as exc:
        why = exc.details.describe() if isinstance(exc, EndpointOutage) else "budget exhausted"
        return "unavailable", f"known-answer reference images: {why}"[:300]
    return None


def _finished(run: Run, size: int, wall_s: float) -> Run:
    run.wall_s, run.not_measured = wall_s, size - run.answered
    if run.state == "partial" and not run.top:
        run.state = "unavailable"
    if run.state == "contradicted":
        run.top.clear()  # no accuracy pretends to exist for an endpoint that broke its contract
    return run


async def _guarded(client: OipClient, eval_set: EvalSet, image: EvalImage, run: Run, deadline: float,
                   call_timeout_s: float) -> bool:
    """One image; False when the run must stop (a fault, or an outage that outlasted its retries)."""
    try:
        await _one(client, eval_set, image, run, deadline, call_timeout_s)
        return True
    except EndpointFault as exc:
        run.state, run.reason = "contradicted", f"{image.path}: {exc.seen}"
    except (EndpointOutage, TimeoutError) as exc:
        if run.state == "complete":
            why = exc.details.describe() if isinstance(exc, EndpointOutage) else "budget exhausted"
            run.state, run.reason = "partial", why[:200]
    return False


def _ended(run: Run, state: str, reason: str, size: int) -> Run:
    run.state, run.reason, run.not_measured = state, reason, size
    return run


async def _one(client: OipClient, eval_set: EvalSet, image: EvalImage, run: Run, deadline: float,
               call_timeout_s: float) -> None:
    scores, latency_ms = await _infer(client, eval_set.read(image), image.sha256[:32], run, deadline, call_timeout_s)
    run.latencies_ms.append(latency_ms)
    run.top[image.path] = [int(i) for i in np.argsort(-scores[0], kind="stable")[:TOP_K]]


async def _fingerprint(client: OipClient, run: Run, deadline: float, call_timeout_s: float) -> str:
    """The known-answer fingerprint of what the endpoint serves: for each of the shipped reference images
    (:mod:`services.common.known_answers`), its top-1 class and its top-5 set; 16 hex of their sha256.
    Classes only, not logits, so reduction-order noise does not change it, while another model does."""
    answers = []
    for name, data in zip(known_answers.reference_names(), known_answers.reference_images(), strict=True):
        scores, _ = await _infer(client, data, f"known-answer-{name}", run, deadline, call_timeout_s)
        top = [int(i) for i in np.argsort(-scores[0], kind="stable")[:known_answers.TOP_K]]
        answers.append([top[0], sorted(top)])
    return hashlib.sha256(json.dumps(answers).encode()).hexdigest()[:16]


async def _infer(client: OipClient, data: bytes, request_id: str, run: Run, deadline: float,
                 call_timeout_s: float) -> tuple[np.ndarray, float]:
    """One image's scores and latency (ms), retried on RESOURCE_EXHAUSTED / UNAVAILABLE within the budget."""
    delay = BACKOFF_START_S
    for attempt in range(MAX_RETRIES + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        t0 = time.perf_counter()
        try:
            scores, params = await client.infer([data], min(call_timeout_s, left), request_id=request_id)
        except EndpointOutage as exc:
            if exc.details.code.name == "DEADLINE_EXCEEDED" and left < call_timeout_s:
                raise TimeoutError from None  # the call's deadline was the budget's end
            retryable = exc.details.code.name in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
            if not retryable or attempt == MAX_RETRIES:
                raise
            wait = exc.details.retry_after_s if exc.details.retry_after_s is not None else delay * random.uniform(
                0.5, 1.0)
            delay = min(BACKOFF_MAX_S, delay * 2)
            run.retries += 1
            if time.monotonic() + wait >= deadline:
                raise TimeoutError from None
            await asyncio.sleep(wait)
            continue
        digest = params.get("weights_digest")
        if isinstance(digest, str) and len(run.weights_digests) < 4:
            run.weights_digests.add(digest[:64])
        return scores, (time.perf_counter() - t0) * 1e3
    raise AssertionError("unreachable: the last attempt returns or raises")


# -- what the runs show ---------------------------------------------------------------------------
@dataclass
class Accuracy:
    hits: int
    n: int

    @property
    def rate(self) -> float:
        return self.hits / self.n if self.n else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.n)


@dataclass
class DeploymentResult:
    deployment: str
    top1: Accuracy
    top5: Accuracy
    per_class: dict[str, Accuracy]
    unmatched: int  # images whose label this model cannot output
    unmatched_labels: list[str]
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_img_s: float


def score(run: Run, eval_set: EvalSet, match: LabelMatch) -> DeploymentResult:
    per_class: dict[str, list[int]] = {}
    top1 = top5 = n = unmatched = 0
    for image in eval_set.images:
        if image.label not in match.index:
            unmatched += 1
            continue
        top = run.top.get(image.path)
        if top is None:
            continue
        want = match.index[image.label]
        n += 1
        hit = top[0] == want
        top1 += hit
        top5 += want in top
        per_class.setdefault(image.label, [0, 0])
        per_class[image.label][0] += hit
        per_class[image.label][1] += 1
    lat = sorted(run.latencies_ms)
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))] if lat else 0.0
    return DeploymentResult(run.deployment, Accuracy(top1, n), Accuracy(top5, n),
                            {k: Accuracy(*v) for k, v in sorted(per_class.items())}, unmatched,
                            sorted(match.unmatched), statistics.median(lat) if lat else 0.0, p95,
                            run.answered / run.wall_s if run.wall_s > 0 else 0.0)


@dataclass
class Paired:
    """The paired comparison of two runs on the images both answered and both can label."""

    n: int
    both_right: int
    both_wrong: int
    only_a: int  # A right, B wrong
    only_b: int
    p_value: float  # McNemar exact, uncorrected
    confusions: list[tuple[str, str, str, int]]  # (true label, A's answer, B's answer, images), most first
    disagreements: list[tuple[str, str, str, str]]  # (image path, true label, A's answer, B's answer)


@dataclass(frozen=True)
class PairedImage:
    """One image both deployments answered and both can label."""

    image: EvalImage
    answer_a: int  # top-1 label index in A's labels
    answer_b: int
    right_a: bool
    right_b: bool

    @property
    def cell(self) -> str:
        """Its cell of the 2x2 table: both_right, only_a, only_b or both_wrong."""
        if self.right_a:
            return "both_right" if self.right_b else "only_a"
        return "only_b" if self.right_b else "both_wrong"


def paired_images(run_a: Run, run_b: Run, eval_set: EvalSet, match_a: LabelMatch, match_b: LabelMatch):
    """The images a paired comparison (and the recorded outcomes) are made of, in the set's order."""
    for image in eval_set.images:
        top_a, top_b = run_a.top.get(image.path), run_b.top.get(image.path)
        if top_a is None or top_b is None or image.label not in match_a.index or image.label not in match_b.index:
            continue
        yield PairedImage(image, top_a[0], top_b[0], top_a[0] == match_a.index[image.label],
                          top_b[0] == match_b.index[image.label])


def paired(run_a: Run, run_b: Run, eval_set: EvalSet, match_a: LabelMatch, match_b: LabelMatch,
           labels_a: list[str], labels_b: list[str], *, max_shown: int = 24) -> Paired:
    """The 2x2 table and McNemar's exact p (scipy; callers on the event loop run this in a thread)."""
    counts = Counter[str]()
    confusions = Counter[tuple[str, str, str]]()
    shown: list[tuple[str, str, str, str]] = []
    for x in paired_images(run_a, run_b, eval_set, match_a, match_b):
        counts[x.cell] += 1
        answer_a, answer_b = labels_a[x.answer_a], labels_b[x.answer_b]
        if answer_a != answer_b:
            confusions[(x.image.label, answer_a, answer_b)] += 1
            if x.right_a != x.right_b:
                shown.append((x.image.path, x.image.label, answer_a, answer_b))
    p = mcnemar_exact(counts["only_a"], counts["only_b"])
    return Paired(sum(counts.values()), counts["both_right"], counts["both_wrong"], counts["only_a"], counts["only_b"],
                  p, [(*k, v) for k, v in confusions.most_common(20)], _spread(shown, max_shown))


def _spread(items: list[tuple[str, str, str, str]], limit: int) -> list[tuple[str, str, str, str]]:
    """At most ``limit`` disagreements, taken round-robin over the true labels (not the first label's only)."""
    by_label: dict[str, list[tuple[str, str, str, str]]] = {}
    for item in items:
        by_label.setdefault(item[1], []).append(item)
    queues = [by_label[k] for k in sorted(by_label)]
    out: list[tuple[str, str, str, str]] = []
    while len(out) < limit and any(queues):
        for queue in queues:
            if queue and len(out) < limit:
                out.append(queue.pop(0))
    return out
