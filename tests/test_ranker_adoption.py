"""Adoption read from the Hugging Face Hub API by the ranker (services/ranker/adoption.py), against a fake hub
on loopback: each figure with its URL and time, kept in the store, the last dated reading with its age when
the hub cannot be read, "not read (offline)" without one, and a deadline no comparison waits past."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_fixtures import FakeHub

from services.ranker.adoption import HubAdoption, HubReader, Reading, model_info_url
from services.ranker.catalog import load_catalog, load_tasks
from services.ranker.scoring import DEFAULT_WEIGHTS, GraphStats, score_report
from services.ranker.store import SqliteStore, open_store

VIT, LARGE = "vit-base-patch16-224", "stable-diffusion-3.5-large"
CATALOG = load_catalog()
TASKS = load_tasks("", CATALOG)
HUB = {CATALOG[VIT].hub_id: {"downloads": 3_402_117, "likes": 812},
       CATALOG[LARGE].hub_id: {"downloads": 402_911, "likes": 3_050}}


async def _db(fn, *args):
    return fn(*args)


def adoption_of(hub: HubAdoption, store: SqliteStore, *ids: str):
    return asyncio.run(hub.for_models([CATALOG[m] for m in ids], _db, store))


def api_calls(fake: FakeHub) -> list[str]:
    return [r for r in fake.requests if r.startswith("GET /api/models/") and "expand=" in r]


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(str(tmp_path / "r.db"))
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgres"])
def any_store(request, tmp_path: Path):
    if request.param == "sqlite":
        s = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    else:
        s = open_store(request.getfixturevalue("postgres_url"))
        s._execute("TRUNCATE adoption_readings")  # noqa: SLF001 - isolate tests sharing the server
    yield s
    s.close()


def test_the_store_keeps_the_latest_reading_of_each_figure(any_store) -> None:
    old = Reading(VIT, "hf_likes", 700, "https://huggingface.co/api/models/x?expand=likes", 1000.0)
    new = Reading(VIT, "hf_likes", 812, "https://huggingface.co/api/models/y?expand=likes", 2000.0)
    other = Reading(LARGE, "hf_downloads_30d", 5, "https://huggingface.co/api/models/z", 1500.0)
    any_store.record_readings([old, other])
    any_store.record_readings([new])
    assert any_store.adoption_readings([VIT]) == [new]
    assert any_store.adoption_readings([VIT, LARGE]) == [other, new]  # by model id, then figure
    assert any_store.adoption_readings([]) == [] and any_store.adoption_readings(["nope"]) == []


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_figures_are_read_with_their_url_and_time_and_kept(store: SqliteStore, online: None) -> None:
    with FakeHub(stats=HUB) as fake:
        hub = HubAdoption(HubReader(2.0, fake.endpoint), enabled=True, max_age_s=3600, retry_s=60)
        before = time.time()
        got = adoption_of(hub, store, VIT, LARGE)
        vit = {r.name: r for r in got[VIT].readings}
        assert (vit["hf_downloads_30d"].value, vit["hf_likes"].value) == (3_402_117, 812) and not got[VIT].status
        url = f"{fake.endpoint}/api/models/google/vit-base-patch16-224?expand=downloads&expand=likes"
        assert vit["hf_likes"].url == url == model_info_url(fake.endpoint, CATALOG[VIT].hub_id)
        assert f"GET {url.removeprefix(fake.endpoint)}" in fake.requests  # the URL recorded is the one read
        assert before <= vit["hf_likes"].read_at <= time.time()
        assert {(r.model_id, r.name) for r in store.adoption_readings([VIT, LARGE])} == {
            (m, n) for m in (VIT, LARGE) for n in ("hf_downloads_30d", "hf_likes")}
        asked = len(api_calls(fake))
        assert adoption_of(hub, store, VIT)[VIT] == got[VIT]  # fresh in the store: the hub is not asked again
        assert len(api_calls(fake)) == asked == 2
        hub.close()


def test_offline_shows_the_last_dated_reading_with_its_age(store: SqliteStore, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    url = model_info_url("https://huggingface.co", CATALOG[VIT].hub_id)
    store.record_readings([Reading(VIT, "hf_downloads_30d", 3_000_000, url, 1_764_000_000.0)])
    with FakeHub(stats=HUB) as fake:
        hub = HubAdoption(HubReader(2.0, fake.endpoint), enabled=True, max_age_s=3600, retry_s=60)
        got = adoption_of(hub, store, VIT, LARGE)
        assert not api_calls(fake)  # HF_HUB_OFFLINE: no request at all
    assert got[VIT].status == got[LARGE].status == "not read (offline): HF_HUB_OFFLINE is set"
    now = 1_764_000_000.0 + 3 * 86400
    report = score_report([CATALOG[VIT], CATALOG[LARGE]], DEFAULT_WEIGHTS, GraphStats({}, {}, 0, 0), {}, TASKS,
                          got, now)
    vit, large = (next(s for s in report.scores if s.model_id == m).sub("adoption") for m in (VIT, LARGE))
    assert not vit.missing and round(vit.score, 1) == round(100 * 6.477121 / 8, 1)  # log10(1 + 3e6) / log10(1 + 1e8)
    assert f"hf_downloads_30d = 3,000,000 downloads in the last 30 days (log10-scaled to 1e+08 → 81.0; read from " \
           f"the Hub API {url} at 2025-11-24T16:00:00Z, 3 d old)" in vit.explanation
    assert "not read again now (not read (offline): HF_HUB_OFFLINE is set)" in vit.explanation
    assert "hf_likes: not read (offline): HF_HUB_OFFLINE is set" in vit.explanation
    assert large.missing and large.explanation == (
        "hf_downloads_30d and hf_likes of stabilityai/stable-diffusion-3.5-large: not read (offline): "
        "HF_HUB_OFFLINE is set; no earlier reading (never a guess)")
    assert "adoption" not in report.shared_dimensions and "adoption" in report.verdict  # named as not compared


def test_reading_off_says_not_read_offline_and_asks_nothing(store: SqliteStore, online: None) -> None:
    with FakeHub(stats=HUB) as fake:
        hub = HubAdoption(HubReader(2.0, fake.endpoint), enabled=False, max_age_s=3600, retry_s=60)
        got = adoption_of(hub, store, VIT)
        assert not api_calls(fake) and not got[VIT].readings
    assert got[VIT].status.startswith("not read (offline): reading the hub is off")


def test_a_hanging_hub_never_holds_a_comparison(store: SqliteStore, online: None) -> None:
    with FakeHub(stats=HUB, stall_s=8.0) as fake:
        hub = HubAdoption(HubReader(0.3, fake.endpoint), enabled=True, max_age_s=3600, retry_s=60)
        started = time.monotonic()
        got = adoption_of(hub, store, VIT, LARGE)
        assert time.monotonic() - started < 2.5  # the deadline (0.3 s + 1 s), both models read at once
        assert "did not answer within" in got[VIT].status and not got[VIT].readings
        asked = len(api_calls(fake))
        again = adoption_of(hub, store, VIT)[VIT]
        assert len(api_calls(fake)) == asked and "not asked again for 60 s" in again.status
        hub.close()


def test_an_unreachable_or_failing_hub_is_said_so(store: SqliteStore, online: None) -> None:
    hub = HubAdoption(HubReader(1.0, "http://127.0.0.1:9"), enabled=True, max_age_s=3600, retry_s=60)
    status = adoption_of(hub, store, VIT)[VIT].status
    assert status.startswith("not read (offline): cannot reach http://127.0.0.1:9/api/models/google/vit-base")
    with FakeHub(stats={}) as fake:  # the hub knows no such repository
        hub = HubAdoption(HubReader(1.0, fake.endpoint), enabled=True, max_age_s=3600, retry_s=60)
        assert adoption_of(hub, store, VIT)[VIT].status.endswith("with HTTP 404")


@pytest.mark.slow
def test_the_ranker_reads_the_hub_keeps_the_reading_and_shows_it_offline(tmp_path: Path) -> None:
    """A real ranker process: HF_ENDPOINT names the fake hub; restarted with HF_HUB_OFFLINE (and a reading now
    too old to use without asking), it shows the reading it stored, with its age."""
    from versus_cli.launch import ServiceProcess

    db = f"sqlite:///{tmp_path / 'r.db'}"

    def rank(env: dict[str, str], *args: str) -> dict:
        with ServiceProcess("ranker", ["--db", db, "--read-hub", "--drain-delay-s", "0", *args], env=env,
                            log_path=tmp_path / "log") as svc:
            out = subprocess.run([sys.executable, "-m", "versus_cli", "rank", "--target", svc.target, VIT, LARGE,
                                  "--json"], capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    with FakeHub(stats=HUB) as fake:
        online = rank({"HF_ENDPOINT": fake.endpoint, "HF_HUB_OFFLINE": "0"})
    time.sleep(1.0)  # the stored reading is now older than the second ranker's --adoption-max-age-s
    offline = rank({"HF_ENDPOINT": fake.endpoint, "HF_HUB_OFFLINE": "1"}, "--adoption-max-age-s", "0.5")
    for doc, words in ((online, "s old)"), (offline, "not read again now (not read (offline): HF_HUB_OFFLINE")):
        vit = next(s for s in doc["scores"] if s["model_id"] == VIT)
        sub = next(x for x in vit["sub_scores"] if x["dimension"] == "adoption")
        assert "hf_downloads_30d = 3,402,117" in sub["explanation"] and f"{fake.endpoint}/api/models/" in \
            sub["explanation"] and words in sub["explanation"]
        assert "adoption" in doc["shared_dimensions"]
