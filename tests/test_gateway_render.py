"""Report rendering on hand-built comparisons: Markdown sections and provenance, self-contained HTML,
escaping of hostile text, and charts that draw a missing sub-score as missing (never as zero)."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image
from versus.gateway.v1 import gateway_pb2 as gw
from versus.ranker.v1 import ranker_pb2 as rk

from services.gateway.pages import charts, render

VIT = "vit-base-patch16-224"
SD = "stable-diffusion-3.5-large"
TURBO = "stable-diffusion-3.5-large-turbo"
README = "https://github.com/google-research/vision_transformer"
TIMM = ("https://github.com/huggingface/pytorch-image-models/blob/0173a139a2c66db3a41ebfe1d8ac4fb02483642e/"
        "results/results-imagenet.csv")
VIT_DIGEST = "9f2c4e1a7b3d5c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6a"
SD_DIGEST = "5e8d7c6b5a4938271605f4e3d2c1b0a99887766554433221100ffeeddccbbaa9"
HOSTILE = "<script>alert('pwned')</script> | breaks tables"


def png(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    """A real small PNG (PIL), as the SD3.5 service returns them."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def weights(service: str, served: str, digest: str, kind: str) -> gw.ServedWeights:
    return gw.ServedWeights(service=service, served_model_id=served, digest=digest, kind=kind, precision="fp32",
                            device="cpu", backend="torch")


VIT_WEIGHTS = weights("vit", "vit-base-random", VIT_DIGEST, "random")
SD_WEIGHTS = weights("sd35/large", "sd35-tiny-large", SD_DIGEST, "random")


def measurement(name: str, value: float, unit: str, probe: str, at: str, w: gw.ServedWeights,
                detail: str = "") -> gw.Measurement:
    return gw.Measurement(name=name, value=value, unit=unit, probe=probe, detail=detail, measured_at=at, weights=w,
                          mechanism_only=w.kind != "real")


LATENCY = measurement("latency_p50_ms", 41.25, "ms", "vit.latency", "2026-12-01T10:00:01Z", VIT_WEIGHTS,
                      "20 classify calls of one 224x224 image")
BATCH = measurement("batch10_throughput_ratio", 6.37, "x", "vit.batch_scaling", "2026-12-01T10:00:03Z", VIT_WEIGHTS,
                    "batch 10 vs batch 1 images per second")
SIZE = measurement("image_width_px", 64, "px", "sd35.size", "2026-12-01T10:00:09Z", SD_WEIGHTS,
                   "asked 64x64, got a 64x64 PNG")


def vit_capabilities() -> list[gw.CapabilityEvidence]:
    return [
        gw.CapabilityEvidence(
            model_id=VIT, capability_id="imagenet-1k-classification", title="ImageNet-1k classification",
            claim="84.0% vs 76.1% and 77.1%", mark=gw.EVIDENCE_MARK_CONTRADICTED,
            detail="the seed claims 84.0%; the official README says 81.2% and timm measured 81.786%",
            claimed_value=84.0, unit="percent",
            sources=[gw.Source(url=README, locator="README.md, changelog entry 2020-10-29", as_of="2026-11-27",
                               value=81.2, unit="percent", label="official README"),
                     gw.Source(url=TIMM, locator="row vit_base_patch16_224.orig_in21k_ft_in1k", as_of="2026-11-27",
                               value=81.786, unit="percent", label="timm results-imagenet.csv")]),
        gw.CapabilityEvidence(
            model_id=VIT, capability_id="batch-inference", title="Batch inference",
            claim="10x batch size = ~9x throughput", mark=gw.EVIDENCE_MARK_VERIFIED_LIVE,
            detail="batch 10 ran 6.37x the images per second of batch 1", claimed_value=9.0, unit="x",
            measurements=[BATCH], probes=["vit.batch_scaling"], check="vit.batching",
            does_not_prove="vit.batching: anything about the device it runs on (reported only)"),
        gw.CapabilityEvidence(
            model_id=VIT, capability_id="multi-framework-safetensors", title="Multi-framework safetensors loading",
            claim="Weights published for PyTorch, TensorFlow and JAX", mark=gw.EVIDENCE_MARK_SUPPORTED,
            detail="the model page lists PyTorch, TensorFlow and JAX weights",
            sources=[gw.Source(url="https://huggingface.co/google/vit-base-patch16-224", locator="model page tags",
                               as_of="2026-11-27", label="model card")]),
        gw.CapabilityEvidence(
            model_id=VIT, capability_id="fine-tuning", title="Fine-tuning / transfer learning", claim=HOSTILE,
            mark=gw.EVIDENCE_MARK_CLAIMED, detail="nothing checks it"),
        gw.CapabilityEvidence(
            model_id=VIT, capability_id="quantization-onnx-export", title="Quantization / ONNX export",
            claim="2-4x faster at int8 with < 1-2% loss", mark=gw.EVIDENCE_MARK_UNAVAILABLE,
            unavailable_reason="vit-int8: UNAVAILABLE (reason UNAVAILABLE): failed to connect to all addresses",
            probes=["vit.precision"]),
    ]


