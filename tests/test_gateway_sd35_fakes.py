"""SD3.5 fakes that lie consistently — each GetModelInfo describes what its service does — lose exactly the
marks their lie touches, and no other. The marks are decided from decoded pixels and the catalog's figures,
so a service cannot earn them on its own word. Fakes: tests/fake_services.py (real gRPC servers on
loopback); the ranker is real, with the project's catalog."""

from __future__ import annotations

import pytest
from conftest import InProcessServer
from fake_services import fake_sd35
from test_gateway_checks import LARGE, TURBO, VERIFIED, compare, ranker  # noqa: F401 (fixture)
from versus.gateway.v1 import gateway_pb2

Row = tuple[str, str, str]  # (model, capability, "live" or the claim's metric)


def _verified(c: gateway_pb2.Comparison) -> set[Row]:
    out = set()
    for m in c.models:
        for r in m.capabilities:
            if r.mark == VERIFIED:
                out.add((m.entry.id, r.capability_id, "live" if "served here" in r.title else r.unit or r.claim))
    return out


def _run(ranker: InProcessServer, lies: str) -> gateway_pb2.Comparison:  # noqa: F811
    with fake_sd35(lies) as sd35:
        return compare(ranker, (LARGE, TURBO), sd35=sd35.target, lora_probe_path="")


STEPS, PX = "steps", "px"
EVERY = {(LARGE, "text-to-image", "live"), (LARGE, "text-to-image", STEPS), (LARGE, "seeded-determinism", "live"),
         (LARGE, "classifier-free-guidance", "live"), (LARGE, "three-text-encoders", "live"),
         (LARGE, "lora-fine-tuning", "live"), (LARGE, "megapixel-output", "live"), (LARGE, "megapixel-output", PX),
         (TURBO, "text-to-image", "live"), (TURBO, "four-step-generation", "live"),
         (TURBO, "four-step-generation", STEPS), (TURBO, "megapixel-output", "live"), (TURBO, "megapixel-output", PX)}
#: lie → the rows it takes out of VERIFIED_LIVE (every other row of EVERY stays verified)
LOST = {
    # a flat grey image with the request's hash in a PNG text chunk: its bytes vary, its pixels never
    "flat": EVERY - {(m, "megapixel-output", k) for m in (LARGE, TURBO) for k in ("live", PX)},
    # advertises 256x256 as its maximum and keeps to it: the catalog's 1024x1024 is refused
    "max-256": {(m, "megapixel-output", k) for m in (LARGE, TURBO) for k in ("live", PX)},
    # Turbo says (GetModelInfo, replies) 4 steps and runs 28: only the four-step rows fall
    "steps-4": {(TURBO, "four-step-generation", "live"), (TURBO, "four-step-generation", STEPS)},
    # the prompt never reaches the picture (seeds still do): text-to-image and T5 fall, nothing else
    "ignores-prompt": {(LARGE, "text-to-image", "live"), (TURBO, "text-to-image", "live"),
                       (LARGE, "three-text-encoders", "live")},
}


@pytest.fixture(scope="module")
def honest(ranker) -> set[Row]:  # noqa: F811
    return _verified(_run(ranker, ""))


def test_the_honest_fake_verifies_every_sd35_row(honest: set[Row]) -> None:
    assert honest >= EVERY, EVERY - honest


@pytest.mark.parametrize("lie", sorted(LOST))
def test_a_consistent_lie_loses_exactly_its_rows(ranker, honest: set[Row], lie: str) -> None:  # noqa: F811
    lost = honest - _verified(_run(ranker, lie))
    assert lost == LOST[lie], (lie, sorted(lost ^ LOST[lie]))
