"""The shipped catalog as evidence (issue 8): primary sources with dates, no aggregators, task-relative
quality with documented floors and ceilings, claims as data, and the worked example of docs/RANKING.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from services.ranker.catalog import AGGREGATOR_DOMAINS, denied_domain, load_catalog, load_tasks
from services.ranker.errors import CatalogError
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
            "dall-e-3", "gpt-image-1"} <= set(CATALOG)


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


def test_every_task_has_a_primary_metric_with_floor_and_ceiling_of_one_protocol_or_none() -> None:
    assert set(TASKS) == {"image-classification", "text-to-image"}
    assert {e.type for e in CATALOG.values()} <= set(TASKS)
    assert TASKS["image-classification"].task.primary_metric == "imagenet1k_top1"
    assert TASKS["text-to-image"].task.primary_metric == "prism_bench_overall"
    scaled = [s for s in TASKS.values() if s.floor is not None]
    assert [s.task.id for s in scaled] == ["image-classification", "text-to-image"]
    for scale in scaled:
        assert scale.floor.signal.value < scale.ceiling.signal.value
        assert scale.floor.signal.source == scale.ceiling.signal.source  # one source
        for ref in (scale.floor, scale.ceiling):
            assert CATALOG[ref.model_id].type == scale.task.id and ref.signal.source.startswith("https://")
            assert ref.signal.protocol == scale.task.protocol  # one protocol
            assert f"`{ref.model_id}`" in RANKING_MD and f"{ref.signal.value:g}" in RANKING_MD  # documented


def test_text_to_image_is_placed_on_one_table_and_geneval_is_shown_apart() -> None:
    """Floor and ceiling from one table of one protocol (the PRISM-Bench authors' own runs, Qwen2.5-VL judge),
    a weaker and a stronger reference around SD3.5 Large; GenEval figures of other teams stay apart."""
    t2i = TASKS["text-to-image"]
    assert (t2i.floor.model_id, t2i.floor.signal.value) == ("sdxl-1.0", 57.0)
    assert (t2i.ceiling.model_id, t2i.ceiling.signal.value) == ("gpt-image-1", 80.7)
    assert t2i.task.protocol == "prism-bench-authors-qwen2.5-vl" and "Table 9" in t2i.task.note  # tables checked
    large = CATALOG[LARGE].signals
    placed = next(s for s in large if s.name == "prism_bench_overall")
    assert t2i.floor.signal.value < placed.value < t2i.ceiling.signal.value
    assert placed.source == t2i.floor.signal.source == t2i.ceiling.signal.source
    assert "'PRISM-Bench (Qwen2.5-VL)', row 'SD3.5-Large'" in placed.locator
    for model, value, score in ((LARGE, "0.71", 57.4), ("stable-diffusion-3.5-medium", "0.63", 41.4),
                                ("sdxl-1.0", "0.55", 0.0)):
        quality = report(model).scores[0].sub("quality")
        assert not quality.missing and round(quality.score, 1) == score
        assert f"shown apart, not placed (another metric or protocol): geneval_overall = {value}" in \
            quality.explanation


def test_a_quality_value_of_another_protocol_is_shown_apart(tmp_path: Path) -> None:
    shipped = Path(__file__).parent.parent / "services/ranker/catalog"
    for path in shipped.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    doc = json.loads((shipped / "deit-base-patch16-224.json").read_text())
    doc["signals"][0]["protocol"] = "someone-elses-run"
    (tmp_path / "deit-base-patch16-224.json").write_text(json.dumps(doc))
    catalog = load_catalog(tmp_path)
    deit = score_report([catalog["deit-base-patch16-224"]], DEFAULT_WEIGHTS, GraphStats({}, {}, 0, 0), {},
                        load_tasks(tmp_path, catalog)).scores[0].sub("quality")
    assert deit.missing and "shown apart, not placed (another protocol): imagenet1k_top1 = 81.992" in deit.explanation
    ceiling = json.loads((shipped / "vit-large-patch16-224.json").read_text())
    ceiling["signals"][0]["protocol"] = "someone-elses-run"
    (tmp_path / "vit-large-patch16-224.json").write_text(json.dumps(ceiling))
    with pytest.raises(CatalogError, match="no sourced imagenet1k_top1 of protocol 'timm-results-imagenet'"):
        load_tasks(tmp_path, load_catalog(tmp_path))


def test_worked_example_for_the_seed_pair() -> None:
    """The numbers docs/RANKING.md works through (no matches recorded)."""
    pair = report(VIT, LARGE)
    by_id = {s.model_id: s for s in pair.scores}
    vit, large = by_id[VIT], by_id[LARGE]
    assert round(vit.sub("quality").score, 1) == 58.3 and not vit.sub("quality").missing
    assert vit.sub("ecosystem").score == 87.5
    assert (vit.composite, vit.confidence) == (68.9, 0.55)
    assert round(large.sub("quality").score, 1) == 57.4 and large.sub("ecosystem").score == 62.5
    assert (large.composite, large.confidence) == (59.2, 0.55)
    for s in (vit, large):
        assert s.sub("adoption").missing and s.sub("match_graph").missing
    assert pair.shared_dimensions == ("quality", "ecosystem")
    assert (vit.shared_composite, large.shared_composite) == (68.9, 59.2)
    assert pair.verdict.startswith("vit-base-patch16-224 scores higher at 69/100 vs Stable Diffusion 3.5 Large at "
                                   "59/100 on quality and ecosystem.")
    assert "Not compared: adoption and match graph" in pair.verdict
    for number in ("58.3", "87.5", "68.9", "57.4", "62.5", "59.2", "0.55", pair.verdict.split(" (")[0]):
        assert number in " ".join(RANKING_MD.split()), number


def test_a_pair_is_ranked_on_the_dimensions_both_have() -> None:
    """vit-base (81.79) must not outrank DeiT-B (81.99) because DeiT's framework count was not read."""
    pair = report(VIT, "deit-base-patch16-224")
    vit, deit = (next(s for s in pair.scores if s.model_id == m) for m in (VIT, "deit-base-patch16-224"))
    assert vit.composite > deit.composite  # each model's own blend stays, labelled as such
    assert [s.model_id for s in pair.scores] == ["deit-base-patch16-224", VIT]
    assert pair.shared_dimensions == ("quality",) and pair.unshared_dimensions == ("adoption", "ecosystem",
                                                                                   "match_graph")
    assert (deit.shared_composite, vit.shared_composite) == (60.4, 58.3)
    assert pair.verdict.startswith("DeiT-B/16 (224) scores higher at 60/100 vs vit-base-patch16-224 at 58/100 on "
                                   "quality.")
    assert "Not compared: adoption, ecosystem and match graph" in pair.verdict
    for number in ("60.4", "58.3"):
        assert number in RANKING_MD, number


def test_models_without_a_shared_dimension_are_not_ranked() -> None:
    verdict = report(VIT, "dall-e-3").verdict
    assert "have no dimension with data in common, so they are not ranked against each other" in verdict


def test_quality_explanations_carry_raw_value_source_and_date() -> None:
    by_id = {s.model_id: s for s in report(VIT, LARGE).scores}
    vit_q, large_q = by_id[VIT].sub("quality").explanation, by_id[LARGE].sub("quality").explanation
    assert "imagenet1k_top1 = 81.786 percent" in vit_q and "results/results-imagenet.csv" in vit_q
    assert "read 2026-11-27" in vit_q and "floor 76.13 (resnet-50" in vit_q and "ceiling 85.834" in vit_q
    assert "= 58.3" in vit_q
    assert "prism_bench_overall = 70.6" in large_q and "floor 57 (sdxl-1.0" in large_q and "ceiling 80.7" in large_q
    assert "read 2026-12-04" in large_q and "100 × (70.6 − 57) / (80.7 − 57) = 57.4" in large_q
    assert "geneval_overall = 0.71" in large_q and "arxiv.org/abs/2511.22699" in large_q and "Table 9" in large_q
    assert "protocol geneval-z-image-team" in large_q


@pytest.mark.parametrize("model", ["pixart-sigma", "clip-vit-base-patch16", "stable-diffusion-3.5-large-turbo",
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
    assert report("dall-e-3").scores[0].confidence == 0.0 and report("dall-e-3").scores[0].composite == 0.0


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
    assert dalle.license.open_weights is None and dalle.pricing.kind == "not-found"
    assert dalle.pricing.price_usd is None  # not found in a primary source: absent, not guessed
    for entry in CATALOG.values():
        if entry.license.id == "not-found":
            assert entry.license.source is None and "not read" in entry.license.note
            # nothing derived from a licence nobody read (FLUX.1 [dev] said "free" before)
            assert entry.license.open_weights is None and entry.license.commercial_use == "not-found"
            assert entry.pricing.kind == "not-found" or entry.pricing.source is not None, entry.id
    assert CATALOG["flux.1-dev"].pricing.summary() == "not found"


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d["license"].update(open_weights=True), "derives no open_weights or commercial_use"),
    (lambda d: d["license"].update(commercial_use="unrestricted"), "derives no open_weights or commercial_use"),
    (lambda d: d.update(pricing={"kind": "free-self-hosted"}), "pricing is not derived from a licence"),
])
def test_nothing_is_derived_from_a_licence_that_was_not_found(tmp_path: Path, mutate, fragment: str) -> None:
    doc = json.loads((Path(__file__).parent.parent / "services/ranker/catalog/flux.1-dev.json").read_text())
    mutate(doc)
    (tmp_path / "flux.json").write_text(json.dumps(doc))
    with pytest.raises(CatalogError, match=fragment):
        load_catalog(tmp_path)