def sub(dimension: str, score: float, weight: float, explanation: str, missing: bool = False) -> rk.SubScore:
    return rk.SubScore(dimension=dimension, score=score, weight=weight, explanation=explanation, missing=missing)


def scores() -> rk.ScoreResponse:
    vit = rk.ModelScore(model_id=VIT, display_name=VIT, composite=58.4, shared_composite=58.6, confidence=0.75,
                        times_matched=0, sub_scores=[
        sub("adoption", 71.0, 0.3, "hf_downloads_30d 3,402,117 (model page, read 2026-11-27)"),
        sub("quality", 63.5, 0.4, "imagenet1k_top1 81.786 between floor 76.1 and ceiling 90.0"),
        sub("ecosystem", 40.0, 0.2, "frameworks_with_weights 3"),
        sub("match_graph", 0.0, 0.1, "no matches recorded", missing=True)])
    sd = rk.ModelScore(model_id=SD, display_name="Stable Diffusion 3.5 Large", composite=51.2, shared_composite=47.2,
                       confidence=0.6, times_matched=4, sub_scores=[
        sub("adoption", 34.6, 0.3, "hf_downloads_30d 402,911"),
        sub("quality", 0.0, 0.4, "geneval_overall not found", missing=True),
        sub("ecosystem", 66.0, 0.2, "diffusers, ComfyUI"),
        sub("match_graph", 55.0, 0.1, "rating 1012 of 3 models")])
    return rk.ScoreResponse(
        scores=[vit, sd], leaders=[rk.DimensionLeader(dimension="adoption", model_id=SD)],
        shared_dimensions=["adoption", "ecosystem"], unshared_dimensions=["quality", "match_graph"],
        verdict=f"{VIT} scores higher at 59/100 vs Stable Diffusion 3.5 Large at 47/100 on adoption and ecosystem. "
                "Stable Diffusion 3.5 Large leads on ecosystem, while vit is stronger on adoption.")


def leaderboard() -> rk.GetLeaderboardResponse:
    return rk.GetLeaderboardResponse(
        task="mechanism.t2i-imagenet-judge", bootstrap_rounds=200, matches=6, anchor_model=SD, ratings=[
            rk.Rating(model_id=TURBO, rating=1120.5, ci_low=1010.0, ci_high=1240.0, times_matched=4, rank=1, wins=3,
                      losses=1),
            rk.Rating(model_id=SD, rating=1000.0, ci_low=905.0, ci_high=1101.0, times_matched=4, rank=1, wins=1,
                      losses=2, ties=1)],
        notes=["2 models in one connected component"])


JUDGED = {"judge_id": "vit-base-patch16-224", "judge_digest": "c" * 64, "generator_digest": "d" * 64,
          "judged_at": "2026-12-01T10:00:05+00:00"}
