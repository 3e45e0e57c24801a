"""``versus compare``: stream a comparison from the gateway with progress (versus_cli.terminal), print its
summary as rich tables, write ``comparison.md`` and ``comparison.html`` (rendered by the gateway's
RenderComparison)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table

from services.common.client import ClientSettings
from versus_cli.terminal import StreamProgress, console, mark_words


def compare_request(args: argparse.Namespace) -> Any:
    from versus.gateway.v1 import gateway_pb2

    probes = gateway_pb2.ProbeOptions(live=args.live, images_per_class=args.per_class, budget_s=args.budget,
                                      record_matches=args.record, head_to_head=args.head_to_head,
                                      imagenet_classes=[c.strip() for c in args.classes.split(",") if c.strip()])
    return gateway_pb2.CompareRequest(model_ids=args.models, probes=probes)


def show_compare_progress(events: Iterable[Any], out: Console | None) -> Any:
    """Follow a CompareStream's events, showing progress on ``out`` (None: silent); returns the Comparison."""
    with StreamProgress(out) as progress:
        for event in events:
            kind = event.WhichOneof("event")
            if kind == "progress":
                p = event.progress
                progress.update(p.fraction, f"{p.stage}: {p.detail}", key=(p.stage, p.detail))
            elif kind == "comparison":
                return event.comparison
    raise ConnectionError("the CompareStream ended without a comparison")


def run_compare(settings: ClientSettings, request: Any, *, timeout: float, quiet: bool = False,
                out: Console | None = None) -> Any:
    """CompareStream, showing progress on ``out`` (default: stderr) unless ``quiet``; returns the Comparison."""
    from versus.gateway.v1 import gateway_pb2_grpc

    with settings.channel() as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        events = stub.CompareStream(request, timeout=timeout, metadata=settings.metadata())
        return show_compare_progress(events, None if quiet else out or console(stderr=True))


def write_reports(settings: ClientSettings, comparison: Any, out_dir: Path, *, timeout: float) -> list[Path]:
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with settings.channel() as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for fmt, name in ((gateway_pb2.RENDER_FORMAT_MARKDOWN, "comparison.md"),
                          (gateway_pb2.RENDER_FORMAT_HTML, "comparison.html")):
            reply = stub.RenderComparison(gateway_pb2.RenderComparisonRequest(comparison=comparison, format=fmt),
                                          timeout=timeout, metadata=settings.metadata())
            path = out_dir / name
            path.write_text(reply.content, encoding="utf-8")
            written.append(path)
    return written


def _facts_table(c: Any, names: list[str]) -> Table:
    """The feature table; long ids and values wrap inside their cells (rich), never cut."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("")
    for name in names:
        table.add_column(name, overflow="fold")
    for row in c.facts:
        table.add_row(row.name, *(cell.value for cell in row.cells))
    return table


def _mark_counts(capabilities: Iterable[Any]) -> str:
    counts: dict[str, int] = {}
    for cap in capabilities:
        words = mark_words(cap.mark)
        counts[words] = counts.get(words, 0) + 1
    return ", ".join(f"{n} {words}" for words, n in counts.items())


def print_summary(c: Any, files: list[Path], out: Console | None = None) -> None:
    """The headline, the feature table, the marks and the verdict, on ``out`` (default: stdout)."""
    from versus.gateway.v1 import gateway_pb2

    out = out or console()
    names = [m.entry.display_name or m.entry.id for m in c.models]
    out.print(" vs ".join(names))
    if c.facts:
        out.print(_facts_table(c, names))
    for m, name in zip(c.models, names, strict=True):
        out.print(f"{name}: {_mark_counts(m.capabilities)}")
        for cap in m.capabilities:
            if cap.mark == gateway_pb2.EVIDENCE_MARK_CONTRADICTED:
                out.print(Padding(f"{mark_words(cap.mark)}: {cap.claim} — {cap.detail}", (0, 0, 0, 2)))
    for q in c.quality:
        out.print(f"prompt adherence {q.generator}: top-1 {q.top1_hit_rate:.0%}, top-5 {q.top5_hit_rate:.0%} over "
                  f"{q.images} images{' (mechanism check)' if q.mechanism_only else ''}")
    if c.leaderboard.ratings:
        out.print(f"leaderboard ({c.leaderboard.task or 'all'}): " + ", ".join(
            f"{r.model_id} {r.rating:.0f} [{r.ci_low:.0f}, {r.ci_high:.0f}]" for r in c.leaderboard.ratings))
    for note in c.notes:
        out.print(f"note: {note}")
    out.print(f"\n{c.verdict}")
    out.print(f"({c.elapsed_ms / 1000:.1f} s; {c.probes_run} probes run, {c.probes_cached} from cache)")
    for f in files:
        out.print(f"wrote {f}")
