"""SD3.5 fakes that lie consistently — each GetModelInfo describes what its service does — lose exactly the
marks their lie touches, and no other. The marks are decided from decoded pixels and the catalog's figures,
so a service cannot earn them on its own word. Fakes: tests/fake_services.py (real gRPC servers on
loopback); the ranker is real, with the project's catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import InProcessServer
from fakes.sd35 import fake_judge, fake_sd35
from test_gateway_checks import CONTRADICTED, LARGE, TURBO, VERIFIED, VIT, compare, ranker  # noqa: F401 (fixture)
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


# -- quality: no check is exempt -------------------------------------------------------------------------------
def _store(root: Path, hub_id: str, data: bytes) -> str:
    """One weight file in the gateway's store under the catalog's hub id; the combined digest it computes."""
    from services.common.weights import combined_digest, weight_files

    d = root / hub_id
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(data)
    return combined_digest(weight_files(d))


@pytest.mark.parametrize("lie", ["", "ignores-prompt"])
def test_quality_catches_a_generator_that_ignores_the_prompt(ranker, tmp_path: Path, lie: str) -> None:  # noqa: F811
    """On weights that may decide (operator-attested here: the gateway hashed them itself), a generator whose
    pictures follow the prompt clears the adherence bar; one that ignores it does not."""
    pins = (f"{VIT}={_store(tmp_path, 'google/vit-base-patch16-224', b'judge')}",
            f"{LARGE}={_store(tmp_path, 'stabilityai/stable-diffusion-3.5-large', b'large')}")
    with fake_judge() as judge, fake_sd35(lie) as sd35:
        c = compare(ranker, (LARGE, TURBO), vit=judge.target, sd35=sd35.target, lora_probe_path="",
                    imagenet_classes="tench,goldfish", weights_root=str(tmp_path), attest=pins)
    row = next(r for m in c.models if m.entry.id == LARGE for r in m.capabilities
               if r.capability_id == "prompt-adherence" and "served here" in r.title)
    assert row.mark == (CONTRADICTED if lie else VERIFIED), row
    assert "top-5 hit" in row.detail


def test_a_judge_whose_labels_are_not_the_catalogs_judges_nothing(ranker) -> None:  # noqa: F811
    """The judge's label names must hash to the catalog checkpoint's label digest; one renamed class and the
    quality stage is UNAVAILABLE with the reason (its indices are not the catalog's classes)."""
    with fake_judge(renamed=True) as judge, fake_sd35() as sd35:
        c = compare(ranker, (LARGE, TURBO), vit=judge.target, sd35=sd35.target, lora_probe_path="",
                    imagenet_classes="tench,goldfish")
    assert not c.judgements and not [q for q in c.quality if q.images]
    reason = next(u.message for u in c.unavailable if u.component == "quality")
    assert "are not the catalog checkpoint's" in reason, reason