DUELLED = {"judge_id": "vit-base-patch16-224", "judge_digest": "c" * 64, "digest_a": "d" * 64, "digest_b": "e" * 64,
           "judged_at": "2026-12-01T10:00:05+00:00"}


def comparison() -> gw.Comparison:
    vit_entry = rk.CatalogEntry(id=VIT, display_name=VIT, type="image-classification", family="vit",
                                parameters=86567656, license="Apache-2.0", pricing="free: self-hosted")
    sd_entry = rk.CatalogEntry(id=SD, display_name="Stable Diffusion 3.5 Large", type="text-to-image",
                               family="sd3.5", parameters=8100000000, license="stabilityai-community")
    s = scores()
    sd_caps = [gw.CapabilityEvidence(
        model_id=SD, capability_id="resolution", title="Image size as requested", claim="returns the requested size",
        mark=gw.EVIDENCE_MARK_VERIFIED_LIVE, detail="64x64 requested and returned", measurements=[SIZE],
        probes=["sd35.size"])]
    judgements = [
        gw.Judgement(generator=SD, imagenet_class="goldfish", prompt="a photo of a goldfish", seed=1234,
                     top1_label="goldfish", class_probability=0.62, top1_hit=True, top5_hit=True,
                     image_png=png((230, 120, 20)), width=32, height=24, **JUDGED),
        gw.Judgement(generator=SD, imagenet_class="volcano", prompt="a photo of a volcano", seed=1234,
                     top1_label="alp", class_probability=0.08, top1_hit=False, top5_hit=True,
                     image_png=png((90, 90, 90)), width=32, height=24, **JUDGED),
    ]
    return gw.Comparison(
        model_ids=[VIT, SD], comparison_id="c0ffee12", created_at="2026-12-01T10:00:00Z",
        models=[gw.ModelReport(entry=vit_entry, score=s.scores[0], capabilities=vit_capabilities(),
                               measurements=[LATENCY, BATCH], served_by="vit", weights=VIT_WEIGHTS, times_matched=0),
                gw.ModelReport(entry=sd_entry, score=s.scores[1], capabilities=sd_caps, served_by="sd35/large",
                               weights=SD_WEIGHTS, times_matched=4)],
        facts=[gw.FactRow(name="Parameters", cells=[
                   gw.FactCell(value="86.6M", provenance="catalog: measured parameter count"),
                   gw.FactCell(value="8.1B", provenance="catalog: https://huggingface.co/stabilityai/sd35")]),
               gw.FactRow(name="Licence", cells=[
                   gw.FactCell(value="Apache-2.0", provenance="catalog: https://huggingface.co/google/vit"),
                   gw.FactCell(value="Stability AI Community", provenance="not found")])],
        scores=s, verdict=s.verdict, judgements=judgements,
        quality=[gw.QualitySummary(generator=SD, images=2, top1_hit_rate=0.5, top5_hit_rate=1.0,
                                   mean_class_probability=0.35, mechanism_only=True, requested=3, lost=1, failed=0,
                                   top1_ci_low=0.09, top1_ci_high=0.91, top5_ci_low=0.34, top5_ci_high=1.0,
                                   **JUDGED)],
        duels=[gw.Duel(model_a=SD, model_b=TURBO, prompt="a photo of a goldfish", seed=1234, probability_a=0.62,
                       probability_b=0.71, outcome=rk.OUTCOME_B_WINS, task="mechanism.t2i-imagenet-judge",
                       idempotency_key="c0ffee12:goldfish:1234", match_id=17, **DUELLED),
               gw.Duel(model_a=SD, model_b=TURBO, prompt="a photo of a volcano", seed=1234, probability_a=0.08,
                       probability_b=0.081, outcome=rk.OUTCOME_TIE, task="mechanism.t2i-imagenet-judge",
                       idempotency_key="c0ffee12:volcano:1234", match_id=18, duplicate=True, **DUELLED)],
        mechanism_leaderboard=leaderboard(),
        unavailable=[gw.Unavailable(component="vit.precision", code="UNAVAILABLE", reason="UNAVAILABLE",
                                    message="vit-int8: failed to connect to all addresses")],
        notes=["The ViT service serves random weights (vit-base-random): its measurements check the mechanism, "
               "not the model's accuracy."],
        elapsed_ms=1834.5, probes_run=5, probes_cached=1)


