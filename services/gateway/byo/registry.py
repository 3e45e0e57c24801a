"""Bring your own model: compare the deployments a platform already runs, on its own labelled data.

The gateway registers image classifiers served by any Open Inference Protocol server (``--deployment``)
and eval sets (``--eval-set``) at start: an endpoint that is reachable but is not such a classifier, or
whose labels cannot be read, stops the start with one clear line; one that is down is described on
first use (its row is then UNAVAILABLE). A Compare naming ``eval_set`` measures 2..4 deployments on
it, one after the other (so their latencies are not measured against each other's load), each within
the eval budget and a per-endpoint concurrency cap; then every pair gets McNemar's exact test, and
(with ``record_matches``) every image becomes one outcome in the ranker under the task
``eval.<set>.<digest prefix>`` — a win for the model that was right when only one was, else a tie —
keyed by the image's digest and both deployments' identities, so a rerun adds nothing and a rerun that
answers differently is counted as the deployments' nondeterminism.

Provenance of these numbers is the deployments' identity, the eval set's digest and the time — not the
weights' provenance: they are evidence about the deployments themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.common.admission import Admission
from services.common.errors import ConfigError, InvalidArgument, NotFound, quote
from services.common.metrics import Metrics
from services.gateway.byo.evalrun import Progress, Run, paired, paired_images, run_deployment
from services.gateway.byo.evalset import EvalSet, load_eval_set, parse_registration
from services.gateway.byo.report import deployment_eval, eval_set_info, paired_test
from services.gateway.config import GatewayConfig
from services.gateway.deployments import LabelMatch, match_labels, parse_deployment, read_label_map
from services.gateway.downstream import Downstream, DownstreamError
from services.gateway.oip_client import EndpointFault, EndpointOutage, OipClient

log = logging.getLogger(__name__)

MAX_EVAL_BUDGET_S = 3600.0
DESCRIBE_TIMEOUT_S = 10.0
RECORD_CONCURRENCY = 8
ProgressFn = Callable[[str, str, float], None]


class ByoRegistry:
    """The registered deployments and eval sets, and the eval runs over them."""

    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        self.config = config
        self.specs = {}
        for text in config.deployments:
            spec = parse_deployment(text)
            if spec.id in self.specs:
                raise ConfigError(f"--deployment {spec.id} is registered twice")
            self.specs[spec.id] = spec
        self.maps = {d: read_label_map(s.label_map) if s.label_map else {} for d, s in self.specs.items()}
        self.sets: dict[str, EvalSet] = {}
        for text in config.eval_sets:
            name, path = parse_registration(text)
            if name in self.sets:
                raise ConfigError(f"--eval-set {name} is registered twice")
            self.sets[name] = load_eval_set(name, path, max_images=config.eval_max_images)
            log.info("eval set registered", extra={"eval_set": self.sets[name].describe()})
        self.clients: dict[str, OipClient] = {}
        self.admission = Admission(config.max_concurrent_evals, model="gateway-eval", metrics=metrics,
                                   what="eval runs")

    async def start(self) -> None:
        """Describe every endpoint: a reachable non-classifier is a ConfigError (the gateway does not start)."""
        self.clients = {d: OipClient(spec) for d, spec in self.specs.items()}
        for dep_id, client in self.clients.items():
            try:
                endpoint = await client.describe(DESCRIBE_TIMEOUT_S)
                log.info("deployment registered", extra={"deployment": client.spec.identity(),
                                                         "signature": endpoint.describe()})
            except (EndpointOutage, EndpointFault) as exc:
                log.warning("deployment not reachable at start; described on first use",
                            extra={"deployment": dep_id, "error": str(exc)[:200]})

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))

    # -- Compare(eval_set=...) -----------------------------------------------------------------------
    def validate(self, request: gateway_pb2.CompareRequest) -> tuple[EvalSet, list[str], float]:
        ids = list(request.model_ids)
        if not 2 <= len(ids) <= 4:
            raise InvalidArgument("model_ids", f"compare 2..4 deployments, got {len(ids)}")
        budget = request.eval_budget_s
        if not (math.isfinite(budget) and 0 <= budget <= MAX_EVAL_BUDGET_S):
            raise InvalidArgument("eval_budget_s", f"must be 0..{MAX_EVAL_BUDGET_S:g} seconds, got {budget}")
        if request.eval_set not in self.sets:
            raise NotFound(f"eval_set: {quote(request.eval_set)} is not registered; registered: "
                           f"{', '.join(sorted(self.sets)) or 'none'}", resource_type="eval_set",
                           resource_name=request.eval_set[:64])
        seen: set[str] = set()
        for i, dep_id in enumerate(ids):
            if dep_id in seen:
                raise InvalidArgument(f"model_ids[{i}]", f"{quote(dep_id)} is listed twice")
            seen.add(dep_id)
            if dep_id not in self.specs:
                raise NotFound(f"model_ids[{i}]: {quote(dep_id)} is not a registered deployment; registered: "
                               f"{', '.join(sorted(self.specs)) or 'none'}", resource_type="deployment",
                               resource_name=dep_id[:64])
        return self.sets[request.eval_set], ids, budget or self.config.eval_budget_s

    async def compare(self, request: gateway_pb2.CompareRequest, downstream: Downstream, *,
                      timeout_s: float | None = None, progress: ProgressFn | None = None) -> gateway_pb2.Comparison:
        eval_set, ids, budget_s = self.validate(request)
        if timeout_s is not None:
            budget_s = min(budget_s, max(0.0, timeout_s - 1.0))
        with self.admission.hold(1):  # admission before any expensive work
            run = _EvalRun(self, downstream, eval_set, ids, budget_s, request.probes.record_matches, progress)
            return await run.execute()


@dataclass
class _Measured:
    run: Run
    match: LabelMatch
    labels: list[str]


class _EvalRun:
    def __init__(self, registry: ByoRegistry, downstream: Downstream, eval_set: EvalSet, ids: list[str],
                 budget_s: float, record: bool, progress: ProgressFn | None) -> None:
        self.r, self.ds, self.set, self.ids = registry, downstream, eval_set, ids
        self.budget_s, self.record, self._progress = budget_s, record, progress
        self.deadline = time.monotonic() + budget_s
        self.task = f"eval.{eval_set.name}.{eval_set.digest[:12]}"
        now = datetime.now(UTC).isoformat(timespec="seconds")
        key = json.dumps([eval_set.digest, [registry.specs[d].identity() for d in ids]])
        self.c = gateway_pb2.Comparison(model_ids=ids, created_at=now,
                                        comparison_id=hashlib.sha256(key.encode()).hexdigest()[:16])
        self.report = self.c.eval
        self.report.eval_set.CopyFrom(eval_set_info(eval_set))
        self.report.task, self.report.budget_s, self.report.measured_at = self.task, budget_s, now

    def progress(self, stage: str, detail: str, fraction: float) -> None:
        if self._progress is not None:
            self._progress(stage, detail, fraction)

    async def execute(self) -> gateway_pb2.Comparison:
        measured: dict[str, _Measured] = {}
        for k, dep_id in enumerate(self.ids):
            measured[dep_id] = await self._measure(dep_id, k)
        self.progress("compare", "paired tests", 0.9)
        for i, a in enumerate(self.ids):
            for b in self.ids[i + 1:]:
                test = paired_test(a, b, paired(measured[a].run, measured[b].run, self.set, measured[a].match,
                                                measured[b].match, measured[a].labels, measured[b].labels),
                                   self.set)
                if self.record:
                    await self._record(test, measured[a], measured[b])
                self.report.pairs.append(test)
        if self.record:
            await self._leaderboard()
        self.c.notes.append(
            f"Registered deployments are not catalog checkpoints: these numbers are about the deployments "
            f"themselves (endpoint, model, version), measured on eval set {self.set.name} "
            f"(sha256 {self.set.digest[:12]}, {self.set.size} images) at {self.report.measured_at}. They feed only "
            f"the {self.task} leaderboard, never a catalog score.")
        self.progress("done", "comparison ready", 1.0)
        return self.c

    async def _measure(self, dep_id: str, k: int) -> _Measured:
        client = self.r.clients[dep_id]
        state = Progress(total=self.set.size)
        base, share = 0.05 + 0.85 * k / len(self.ids), 0.85 / len(self.ids)
        task = asyncio.ensure_future(run_deployment(client, self.set, deadline=self.deadline,
                                                    concurrency=self.r.config.eval_concurrency,
                                                    call_timeout_s=self.r.config.call_timeout_s, progress=state))
        while not task.done():
            self.progress("eval", f"{dep_id}: {state.done}/{self.set.size} images", base + share * state.done /
                          max(1, self.set.size))
            await asyncio.wait({task}, timeout=0.5)
        run = task.result()
        endpoint = client.endpoint
        labels = endpoint.labels if endpoint is not None else []
        match = match_labels(self.set.labels, labels, self.r.maps[dep_id])
        self.report.deployments.append(deployment_eval(client.spec, endpoint, run, self.set, match))
        if run.state in ("unavailable", "contradicted"):
            self.c.unavailable.add(component=f"deployment {dep_id}", code=run.state.upper(), message=run.reason[:300])
        return _Measured(run, match, labels)

    # -- the ranker -------------------------------------------------------------------------------------
    async def _record(self, test: gateway_pb2.PairedTest, a: _Measured, b: _Measured) -> None:
        if not test.images or not self.ds.has("ranker"):
            return
        specs = self.r.specs
        try:
            for m in (a, b):
                spec = specs[m.run.deployment]
                await self.ds.call("ranker", "RegisterDeployment", ranker_pb2.RegisterDeploymentRequest(
                    id=spec.id, identity=spec.identity()), self._timeout())
        except DownstreamError as exc:
            self.c.unavailable.add(component="ranker.RegisterDeployment", code=exc.details.code.name,
                                   reason=exc.details.reason, message=exc.details.message[:300])
            return
        gate = asyncio.Semaphore(RECORD_CONCURRENCY)
        outcomes = list(self._outcomes(a, b))

        async def one(image_sha: str, outcome: int, evidence: str) -> None:
            key = hashlib.sha256(f"{image_sha}|{specs[a.run.deployment].identity()}|"
                                 f"{specs[b.run.deployment].identity()}".encode()).hexdigest()
            async with gate:
                try:
                    reply = await self.ds.call("ranker", "RecordMatch", ranker_pb2.RecordMatchRequest(
                        model_a=a.run.deployment, model_b=b.run.deployment, outcome=outcome, task=self.task,
                        evidence=evidence, idempotency_key=key), self._timeout())
                except DownstreamError as exc:
                    if exc.details.code.name == "ALREADY_EXISTS":  # same key, another answer: nondeterminism
                        test.nondeterministic += 1
                        return
                    raise
            test.duplicates += reply.duplicate
            test.recorded += not reply.duplicate

        try:
            await asyncio.gather(*(one(*o) for o in outcomes))
        except DownstreamError as exc:
            self.c.unavailable.add(component="ranker.RecordMatch", code=exc.details.code.name,
                                   reason=exc.details.reason, message=exc.details.message[:300])

    def _outcomes(self, a: _Measured, b: _Measured):
        """(image sha256, outcome, evidence) for every image both answered and both can label: a win for the
        deployment that was right when only one was, else a tie."""
        for x in paired_images(a.run, b.run, self.set, a.match, b.match):
            outcome = (ranker_pb2.OUTCOME_TIE if x.right_a == x.right_b
                       else ranker_pb2.OUTCOME_A_WINS if x.right_a else ranker_pb2.OUTCOME_B_WINS)
            evidence = json.dumps({"eval_set": self.set.digest, "image": x.image.sha256, "label": x.image.label,
                                   "a": a.labels[x.answer_a], "b": b.labels[x.answer_b]}, sort_keys=True)
            yield x.image.sha256, outcome, evidence

    async def _leaderboard(self) -> None:
        try:
            board = await self.ds.call("ranker", "GetLeaderboard", ranker_pb2.GetLeaderboardRequest(task=self.task),
                                       self._timeout())
            self.report.leaderboard.CopyFrom(board)
        except DownstreamError as exc:
            self.c.unavailable.add(component="ranker.GetLeaderboard", code=exc.details.code.name,
                                   reason=exc.details.reason, message=exc.details.message[:300])

    def _timeout(self) -> float:
        return self.r.config.call_timeout_s

