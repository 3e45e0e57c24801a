"""Configuration of the gateway (env ``GATEWAY_*`` or flags of ``versus serve gateway``)."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from services.common.config import ServerConfig, setting
from services.common.errors import ConfigError

#: Catalog ids the model services serve by default: catalog id → (service, SD3.5 variant).
DEFAULT_SERVED = ("vit-base-patch16-224=vit,stable-diffusion-3.5-large=sd35/large,"
                  "stable-diffusion-3.5-large-turbo=sd35/large-turbo,stable-diffusion-3.5-medium=sd35/medium")
DEFAULT_CLASSES = "tench,goldfish,golden retriever,volcano"
#: The SD3.5 variants (``versus.sd35.v1.Variant`` in lower case).
SD35_VARIANTS = ("large", "large-turbo", "medium")
_SERVED = re.compile(rf"(vit|sd35/({'|'.join(SD35_VARIANTS)}))")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True)
class ServedBy:
    """The service that serves a catalog model live: the ViT service, or one variant of the SD3.5 service."""

    service: str  # "vit" or "sd35"
    variant: str = ""  # the SD3.5 variant ("large", "large-turbo", "medium"); "" for the ViT service

    @property
    def t2i(self) -> bool:
        return self.service == "sd35"

    def __str__(self) -> str:  # the wire form (CatalogModel.served_by, ServedWeights.service)
        return f"{self.service}/{self.variant}" if self.variant else self.service


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class GatewayConfig(ServerConfig):
    """Everything ``versus serve gateway`` can be told."""

    ENV_PREFIX = "GATEWAY"

    port: int = setting(50050, "gRPC port; 0 picks a free port.")
    metrics_port: int = setting(9100, "Prometheus /metrics HTTP port; 0 picks a free port, -1 disables.")
    http_port: int = setting(8080, "Report pages (HTTP) port; 0 picks a free port, -1 disables the pages.")
    http_host: str = setting("0.0.0.0", "Address the report pages bind to. With a token set, pages are served over "
                                        "TLS (tls_cert/tls_key) or bound to a loopback address; anything else is "
                                        "refused at start.")
    http_open: bool = setting(False, "Serve the report pages without a token (explicit opt-in: whoever reaches "
                                     "the port reads reports and starts live runs). Without it and without a "
                                     "token the gateway refuses to start its pages.")
    vit: str = setting("", "vit service target, e.g. dns:///vit-headless.versus.svc:50051 or 127.0.0.1:50051; "
                           "empty: no ViT (its evidence is unavailable).")
    sd35: str = setting("", "sd35 service target; empty: no SD3.5 (except variants with their own target).")
    sd35_variant_targets: tuple[str, ...] = setting(
        (), "A separate sd35 deployment per variant: VARIANT=TARGET (large, large-turbo, medium), comma-separated "
            "or repeated, e.g. 'large=dns:///sd35-large-headless.versus.svc:50052'. Every call about that variant "
            "goes there (with the sd35 token); a variant without one uses the sd35 target.",
        flag="sd35-variant-target")
    ranker: str = setting("", "ranker service target; empty: no catalog, scores or matches.")
    vit_precisions: str = setting("", "Other deployments of the served ViT at other precisions for the precision "
                                      "probe, timed against fp32 (the main vit service, or an 'fp32=' entry): "
                                      "e.g. 'int8=127.0.0.1:50061,bf16=...'.")
    served: str = setting(DEFAULT_SERVED, "Catalog id → the service serving it live: 'ID=vit' or 'ID=sd35/VARIANT', "
                                          "comma-separated.")
    downstream_token: str = setting("", "Bearer token sent to the model services and the ranker.")
    downstream_token_file: str = setting("", "File holding that token (e.g. a mounted Secret).")
    vit_token_file: str = setting("", "Token file for the vit services (overrides downstream_token for them).")
    sd35_token_file: str = setting("", "Token file for the sd35 services, every variant's target included "
                                            "(overrides downstream_token for them).")
    ranker_token_file: str = setting("", "Token file for the ranker (overrides downstream_token for it).")
    downstream_tls_ca: str = setting("", "PEM CA of the downstream services' certificates; enables TLS to them.")
    downstream_tls_cert: str = setting("", "Client certificate for mTLS to the downstream services.")
    downstream_tls_key: str = setting("", "Client key for mTLS to the downstream services.")
    downstream_server_name: str = setting("", "Override the TLS name checked on downstream certificates.")
    compare_budget_s: float = setting(120.0, "Default wall-clock budget of one comparison (probes not done by "
                                             "then are UNAVAILABLE 'budget exhausted').")
    call_timeout_s: float = setting(60.0, "Deadline of one downstream call (within the budget).")
    cache_ttl_s: float = setting(600.0, "How long a probe result stays fresh per (model, weights digest, probe).")
    max_concurrent_compares: int = setting(8, "Comparisons running new live probe work at once; beyond it "
                                              "RESOURCE_EXHAUSTED with RetryInfo (catalog-only and cached comparisons "
                                              "are never refused).")
    imagenet_classes: str = setting(DEFAULT_CLASSES, "Default ImageNet classes for 'a photo of a {class}'.")
    images_per_class: int = setting(0, "Default seeds per class for the quality probe and head-to-head; 0 = enough "
                                       "for a perfect generator's Wilson lower bound to clear the prompt-adherence "
                                       "bar (4 images in all: 3/3 only reaches 0.44).")
    probe_seed: int = setting(1234, "First seed of the generation probes (image i of a class uses seed + i).")
    probe_size: int = setting(0, "Side of generated probe images in pixels; 0 = the size the catalog claims (1024 for "
                                 "SD3.5 Large), else 512. The resolution check always requests the claimed sizes.")
    probe_steps: int = setting(0, "Denoising steps for quality/head-to-head images; 0 = each variant's default.")
    tie_margin: float = setting(0.05, "Head-to-head: |ln p_a - ln p_b| below this is a tie. 0.05 is a 5% relative "
                                      "difference in the judge's probability: closer than that, numeric noise of the "
                                      "judge (bf16/int8 deployments, batch effects) could flip the outcome.")
    lora_probe_path: str = setting("", "Adapter file (relative to the sd35 adapter root) the LoRA probe loads if no "
                                       "adapter is loaded; empty: probe only adapters already loaded.")
    claim_tolerance_pt: float = setting(1.0, "A numeric claim agrees with a source within this many units "
                                             "(percentage points for accuracy).")
    weights_root: str = setting("", "A weights store the gateway reads and hashes itself: a Hugging Face hub cache "
                                    "(models--ORG--NAME/snapshots/REV) or a weights volume (ORG/NAME, or directories "
                                    "named like the ones the services load), the same files the model services "
                                    "serve, mounted read-only. Only digests computed here count: without it no "
                                    "weights are real or attested.")
    attest: tuple[str, ...] = setting((), "Weights the deployer vouches for: MODEL_ID=SHA256 (catalog id = the "
                                          "combined digest the gateway computes from GATEWAY_WEIGHTS_ROOT; an echoed "
                                          "digest is not enough), comma-separated or repeated. The first attested "
                                          "run records the served model's known-answer fingerprint in the ranker; "
                                          "later runs must reproduce it. Such weights are 'operator-attested': they "
                                          "may decide quality claims, and every such mark says so.")

    deployments: tuple[str, ...] = setting(
        (), "Registered deployments (image classifiers on any Open Inference Protocol server) a comparison can "
            "measure on an eval set: ID=TARGET,model=NAME[,version=V][,labels=FILE][,processor=FILE][,output=NAME]"
            "[,token-file=F][,tls-ca=F][,label-map=FILE]; ';'-separated in the environment.",
        flag="deployment", separator=";")
    eval_sets: tuple[str, ...] = setting((), "Eval sets NAME=PATH (a folder with one sub-folder per label, or a CSV "
                                             "of path,label); ';'-separated in the environment.",
                                         flag="eval-set", separator=";")
    eval_budget_s: float = setting(600.0, "Default wall-clock budget of one eval run (at most 3600 s per request).")
    eval_concurrency: int = setting(4, "Requests in flight per deployment during an eval run (never floods it).")
    eval_max_images: int = setting(10_000, "Largest eval set accepted (files walked before refusing).")
    max_concurrent_evals: int = setting(1, "Eval runs at once; beyond it RESOURCE_EXHAUSTED with a retry hint.")
    route: tuple[str, ...] = setting(
        (), "Shadow and canary routes served as OIP ModelInfer for model_name=NAME (docs/SHADOW.md): "
            "NAME=primary:DEPLOYMENT,candidate:DEPLOYMENT,mirror=SHARE|split=SHARE[,keep_inputs=true]"
            "[,bound=METRIC>=VALUE]...[,alpha=0.05][,queue=256][,mirror_timeout_s=5][,mirror_concurrency=8], "
            "DEPLOYMENT a --deployment id; ';'-separated in the environment. Needs a ranker.",
        separator=";")
    routes: str = setting("", "A YAML file holding routes as --route does: 'routes: [{name, primary, candidate, "
                              "mirror|split, keep_inputs, bounds: [\"agreement >= 0.99\", ...], alpha, queue, "
                              "mirror_timeout_s, mirror_concurrency}]' (e.g. a mounted ConfigMap).")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.served_map()
        self.precision_targets()
        self.variant_targets()
        self.attested_digests()
        self._check_pages()
        if not -1 <= self.http_port <= 65535:
            raise ConfigError(f"{self.label('http_port')}: ports are 0..65535 (-1 disables the pages)")
        for name in ("compare_budget_s", "call_timeout_s", "max_concurrent_compares",
                     "eval_budget_s", "eval_concurrency", "eval_max_images", "max_concurrent_evals"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{self.label(name)} must be > 0")
        if min(self.cache_ttl_s, self.images_per_class, self.tie_margin, self.probe_size, self.probe_steps) < 0:
            raise ConfigError("cache_ttl_s, images_per_class, tie_margin, probe_size and probe_steps must be >= 0")
        if self.probe_size % 16:
            raise ConfigError(f"{self.label('probe_size')} must be a multiple of 16")
        if (self.downstream_tls_cert or self.downstream_tls_key) and not self.downstream_tls_ca:
            raise ConfigError(f"{self.label('downstream_tls_cert')}/{self.label('downstream_tls_key')} "
                              f"(mTLS) need {self.label('downstream_tls_ca')}: without it the channels are "
                              "plaintext and the token would travel in the clear")
        if self.downstream_token and self.downstream_token_file:
            raise ConfigError(f"set {self.label('downstream_token')} or "
                              f"{self.label('downstream_token_file')}, not both")

    def _check_pages(self) -> None:
        """The pages hold the token: with one, TLS or loopback; without one, only by explicit opt-in."""
        if self.http_port == -1:
            return
        if not (self.token or self.token_file):
            if not self.http_open:
                raise ConfigError(f"{self.label('http_port')}: the report pages can start live runs; set "
                                  f"{self.label('token')} (the pages then require it), or "
                                  f"{self.label('http_open')} to true to serve them to anyone, or "
                                  f"{self.label('http_port')} to -1")
            return
        if not self.tls_cert and not _loopback(self.http_host):
            raise ConfigError(f"{self.label('http_host')}: with a token the report pages are served over TLS "
                              f"({self.label('tls_cert')}/{self.label('tls_key')}) or bound to a loopback "
                              f"address, not to {self.http_host!r} in plain HTTP")

    def served_map(self) -> dict[str, ServedBy]:
        """Catalog id → the ViT service, or an SD3.5 variant."""
        out = {}
        for part in filter(None, (p.strip() for p in self.served.split(","))):
            model, _, service = part.partition("=")
            if not model or not _SERVED.fullmatch(service):
                raise ConfigError(f"{self.label('served')}: {part!r} is not ID=vit or ID=sd35/VARIANT")
            name, _, variant = service.partition("/")
            out[model] = ServedBy(name, variant)
        return out

    def precision_targets(self) -> dict[str, str]:
        """Extra ViT deployments for the precision probe: precision → target."""
        out = {}
        for part in filter(None, (p.strip() for p in self.vit_precisions.split(","))):
            precision, _, target = part.partition("=")
            if precision not in ("fp32", "bf16", "fp16", "int8") or not target:
                raise ConfigError(f"{self.label('vit_precisions')}: {part!r} is not PRECISION=TARGET "
                                  "(PRECISION one of fp32, bf16, fp16, int8)")
            out[precision] = target
        return out

    def variant_targets(self) -> dict[str, str]:
        """SD3.5 variants with their own deployment: variant → target."""
        out: dict[str, str] = {}
        for part in self.sd35_variant_targets:
            variant, _, target = part.partition("=")
            if variant not in SD35_VARIANTS or not target.strip() or variant in out:
                raise ConfigError(f"{self.label('sd35_variant_targets')}: {part!r} is not VARIANT=TARGET (VARIANT "
                                  f"one of {', '.join(SD35_VARIANTS)}, once each)")
            out[variant] = target.strip()
        return out

    def attested_digests(self) -> dict[str, str]:
        """Catalog id → the combined sha256 the deployer pinned (``--attest MODEL_ID=SHA256``)."""
        out: dict[str, str] = {}
        for part in self.attest:
            model, _, digest = part.partition("=")
            if not model or not _SHA256.fullmatch(digest) or model in out:
                raise ConfigError(f"{self.label('attest')}: {part!r} is not MODEL_ID=SHA256 (64 lower-case hex "
                                  "characters, one per model)")
            out[model] = digest
        return out

    def classes(self) -> list[str]:
        return [c.strip() for c in self.imagenet_classes.split(",") if c.strip()]

    def resolved_downstream_token(self, component: str = "") -> str:
        """The token for ``component`` ("vit", "vit-int8", "sd35", "sd35-large", "ranker"): its own file when set,
        else the shared one (read when the server starts)."""
        own = f"{component.split('-')[0]}_token_file" if component else ""
        for name in (own, "downstream_token_file"):
            path = getattr(self, name, "") if name else ""
            if path:
                try:
                    with open(path, encoding="utf-8") as fh:
                        return fh.read().strip()
                except OSError as exc:
                    raise ConfigError(f"{self.label(name)}: {exc}") from exc
        return self.downstream_token