SECTIONS = ("# vit-base-patch16-224 vs Stable Diffusion 3.5 Large", "## Headline", "## Verdict", "## Feature table",
            "## Capabilities and evidence", "## Scores", "## Evidence: live measurements", "## Cross-model quality",
            "## Head-to-head", "## Mechanism duels (mechanism.t2i-imagenet-judge): not a ranking", "## Leaderboard",
            "## Unavailable", "## Notes")


@pytest.fixture(scope="module")
def c() -> gw.Comparison:
    return comparison()


@pytest.fixture(scope="module")
def markdown(c: gw.Comparison) -> str:
    return render.render_markdown(c)


@pytest.fixture(scope="module")
def page(c: gw.Comparison) -> str:
    return render.render_html(c)


def section(text: str, heading: str) -> str:
    """The Markdown between ``heading`` and the next heading of the same or a higher level."""
    start = text.index(heading + "\n")
    level = heading.split(" ")[0]
    rest = text[start + len(heading) + 1:]
    match = re.search(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)
    return rest[: match.start()] if match else rest


def row(text: str, *cells: str) -> str:
    """The one Markdown table row that holds every one of ``cells``."""
    rows = [line for line in text.splitlines() if line.startswith("|") and all(cell in line for cell in cells)]
    assert len(rows) == 1, (cells, rows)
    return rows[0]


def columns(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line)) - 2


# -- Markdown -----------------------------------------------------------------------------------------


def test_markdown_has_every_section_in_order(markdown: str) -> None:
    positions = [markdown.index(heading + "\n") for heading in SECTIONS]
    assert positions == sorted(positions)


def test_markdown_headline_ranks_confidence_and_verdict(markdown: str, c: gw.Comparison) -> None:
    headline = section(markdown, "## Headline")
    assert "| 59/100 | on adoption, ecosystem |" in row(headline, VIT) and "75%" in row(headline, VIT)
    assert "| 47/100 | on adoption, ecosystem |" in row(headline, "Stable Diffusion 3.5 Large")
    assert "60%" in row(headline, "Stable Diffusion")
    assert "own composite 58/100 (its own dimensions: adoption, quality, ecosystem)" in row(headline, VIT)
    assert "own composite 51/100 (its own dimensions: adoption, ecosystem, match graph)" in row(headline, "Stable Diff")
    assert f"{VIT_DIGEST[:12]}… (random)" in row(headline, VIT)
    assert c.verdict in section(markdown, "## Verdict")


def test_headline_and_verdict_use_the_same_score(markdown: str, page: str, c: gw.Comparison) -> None:
    """The big number on each card is the verdict's (shared dimensions); the own composite is secondary."""
    headline = section(markdown, "## Headline")
    cards = page[page.index('<section id="headline">'):page.index('<section id="verdict">')]
    for s in c.scores.scores:
        shared, own = f"{s.shared_composite:.0f}/100", f"{s.composite:.0f}/100"
        assert shared != own and shared in c.verdict
        line = row(headline, VIT if s.model_id == VIT else "Stable Diffusion 3.5 Large")
        assert line.split(" | ")[1] == shared and f"own composite {own}" in line
        assert f'<div class="rank">{shared}</div>' in cards and f"own composite {own}" in cards


