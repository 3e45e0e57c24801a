"""The gateway's work: one Compare = catalog facts + live probes + cross-model quality + head-to-head
+ scores, fanned out concurrently under one budget, assembled into a ``gateway.v1.Comparison``.

The Comparison protobuf is the domain object here (the gateway's product is that document; copying
it into a parallel dataclass tree would only add a second place for every field). Downstream trouble
never fails a comparison: the part it would have produced is listed as unavailable with the reason
read from the error details. Only the client's own mistakes fail it (INVALID_ARGUMENT, NOT_FOUND).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
from prometheus_client import Counter, Histogram
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2
from versus.sd35.v1 import sd35_pb2
from versus.vit.v1 import vit_pb2

from services.common.admission import Admission
from services.common.client import ErrorDetails
from services.common.convert import enum_name
from services.common.errors import InvalidArgument, NotFound, quote
from services.common.metrics import Metrics
from services.gateway import evidence, quality
from services.gateway.cache import ProbeCache, lookup_counter
from services.gateway.config import GatewayConfig
from services.gateway.downstream import Downstream, DownstreamError
from services.gateway.probes import (
    Budget,
    ProbeResult,
    Sd35Probes,
    VariantInfo,
    VitInfo,
    VitProbes,
    guarded,
    measurement,
    now_iso,
    unavailable,
    weights_of,
)

log = logging.getLogger(__name__)

MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
CLASS_NAME = re.compile(r"[A-Za-z0-9 '.,()-]{1,64}")
MAX_MODELS, MAX_CLASSES, MAX_PER_CLASS, MAX_BUDGET_S = 4, 16, 8, 600.0
INFO_TTL_S = 5.0
QUALITY_TOP5_BAR = 0.5
#: Generations in flight per SD3.5 service from one comparison (its queue refuses beyond max_queue).
GENERATE_CONCURRENCY = 2
Progress = Callable[[str, str, float], None]


@dataclass(frozen=True)
class Options:
    model_ids: tuple[str, ...]
    live: bool
    classes: tuple[str, ...]
    per_class: int
    budget_s: float
    record_matches: bool
    head_to_head: bool

    def comparison_id(self) -> str:
        raw = json.dumps([sorted(self.model_ids), self.live, self.classes, self.per_class, self.record_matches,
                          self.head_to_head])
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def validate(request: gateway_pb2.CompareRequest, config: GatewayConfig) -> Options:
    """Every limit, before any work; all violations reported at once."""
    ids = list(request.model_ids)
    problems = _id_problems(ids)
    p = request.probes
    classes = list(p.imagenet_classes)
    if len(classes) > MAX_CLASSES:
        problems.append(("probes.imagenet_classes", f"at most {MAX_CLASSES} classes, got {len(classes)}"))
    for i, name in enumerate(classes[:MAX_CLASSES]):  # (at most MAX_CLASSES violations + the ids' 4 + 2)
        if not CLASS_NAME.fullmatch(name):
            problems.append((f"probes.imagenet_classes[{i}]", f"must be 1..64 plain characters, got {quote(name)}"))
    if not 0 <= p.images_per_class <= MAX_PER_CLASS:
        problems.append(("probes.images_per_class", f"must be 0..{MAX_PER_CLASS}, got {p.images_per_class}"))
    if not 0 <= p.budget_s <= MAX_BUDGET_S or p.budget_s != p.budget_s:
        problems.append(("probes.budget_s", f"must be 0..{MAX_BUDGET_S:g} seconds, got {p.budget_s}"))
    if problems:
        raise InvalidArgument(problems[0][0], problems[0][1], more=problems[1:])
    return Options(tuple(ids), p.live, tuple(classes) or tuple(config.classes()),
                   p.images_per_class or config.images_per_class, p.budget_s or config.compare_budget_s,
                   p.record_matches, p.head_to_head)


def _id_problems(ids: list[str]) -> list[tuple[str, str]]:
    """At most MAX_MODELS ids are looked at (a request with 20 million ids costs no more than one with 5)."""
    if not 2 <= len(ids) <= MAX_MODELS:
        return [("model_ids", f"compare 2..{MAX_MODELS} models, got {len(ids)}")]
    problems, seen = [], set()
    for i, model_id in enumerate(ids):
        if not MODEL_ID.fullmatch(model_id):
            problems.append((f"model_ids[{i}]", f"must be 1..128 characters of [a-z0-9._-], got {quote(model_id)}"))
        elif model_id in seen:
            problems.append((f"model_ids[{i}]", f"{quote(model_id)} is listed twice"))
        seen.add(model_id)
    return problems


class GatewayMetrics:
    def __init__(self, metrics: Metrics) -> None:
        r = metrics.registry
        self.compares = Counter("versus_gateway_comparisons", "Comparisons built, by outcome.", ("outcome",),
                                registry=r)
        self.compare_seconds = Histogram("versus_gateway_compare_seconds", "Time to build one comparison.",
                                         buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
                                         registry=r)
        self.probes = Counter("versus_gateway_probe_runs", "Probes run, by probe and result (ok, failed, "
                              "unavailable).", ("probe", "result"), registry=r)
        self.downstream_errors = Counter("versus_gateway_downstream_errors", "Downstream calls that failed.",
                                         ("component", "code"), registry=r)


class Gateway:
    """Compare, ListModels, Leaderboard — transport-free toward the gateway's own clients."""

    def __init__(self, config: GatewayConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.m = GatewayMetrics(metrics)
        lookups = lookup_counter(metrics)
        self.cache: ProbeCache[object] = ProbeCache(config.cache_ttl_s, lookups)
        #: GetModelInfo / ListModels answers: fresh for INFO_TTL_S, one call shared by concurrent comparisons
        self.info_cache: ProbeCache[object] = ProbeCache(INFO_TTL_S, lookups)
        self.admission = Admission(config.max_concurrent_compares, model="gateway", metrics=metrics,
                                   what="comparisons")
        self.served = config.served_map()
        self.ds: Downstream | None = None

    async def start(self) -> None:
        self.ds = Downstream(self.config)

    async def close(self) -> None:
        if self.ds is not None:
            await self.ds.close()

    @property
    def downstream(self) -> Downstream:
        assert self.ds is not None, "start() first"
        return self.ds

    # -- small read-through views ----------------------------------------------------------------
    async def _cached_call(self, component: str, method: str, request: object, timeout: float) -> object:
        """A read-only call whose answer stays good for INFO_TTL_S; concurrent callers share one call."""
        key = (component, method, request.SerializeToString())  # type: ignore[attr-defined]

        async def call() -> object:
            return await self.downstream.call(component, method, request, timeout)

        try:
            reply, _ = await asyncio.wait_for(
                self.info_cache.get(key, f"{component}.{method}", call, live=True, ok=lambda _r: True),
                max(0.001, timeout))
        except TimeoutError:
            raise DownstreamError(component, ErrorDetails(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer within the "
                                                          "budget", reason="BUDGET_EXHAUSTED")) from None
        return reply

    async def list_models(self) -> gateway_pb2.ListModelsResponse:
        try:
            listed = await self._cached_call("ranker", "ListModels", ranker_pb2.ListModelsRequest(),
                                             self.config.call_timeout_s)
        except DownstreamError as exc:
            raise _client_error(exc) from None
        return gateway_pb2.ListModelsResponse(models=[
            gateway_pb2.CatalogModel(id=m.id, display_name=m.display_name, type=m.type,
                                     served_by=self.served.get(m.id, "") if self._configured(m.id) else "")
            for m in listed.models])  # type: ignore[attr-defined]

    async def leaderboard(self, task: str = "") -> ranker_pb2.GetLeaderboardResponse:
        try:
            return await self.downstream.call("ranker", "GetLeaderboard", ranker_pb2.GetLeaderboardRequest(task=task),
                                              self.config.call_timeout_s)
        except DownstreamError as exc:
            raise _client_error(exc, field="task") from None

    def _configured(self, model_id: str) -> bool:
        service = self.served.get(model_id, "")
        return bool(service) and self.downstream.has(service.split("/")[0])

    # -- Compare ------------------------------------------------------------------------------------
    async def compare(self, request: gateway_pb2.CompareRequest, *, timeout_s: float | None = None,
                      progress: Progress | None = None) -> gateway_pb2.Comparison:
        opts = validate(request, self.config)
        started = time.perf_counter()
        with self.admission.hold(1):
            budget_s = opts.budget_s if timeout_s is None else min(opts.budget_s, max(0.0, timeout_s - 0.25))
            run = _Run(self, opts, Budget(time.monotonic() + budget_s, self.config.call_timeout_s), progress)
            try:
                comparison = await run.execute()
            except BaseException:
                self.m.compares.labels("error").inc()
                raise
        comparison.elapsed_ms = (time.perf_counter() - started) * 1e3
        self.m.compare_seconds.observe(comparison.elapsed_ms / 1e3)
        self.m.compares.labels("ok").inc()
        return comparison


def _client_error(exc: DownstreamError, field: str = "model_ids") -> Exception:
    """A downstream error that is the client's own mistake keeps its code; anything else is Unavailable."""
    from services.common.errors import Unavailable

    d = exc.details
    if d.code == grpc.StatusCode.NOT_FOUND:
        return NotFound(d.message, resource_type=d.resource_type or "model", resource_name=d.resource_name)
    if d.code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(d.violations[0][0] if d.violations else field, d.message)
    return Unavailable(f"{exc.component} is unavailable: {d.describe()}")


@dataclass
class _Served:
    """One compared model served live here."""

    model_id: str
    service: str  # "vit" or "sd35/<variant>"
    weights: gateway_pb2.ServedWeights = field(default_factory=gateway_pb2.ServedWeights)
    probes: dict[str, ProbeResult] = field(default_factory=dict)


class _Run:
    """The state of one comparison while it is built."""

    def __init__(self, gw: Gateway, opts: Options, budget: Budget, progress: Progress | None) -> None:
        self.gw = gw
        self.ds = gw.downstream
        self.cfg = gw.config
        self.opts = opts
        self.budget = budget
        #: Probe runs are shared with (and cached for) other comparisons, so they run on the gateway's own
        #: budget, not on this caller's: a caller with a short deadline stops waiting, the run goes on.
        self.probe_budget = Budget(time.monotonic() + gw.config.compare_budget_s, gw.config.call_timeout_s)
        self._progress = progress
        self._fraction = 0.0
        self.c = gateway_pb2.Comparison(model_ids=list(opts.model_ids), comparison_id=opts.comparison_id(),
                                        created_at=datetime.now(UTC).isoformat(timespec="seconds"))
        self.catalog: dict[str, ranker_pb2.CatalogEntry] = {}
        self.played: dict[str, int] = {}
        self.vit: VitInfo | None = None
        self.variants: dict[str, VariantInfo] = {}
        self.served: dict[str, _Served] = {}
        self.judgements: list[gateway_pb2.Judgement] = []
        self.labels: list[str] = []
        self.classes: list[str] = []
        self.generators: list[str] = []

    def progress(self, stage: str, detail: str, fraction: float) -> None:
        """Report progress; concurrent stages report their own estimates, so the fraction never goes back."""
        self._fraction = max(self._fraction, fraction)
        if self._progress is not None:
            self._progress(stage, detail, self._fraction)

    def unavailable(self, component: str, exc: DownstreamError | str) -> None:
        if isinstance(exc, DownstreamError):
            d: ErrorDetails = exc.details
            self.gw.m.downstream_errors.labels(exc.component, d.code.name).inc()
            item = gateway_pb2.Unavailable(component=component, code=d.code.name, reason=d.reason,
                                           message=d.message[:300])
        else:
            item = gateway_pb2.Unavailable(component=component, message=exc)
        self._add_unavailable(item)

    def _add_unavailable(self, item: gateway_pb2.Unavailable) -> None:
        if item not in self.c.unavailable:
            self.c.unavailable.append(item)

    async def execute(self) -> gateway_pb2.Comparison:
        self.progress("catalog", "reading the catalog", 0.02)
        await self._catalog()
        self.progress("probe", "asking the model services what they serve", 0.08)
        await self._infos()
        await self._classes()  # the client's classes are checked against the judge before any probe runs
        await self._probes()
        await self._quality()
        duels = await self._head_to_head()
        self.progress("scores", "scores and leaderboard from the ranker", 0.92)
        await self._scores(duels)
        self._assemble()
        self.progress("done", "comparison ready", 1.0)
        return self.c

    # -- catalog -------------------------------------------------------------------------------------
    async def _catalog(self) -> None:
        try:
            listed = await self.gw._cached_call("ranker", "ListModels", ranker_pb2.ListModelsRequest(),
                                                self.budget.timeout())
        except DownstreamError as exc:
            self.unavailable("ranker", exc)
            return
        self.catalog = {m.id: m for m in listed.models}  # type: ignore[attr-defined]
        self.played = dict(zip(self.catalog, listed.times_matched, strict=True))  # type: ignore[attr-defined]
        for i, model_id in enumerate(self.opts.model_ids):
            if model_id not in self.catalog:
                raise NotFound(f"model_ids[{i}]: unknown model {quote(model_id)}", resource_type="model",
                               resource_name=model_id)

    # -- what the services serve -------------------------------------------------------------------------
    def _needs(self, prefix: str) -> bool:
        compared = any(self.gw.served.get(m, "").startswith(prefix) for m in self.opts.model_ids)
        judge = prefix == "vit" and any(self._is_t2i(m) for m in self.opts.model_ids)
        h2h = prefix == "sd35" and self.opts.head_to_head
        return self.ds.has(prefix) and (compared or judge or h2h)

    def _is_t2i(self, model_id: str) -> bool:
        return self.gw.served.get(model_id, "").startswith("sd35/")

    async def _infos(self) -> None:
        tasks = []
        if self._needs("vit"):
            tasks.append(self._vit_info())
        if self._needs("sd35"):
            tasks.append(self._sd35_info())
        await asyncio.gather(*tasks)
        for model_id in self.opts.model_ids:
            service = self.gw.served.get(model_id, "")
            weights = self.vit.weights if service == "vit" and self.vit else (
                self.variants[service[5:]].weights if service.startswith("sd35/") and service[5:] in self.variants
                else None)
            if weights is not None:
                self.served[model_id] = _Served(model_id, service, weights)
            elif service and self.ds.has(service.split("/")[0]) and service.startswith("sd35/") and self.variants:
                self.unavailable(service, f"the sd35 service does not host variant {service[5:]}")

    async def _vit_info(self) -> None:
        try:
            reply = await self.gw._cached_call("vit", "GetModelInfo", vit_pb2.GetModelInfoRequest(),
                                               self.budget.timeout())
        except DownstreamError as exc:
            self.unavailable("vit", exc)
            return
        self.vit = VitInfo("vit", reply, weights_of("vit", reply.model))  # type: ignore[attr-defined]

    async def _sd35_info(self) -> None:
        try:
            reply = await self.gw._cached_call("sd35", "GetModelInfo", sd35_pb2.GetModelInfoRequest(),
                                               self.budget.timeout())
        except DownstreamError as exc:
            self.unavailable("sd35", exc)
            return
        for v in reply.variants:  # type: ignore[attr-defined]
            name = enum_name(sd35_pb2.Variant, "VARIANT", v.variant)
            self.variants[name] = VariantInfo(name, v, weights_of(f"sd35/{name}", v.model))

    # -- probes ------------------------------------------------------------------------------------------
    async def _probe(self, component_key: str, weights: gateway_pb2.ServedWeights, probe: str,
                     fn: Callable[[], Awaitable[ProbeResult]], kind: str = "") -> ProbeResult | None:
        """One probe through the cache (fresh result, the shared in-flight run, or a new run when live).
        ``kind`` labels the metrics (probe names of generated images carry prompts and seeds)."""
        key = (component_key, weights.digest, probe)
        kind = kind or probe

        async def run() -> ProbeResult:
            result = await guarded(probe, fn, weights)
            outcome = "unavailable" if not result.ran else "ok" if result.ok else "failed"
            self.gw.m.probes.labels(kind, outcome).inc()
            return result

        try:
            result, how = await asyncio.wait_for(
                self.gw.cache.get(key, kind, run, live=self.opts.live, ok=lambda r: r.ran),
                timeout=max(0.001, self.budget.remaining()))
        except TimeoutError:
            return unavailable(probe, "budget exhausted before the probe finished", weights)
        if how in ("hit", "shared"):
            self.c.probes_cached += 1
        elif how == "run":
            self.c.probes_run += 1
        return result  # type: ignore[return-value]

    def _info_result(self, served: _Served) -> ProbeResult:
        """What GetModelInfo itself shows (backend, weights format, encoders, guidance layers)."""
        w = served.weights
        if served.service == "vit" and self.vit is not None:
            caps = {c.id for c in self.vit.response.model.capabilities}
            ok = "safetensors-loading" in caps
            detail = (f"GetModelInfo: {self.vit.response.model.id} on {w.backend}/{w.device} at {w.precision}; "
                      f"weights loaded from safetensors (pickle refused), sha256 {w.digest[:16] or 'not reported'} "
                      f"({w.kind})")
            return ProbeResult("info", ok, detail, [], {}, w, now_iso())
        v = self.variants[served.service[5:]].info
        props = v.model.properties
        encoders = "2 CLIP + T5" if props.get("text_encoder_3") == "t5" else "2 CLIP (T5 dropped)"
        detail = (f"GetModelInfo: {v.model.id} on {v.model.backend}/{v.model.device}, text encoders {encoders}, "
                  f"skip-guidance layers {list(v.skip_guidance_layers) or 'none'}, served self-hosted by this "
                  f"deployment; weights sha256 {w.digest[:16] or 'not reported'} ({w.kind})")
        ok = v.model.backend == "diffusers"
        result = ProbeResult("info", ok, detail, [], {}, w, now_iso())
        return result

    async def _probes(self) -> None:
        jobs: list[Awaitable[None]] = []
        compared = [self.served[m] for m in self.opts.model_ids if m in self.served]  # not the extra duellists
        for served in compared:
            served.probes["info"] = self._info_result(served)
            if served.service == "vit":
                jobs.append(self._vit_probes(served))
            else:
                jobs.append(self._sd35_probes(served))
        if jobs:
            self.progress("probe", f"probing {len(compared)} served model(s)", 0.15)
            await asyncio.gather(*jobs)

    def _wanted(self, model_id: str, probe: str) -> bool:
        """A probe runs only when a capability of the model needs it (all of them without a catalog)."""
        entry = self.catalog.get(model_id)
        if entry is None:
            return True
        return any(probe in evidence.LIVE_CHECKS.get(c.id, ()) for c in entry.capabilities)

    async def _vit_probes(self, served: _Served) -> None:
        assert self.vit is not None
        vp = VitProbes(self.ds, self.vit, self.probe_budget)
        w = served.weights
        for name, fn in (("vit.distribution", vp.distribution), ("vit.embedding", vp.embedding),
                         ("vit.batching", vp.latency_and_batching), ("vit.transfer", vp.transfer)):
            if not self._wanted(served.model_id, name):
                continue
            result = await self._probe("vit", w, name, fn)
            if result is not None:
                served.probes[name] = result
                self.progress("probe", f"{name}: {'ok' if result.ok else 'see evidence'}", 0.3)
        if not self._wanted(served.model_id, "vit.precision"):
            return
        targets = self.cfg.precision_targets()
        base = "vit" if w.precision == "fp32" else "vit-fp32" if "fp32" in targets else ""
        others = {p: t for p, t in targets.items() if p != "fp32"}
        if not base or not others:
            why = (f"this deployment serves {w.precision} only: no other precision is configured to compare with"
                   if not others else f"this deployment serves {w.precision}: no fp32 deployment to time against")
            served.probes["vit.precision"] = unavailable("vit.precision", f"{why} (GATEWAY_VIT_PRECISIONS)", w)
            return
        for precision, target in others.items():
            name = f"vit.precision.{precision}"
            result = await self._probe("vit", w, f"{name}@{target}",
                                       lambda p=precision: vp.precision(f"vit-{p}", p, base), kind=name)
            if result is not None:
                served.probes[name] = result

    def _sd35(self, variant: str) -> Sd35Probes:
        return Sd35Probes(self.ds, self.variants[variant], self.probe_budget, self.cfg.probe_size,
                          self.cfg.probe_steps)

    async def _sd35_probes(self, served: _Served) -> None:
        variant = served.service[5:]
        sp = self._sd35(variant)
        w = served.weights
        for short, fn in (("generate", sp.size_and_determinism), ("guidance", sp.guidance),
                          ("resolution", sp.resolution_edges),
                          ("lora", lambda: sp.lora(self.cfg.lora_probe_path))):
            if not self._wanted(served.model_id, short):
                continue
            result = await self._probe(served.service, w, f"sd35.{variant}.{short}", fn)
            if result is not None:
                served.probes[short] = result
                self.progress("probe", f"sd35 {variant} {short}: {'ok' if result.ok else 'see evidence'}", 0.45)
        turbo = served.probes.get("generate")
        if variant == "large-turbo" and "large" in self.variants and turbo is not None and turbo.ran:
            large = self.variants["large"]
            base = await self._probe("sd35/large", large.weights, "sd35.large.generate",
                                     self._sd35("large").size_and_determinism)
            if base is not None and base.ran:
                speed = base.data["ms"] / turbo.data["ms"]
                served.probes["turbo"] = ProbeResult(
                    "sd35.large-turbo.vs-large", True,
                    f"same prompt, seed and size: Large {base.data['steps']} steps in {base.data['ms']:.0f} ms, "
                    f"Turbo {turbo.data['steps']} steps in {turbo.data['ms']:.0f} ms",
                    [measurement("turbo_vs_large_speedup", speed, "x", "sd35.large-turbo.vs-large",
                                 "Large time ÷ Turbo time for one image at their default steps", w, now_iso())],
                    {"speedup": speed}, w, now_iso())

    # -- cross-model quality -----------------------------------------------------------------------------
    def _generators(self) -> list[str]:
        t2i = [m for m in self.opts.model_ids if m in self.served and self._is_t2i(m)]
        if self.opts.head_to_head:
            for model_id, service in self.gw.served.items():
                if service.startswith("sd35/") and service[5:] in self.variants and model_id not in t2i:
                    self.served.setdefault(model_id, _Served(model_id, service, self.variants[service[5:]].weights))
                    t2i.append(model_id)
        return t2i

    async def _judge_labels(self) -> list[str]:
        assert self.vit is not None
        n = self.vit.response.num_labels
        vp = VitProbes(self.ds, self.vit, self.probe_budget)

        async def fetch() -> ProbeResult:
            reply = await vp._call("Classify", vit_pb2.ClassifyRequest(images=[_blank_png()], top_k=n))
            labels = [""] * n
            for lab in reply.results[0].labels:
                labels[lab.index] = lab.label
            return ProbeResult("vit.labels", True, "", [], {"labels": labels}, self.vit.weights, now_iso())

        result = await self._probe("vit", self.vit.weights, "vit.labels", fetch)
        return result.data.get("labels", []) if result is not None and result.ran else []

    async def _classes(self) -> None:
        """The ImageNet classes of the quality probe, as the judge names them. A class the client sent that
        is not a judge label is INVALID_ARGUMENT; a default from the config that is not is dropped (noted)."""
        self.classes: list[str] = []
        self.generators = self._generators()
        if not self.generators:
            return
        if self.vit is None:
            self.unavailable("quality", "no ViT judge is reachable: cross-model quality and head-to-head skipped")
            return
        self.labels = await self._judge_labels()
        if not self.labels:
            if self.opts.live:
                self.unavailable("quality", "the ViT judge's labels could not be read")
            return  # not live and nothing cached: no quality evidence this time
        from_client = self.opts.classes != tuple(self.cfg.classes())
        for i, name in enumerate(self.opts.classes):
            index = quality.class_index(self.labels, name)
            if index >= 0:
                self.classes.append(self.labels[index].split(",")[0].strip())
            elif from_client:
                raise InvalidArgument(f"probes.imagenet_classes[{i}]",
                                      f"{quote(name)} is not a label of the judge ({self.vit.response.model.id})")
            else:
                self.c.notes.append(f"The default class {name!r} is not a label of the judge; it was skipped.")

    async def _quality(self) -> None:
        generators = self.generators if self.classes else []
        if not generators:
            return
        gate = asyncio.Semaphore(GENERATE_CONCURRENCY)  # the SD3.5 queue would refuse a larger burst
        jobs = [(g, c, self.cfg.probe_seed + k) for g in generators for c in self.classes
                for k in range(self.opts.per_class)]
        self.progress("quality", f"{len(jobs)} images: 'a photo of a {{class}}' judged by the ViT service", 0.55)
        done = 0

        async def one(generator: str, cls: str, seed: int) -> None:
            nonlocal done
            async with gate:
                judged = await self._judgement(generator, cls, seed)
            done += 1
            if judged is not None:
                self.judgements.append(judged)
            self.progress("quality", f"{done}/{len(jobs)} judged", 0.55 + 0.25 * done / len(jobs))

        await asyncio.gather(*(one(*j) for j in jobs))
        self.judgements.sort(key=lambda j: (j.generator, j.imagenet_class, j.seed))
        self.c.judgements.extend(self.judgements)
        judge_real = self.vit.weights.kind == "real"
        for g in generators:
            w = self.served[g].weights
            summary = quality.summarise(self.judgements, g, mechanism=not (judge_real and w.kind == "real"))
            self.c.quality.append(summary)
            if summary.images:
                self._quality_probe(g, summary)

    def _quality_probe(self, generator: str, s: gateway_pb2.QualitySummary) -> None:
        served, at = self.served[generator], now_iso()
        w = gateway_pb2.ServedWeights()
        w.CopyFrom(served.weights)
        if self.vit is not None and self.vit.weights.kind != "real":
            w.kind = self.vit.weights.kind if w.kind == "real" else w.kind
        detail = (f"{s.images} images of 'a photo of a {{class}}' for {', '.join(self.classes)} judged by "
                  f"{self.vit.response.model.id if self.vit else 'vit'} ({self.vit.weights.kind if self.vit else '?'} "
                  f"weights): top-1 hit {s.top1_hit_rate:.0%}, top-5 hit {s.top5_hit_rate:.0%}, mean p(class) "
                  f"{s.mean_class_probability:.4f}")
        # On real weights the claim holds when the judge finds the prompted class in the top 5 of at least
        # half the images; on other weights this is a mechanism check and never decides the mark.
        served.probes["quality"] = ProbeResult(f"quality.{generator}", s.top5_hit_rate >= QUALITY_TOP5_BAR, detail, [
            measurement("prompt_top1_hit_rate", s.top1_hit_rate, "fraction", "quality", detail, w, at),
            measurement("prompt_top5_hit_rate", s.top5_hit_rate, "fraction", "quality", detail, w, at),
        ], {}, w, at)

    async def _judgement(self, generator: str, cls: str, seed: int) -> gateway_pb2.Judgement | None:
        served = self.served[generator]
        variant = served.service[5:]
        sp = self._sd35(variant)
        prompt = quality.prompt_for(cls)
        gen_probe = f"sd35.{variant}.image.{seed}.{prompt}"

        async def generate() -> ProbeResult:
            g = await sp.generate(prompt, seed)
            return ProbeResult(gen_probe, True, "", [], {"png": g.png, "w": g.width, "h": g.height},
                               served.weights, now_iso())

        image = await self._probe(served.service, served.weights, gen_probe, generate, kind="sd35.image")
        if image is None or not image.ran:
            if image is not None and image.unavailable is not None:
                self._add_unavailable(image.unavailable)
            return None
        assert self.vit is not None
        png = image.data["png"]
        vp = VitProbes(self.ds, self.vit, self.probe_budget)
        judge_probe = f"vit.judge.{hashlib.sha256(png).hexdigest()[:24]}"

        async def classify() -> ProbeResult:
            reply = await vp._call("Classify", vit_pb2.ClassifyRequest(
                images=[common_pb2.Image(data=png)], top_k=self.vit.response.num_labels))
            scores = [(lab.index, lab.label, lab.score) for lab in reply.results[0].labels]
            return ProbeResult(judge_probe, True, "", [], {"scores": scores}, self.vit.weights, now_iso())

        judged_probe = await self._probe("vit", self.vit.weights, judge_probe, classify, kind="vit.judge")
        if judged_probe is None or not judged_probe.ran:
            if judged_probe is not None and judged_probe.unavailable is not None:
                self._add_unavailable(judged_probe.unavailable)
            return None
        target = quality.class_index(self.labels, cls)
        j = quality.judge(judged_probe.data["scores"], target)
        return gateway_pb2.Judgement(
            generator=generator, imagenet_class=cls, prompt=prompt, seed=seed, top1_label=j.top1_label,
            class_probability=j.class_probability, top1_hit=j.rank == 1, top5_hit=j.rank <= 5, image_png=png,
            width=image.data["w"], height=image.data["h"])

    # -- head-to-head -----------------------------------------------------------------------------------
    async def _head_to_head(self) -> list[gateway_pb2.Duel]:
        generators = sorted({j.generator for j in self.judgements})
        if not self.opts.head_to_head or len(generators) < 2 or self.vit is None:
            return []
        kinds = {self.served[g].weights.kind for g in generators} | {self.vit.weights.kind}
        task = quality.TASK if kinds == {"real"} else quality.MECHANISM_TASK
        digests = ",".join(f"{g}={self.served[g].weights.digest}" for g in generators)
        context = f"{task}|{digests}|judge={self.vit.weights.digest}|size={self.cfg.probe_size}|" \
                  f"steps={self.cfg.probe_steps}"
        duels = quality.duels(self.judgements, generators, context, self.cfg.tie_margin, task)
        self.progress("head-to-head", f"{len(duels)} duels among {', '.join(generators)}", 0.85)
        if self.opts.record_matches and self.ds.has("ranker"):
            await asyncio.gather(*(self._record(d) for d in duels))
        self.c.duels.extend(duels)
        return duels

    async def _record(self, duel: gateway_pb2.Duel) -> None:
        evidence_doc = json.dumps({"prompt": duel.prompt, "seed": duel.seed, "p_a": duel.probability_a,
                                   "p_b": duel.probability_b, "judge": self.vit.weights.served_model_id
                                   if self.vit else "", "comparison": self.c.comparison_id})
        try:
            reply = await self.ds.call("ranker", "RecordMatch", ranker_pb2.RecordMatchRequest(
                model_a=duel.model_a, model_b=duel.model_b, outcome=duel.outcome, task=duel.task,
                evidence=evidence_doc, idempotency_key=duel.idempotency_key), self.budget.timeout())
        except DownstreamError as exc:
            self.unavailable("ranker.RecordMatch", exc)
            return
        duel.match_id, duel.duplicate = reply.match_id, reply.duplicate

    # -- scores --------------------------------------------------------------------------------------
    async def _scores(self, duels: list[gateway_pb2.Duel]) -> None:
        if not self.catalog:
            return
        calls = [self.ds.call("ranker", "Score", ranker_pb2.ScoreRequest(model_ids=list(self.opts.model_ids)),
                              self.budget.timeout())]
        task = duels[0].task if duels else ""
        calls.append(self.ds.call("ranker", "GetLeaderboard", ranker_pb2.GetLeaderboardRequest(task=task),
                                  self.budget.timeout()))
        results = await asyncio.gather(*calls, return_exceptions=True)
        for name, result in zip(("ranker.Score", "ranker.GetLeaderboard"), results, strict=True):
            if isinstance(result, DownstreamError):
                self.unavailable(name, result)
            elif isinstance(result, BaseException):
                raise result
            elif name == "ranker.Score":
                self.c.scores.CopyFrom(result)
                self.c.verdict = result.verdict
            else:
                self.c.leaderboard.CopyFrom(result)

    # -- the document ------------------------------------------------------------------------------------
    def _assemble(self) -> None:
        scores = {s.model_id: s for s in self.c.scores.scores}
        for model_id in self.opts.model_ids:
            entry = self.catalog.get(model_id) or ranker_pb2.CatalogEntry(id=model_id, display_name=model_id)
            served = self.served.get(model_id)
            report = self.c.models.add(entry=entry, served_by=served.service if served else "",
                                       times_matched=scores[model_id].times_matched if model_id in scores
                                       else self.played.get(model_id, 0))
            if model_id in scores:
                report.score.CopyFrom(scores[model_id])
            probes = served.probes if served else {}
            measurements = [m for p in probes.values() for m in p.measurements]
            for p in probes.values():
                if p.unavailable is not None:
                    self._add_unavailable(p.unavailable)
            if served:
                report.weights.CopyFrom(served.weights)
            report.measurements.extend(measurements)
            ev = evidence.ModelEvidence(entry, served is not None, probes, measurements, self.opts.live, self.catalog)
            report.capabilities.extend(evidence.capability_evidence(ev, self.cfg.claim_tolerance_pt))
        from services.gateway.facts import fact_rows, notes

        self.c.facts.extend(fact_rows(self.c))
        self.c.notes.extend(notes(self.c, self.opts.live))


def _blank_png() -> common_pb2.Image:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (224, 224), (127, 127, 127)).save(buf, format="PNG")
    return common_pb2.Image(data=buf.getvalue(), mime_type="image/png")