def test_claims_carry_the_conditions_of_their_own_wording() -> None:
    claims = {c.text: c.conditions for _, c in CATALOG[VIT].claims()}
    batch = claims["10x batch size = ~9x throughput"]
    assert (batch.device_class, batch.batch, batch.text, batch.weights_dependent) == ("gpu", 10, "on GPU", False)
    int8 = claims["2-4x faster at int8 with < 1-2% accuracy loss"]
    assert int8.precision == "int8" and int8.weights_dependent  # the agreement half needs real weights
    for entry in CATALOG.values():
        for _, claim in entry.claims():
            accuracy = claim.metric.startswith(("imagenet", "geneval")) or "accuracy" in claim.text
            assert claim.conditions.weights_dependent == accuracy, (entry.id, claim.text)
    turbo = next(c for _, c in CATALOG["stable-diffusion-3.5-large-turbo"].claims())
    assert not turbo.conditions.weights_dependent and not turbo.conditions.device_class


def test_parameters_and_weight_digests_say_where_they_come_from() -> None:
    for entry in CATALOG.values():
        assert entry.parameters is None or entry.parameters_source.strip(), entry.id
        # nothing could be read from a hub here: every entry says where it looked, none guesses
        assert not entry.published_files and entry.published_files_source.startswith("not found: "), entry.id
        if entry.hub_id:
            assert f"huggingface.co/{entry.hub_id}" in entry.published_files_source, entry.id