def test_markdown_feature_table_carries_provenance(markdown: str, c: gw.Comparison) -> None:
    features = section(markdown, "## Feature table")
    for fact in c.facts:
        line = row(features, f"| {fact.name} |")
        assert columns(line) == 1 + len(c.model_ids)
        for cell in fact.cells:
            assert f"{cell.value} (source: {cell.provenance})" in line


def test_markdown_lists_every_capability_with_its_mark(markdown: str, c: gw.Comparison) -> None:
    capabilities = section(markdown, "## Capabilities and evidence")
    words = {gw.EVIDENCE_MARK_VERIFIED_LIVE: "verified live", gw.EVIDENCE_MARK_SUPPORTED: "supported",
             gw.EVIDENCE_MARK_CONTRADICTED: "contradicted", gw.EVIDENCE_MARK_CLAIMED: "claimed",
             gw.EVIDENCE_MARK_UNAVAILABLE: "unavailable"}
    seen = set()
    for report in c.models:
        for cap in report.capabilities:
            line = row(capabilities, f"| {cap.title} |")
            assert f" {words[cap.mark]} |" in line
            assert columns(line) == 5
            seen.add(cap.mark)
    assert seen == set(words)
    assert "vit-int8: UNAVAILABLE (reason UNAVAILABLE): failed to connect" in capabilities


def test_markdown_contradicted_claim_shows_both_numbers_and_sources(markdown: str) -> None:
    numbers = section(markdown, "## Capabilities and evidence")
    block = numbers[numbers.index("- **ImageNet-1k classification**: contradicted"):]
    block = block[: block.index("\n- **")]
    assert "Claimed: 84 percent (84.0% vs 76.1% and 77.1%)" in block
    assert f"official README: 81.2 percent. [{README}]({README}), README.md, changelog entry 2020-10-29, " \
           "read 2026-11-27" in block
    assert f"timm results-imagenet.csv: 81.786 percent. [{TIMM}]({TIMM}), " \
           "row vit_base_patch16_224.orig_in21k_ft_in1k, read 2026-11-27" in block


def test_markdown_every_measurement_has_its_provenance(markdown: str, c: gw.Comparison) -> None:
    evidence = section(markdown, "## Evidence: live measurements")
    measurements = render.evidence_rows(c)
    assert {r.measurement.name for r in measurements} == {"latency_p50_ms", "batch10_throughput_ratio",
                                                          "image_width_px"}
    for r in measurements:
        m = r.measurement
        line = row(evidence, f"| {m.name} |")
        for needle in (r.model_id, render.num(m.value), f"| {m.unit} |", m.probe, m.measured_at, m.weights.service,
                       m.weights.digest[:render.DIGEST_CHARS], f"({m.weights.kind})", "mechanism check", m.detail):
            assert needle in line, (needle, line)
    assert "| 41.25 | ms | vit.latency | 2026-12-01T10:00:01Z |" in evidence
    # A number listed for the model and behind a capability is one row that names what it backs.
    assert f"| {VIT} | the model | latency_p50_ms |" in evidence
    assert f"| {VIT} | Batch inference | batch10_throughput_ratio |" in evidence


def test_markdown_quality_duels_leaderboard_unavailable_notes(markdown: str, c: gw.Comparison) -> None:
    quality = section(markdown, "## Cross-model quality")
    assert ("| stable-diffusion-3.5-large | 2 / 3 (1, 0) | 50.0% [0.09, 0.91] | 100.0% [0.34, 1] | 0.35 | mechanism "
            "check | vit-base-patch16-224 (cccccccccccc), dddddddddddd, 2026-12-01T10:00:05+00:00 |") in quality
    assert ("| volcano | a photo of a volcano | 1234 | alp | 0.08 | miss | hit | 32×24 | judge vit-base-patch16-224 "
            "(cccccccccccc), generator dddddddddddd, 2026-12-01T10:00:05+00:00 |") in quality
    duels = section(markdown, "## Head-to-head")
    assert f"| 0.62 | 0.71 | {TURBO} wins | mechanism.t2i-imagenet-judge | #17 | judge vit-base-patch16-224" in duels
    assert "| tie | mechanism.t2i-imagenet-judge | #18 (already recorded) |" in duels
    board = section(markdown, "## Mechanism duels (mechanism.t2i-imagenet-judge): not a ranking")
    assert f"| {TURBO} | 1,120 | 1,010 – 1,240 | 4 | 3–1–0 |" in board and "count in no score" in board
    assert "No real duels in this comparison, so no real leaderboard is shown." in section(markdown, "## Leaderboard")
    assert "| vit.precision | UNAVAILABLE | UNAVAILABLE | vit-int8: failed to connect to all addresses |" in \
        section(markdown, "## Unavailable")
    notes = section(markdown, "## Notes")
    assert render.MECHANISM_NOTE in notes and c.notes[0] in notes


