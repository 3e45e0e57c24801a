"""Configuration of the ranker service (env ``RANKER_*`` or flags of ``versus serve ranker``)."""

from __future__ import annotations

import dataclasses

from services.common.config import ServerConfig, setting
from services.common.errors import ConfigError
from services.ranker.scoring import parse_weights


@dataclasses.dataclass(frozen=True)
class RankerConfig(ServerConfig):
    """Everything ``versus serve ranker`` can be told."""

    ENV_PREFIX = "RANKER"

    port: int = setting(50053, "gRPC port; 0 picks a free port.")
    metrics_port: int = setting(9103, "Prometheus /metrics HTTP port; 0 picks a free port, -1 disables.")
    catalog: str = setting("", "Catalog directory (one JSON file per model); empty = the catalog shipped with Versus.")
    db: str = setting("sqlite:///ranker.db", "Match store: sqlite:///PATH (WAL) or postgresql://USER@HOST:PORT/DB.")
    bootstrap_rounds: int = setting(1000, "Bootstrap resamples for the 95% rating intervals.")
    bootstrap_seed: int = setting(0, "Seed of the bootstrap (same matches + seed = same intervals).")
    anchor_model: str = setting("vit-base-patch16-224", "Model whose rating is fixed at 1000 (mean 1000 if absent).")
    weights: str = setting("adoption=0.30,quality=0.35,ecosystem=0.20,match_graph=0.15",
                           "Composite weights per dimension.")
    ridge: float = setting(1e-4, "L2 penalty of the Bradley-Terry fit (keeps unbeaten models finite).")
    max_models_per_score: int = setting(16, "Models in one Score request.")
    max_evidence_chars: int = setting(65536, "Longest evidence text in RecordMatch.")
    read_hub: bool = setting(False, "Read downloads and likes from the Hugging Face Hub API for Score (HF_ENDPOINT "
                                    "names the hub, HF_HUB_OFFLINE stops it); off: adoption is 'not read (offline)'.")
    hub_timeout_s: float = setting(3.0, "Deadline of one hub read; Score never waits longer for adoption.")
    adoption_max_age_s: float = setting(86400.0, "A stored hub reading younger than this is used without asking again.")
    adoption_retry_s: float = setting(300.0, "After a failed hub read, ask again only after this many seconds.")

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_weights(self.weights)
        except ValueError as exc:
            raise ConfigError(f"{self.label('weights')}: {exc}") from exc
        if not 0 <= self.bootstrap_rounds <= 100_000:
            raise ConfigError(f"{self.label('bootstrap_rounds')} must be 0..100000")
        if self.ridge <= 0:
            raise ConfigError(f"{self.label('ridge')} must be > 0")
        for name in ("hub_timeout_s", "adoption_max_age_s", "adoption_retry_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{self.label(name)} must be > 0")
        for name in ("max_models_per_score", "max_evidence_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{self.label(name)} must be >= 1")
