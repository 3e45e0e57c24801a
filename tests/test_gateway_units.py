"""Units of the gateway's evidence: Wilson intervals, the default image count, the tie margin, the
conditions a measurement must meet to decide a claim, and explanations that are never cut."""

from __future__ import annotations

import pytest
from versus.common.v1 import common_pb2
from versus.gateway.v1 import gateway_pb2 as gw
from versus.ranker.v1 import ranker_pb2 as rk

from services.common.stats import wilson
from services.gateway.compare import checks, duels, evidence, facts, verdicts
from services.gateway.compare.probes import ProbeResult
from services.gateway.stats import images_to_verify


def test_wilson_intervals_at_the_counts_a_comparison_affords() -> None:
    assert wilson(3, 3)[0] == pytest.approx(0.4385, abs=1e-4)  # why 3 images can never verify at 0.5
    assert wilson(4, 4)[0] > 0.5 > wilson(3, 3)[0]
    low, high = wilson(1, 2)
    assert 0 < low < 0.5 < high < 1 and wilson(0, 0) == (0.0, 1.0)


def test_the_default_image_count_lets_a_perfect_generator_verify() -> None:
    n = images_to_verify(checks.ADHERENCE_BAR)
    assert n == 4
    perfect = checks.BY_ID["quality"].judge({"images": n, "top5_hits": n, "top1_hits": n})
    assert perfect.mark == verdicts.VERIFIED
    short = checks.BY_ID["quality"].judge({"images": 3, "top5_hits": 3, "top1_hits": 3})
    assert short.mark == verdicts.CONTRADICTED and "0.44" in short.why


def test_the_tie_margin_turns_a_near_tie_into_half_a_win() -> None:
    # 0.081 vs 0.08: |ln p_a - ln p_b| = 0.012 < 0.05, within the judge's numeric noise
    assert duels.outcome(0.08, 0.081, 0.05) == rk.OUTCOME_TIE
    assert duels.outcome(0.08, 0.081, 0.0) == rk.OUTCOME_B_WINS  # without the margin noise decides
    assert duels.outcome(0.08, 0.12, 0.05) == rk.OUTCOME_B_WINS  # a real difference still wins


def _batch_result(device: str, kind: str = "random") -> ProbeResult:
    w = gw.ServedWeights(service="vit", device=device, precision="fp32", kind=kind)
    m = gw.Measurement(name="batch10_throughput_ratio", value=9.5, unit="x", probe="vit.batching", weights=w)
    return ProbeResult("vit.batching", "10 images ...", [m], {"misplaced": [], "images": 10, "batch": 10,
                                                               "distinguishable": True, "resolution": 224}, w,
                       "2026-12-01T10:00:00+00:00")


def _entry() -> rk.CatalogEntry:
    cap = common_pb2.Capability(id="batch-inference", title="Batch inference")
    return rk.CatalogEntry(id="vit", capabilities=[cap],
                           claims=[rk.Claim(capability_id="batch-inference", text="10x batch size = ~9x throughput",
                                            metric="batch10_throughput_ratio", value=9.0, unit="x",
                                            conditions=rk.ClaimConditions(device_class="gpu", text="on GPU"))])


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_a_reported_device_never_lets_a_measurement_decide_a_claim(device: str) -> None:
    """The device is the service's word: a GPU claim is never decided on it, whatever the service says."""
    ev = evidence.ModelEvidence(_entry(), True, [(checks.BY_ID["vit.batching"], _batch_result(device))],
                                described="a ViT")
    claim_row = next(r for r in evidence.capability_evidence(ev, 1.0) if r.claim.startswith("10x"))
    assert claim_row.check == "vit.batching" and claim_row.conditions.device_class == "gpu"
    assert claim_row.mark == gw.EVIDENCE_MARK_CLAIMED and claim_row.measurements
    assert "a reported condition never decides a claim" in claim_row.detail


def test_a_measurement_decides_a_claim_made_under_its_conditions() -> None:
    ev = evidence.ModelEvidence(_entry(), True, [(checks.BY_ID["vit.batching"], _batch_result("cpu"))],
                                described="a ViT")
    ev.entry.claims[0].conditions.device_class = ""  # a claim about any device
    claim_row = next(r for r in evidence.capability_evidence(ev, 1.0) if r.claim.startswith("10x"))
    assert claim_row.mark == gw.EVIDENCE_MARK_VERIFIED_LIVE, claim_row


def test_weights_dependent_claims_need_real_or_attested_weights() -> None:
    r = _batch_result("cuda:0", "trained-here")
    cond = rk.ClaimConditions(weights_dependent=True)
    assert "trained-here weights" in evidence.mismatch(cond, r, False)
    for kind in ("real", "operator-attested"):
        r.weights.kind = kind
        assert evidence.mismatch(cond, r, False) == ""


def test_explanations_are_never_cut() -> None:
    long = "floor " + "x" * 600 + " ceiling cited at the end"
    score = rk.ModelScore(model_id="m", sub_scores=[rk.SubScore(dimension="quality", score=50, explanation=long)])
    assert facts._sub(score, "quality")[1].endswith("ceiling cited at the end")
    from services.gateway.pages import render

    c = gw.Comparison(model_ids=["m"], models=[gw.ModelReport(entry=rk.CatalogEntry(id="m"), score=score)],
                      scores=rk.ScoreResponse(scores=[score]))
    assert "ceiling cited at the end" in render.render_markdown(c)
    assert "ceiling cited at the end" in render.render_html(c)