def test_markdown_scores_show_missing_not_zero(markdown: str) -> None:
    scores = section(markdown, "## Scores")
    line = row(scores, "| Stable Diffusion 3.5 Large | 51/100 |")
    assert "| missing |" in line and "| 0 " not in line
    assert "**stable-diffusion-3.5-large · quality** (missing): geneval_overall not found" in scores


def test_markdown_escapes_hostile_text(markdown: str) -> None:
    assert "<script>" not in markdown
    line = row(markdown, "| Fine-tuning / transfer learning |")
    assert "&lt;script&gt;alert('pwned')&lt;/script&gt; \\| breaks tables" in line
    assert columns(line) == 5


def test_markdown_of_a_comparison_with_the_ranker_down() -> None:
    bare = gw.Comparison(model_ids=[VIT, SD], unavailable=[gw.Unavailable(
        component="ranker", code="UNAVAILABLE", reason="UNAVAILABLE", message="failed to connect")])
    text = render.render_markdown(bare)
    for needle in ("No verdict: the scores were unavailable", "No catalog facts", "No scores: the ranker was",
                   "No live measurements", "no real leaderboard is shown", "| ranker | UNAVAILABLE |"):
        assert needle in text
    assert render.MECHANISM_NOTE not in text


# -- HTML ---------------------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Collects (tag, attributes) for every start tag."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))


