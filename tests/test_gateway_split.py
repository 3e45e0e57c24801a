"""A deployment per SD3.5 variant: the gateway routes every call about a variant to that variant's own sd35
server (GATEWAY_SD35_VARIANT_TARGETS), with the sd35 token; one server down makes only its variant's rows
UNAVAILABLE. Real sd35 servers, each hosting one tiny variant, on real channels."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import GatewayStack, InProcessServer, metric_sum
from test_gateway import LARGE, MARK, MEDIUM, TURBO, VIT, fresh_gateway, request, rows
from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

from services.common.errors import ConfigError
from services.gateway.config import SD35_VARIANTS, GatewayConfig, ServedBy
from services.gateway.downstream import Downstream

TOKEN = "sd35-s3cret"
UNAVAILABLE = MARK.Value("EVIDENCE_MARK_UNAVAILABLE")
VERIFIED = MARK.Value("EVIDENCE_MARK_VERIFIED_LIVE")
#: Capabilities each catalog entry claims that live checks decide on any weights (Turbo claims fewer).
CHECKED = {LARGE: ("text-to-image", "seeded-determinism", "lora-fine-tuning", "classifier-free-guidance"),
           TURBO: ("text-to-image", "megapixel-output", "four-step-generation")}


@contextlib.contextmanager
def one_variant(variant: str, path: Path, adapter_root: Path) -> Iterator[InProcessServer]:
    """An sd35 server that hosts only ``variant`` and requires the sd35 token."""
    from services.sd35.config import Sd35Config
    from services.sd35.server import create_server

    with InProcessServer(create_server, Sd35Config.from_env(
            {}, models=(f"{variant}={path}",), adapter_root=str(adapter_root), default_size=128, torch_threads=1,
            token=TOKEN, port=0, metrics_port=0, host="127.0.0.1", metrics_host="127.0.0.1", drain_delay_s=0.0,
            log_format="text")) as server:
        yield server


def config(**kw: object) -> GatewayConfig:
    return GatewayConfig.from_env({}, http_port=-1, **kw)


@pytest.mark.parametrize("entries", [("huge=127.0.0.1:1",), ("large=",), ("large",), ("=127.0.0.1:1",),
                                     ("large=127.0.0.1:1", "large=127.0.0.1:2")])
def test_a_variant_target_names_one_variant_once_and_a_target(entries: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_SD35_VARIANT_TARGETS.*VARIANT=TARGET"):
        config(sd35_variant_targets=entries)


def test_the_variant_targets_setting_reads_the_environment_and_repeated_flags() -> None:
    env = GatewayConfig.from_env({"GATEWAY_SD35_VARIANT_TARGETS": "large=a:1, medium=dns:///m.ns.svc:50052",
                                  "GATEWAY_HTTP_PORT": "-1"})
    parser = argparse.ArgumentParser()
    GatewayConfig.add_arguments(parser)
    flags = GatewayConfig.from_args(parser.parse_args(["--sd35-variant-target", "large=a:1", "--sd35-variant-target",
                                                       "medium=dns:///m.ns.svc:50052", "--http-port", "-1"]), {})
    assert env.variant_targets() == flags.variant_targets() == {"large": "a:1", "medium": "dns:///m.ns.svc:50052"}


def routes(cfg: GatewayConfig) -> tuple[dict[str, str | None], list[str], dict[str, str]]:
    """Each variant's target component (None: not served), the sd35 targets, and each one's authorization."""
    async def read() -> tuple[dict[str, str | None], list[str], dict[str, str]]:
        ds = Downstream(cfg)
        try:
            by = {v: ds.component(ServedBy("sd35", v)) if ds.serves(ServedBy("sd35", v)) else None
                  for v in SD35_VARIANTS}
            return by, ds.sd35_components(), {c: dict(ds.metadata(c)).get("authorization", "")
                                              for c in ds.sd35_components()}
        finally:
            await ds.close()
    return asyncio.run(read())


def test_each_variant_goes_to_its_own_target_else_to_the_shared_one_with_the_sd35_token(tmp_path: Path) -> None:
    token = tmp_path / "sd35-token"
    token.write_text(TOKEN + "\n")
    by, targets, auth = routes(config(sd35="127.0.0.1:1", sd35_variant_targets=("medium=127.0.0.1:2",),
                                      sd35_token_file=str(token), downstream_token="other"))
    assert by == {"large": "sd35", "large-turbo": "sd35", "medium": "sd35-medium"}
    assert targets == ["sd35", "sd35-medium"]
    assert set(auth.values()) == {f"Bearer {TOKEN}"}
    by, targets, _ = routes(config(sd35_variant_targets=("large=127.0.0.1:2", "large-turbo=127.0.0.1:3")))
    assert by == {"large": "sd35-large", "large-turbo": "sd35-large-turbo", "medium": None}
    assert targets == ["sd35-large", "sd35-large-turbo"]
    every = tuple(f"{v}=127.0.0.1:2" for v in SD35_VARIANTS)
    _, targets, _ = routes(config(sd35="127.0.0.1:1", sd35_variant_targets=every))
    assert targets == [f"sd35-{v}" for v in SD35_VARIANTS]  # the shared target serves no variant: never dialled


def live(c: gateway_pb2.Comparison, model: str) -> list[gateway_pb2.CapabilityEvidence]:
    return [r for r in rows(c, model) if "served here" in r.title]


def marks_of(c: gateway_pb2.Comparison, model: str) -> dict[str, int]:
    return {r.capability_id: r.mark for r in live(c, model)}


def sd35_outages(c: gateway_pb2.Comparison) -> list[tuple[str, str]]:
    """The sd35 targets that failed ("sd35", or a variant's own "sd35-large" …)."""
    return [(u.component, u.code) for u in c.unavailable if u.component.split("-")[0] == "sd35"]


@pytest.mark.slow  # serves the tiny models
def test_each_variant_on_its_own_server(gateway_stack: GatewayStack, sd35_dirs: dict[str, Path],
                                        adapter_root: Path, tmp_path: Path) -> None:
    token = tmp_path / "sd35-token"
    token.write_text(TOKEN + "\n")
    with (one_variant("large", sd35_dirs["large"], adapter_root) as large,
          one_variant("large-turbo", sd35_dirs["large-turbo"], adapter_root) as turbo,
          fresh_gateway(gateway_stack, sd35="", sd35_token_file=str(token), sd35_variant_targets=(
              f"large={large.target}", f"large-turbo={turbo.target}")) as gw, gw.channel() as ch):
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        served = {m.id: m.served_by for m in stub.ListModels(gateway_pb2.ListModelsRequest(), timeout=30).models}
        assert (served[LARGE], served[TURBO], served[MEDIUM], served[VIT]) == ("sd35/large", "sd35/large-turbo", "",
                                                                                "vit")
        both = stub.Compare(request(VIT, LARGE, TURBO), timeout=600).comparison
        for model in (LARGE, TURBO):
            marks = marks_of(both, model)
            assert all(marks.get(cap) == VERIFIED for cap in CHECKED[model]), (model, live(both, model))
        vs_large = next(r for r in live(both, TURBO) if "sd35.vs-large" in r.check)  # Turbo's and Large's servers
        assert vs_large.mark == VERIFIED and "4 vs 28 steps" in vs_large.detail, vs_large.detail
        assert not sd35_outages(both), both.unavailable
        for server, variant in ((large, "large"), (turbo, "large-turbo")):  # each generated only its own variant
            generated = {k for k, v in server.metrics().items() if k.startswith("versus_images_generated_total") and v}
            assert generated and all(variant in k and (variant == "large-turbo" or "turbo" not in k)
                                     for k in generated), generated
            assert metric_sum(server.metrics(), "grpc_server_handled_total", grpc_method="Generate",
                              grpc_code="OK") > 0

        large.stop()
        after = stub.Compare(request(VIT, LARGE, TURBO), timeout=300).comparison
    assert sd35_outages(after) == [("sd35-large", "UNAVAILABLE")], after.unavailable
    assert live(after, LARGE) and all(r.mark == UNAVAILABLE for r in live(after, LARGE)), live(after, LARGE)
    turbo = marks_of(after, TURBO)
    assert turbo["text-to-image"] == turbo["megapixel-output"] == VERIFIED, live(after, TURBO)
    assert turbo["four-step-generation"] == UNAVAILABLE, live(after, TURBO)  # Turbo against Large: Large is down
    assert any(q.generator == TURBO and q.images for q in after.quality), after.quality
    assert not any(q.generator == LARGE and q.images for q in after.quality), after.quality