def test_the_parameters_cell_names_its_source() -> None:
    report = gw.ModelReport(entry=rk.CatalogEntry(id="m", parameters=86_000_000,
                                                  parameters_source="model card, 'Model size' table"))
    assert facts._parameters(report) == ("86.0 M", "catalog: model card, 'Model size' table")


def test_gateway_md_shows_the_check_table_as_declared() -> None:
    """docs/GATEWAY.md holds checks.table_markdown() verbatim: what each check proves and does not prove."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "GATEWAY.md").read_text()
    assert checks.table_markdown() in doc
    assert all(c.misses and c.fails for c in checks.CHECKS)


def test_the_t5_check_is_not_excused_by_the_service_word() -> None:
    judge = checks.BY_ID["sd35.t5"].judge
    assert judge({"differ": True, "t5_reported": "t5"}).mark == verdicts.VERIFIED
    assert judge({"differ": False, "t5_reported": "t5"}).mark == verdicts.CONTRADICTED
    assert judge({"differ": False, "t5_reported": "dropped"}).mark == verdicts.CONTRADICTED  # its word excuses nothing


def test_the_steps_check_needs_the_catalog_figure_and_the_pixels() -> None:
    judge = checks.BY_ID["sd35.steps"].judge
    assert judge({"expected": None}).mark == verdicts.UNDECIDED
    assert judge({"expected": 4, "observed": 4, "equal": {"3": False, "4": True, "5": False}}).mark \
        == verdicts.VERIFIED
    assert judge({"expected": 4, "observed": None, "equal": {"3": False, "4": False, "5": False}}).mark \
        == verdicts.CONTRADICTED


def test_the_transfer_textures_are_invisible_to_mean_colour() -> None:
    """The stripes of the transfer check: patch-aligned (one period per 16 px patch), both classes in the same
    colour pairs, so the nearest-mean-pixel baseline sits at chance; the split is fixed by the recorded seed."""
    from services.gateway.compare import vit_transfer as vt

    data = vt.dataset()
    assert [lab for lab, _ in data] == [lab for lab, _ in vt.dataset()]  # seeded: the same split every time
    n_train = 2 * vt.TRAIN_PER_CLASS
    train, held = data[:n_train], data[n_train:]
    assert len(held) >= 32 and {lab for lab, _ in held} == set(vt.CLASSES)
    _, pixels = held[0]
    assert pixels.shape == (224, 224, 3) and (pixels[:16] == pixels[16:32]).all()  # period 16, patch-aligned
    base = vt.nearest_mean_pixel(train, [p for _, p in held])
    assert sum(a == lab for a, (lab, _) in zip(base, held, strict=True)) <= 0.6 * len(held)  # chance
    # orientation is a linear function of the pixels, so a probe on informative vectors separates them
    import numpy as np

    def flat(items: list) -> np.ndarray:
        return np.asarray([p.reshape(-1) / 255.0 for _, p in items])

    probe = vt.linear_probe(flat(train), [lab for lab, _ in train], flat(held))
    assert all(a == lab for a, (lab, _) in zip(probe, held, strict=True))


def test_without_a_catalog_figure_a_vit_check_is_undecided_never_verified_on_the_service_word() -> None:
    from services.gateway.compare import vit_checks

    seen = {"layers": 12, "width": 768, "labels": 1000, "labels_sha256": "", "reported_layers": 12,
            "reported_width": 768, "layer_beyond_refused": True}
    for figures in ({}, {"layers": 12, "width": 768, "labels": 0, "source": "s"}):
        v = vit_checks.ARCHITECTURE.judge(seen | {"expected": figures})
        assert v.mark == verdicts.UNDECIDED and verdicts.NO_FIGURE in v.why
    tiny = vit_checks.ARCHITECTURE.judge(seen | {"layers": 2, "expected": {"layers": 12, "width": 768, "labels": 1000,
                                                                          "source": "s"}})
    assert tiny.mark == verdicts.CONTRADICTED and "layers 2, the catalog's checkpoint has 12" in tiny.why
    lying = vit_checks.ARCHITECTURE.judge(seen | {"reported_width": 64, "expected": {}})  # reported ≠ observed
    assert lying.mark == verdicts.CONTRADICTED and "GetModelInfo reports 64" in lying.why
    d = {"labels": 10, "distinct": 10, "asked": 10, "reported": 10, "expected": 0, "labels_sha256": "x",
         "expected_sha256": "", "source": "", "sum": 1.0, "top1": 0, "argmax": 0, "sorted": True, "differs": True}
    assert vit_checks.DISTRIBUTION.judge(d).mark == verdicts.UNDECIDED  # 10 labels, and no figure to say otherwise
    assert vit_checks.DISTRIBUTION.judge(d | {"expected": 1000, "source": "s"}).mark == verdicts.CONTRADICTED
