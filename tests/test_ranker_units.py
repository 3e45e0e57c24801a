"""Ranker maths and data, no server: Bradley-Terry, scoring, the catalog schema, the stores."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from services.ranker import bt
from services.ranker.catalog import Reference, Task, TaskScale, json_schema, load_catalog, load_tasks, parse_entry
from services.ranker.errors import CatalogError, IdempotencyConflict
from services.ranker.scoring import DEFAULT_WEIGHTS, GraphStats, graph_stats, parse_weights, score_report
from services.ranker.store import Match, MatchTable, open_store


def synthetic(strengths: np.ndarray, n: int, seed: int, tie_rate: float = 0.0) -> tuple[np.ndarray, ...]:
    """Matches drawn from the Bradley-Terry model with the given natural-log strengths."""
    rng = np.random.default_rng(seed)
    k = len(strengths)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    p = 1.0 / (1.0 + np.exp(strengths[b] - strengths[a]))
    outcome = np.where(rng.random(n) < p, 1, 2)
    if tie_rate:
        outcome = np.where(rng.random(n) < tie_rate, 3, outcome)
    return a, b, outcome


# -- Bradley-Terry --------------------------------------------------------------------------------
def test_recovers_true_order_and_gaps_within_intervals() -> None:
    strengths = np.array([0.0, 0.4, -0.3, 1.2, -1.0, 0.8, 0.2, -0.6])
    a, b, o = synthetic(strengths, 20_000, seed=7)
    r = bt.bootstrap(a, b, o, len(strengths), rounds=400, seed=1, anchor=0)
    true = bt.to_ratings(strengths, 0)
    assert list(np.argsort(-r.rating)) == list(np.argsort(-true))
    assert np.all((true >= r.ci_low) & (true <= r.ci_high)), (true, r.ci_low, r.ci_high)
    assert r.rating[0] == 1000.0 and r.ci_low[0] == r.ci_high[0] == 1000.0  # the anchor


def test_intervals_shrink_with_more_data() -> None:
    strengths = np.array([0.0, 0.5, 1.0])
    small = bt.bootstrap(*synthetic(strengths, 300, 3), 3, rounds=300, anchor=0)
    large = bt.bootstrap(*synthetic(strengths, 30_000, 3), 3, rounds=300, anchor=0)
    assert np.all((large.ci_high - large.ci_low)[1:] < (small.ci_high - small.ci_low)[1:] / 3)


def test_ties_count_half() -> None:
    # A beats B once and they tie once: W[A,B] = 1.5, W[B,A] = 0.5 → beta_A - beta_B = ln 3.
    w = bt.win_matrix(np.array([0, 0]), np.array([1, 1]), np.array([1, 3]), 2)
    assert w.tolist() == [[0, 1.5], [0.5, 0]]
    beta = bt.fit(w, ridge=1e-9)
    assert abs((beta[0] - beta[1]) - np.log(3)) < 1e-6
    only_ties = bt.fit(bt.win_matrix(np.array([0, 1]), np.array([1, 0]), np.array([3, 3]), 2))
    assert abs(only_ties[0] - only_ties[1]) < 1e-9


def test_unbeaten_model_gets_a_finite_rating() -> None:
    a, b, o = np.array([0] * 20), np.array([1] * 20), np.array([1] * 20)
    beta = bt.fit(bt.win_matrix(a, b, o, 2))
    assert np.all(np.isfinite(beta)) and beta[0] > beta[1]


def test_disconnected_groups_are_found_and_centred_separately() -> None:
    a = np.array([0, 0, 1, 2, 2, 3])
    b = np.array([1, 1, 0, 3, 3, 2])
    o = np.array([1, 1, 2, 1, 2, 2])
    w = bt.win_matrix(a, b, o, 4)
    assert bt.components(w) == [[0, 1], [2, 3]]
    beta = bt.fit(w)
    assert abs(beta[0] + beta[1]) < 1e-6 and abs(beta[2] + beta[3]) < 1e-6


def test_matches_chatbot_arena_logistic_regression() -> None:
    """The Chatbot Arena fit (lm-sys/FastChat rating_systems.py): features scaled by ln 10, ratings
    400 * coef + 1000. Same ridge on beta = ln(10) * coef means C = 1 / (ridge * ln(10)^2)."""
    from sklearn.linear_model import LogisticRegression

    strengths = np.random.default_rng(5).normal(0, 1, 12)
    a, b, o = synthetic(strengths, 5000, seed=5, tie_rate=0.1)
    ridge = 1e-3
    w = bt.win_matrix(a, b, o, 12)
    rows = [(i, j, w[i, j]) for i in range(12) for j in range(12) if w[i, j] > 0]
    x = np.zeros((len(rows), 12))
    for r, (i, j, _) in enumerate(rows):
        x[r, i], x[r, j] = np.log(10), -np.log(10)
    weights = np.array([c for _, _, c in rows])
    lr = LogisticRegression(fit_intercept=False, C=1 / (ridge * np.log(10) ** 2), tol=1e-12, max_iter=10_000)
    lr.fit(np.vstack([x, -x]), np.r_[np.ones(len(rows)), np.zeros(len(rows))],
           sample_weight=np.r_[weights, weights] / 2)
    arena = 400 * lr.coef_[0]
    arena += 1000 - arena.mean()
    ours = bt.to_ratings(bt.fit(w, ridge), None)
    assert np.abs(ours - arena).max() < 1e-3


@pytest.mark.parametrize("wins, losses, gap", [(10, 1, 400.0), (100, 10, 400.0), (1, 1, 0.0), (100, 1, 800.0),
                                               (1, 10, -400.0)])
def test_ratings_are_on_the_elo_scale(wins: int, losses: int, gap: float) -> None:
    """Observed odds of 10:1 between two models put them 400 points apart (1000 + 400 log10 odds)."""
    a = np.zeros(wins + losses, dtype=int)
    o = np.r_[np.ones(wins, dtype=int), np.full(losses, 2)]
    r = bt.bootstrap(a, np.ones_like(a), o, 2, rounds=0, ridge=1e-9, anchor=1)
    assert r.rating[1] == 1000.0
    assert abs((r.rating[0] - r.rating[1]) - gap) < 0.01, r.rating


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    a, b, o = synthetic(np.array([0.0, 0.3, 0.6]), 2000, 1)
    r1 = bt.bootstrap(a, b, o, 3, rounds=100, seed=9)
    r2 = bt.bootstrap(a, b, o, 3, rounds=100, seed=9)
    assert np.array_equal(r1.ci_low, r2.ci_low) and np.array_equal(r1.rating, r2.rating)


def test_overlapping_intervals_share_a_rank() -> None:
    low, high = np.array([1050.0, 1040.0, 880.0]), np.array([1150.0, 1140.0, 920.0])
    assert bt.ranks(low, high).tolist() == [1, 1, 3]


# -- scoring ------------------------------------------------------------------------------------------
def _entry(model_id: str, signals: list[dict]) -> object:
    return parse_entry(f"{model_id}.json", {
        "id": model_id, "display_name": model_id.upper(), "checkpoint": model_id, "type": "t", "family": "f",
        "parameters": 1, "parameters_source": "test", "published_files_source": "not found: a test entry",
        "license": {"id": "not-found", "commercial_use": "not-found"},
        "pricing": {"kind": "not-found"}, "capabilities": [{"id": "c", "title": "C", "description": "d"}],
        "signals": signals})


def _sig(dimension: str, value: float, max_: float = 100.0) -> dict:
    return {"dimension": dimension, "name": f"{dimension}_metric", "value": value, "unit": "u",
            "source": "https://example.org/paper", "locator": "Table 1", "as_of": "2026-01-01", "measured": True,
            "scale": {"kind": "linear", "min": 0, "max": max_}} | ({"protocol": "p"} if dimension == "quality" else {})


def _tasks() -> dict[str, TaskScale]:
    """Task 't': quality_metric placed between a floor of 0 and a ceiling of 100."""
    floor, ceiling = _entry("lo", [_sig("quality", 0)]), _entry("hi", [_sig("quality", 100)])
    task = Task(id="t", primary_metric="quality_metric", unit="u", description="d", protocol="p", floor_model="lo",
                ceiling_model="hi")
    return {"t": TaskScale(task, Reference("lo", floor.signals[0]), Reference("hi", ceiling.signals[0]))}


def test_verdict_in_the_seed_form() -> None:
    a = _entry("a", [_sig("adoption", 40), _sig("quality", 95), _sig("ecosystem", 40)])
    b = _entry("b", [_sig("adoption", 60), _sig("quality", 50), _sig("ecosystem", 60)])
    report = score_report([a, b], DEFAULT_WEIGHTS, GraphStats({}, {}, 0, 0), {}, _tasks())
    assert report.verdict.startswith("A scores higher at")
    assert "B leads on adoption and ecosystem, while A is stronger on quality." in report.verdict
    assert report.leaders == {"adoption": "b", "quality": "a", "ecosystem": "b"}


def test_missing_signals_are_shown_and_lower_confidence_not_the_score() -> None:
    full = _entry("full", [_sig("adoption", 50), _sig("quality", 50), _sig("ecosystem", 50)])
    partial = _entry("partial", [_sig("adoption", 50)])
    report = score_report([full, partial], DEFAULT_WEIGHTS, GraphStats({}, {}, 0, 0), {}, _tasks())
    by_id = {s.model_id: s for s in report.scores}
    assert by_id["partial"].composite == by_id["full"].composite == 50.0
    assert by_id["partial"].confidence < by_id["full"].confidence
    quality = by_id["partial"].sub("quality")
    assert quality.missing and "no sourced quality_metric" in quality.explanation
    assert "PARTIAL has no quality, ecosystem and match graph data" in report.verdict


def test_scores_are_deterministic_and_explain_inputs() -> None:
    catalog = load_catalog()
    entries = [catalog["vit-base-patch16-224"], catalog["stable-diffusion-3.5-large"]]
    table = MatchTable(["vit-base-patch16-224"] * 3, ["stable-diffusion-3.5-large"] * 3, np.array([1, 2, 3]))
    stats = graph_stats(table)
    tasks = load_tasks("", catalog)
    r1 = score_report(entries, DEFAULT_WEIGHTS, stats, {}, tasks)
    r2 = score_report(entries, DEFAULT_WEIGHTS, graph_stats(table), {}, tasks)
    assert r1 == r2
    for s in r1.scores:
        assert 0 <= s.composite <= 100
        assert "Bradley-Terry over 3 matches" in s.sub("match_graph").explanation
        for sub in s.sub_scores:
            assert sub.missing or sub.explanation


def test_weights_parse_and_reject() -> None:
    assert parse_weights("quality=1")["quality"] == 1.0
    for bad in ("speed=1", "quality=-1", "adoption=0,quality=0,ecosystem=0,match_graph=0"):
        with pytest.raises(ValueError):
            parse_weights(bad)


# -- catalog ------------------------------------------------------------------------------------------
def test_shipped_catalog_has_the_seed_models() -> None:
    catalog = load_catalog()
    assert len(catalog["vit-base-patch16-224"].capabilities) == 6
    assert len(catalog["stable-diffusion-3.5-large"].capabilities) == 14
    assert {"stable-diffusion-3.5-large-turbo", "stable-diffusion-3.5-medium"} <= set(catalog)
    for entry in catalog.values():
        assert all(s.source and s.as_of for s in entry.signals)


_SEED_FILE = Path(__file__).parent.parent / "services/ranker/catalog/vit-base-patch16-224.json"


@pytest.mark.parametrize("mutate, fragment", [
    (lambda d: d.pop("license"), "field 'license' is required"),
    (lambda d: d.update(parameters="many"), "field 'parameters' input should be a valid integer"),
    (lambda d: d.update(parameters=0), "field 'parameters' input should be greater than 0"),
    (lambda d: d.update(id="Bad Id"), "field 'id' string should match pattern"),
    (lambda d: d.update(id="ok-id\n"), "field 'id' string should match pattern"),  # no trailing newline
    (lambda d: d.update(id="x" * 129), "field 'id' string should match pattern"),
    (lambda d: d.update(display_name="  "), "field 'display_name' string should match pattern"),
    (lambda d: d.update(colour="blue"), "field 'colour' is not a field of the catalog schema"),
    (lambda d: d["signals"][0].update(dimension="vibes"), "field 'signals[0].dimension' input should be"),
    (lambda d: d["signals"][0].update(as_of="yesterday"), "field 'signals[0].as_of' input should be a valid date"),
    (lambda d: d["signals"][0].update(source="see the model card"), "field 'signals[0].source' string should match"),
    (lambda d: d["signals"][0].update(source="https://www.promptlayer.com/models/x"),
     "field 'signals[0].source' is on the aggregator deny-list (promptlayer.com)"),
    (lambda d: d["signals"][0].update(source="https://api.unfragile.ai/x"), "deny-list (unfragile.ai)"),
    (lambda d: d["signals"][0].pop("locator"), "field 'signals[0].locator' is required"),
    (lambda d: d["signals"][1].pop("scale"), "field 'signals[1]' adoption and ecosystem signals need"),
    (lambda d: d["license"].pop("source"), "field 'license' a licence needs its source"),
    (lambda d: d["license"].update(commercial_use="maybe"), "field 'license.commercial_use' input should be"),
    (lambda d: d["not_found"].append({"dimension": "quality", "name": "imagenet1k_top1", "note": "x"}),
     "not_found lists signals that are present"),
    (lambda d: d["capabilities"][0]["claims"][0].pop("claimed_by"),
     "field 'capabilities[0].claims[0].claimed_by' is required"),
    (lambda d: d["signals"][0].update(value=True), "field 'signals[0].value' input should be a valid number"),
    (lambda d: d["signals"][0].update(value="12"), "field 'signals[0].value' input should be a valid number"),
    (lambda d: d["signals"][0].update(measured="no"), "field 'signals[0].measured' input should be a valid boolean"),
    (lambda d: d["signals"][0].pop("source"), "field 'signals[0].source' is required"),
    (lambda d: d["signals"][1]["scale"].update(kind="cubic"), "field 'signals[1].scale.kind' input should be"),
    (lambda d: d["signals"][1]["scale"].update(max=-1), "field 'signals[1].scale' max must be greater"),
    (lambda d: d["capabilities"].append(dict(d["capabilities"][0])), "field 'capabilities' has duplicate ids"),
    (lambda d: d.update(capabilities=[]), "field 'capabilities' tuple should have at least 1 item"),
    (lambda d: d["capabilities"][1].pop("title"), "field 'capabilities[1].title' is required"),
])
def test_bad_catalog_file_names_file_and_field(tmp_path: Path, mutate, fragment: str) -> None:
    doc = json.loads(_SEED_FILE.read_text())
    mutate(doc)
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    assert info.value.message.startswith("broken.json: ") and fragment in info.value.message, info.value.message


def test_catalog_file_that_is_not_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"id": ')
    with pytest.raises(CatalogError, match=r"^broken\.json: invalid JSON"):
        load_catalog(tmp_path)
    (tmp_path / "broken.json").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(CatalogError, match=r"^broken\.json: cannot be read"):
        load_catalog(tmp_path)


def test_catalog_reports_every_broken_field_at_once(tmp_path: Path) -> None:
    doc = json.loads(_SEED_FILE.read_text())
    doc.pop("license")
    doc["signals"][0]["as_of"] = "soon"
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    with pytest.raises(CatalogError) as info:
        load_catalog(tmp_path)
    assert "field 'license' is required" in info.value.message
    assert "field 'signals[0].as_of'" in info.value.message


def test_duplicate_ids_across_files_are_refused(tmp_path: Path) -> None:
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(_SEED_FILE.read_text())
    with pytest.raises(CatalogError, match="^b.json: field 'id' duplicates 'vit-base-patch16-224'"):
        load_catalog(tmp_path)


def test_committed_json_schema_is_current() -> None:
    committed = json.loads((Path(__file__).parent.parent / "docs/catalog.schema.json").read_text())
    assert committed == json_schema(), "regenerate: python -m services.ranker.catalog > docs/catalog.schema.json"


# -- stores (SQLite here; PostgreSQL in test_ranker_postgres.py) ---------------------------------------
@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path: Path):
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        s = open_store(url)
        s._execute("TRUNCATE matches")  # noqa: SLF001 - isolate tests sharing the server
    yield s
    s.close()


def test_store_records_idempotently(store) -> None:
    m = Match("a", "b", 1, "general", "ev", f"key-{uuid.uuid4()}")
    first = store.record(m)
    again = store.record(m)
    assert first[1] is False and again == (first[0], True)
    with pytest.raises(IdempotencyConflict):
        store.record(Match("a", "b", 2, "general", "ev", m.idempotency_key))
    store.record(Match("b", "c", 3, "other", "", f"key-{uuid.uuid4()}"))
    assert store.times_matched() == {"a": 1, "b": 2, "c": 1}
    general = store.table("general")
    assert (general.model_a, general.model_b, general.outcome.tolist()) == (["a"], ["b"], [1])
    assert len(store.table().outcome) == 2
    last = store.record(Match("a", "c", 1, "other", "", f"key-{uuid.uuid4()}"))[0]
    assert store.version() == (last, 3)
    assert not hasattr(store.table(), "last_id")  # the table is one query, no side lookups


def test_store_keeps_mechanism_tasks_apart(store) -> None:
    store.record(Match("a", "b", 1, "general", "", f"key-{uuid.uuid4()}"))
    for _ in range(3):
        store.record(Match("a", "c", 2, "mechanism.t2i-imagenet-judge", "", f"key-{uuid.uuid4()}"))
    store.record(Match("a", "c", 2, "mechanismless", "", f"key-{uuid.uuid4()}"))  # only the prefix "mechanism."
    assert store.times_matched() == {"a": 2, "b": 1, "c": 1}
    assert store.times_matched("mechanism.t2i-imagenet-judge") == {"a": 3, "c": 3}
    assert len(store.table().outcome) == 2 and len(store.table("mechanism.t2i-imagenet-judge").outcome) == 3


@pytest.mark.parametrize("mutate, fragment", [
    (lambda t: t["tasks"][0].update(floor_model="nope"), "tasks.json: field 'tasks[0].floor_model' names 'nope', "
                                                         "which is not in the catalog"),
    (lambda t: t["tasks"][0].update(ceiling_model="sdxl-1.0"), "names 'sdxl-1.0', a model of task 'text-to-image'"),
    (lambda t: t["tasks"][0].update(floor_model="clip-vit-base-patch16"), "which has no sourced imagenet1k_top1"),
    (lambda t: t["tasks"][0].update(floor_model="vit-large-patch16-224", ceiling_model="resnet-50"),
     "tasks.json: field 'tasks[0]' ceiling must be above floor"),
    (lambda t: t["tasks"][0].pop("primary_metric"), "tasks.json: field 'tasks[0].primary_metric' is required"),
])
def test_bad_tasks_file_names_the_field(tmp_path: Path, mutate, fragment: str) -> None:
    shipped = _SEED_FILE.parent
    for path in shipped.glob("*.json"):
        (tmp_path / path.name).write_text(path.read_text())
    tasks = json.loads((shipped / "tasks.json").read_text())
    mutate(tasks)
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    with pytest.raises(CatalogError) as info:
        load_tasks(tmp_path, load_catalog(tmp_path))
    assert fragment in info.value.message, info.value.message
    (tmp_path / "tasks.json").unlink()
    with pytest.raises(CatalogError, match="^tasks.json: missing"):
        load_tasks(tmp_path, load_catalog(tmp_path))
