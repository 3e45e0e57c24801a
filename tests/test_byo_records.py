"""Bring-your-own-model records, the pure parts: duplicate images counted once, the seeded label-stratified
order of a partial run, outcome keys that hold the task, the set's digest and the identities (never the pair's
order), what a deployment's identity is made of, 0 scored images undecided, and Holm on the page's verdicts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from test_byo_units import png
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from services.common.errors import ConfigError
from services.gateway.byo.evalrun import Run, paired
from services.gateway.byo.evalset import load_eval_set, stratified_order
from services.gateway.byo.record import Player, outcome_key, outcomes
from services.gateway.byo.report import deployment_eval, paired_test, served_identity
from services.gateway.deployments import ServedIdentity, match_labels, parse_deployment
from services.gateway.oip_client import Endpoint

LABELS = ["cat", "dog", "okapi"]


def zoo(root: Path, sizes: dict[str, int]) -> Path:
    """``sizes[label]`` distinct images per label."""
    for j, (label, n) in enumerate(sizes.items()):
        for k in range(n):
            png(root / label / f"{k:03d}.png", k % 256, size=8 + j + 8 * (k // 256))
    return root


def test_a_duplicate_image_counts_once_and_the_report_says_so(tmp_path: Path) -> None:
    root = zoo(tmp_path / "set", {"cat": 3, "dog": 3})
    (root / "dog" / "copy.png").write_bytes((root / "cat" / "000.png").read_bytes())  # same bytes, another label
    (root / "cat" / "again.png").write_bytes((root / "cat" / "001.png").read_bytes())
    s = load_eval_set("zoo", root)
    assert s.size == 6 and s.skipped == {"duplicate": 2}
    assert len({i.sha256 for i in s.images}) == s.size
    assert "2 duplicate skipped" in s.describe()
    assert s.digest == load_eval_set("zoo", zoo(tmp_path / "clean", {"cat": 3, "dog": 3})).digest


def test_a_partial_run_measures_a_seeded_label_stratified_sample(tmp_path: Path) -> None:
    s = load_eval_set("zoo", zoo(tmp_path / "set", {"cat": 30, "dog": 20, "okapi": 10}))
    order = stratified_order(s.images, 7)
    assert sorted(i.path for i in order) == [i.path for i in s.images]  # every image once
    assert order == stratified_order(s.images, 7) and order != stratified_order(s.images, 8)
    for n in (6, 12, 30):  # any prefix holds the set's proportions (3:2:1), within one image per label
        counts = Counter(i.label for i in order[:n])
        for label, share in (("cat", 0.5), ("dog", 1 / 3), ("okapi", 1 / 6)):
            assert abs(counts[label] - share * n) <= 1, (n, counts)
    first_cats = [i.path for i in order if i.label == "cat"][:10]
    assert first_cats != sorted(first_cats)  # random within a label, not path order


def identity(**kw) -> ServedIdentity:
    return ServedIdentity(**{"registered": "x=127.0.0.1:8001/digits", "platform": "onnxruntime", **kw})


def test_outcome_keys_hold_task_set_image_and_identities_in_either_order() -> None:
    x, y = identity(), identity(registered="y=127.0.0.1:8002/digits")
    key = outcome_key("eval.d.0123", "a" * 64, "b" * 64, x, y)
    assert key == outcome_key("eval.d.0123", "a" * 64, "b" * 64, y, x)  # [X, Y] then [Y, X]: the same outcome
    others = {outcome_key("eval.d.4567", "a" * 64, "b" * 64, x, y),
              outcome_key("eval.d.0123", "c" * 64, "b" * 64, x, y),
              outcome_key("eval.d.0123", "a" * 64, "d" * 64, x, y),
              outcome_key("eval.d.0123", "a" * 64, "b" * 64, identity(weights_digests=("f" * 64,)), y)}
    assert key not in others and len(others) == 4


def test_a_reversed_pair_writes_the_very_same_matches(tmp_path: Path) -> None:
    s = load_eval_set("zoo", zoo(tmp_path / "set", {"cat": 4, "dog": 4}))
    match = match_labels(s.labels, LABELS, {})
    right = Run("x", "t", top={i.path: [LABELS.index(i.label)] for i in s.images})
    cats = Run("y", "t", top={i.path: [0] for i in s.images})
    x = Player(right, match, LABELS, identity(), "x")
    y = Player(cats, match, LABELS, identity(registered="y=127.0.0.1:8002/digits"), "y")
    forward, backward = list(outcomes("eval.zoo.1", s, x, y)), list(outcomes("eval.zoo.1", s, y, x))
    assert forward == backward and len(forward) == 8
    assert Counter(o[3] for o in forward) == {ranker_pb2.OUTCOME_TIE: 4, ranker_pb2.OUTCOME_A_WINS: 4}
    assert {o[1] for o in forward} == {"x"}  # model_a: the identity that sorts first


def test_identity_holds_what_the_endpoint_serves() -> None:
    spec = parse_deployment("triton-digits=127.0.0.1:8001,model=digits")
    endpoint = Endpoint("images", "BYTES", "logits", 3, LABELS, platform="onnxruntime_onnx", versions=["1", "2"])
    run = Run("triton-digits", "t", weights_digests={"e" * 64})
    served = served_identity(spec, endpoint, run)
    assert served.versions == ("1", "2") and served.platform == "onnxruntime_onnx"
    assert f"weights_digest(reported)={'e' * 64}" in served.text() and "fingerprint=" in served.text()
    swapped = served_identity(spec, endpoint, Run("triton-digits", "t", weights_digests={"0" * 64}))
    assert swapped.hash != served.hash
    assert swapped.changes(served) == [f"weights digest (reported) {'e' * 24} → {'0' * 24}"]
    bumped = served_identity(spec, Endpoint("images", "BYTES", "logits", 3, LABELS, platform="onnxruntime_onnx",
                                            versions=["3"]), run)
    assert bumped.hash != served.hash and bumped.changes(served)[0].startswith("versions 1,2 → 3")
    long = identity(versions=tuple(str(k) * 40 for k in range(40)))
    assert len(long.text()) <= 1024 and long.text().endswith(long.text()[-64:]) and long.hash != identity().hash
    with pytest.raises(ConfigError, match="changed identity"):
        parse_deployment(f"triton-digits.{served.hash}=127.0.0.1:8001,model=digits")


def test_zero_scored_images_is_undecided_whatever_the_state(tmp_path: Path) -> None:
    s = load_eval_set("zoo", zoo(tmp_path / "set", {"cat": 2, "dog": 2}))
    spec = parse_deployment("other=127.0.0.1:8001,model=m")
    endpoint = Endpoint("images", "BYTES", "logits", 2, ["apple", "pear"])
    match = match_labels(s.labels, endpoint.labels, {})  # none of the set's labels: nothing can be scored
    for state in ("complete", "partial"):
        run = Run("other", "t", state=state, top={i.path: [0] for i in s.images})
        row = deployment_eval(spec, endpoint, run, s, match, served_identity(spec, endpoint, run))
        assert row.scored == 0 and row.mark == gateway_pb2.EVIDENCE_MARK_UNSPECIFIED, state
        assert row.reason.startswith("0 images scored (4 answered, 4 with a label it cannot output)")
    good = Run("other", "t", top={i.path: [0] for i in s.images})
    row = deployment_eval(spec, endpoint, good, s, match_labels(s.labels, ["cat", "dog"], {}),
                          served_identity(spec, endpoint, good))
    assert row.scored == 4 and row.mark == gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE


def test_holm_decides_significance_when_a_run_tests_several_pairs(tmp_path: Path) -> None:
    s = load_eval_set("zoo", zoo(tmp_path / "set", {"cat": 6, "dog": 6}))
    match = match_labels(s.labels, LABELS, {})
    right = Run("a", "t", top={i.path: [LABELS.index(i.label)] for i in s.images})
    cats = Run("b", "t", top={i.path: [0] for i in s.images})
    table = paired(right, cats, s, match, match, LABELS, LABELS)
    assert (table.only_a, table.only_b) == (6, 0) and table.p_value == pytest.approx(0.03125)
    alone = paired_test("a", "b", table, s, table.p_value, 1)
    assert alone.significant and "Holm" not in alone.verdict and alone.p_value_adjusted == alone.p_value
    corrected = paired_test("a", "b", table, s, 3 * table.p_value, 3)
    assert not corrected.significant and corrected.p_value == pytest.approx(0.03125)
    assert "Holm-adjusted over 3 pairs p = 0.094" in corrected.verdict
    empty = paired(Run("a", "t"), cats, s, match, match, LABELS, LABELS)
    assert paired_test("a", "b", empty, s, 1.0, 1).verdict.startswith("undecided")


def test_the_cli_sends_the_sample_seed_back_only_when_given(capsys: pytest.CaptureFixture[str]) -> None:
    from versus_cli.cli import build_parser, eval_fields

    parser = build_parser()
    given = eval_fields(parser.parse_args(["compare", "--eval-set", "d", "--sample-seed", "0", "a", "b"]),
                        gateway_pb2.CompareRequest())
    assert given.HasField("eval_sample_seed") and given.eval_sample_seed == 0 and given.eval_set == "d"
    drawn = eval_fields(parser.parse_args(["compare", "--eval-set", "d", "a", "b"]), gateway_pb2.CompareRequest())
    assert not drawn.HasField("eval_sample_seed")
    with pytest.raises(SystemExit):
        parser.parse_args(["compare", "--sample-seed", "-1", "a", "b"])
    assert "a seed is 0..2**64-1" in capsys.readouterr().err
