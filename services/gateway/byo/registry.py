"""Bring your own model: compare the deployments a platform already runs, on its own labelled data.

The gateway registers image classifiers served by any Open Inference Protocol server (``--deployment``)
and eval sets (``--eval-set``) at start: an endpoint that is reachable but is not such a classifier, or
whose labels cannot be read, stops the start with one clear line; one that is down is described on
first use (its row is then UNAVAILABLE). A Compare naming ``eval_set`` measures 2..4 deployments on
it, one after the other (so their latencies are not measured against each other's load), each within
the eval budget and a per-endpoint concurrency cap, all in one seeded, label-stratified image order (the
seed is reported, and accepted back as ``eval_sample_seed``); then every pair gets McNemar's exact test
(scipy, off the event loop; Holm-corrected when the run tests more than one pair), and (with
``record_matches``) every image becomes one outcome in the ranker under the task
``eval.<set>.<digest prefix>`` (see :mod:`services.gateway.byo.record` for the keys and the changed
identities).

Provenance of these numbers is the deployments' identity, the eval set's digest and the time — not the
weights' provenance: they are evidence about the deployments themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from versus.gateway.v1 import gateway_pb2

from services.common.admission import Admission
from services.common.errors import ConfigError, InvalidArgument, NotFound, quote
from services.common.metrics import Metrics
from services.common.stats import holm
from services.gateway.byo.evalrun import ALPHA, Progress, paired, run_deployment
from services.gateway.byo.evalset import EvalSet, load_eval_set, parse_registration, stratified_order
from services.gateway.byo.record import Player, Recorder
from services.gateway.byo.report import deployment_eval, eval_set_info, paired_test, served_identity
from services.gateway.config import GatewayConfig
from services.gateway.deployments import ServedIdentity, match_labels, parse_deployment, read_label_map
from services.gateway.downstream import Downstream
from services.gateway.oip_client import EndpointFault, EndpointOutage, OipClient

log = logging.getLogger(__name__)

MAX_EVAL_BUDGET_S = 3600.0
DESCRIBE_TIMEOUT_S = 10.0
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
        self.served: dict[str, ServedIdentity] = {}  # what each deployment served in its last run here
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
        seed = request.eval_sample_seed if request.HasField("eval_sample_seed") else secrets.randbits(32)
        with self.admission.hold(1):  # admission before any expensive work
            run = _EvalRun(self, downstream, eval_set, ids, budget_s, request.probes.record_matches, progress, seed)
            return await run.execute()


class _EvalRun:
    def __init__(self, registry: ByoRegistry, downstream: Downstream, eval_set: EvalSet, ids: list[str],
                 budget_s: float, record: bool, progress: ProgressFn | None, seed: int) -> None:
        self.r, self.ds, self.set, self.ids = registry, downstream, eval_set, ids
        self.budget_s, self.record, self._progress = budget_s, record and downstream.has("ranker"), progress
        self.deadline = time.monotonic() + budget_s
        self.order = stratified_order(eval_set.images, seed)
        self.task = f"eval.{eval_set.name}.{eval_set.digest[:12]}"
        now = datetime.now(UTC).isoformat(timespec="seconds")
        key = json.dumps([eval_set.digest, [registry.specs[d].identity() for d in ids], seed])
        self.c = gateway_pb2.Comparison(model_ids=ids, created_at=now,
                                        comparison_id=hashlib.sha256(key.encode()).hexdigest()[:16])
        self.report = self.c.eval
        self.report.eval_set.CopyFrom(eval_set_info(eval_set))
        self.report.task, self.report.budget_s, self.report.measured_at = self.task, budget_s, now
        self.report.sample_seed = seed
        self.recorder = Recorder(downstream, self.task, eval_set, self.c, registry.config.call_timeout_s)

    def progress(self, stage: str, detail: str, fraction: float) -> None:
        if self._progress is not None:
            self._progress(stage, detail, fraction)

    async def execute(self) -> gateway_pb2.Comparison:
        players = {dep_id: await self._measure(dep_id, k) for k, dep_id in enumerate(self.ids)}
        self.progress("compare", "paired tests", 0.9)
        pairs = [(a, b) for i, a in enumerate(self.ids) for b in self.ids[i + 1:]]
        tables = [await asyncio.to_thread(paired, players[a].run, players[b].run, self.set, players[a].match,
                                          players[b].match, players[a].labels, players[b].labels)
                  for a, b in pairs]
        adjusted = holm([t.p_value for t in tables])
        self.report.correction = "holm" if len(pairs) > 1 else ""
        if self.record and any(t.n for t in tables):
            await self._register(players)
        for (a, b), table, p_adjusted in zip(pairs, tables, adjusted, strict=True):
            test = await asyncio.to_thread(paired_test, a, b, table, self.set, p_adjusted, len(pairs))
            if self.record and test.images:
                await self.recorder.record(test, players[a], players[b])
            self.report.pairs.append(test)
        if self.record:
            await self.recorder.leaderboard(self.report)
        self.c.notes.append(
            f"Registered deployments are not catalog checkpoints: these numbers are about the deployments "
            f"themselves (endpoint, model, what it served), measured on eval set {self.set.name} "
            f"(sha256 {self.set.digest[:12]}, {self.set.size} images) at {self.report.measured_at}, images sent in "
            f"the label-stratified order of sample seed {self.report.sample_seed}. They feed only "
            f"the {self.task} leaderboard, never a catalog score.")
        if len(pairs) > 1:
            self.c.notes.append(f"{len(pairs)} pairs were tested in this run: significance is decided on Holm-adjusted "
                                f"p-values (family-wise error held at {ALPHA:g}).")
        self.progress("done", "comparison ready", 1.0)
        return self.c

    async def _measure(self, dep_id: str, k: int) -> Player:
        client = self.r.clients[dep_id]
        state = Progress(total=self.set.size)
        base, share = 0.05 + 0.85 * k / len(self.ids), 0.85 / len(self.ids)
        task = asyncio.ensure_future(run_deployment(client, self.set, self.order, deadline=self.deadline,
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
        served = served_identity(client.spec, endpoint, run)
        row = await asyncio.to_thread(deployment_eval, client.spec, endpoint, run, self.set, match, served)
        if run.answered:  # only what the endpoint answered with says what it serves
            before = self.r.served.get(dep_id)
            changes = served.changes(before) if before is not None else []
            if changes:
                row.deployment.identity_change = "changed since this gateway's last run: " + "; ".join(changes)
            self.r.served[dep_id] = served
        self.report.deployments.append(row)
        if run.state in ("unavailable", "contradicted"):
            self.c.unavailable.add(component=f"deployment {dep_id}", code=run.state.upper(), message=run.reason[:300])
        return Player(run, match, labels, served)

    async def _register(self, players: dict[str, Player]) -> None:
        rows = {d.deployment.id: d.deployment for d in self.report.deployments}
        for dep_id, player in players.items():
            if not player.run.answered:
                continue
            note = await self.recorder.register(player)
            row = rows[dep_id]
            row.ranker_id = player.ranker_id
            if note:
                row.identity_change = "; ".join(filter(None, (row.identity_change, note)))[:600]
