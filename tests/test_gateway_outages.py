"""Outages never make a comparison INTERNAL: a model service down before or during a comparison — its
GetModelInfo failing, or the process gone mid-run — gives UNAVAILABLE rows in an OK comparison, for
catalog-only and live requests alike. The fakes are real gRPC servers on loopback; the ranker is real."""

from __future__ import annotations

import threading

import pytest
from fake_services import fake_vit
from fakes.sd35 import fake_judge, fake_sd35
from test_gateway_checks import LARGE, TURBO, UNAVAILABLE, VERIFIED, VIT, compare, ranker  # noqa: F401 (fixture)
from versus.gateway.v1 import gateway_pb2


def _live_rows(c: gateway_pb2.Comparison, model: str) -> list[gateway_pb2.CapabilityEvidence]:
    report = next(m for m in c.models if m.entry.id == model)
    return [r for r in report.capabilities if "served here" in r.title]


@pytest.mark.parametrize("live", [True, False])
def test_sd35_get_model_info_failing_is_unavailable_not_internal(ranker, live: bool) -> None:  # noqa: F811
    """ViT against SD3.5 Large with the sd35 GetModelInfo failing: the judge stage must not reach a variant
    the gateway never read (it was KeyError 'large' → INTERNAL)."""
    with fake_vit() as vit, fake_sd35("info-down") as sd35:
        c = compare(ranker, (VIT, LARGE), vit=vit.target, sd35=sd35.target, lora_probe_path="",
                    imagenet_classes="label1,label2", live=live)
    rows = _live_rows(c, LARGE)
    if live:
        assert rows and all(r.mark == UNAVAILABLE and "GetModelInfo failed" in r.detail for r in rows), rows
    assert any(u.component == "sd35" and u.code == "UNAVAILABLE" for u in c.unavailable), c.unavailable
    assert not [j for j in c.judgements if j.generator == LARGE] and not [q for q in c.quality
                                                                          if q.generator == LARGE]


def test_sd35_killed_mid_comparison_then_both_kinds_are_ok(ranker) -> None:  # noqa: F811
    """The sd35 process goes away while a live comparison is generating; that comparison and the catalog-only
    and live ones after it are OK, with the lost work UNAVAILABLE."""
    with fake_vit() as vit, fake_sd35() as sd35:
        killer = threading.Thread(target=lambda: sd35.servicer.generating.wait(60) and sd35.kill())
        killer.start()
        first = compare(ranker, (VIT, LARGE, TURBO), vit=vit.target, sd35=sd35.target, lora_probe_path="",
                        imagenet_classes="label1,label2")
        killer.join(60)
        after = {live: compare(ranker, (VIT, LARGE, TURBO), vit=vit.target, sd35=sd35.target, lora_probe_path="",
                               imagenet_classes="label1,label2", live=live) for live in (False, True)}
    assert any(u.component.startswith("sd35") for u in first.unavailable), first.unavailable
    for live, c in after.items():
        assert any(u.component == "sd35" for u in c.unavailable), (live, c.unavailable)
        for model in (LARGE, TURBO):
            rows = _live_rows(c, model)
            assert all(r.mark == UNAVAILABLE for r in rows), (live, rows)
            assert bool(rows) == live
    vit_rows = _live_rows(after[True], VIT)  # the ViT service, still up, is probed as ever
    assert any(r.mark == VERIFIED and "vit.distribution" in r.check.split(",") for r in vit_rows), vit_rows


def test_the_judge_killed_mid_comparison_then_both_kinds_are_ok(ranker) -> None:  # noqa: F811
    """The ViT judge goes away at its first Classify; the quality it could not judge is UNAVAILABLE (never a
    miss), and the SD3.5 rows, their service up, are probed as ever."""
    with fake_judge() as judge, fake_sd35() as sd35:
        killer = threading.Thread(target=lambda: judge.servicer.classifying.wait(60) and judge.kill())
        killer.start()
        first = compare(ranker, (LARGE, TURBO), vit=judge.target, sd35=sd35.target, lora_probe_path="",
                        imagenet_classes="tench,goldfish")
        killer.join(60)
        after = {live: compare(ranker, (LARGE, TURBO), vit=judge.target, sd35=sd35.target, lora_probe_path="",
                               imagenet_classes="tench,goldfish", live=live) for live in (False, True)}
    for c in (first, *after.values()):
        assert not c.judgements and not [q for q in c.quality if q.images], c.quality
    assert any(u.component in ("vit", "quality") for u in first.unavailable), first.unavailable
    assert any(u.component in ("vit", "quality") for u in after[True].unavailable), after[True].unavailable
    rows = _live_rows(after[True], LARGE)
    assert any(r.mark == VERIFIED and r.check == "sd35.generate" for r in rows), rows