def test_absent_signals_say_not_found() -> None:
    for entry in CATALOG.values():
        for a in entry.not_found:
            assert a.note.startswith(("not found", "not applicable")), (entry.id, a)
        assert {a.name for a in entry.not_found if a.dimension == "adoption"} or any(
            s.dimension == "adoption" for s in entry.signals), entry.id


def test_explanations_reach_the_feature_table_whole() -> None:
    """The floor and ceiling citations come last in a quality explanation: nothing may cut them."""
    from versus.gateway.v1 import gateway_pb2

    from services.gateway.compare.facts import fact_rows
    from services.ranker.servicer import score_response

    scored = score_response(report(VIT)).scores[0]
    quality = next(x for x in scored.sub_scores if x.dimension == "quality").explanation
    assert len(quality) > 300 and quality.endswith("= 58.3")
    rows = fact_rows(gateway_pb2.Comparison(models=[gateway_pb2.ModelReport(score=scored)]))
    cell = next(r for r in rows if r.name == "Quality").cells[0]
    assert cell.provenance == f"ranker: {quality}"


def test_the_vit_architecture_is_sourced_and_its_labels_are_the_shipped_list() -> None:
    """The gateway's label and architecture checks expect what the catalog states; the label digest is the
    digest of the names the project ships (services/vit/data/imagenet1k_labels.txt, the id2label copy)."""
    import hashlib

    from services.ranker.servicer import _entry

    arch = CATALOG[VIT].architecture
    assert arch is not None and (arch.layers, arch.hidden_size, arch.num_labels) == (12, 768, 1000)
    assert arch.source.startswith("https://") and arch.locator and arch.labels_source.startswith("https://")
    shipped = Path(__file__).parent.parent / "services/vit/data/imagenet1k_labels.txt"
    names = [line for line in shipped.read_text(encoding="utf-8").splitlines() if line]
    assert len(names) == arch.num_labels
    assert hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest() == arch.labels_sha256
    assert _entry(CATALOG[VIT]).architecture.labels_sha256 == arch.labels_sha256  # on the wire
    assert not _entry(CATALOG[LARGE]).HasField("architecture")  # none read: the checks say so


def test_a_label_digest_needs_its_source(tmp_path: Path) -> None:
    from services.ranker.catalog import parse_entry

    doc = json.loads((Path(__file__).parent.parent / "services/ranker/catalog/vit-base-patch16-224.json").read_text())
    doc["architecture"]["labels_source"] = ""
    with pytest.raises(CatalogError, match="labels_sha256 and labels_source come together"):
        parse_entry("vit.json", doc)