def tags(page: str) -> list[tuple[str, dict[str, str]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def test_html_is_self_contained(page: str) -> None:
    found = tags(page)
    assert not [t for t, _ in found if t == "script"]
    for tag, attrs in found:
        if tag in ("script", "link", "img", "iframe", "source", "video", "audio", "embed", "object"):
            for name in ("src", "href", "data"):
                value = attrs.get(name, "").strip().lower()
                assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert "@import" not in page and "url(http" not in page
    citations = [a["href"] for t, a in found if t == "a"]
    assert README in citations and TIMM in citations
    policies = [a["content"] for t, a in found if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert policies == [render.CSP]


def test_html_embeds_the_generated_images(page: str, c: gw.Comparison) -> None:
    images = [a["src"] for t, a in tags(page) if t == "img"]
    assert len(images) == len(c.judgements)
    for src, judgement in zip(images, c.judgements, strict=True):
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.removeprefix("data:image/png;base64,")) == judgement.image_png
        assert Image.open(io.BytesIO(judgement.image_png)).size == (32, 24)


def test_html_has_both_charts_inline(page: str) -> None:
    assert page.count("<svg") == 2 and page.count("</svg>") == 2
    assert "<?xml" not in page and "<!DOCTYPE svg" not in page
    subscores = page[page.index('id="subscores-chart"'):]
    assert subscores.index("<svg") < subscores.index("</figure>")
    board = page[page.index('id="mechanism-chart"'):]  # the duels were mechanism checks: their own section
    assert board.index("<svg") < board.index("</figure>") and TURBO in board[: board.index("</svg>")]
    # Two inlined matplotlib figures must not share element ids, and every url(#…) resolves in the page.
    ids = [a["id"] for _, a in tags(page) if "id" in a]
    assert len(ids) == len(set(ids))
    assert set(re.findall(r"url\(#([^)]+)\)", page)) <= set(ids)


def test_html_has_the_same_content_with_provenance(page: str, c: gw.Comparison) -> None:
    for heading in ("Headline", "Verdict", "Feature table", "Scores", "Capabilities and evidence",
                    "Evidence: live measurements", "Cross-model quality", "Head-to-head", "Leaderboard", "Unavailable",
                    "Notes"):
        assert f"<h2>{heading}" in page
    for fact in c.facts:
        for cell in fact.cells:
            assert f'{cell.value}<span class="prov">{cell.provenance}</span>' in page
    for r in render.evidence_rows(c):
        m = r.measurement
        assert f"<code>{m.probe}</code></td><td>{m.measured_at}</td><td>{m.weights.service} " \
               f"<code>{m.weights.digest[:render.DIGEST_CHARS]}… ({m.weights.kind})</code>" in page
    for word in ("verified live", "supported", "contradicted", "claimed", "unavailable"):
        assert f"{word}</span>" in page
    assert "81.786 percent" in page and "84 percent" in page
    assert '<div class="rank">59/100</div>' in page and "confidence 75%" in page


def test_html_escapes_hostile_text(c: gw.Comparison) -> None:
    hostile = gw.Comparison()
    hostile.CopyFrom(c)
    hostile.notes.append('"><img src=x onerror=alert(1)>')
    hostile.facts[0].cells[0].provenance = "<script>alert(2)</script>"
    hostile.unavailable[0].message = "</td><script>alert(3)</script>"
    page = render.render_html(hostile)
    assert "<script" not in page
    assert "onerror=alert(1)>" not in page.replace("&gt;", ">").split("&lt;img", 1)[0]
    assert not [a for t, a in tags(page) if t == "img" and a.get("src") == "x"]
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in page


# -- charts -------------------------------------------------------------------------------------------


def test_missing_subscores_are_drawn_as_missing_never_zero(c: gw.Comparison) -> None:
    values = charts.subscore_values(c.scores)
    assert values[VIT]["match_graph"] is None and values[SD]["quality"] is None
    assert values[VIT]["quality"] == 63.5
    svg = charts.subscores_svg(c.scores)
    assert svg.startswith("<svg") and svg.count(f">{charts.MISSING_LABEL}<") == 2
    # A model with no signal at all is still in the legend, and every bar is "missing".
    nothing = rk.ScoreResponse(scores=[rk.ModelScore(model_id="nothing-known", sub_scores=[
        sub(d, 0.0, 0.25, "not found", missing=True) for d in charts.DIMENSIONS])])
    svg = charts.subscores_svg(nothing)
    assert svg.count(f">{charts.MISSING_LABEL}<") == 4 and ">nothing-known<" in svg


def test_charts_handle_empty_inputs() -> None:
    assert "No scores available" in charts.subscores_svg(rk.ScoreResponse())
    empty = charts.leaderboard_svg(rk.GetLeaderboardResponse(task="t2i-imagenet-judge"))
    assert empty.startswith("<svg") and "No matches recorded yet (t2i-imagenet-judge)" in empty
    assert "No matches recorded yet (all tasks)" in charts.leaderboard_svg(rk.GetLeaderboardResponse())


def test_leaderboard_chart_draws_each_interval() -> None:
    svg = charts.leaderboard_svg(leaderboard())
    assert f">#1 {TURBO}<" in svg and f">#1 {SD}<" in svg
    assert "1120 [1010, 1240]<" in svg and "1000 [905, 1101]<" in svg


def test_what_a_mark_does_not_prove_is_shown_under_it(markdown: str, page: str) -> None:
    said = "does not prove:* vit.batching: anything about the device it runs on (reported only)"
    assert said in markdown
    assert "does not prove: vit.batching: anything about the device it runs on (reported only)" in page
