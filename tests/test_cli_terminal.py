"""The CLI's terminal output (rich): tables that wrap instead of cutting ids, evidence marks named from the proto
enum, progress with a bar and ETA on a terminal and plain lines (no carriage returns) in logs, and ``--json``
byte-identical to what it printed before rich (tests/data/compare.json, written by the old code)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from versus.gateway.v1 import gateway_pb2
from versus.ranker.v1 import ranker_pb2

from versus_cli import cli, terminal
from versus_cli.compare import print_summary, show_compare_progress

GOLDEN = Path(__file__).resolve().parent / "data" / "compare.json"
VIT = "google/vit-base-patch16-224"
SD = "stabilityai/stable-diffusion-3.5-large-turbo"
LONG_CLAIM = ("84.0% ImageNet top-1 accuracy at 224x224 after fine-tuning on ImageNet-1k, as the model card of the "
              "original release states")


def fixed_comparison() -> gateway_pb2.Comparison:
    """A comparison with every part the summary prints (and an image the JSON leaves out)."""
    c = gateway_pb2.Comparison(model_ids=[VIT, SD], comparison_id="cmp-1", created_at="2026-12-01T09:00:00Z",
                               verdict="A scores higher at 58/100 vs B at 51/100.", elapsed_ms=12345.0,
                               probes_run=7, probes_cached=2, notes=["live measurements ran on random weights"])
    vit = c.models.add(entry=ranker_pb2.CatalogEntry(id=VIT, display_name=VIT, type="image-classification"))
    vit.capabilities.add(model_id=VIT, capability_id="top1", claim=LONG_CLAIM,
                         mark=gateway_pb2.EVIDENCE_MARK_CONTRADICTED,
                         detail="the official README reports 81.2% and timm 81.786%; the claim is 2.8 points higher")
    vit.capabilities.add(model_id=VIT, capability_id="batch", claim="batching raises throughput",
                         mark=gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE, detail="5.1 → 6.0 img/s")
    vit.capabilities.add(model_id=VIT, capability_id="license", claim="Apache-2.0",
                         mark=gateway_pb2.EVIDENCE_MARK_SUPPORTED)
    sd = c.models.add(entry=ranker_pb2.CatalogEntry(id=SD, display_name="", type="text-to-image"))
    sd.capabilities.add(model_id=SD, capability_id="steps", claim="4 steps", mark=gateway_pb2.EVIDENCE_MARK_CLAIMED)
    sd.capabilities.add(model_id=SD, capability_id="gpu", claim="fast on a GPU",
                        mark=gateway_pb2.EVIDENCE_MARK_UNAVAILABLE, unavailable_reason="no GPU here")
    for name, a, b in (("hub id", VIT, SD), ("parameters", "86,567,656", "8,100,000,000"),
                       ("license", "apache-2.0", "stabilityai-ai-community"),
                       ("task", "image-classification", "text-to-image")):
        c.facts.add(name=name, cells=[gateway_pb2.FactCell(value=a), gateway_pb2.FactCell(value=b)])
    c.judgements.add(generator=SD, imagenet_class="tench", prompt="a photo of a tench", seed=1,
                     top1_label="tench", top1_hit=True, image_png=b"\x89PNG not really")
    c.quality.add(generator=SD, images=4, top1_hit_rate=0.25, top5_hit_rate=0.5, mechanism_only=True)
    c.leaderboard.task = "text-to-image"
    c.leaderboard.ratings.add(model_id=SD, rating=1012.4, ci_low=950.1, ci_high=1080.9)
    return c


def test_summary_wraps_instead_of_cutting_ids_and_names_every_mark() -> None:
    out = io.StringIO()
    print_summary(fixed_comparison(), [Path("out/comparison.md")], out=terminal.console(out, width=80))
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text, "a file or pipe gets plain text"
    headline, *rest = text.splitlines()
    assert headline == f"{VIT} vs {SD}"
    table = rest[:rest.index(next(line for line in rest if line.startswith(f"{VIT}: ")))]
    hub_row = [line for line in table if "hub id" in line]
    assert VIT in hub_row[0], "an id is shown whole (the old table cut every cell at 24 characters)"
    assert sum("turbo" in line for line in table) == 2, "a longer one wraps inside its cell, header and row"
    assert "86,567,656" in text and "8,100,000,000" in text
    assert "1 contradicted, 1 verified live, 1 supported" in text
    assert "1 claimed, 1 unavailable" in text
    assert "contradicted: " in text and "timm 81.786%" in text
    assert all(len(line) <= 80 for line in text.splitlines()), "wrapped to the terminal's width"
    assert "wrote out/comparison.md" in text


def test_mark_words_come_from_the_enum_names() -> None:
    assert terminal.mark_words(gateway_pb2.EVIDENCE_MARK_VERIFIED_LIVE) == "verified live"
    assert terminal.mark_words(gateway_pb2.EVIDENCE_MARK_CONTRADICTED) == "contradicted"
    assert terminal.mark_words(gateway_pb2.EVIDENCE_MARK_UNSPECIFIED) == "not assessed"
    assert terminal.mark_words(99) == "not assessed"  # a mark from a newer gateway


def _events() -> list[gateway_pb2.CompareEvent]:
    stages = [("resolve", f"looking up {VIT}", 0.05), ("probe", f"{VIT}: batch scaling", 0.4),
              ("probe", f"{SD}: 4 steps", 0.7), ("render", "assembling", 1.0)]
    events = [gateway_pb2.CompareEvent(progress=gateway_pb2.CompareProgress(stage=s, detail=d, fraction=f))
              for s, d, f in stages]
    events.append(gateway_pb2.CompareEvent(comparison=fixed_comparison()))
    return events


def test_progress_in_a_log_is_plain_lines() -> None:
    out = io.StringIO()
    comparison = show_compare_progress(iter(_events()), terminal.console(out))
    text = out.getvalue()
    assert comparison.comparison_id == "cmp-1"
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("[  5%] resolve: looking up") and f"{SD}: 4 steps" in text
    assert len(lines) == 4


def test_progress_on_a_terminal_draws_a_bar_with_eta() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    show_compare_progress(iter(_events()), console)
    text = out.getvalue()
    assert "━" in text, "rich's bar"
    assert "100%" in text and ("-:--:--" in text or "0:00:00" in text), "percentage and time remaining"


def test_generate_progress_plain_and_terminal() -> None:
    from versus.sd35.v1 import sd35_pb2

    events = [sd35_pb2.GenerateResponse(queued=sd35_pb2.Queued(position=1))]
    events += [sd35_pb2.GenerateResponse(progress=sd35_pb2.Progress(step=s, total_steps=20, elapsed_ms=s * 100))
               for s in range(1, 21)]
    plain = io.StringIO()
    with terminal.GenerationProgress(terminal.console(plain)) as show:
        for e in events:
            show(e)
    text = plain.getvalue()
    assert "\r" not in text and text.splitlines()[0] == "queued, 1 ahead"
    assert "step 20/20" in text and len(text.splitlines()) <= 12, "plain lines, thinned to about every 10%"
    tty = io.StringIO()
    with terminal.GenerationProgress(Console(file=tty, force_terminal=True, width=100, color_system=None)) as show:
        for e in events:
            show(e)
    assert "━" in tty.getvalue() and "20/20" in tty.getvalue()


def test_compare_json_is_byte_identical_to_before(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import versus_cli.compare as compare

    monkeypatch.setattr(compare, "run_compare", lambda *a, **k: fixed_comparison())
    assert cli.main(["compare", "--json", VIT, SD]) == 0
    assert capsys.readouterr().out == GOLDEN.read_text(encoding="utf-8")
