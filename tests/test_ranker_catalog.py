"""The shipped catalog as evidence (issue 8): primary sources with dates, no aggregators, task-relative
quality with documented floors and ceilings, claims as data, and the worked example of docs/RANKING.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.ranker.catalog import AGGREGATOR_DOMAINS, denied_domain, load_catalog, load_tasks
from services.ranker.scoring import DEFAULT_WEIGHTS, GraphStats, score_report

VIT, LARGE = "vit-base-patch16-224", "stable-diffusion-3.5-large"
CATALOG = load_catalog()
TASKS = load_tasks("", CATALOG)
RANKING_MD = (Path(__file__).parent.parent / "docs/RANKING.md").read_text()


def report(*ids: str):
    return score_report([CATALOG[m] for m in ids], DEFAULT_WEIGHTS, GraphStats({}, {}, 0, 0), {}, TASKS)


def test_at_least_twelve_models_with_reference_models_per_task() -> None:
    assert len(CATALOG) >= 12
    assert {VIT, LARGE, "stable-diffusion-3.5-large-turbo", "stable-diffusion-3.5-medium", "resnet-50",
            "efficientnet-b0", "deit-base-patch16-224", "vit-large-patch16-224", "convnext-tiny",
            "clip-vit-base-patch16", "sdxl-1.0", "sd3-medium", "flux.1-dev", "flux.1-schnell", "pixart-sigma",
            "dall-e-3"} <= set(CATALOG)


def _sources() -> list[tuple[str, str, object]]:
    out = []
    for entry in CATALOG.values():
        out += [(entry.id, s.source, s.as_of) for s in entry.signals]
        out += [(entry.id, c.source, c.as_of) for _, c in entry.claims() if c.source]
        for fact in (entry.license, entry.pricing):
            if fact.source:
                out.append((entry.id, fact.source, fact.as_of))
    return out


def test_every_source_is_a_dated_primary_url_off_the_deny_list() -> None:
    sources = _sources()
    assert len(sources) >= 15
    for model, url, as_of in sources:
        assert re.match(r"^https://[^/\s]+\.[a-z]+/", url), (model, url)
        assert as_of is not None, (model, url)
        assert denied_domain(url) is None, (model, url)
    for entry in CATALOG.values():
        assert all(s.locator.strip() for s in entry.signals), entry.id


def test_the_deny_list_catches_aggregators_and_subdomains() -> None:
    assert denied_domain("https://www.promptlayer.com/models/vit") == "promptlayer.com"
    assert denied_domain("https://api.unfragile.ai/v1/passport/x") == "unfragile.ai"
    assert denied_domain("https://huggingface.co/google/vit-base-patch16-224") is None
    assert denied_domain("https://notpromptlayer.com/") is None  # a suffix is not a subdomain
    assert {"promptlayer.com", "unfragile.ai"} <= set(AGGREGATOR_DOMAINS)


def test_every_task_has_a_primary_metric_with_floor_and_ceiling_from_the_catalog() -> None:
    assert set(TASKS) == {"image-classification", "text-to-image"}
    assert {e.type for e in CATALOG.values()} <= set(TASKS)
    assert TASKS["image-classification"].task.primary_metric == "imagenet1k_top1"
    assert TASKS["text-to-image"].task.primary_metric == "geneval_overall"
    for scale in TASKS.values():
        assert scale.floor.signal.value < scale.ceiling.signal.value
        for ref in (scale.floor, scale.ceiling):
            assert CATALOG[ref.model_id].type == scale.task.id and ref.signal.source.startswith("https://")
            assert f"`{ref.model_id}`" in RANKING_MD and f"{ref.signal.value:g}" in RANKING_MD  # documented


def test_worked_example_for_the_seed_pair() -> None:
    """The numbers docs/RANKING.md works through (no matches recorded)."""
    by_id = {s.model_id: s for s in report(VIT, LARGE).scores}
    vit, large = by_id[VIT], by_id[LARGE]
    assert round(vit.sub("quality").score, 1) == 58.3 and not vit.sub("quality").missing
    assert vit.sub("ecosystem").score == 87.5
    assert (vit.composite, vit.confidence) == (68.9, 0.55)
    assert large.sub("quality").score == 100.0 and large.sub("ecosystem").score == 62.5
    assert (large.composite, large.confidence) == (86.4, 0.55)
    for s in (vit, large):
        assert s.sub("adoption").missing and s.sub("match_graph").missing
    for number in ("58.3", "87.5", "68.9", "62.5", "86.4", "0.55"):
        assert number in RANKING_MD, number


def test_quality_explanations_carry_raw_value_source_and_date() -> None:
    by_id = {s.model_id: s for s in report(VIT, LARGE).scores}
    vit_q, large_q = by_id[VIT].sub("quality").explanation, by_id[LARGE].sub("quality").explanation
    assert "imagenet1k_top1 = 81.786 percent" in vit_q and "results/results-imagenet.csv" in vit_q
    assert "read 2026-11-27" in vit_q and "floor 76.13 (resnet-50" in vit_q and "ceiling 85.834" in vit_q
    assert "= 58.3" in vit_q
    assert "geneval_overall = 0.71" in large_q and "arxiv.org/abs/2511.22699" in large_q and "Table 9" in large_q
    assert "floor 0.55 (sdxl-1.0" in large_q and "djghosh13/geneval" in large_q


@pytest.mark.parametrize("model", ["flux.1-dev", "clip-vit-base-patch16", "stable-diffusion-3.5-large-turbo",
                                   "dall-e-3"])
def test_a_model_without_a_sourced_metric_shows_quality_missing_not_zero(model: str) -> None:
    score = report(model).scores[0]
    quality = score.sub("quality")
    assert quality.missing and "not found" in quality.explanation
    assert score.confidence < 0.55 + 1e-9  # quality's weight did not count as data
    name = re.escape(CATALOG[model].display_name)
    assert re.search(rf"{name} has no [a-z, ]*quality", report(model, "sdxl-1.0").verdict)


def test_confidence_is_the_share_of_weight_with_data() -> None:
    with_quality = report("resnet-50").scores[0]
    assert with_quality.confidence == 0.35  # quality only: 0.35 of 1.0
    assert report("flux.1-dev").scores[0].confidence == 0.0 and report("flux.1-dev").scores[0].composite == 0.0


def test_seed_claims_stay_claims_as_data() -> None:
    claims = {c.text: c for _, c in CATALOG[VIT].claims()}
    seed = claims["84.0% vs 76.1% and 77.1%"]
    assert (seed.metric, seed.value, seed.unit) == ("imagenet1k_top1", 84.0, "percent")
    assert [(x.subject, x.value) for x in seed.compared_with] == [("ResNet-50", 76.1), ("EfficientNet-B0", 77.1)]
    official = claims["expected to achieve 81.2%"]
    assert official.value == 81.2 and official.source == "https://github.com/google-research/vision_transformer"


def test_pricing_and_license_are_facts() -> None:
    vit, large, dalle = CATALOG[VIT], CATALOG[LARGE], CATALOG["dall-e-3"]
    assert (vit.license.id, vit.license.open_weights, vit.license.commercial_use) == ("apache-2.0", True,
                                                                                      "unrestricted")
    assert large.license.commercial_use == "revenue-threshold" and large.license.revenue_threshold_usd == 1_000_000
    assert "US $1,000,000" in large.license.summary()
    assert dalle.license.open_weights is False and dalle.pricing.kind == "paid-api"
    assert dalle.pricing.price_usd is None  # not found in a primary source: absent, not guessed
    for entry in CATALOG.values():
        if entry.license.id == "not-found":
            assert entry.license.source is None and "not read" in entry.license.note


def test_absent_signals_say_not_found() -> None:
    for entry in CATALOG.values():
        for a in entry.not_found:
            assert a.note.startswith(("not found", "not applicable")), (entry.id, a)
        assert {a.name for a in entry.not_found if a.dimension == "adoption"} or any(
            s.dimension == "adoption" for s in entry.signals), entry.id
