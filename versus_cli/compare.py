"""``versus compare``: stream a comparison from the gateway with a progress bar, print its summary,
write ``comparison.md`` and ``comparison.html`` (rendered by the gateway's RenderComparison)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from services.common.client import ClientSettings

MARKS = {1: "verified live", 2: "supported", 3: "contradicted", 4: "claimed", 5: "unavailable"}


def compare_request(args: argparse.Namespace) -> Any:
    from versus.gateway.v1 import gateway_pb2

    probes = gateway_pb2.ProbeOptions(live=args.live, images_per_class=args.per_class, budget_s=args.budget,
                                      record_matches=args.record, head_to_head=args.head_to_head,
                                      imagenet_classes=[c.strip() for c in args.classes.split(",") if c.strip()])
    return gateway_pb2.CompareRequest(model_ids=args.models, probes=probes)


def _bar(fraction: float, stage: str, detail: str, width: int = 28) -> str:
    done = int(width * max(0.0, min(1.0, fraction)))
    text = f"{stage}: {detail}"
    return f"\r[{'#' * done}{'.' * (width - done)}] {fraction:4.0%} {text[:70]:<70}"


def run_compare(settings: ClientSettings, request: Any, *, timeout: float, quiet: bool = False,
                out: Any = sys.stderr) -> Any:
    """CompareStream, drawing progress on ``out``; returns the Comparison."""
    from versus.gateway.v1 import gateway_pb2_grpc

    with settings.channel() as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for event in stub.CompareStream(request, timeout=timeout, metadata=settings.metadata()):
            kind = event.WhichOneof("event")
            if kind == "progress" and not quiet:
                p = event.progress
                print(_bar(p.fraction, p.stage, p.detail), end="", file=out, flush=True)
            elif kind == "comparison":
                if not quiet:
                    print(file=out)
                return event.comparison
    raise ConnectionError("the CompareStream ended without a comparison")


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


def print_summary(c: Any, files: list[Path], out: Any = sys.stdout) -> None:
    """The headline, the feature table, the marks and the verdict, as text."""
    names = [m.entry.display_name or m.entry.id for m in c.models]
    print(" vs ".join(names), file=out)
    width = max(len(r.name) for r in c.facts) if c.facts else 10
    cols = [max(24, len(n)) for n in names]
    print(f"{'':<{width}}  " + "  ".join(f"{n[:w]:<{w}}" for n, w in zip(names, cols, strict=True)), file=out)
    for row in c.facts:
        print(f"{row.name:<{width}}  " + "  ".join(f"{cell.value[:w]:<{w}}"
                                                  for cell, w in zip(row.cells, cols, strict=True)), file=out)
    print(file=out)
    for m in c.models:
        counts: dict[str, int] = {}
        for cap in m.capabilities:
            counts[MARKS.get(cap.mark, "?")] = counts.get(MARKS.get(cap.mark, "?"), 0) + 1
        print(f"{m.entry.display_name or m.entry.id}: " + ", ".join(f"{n} {k}" for k, n in counts.items()), file=out)
        for cap in m.capabilities:
            if cap.mark == 3:
                print(f"  contradicted: {cap.claim} — {cap.detail[:300]}", file=out)
    for q in c.quality:
        print(f"prompt adherence {q.generator}: top-1 {q.top1_hit_rate:.0%}, top-5 {q.top5_hit_rate:.0%} over "
              f"{q.images} images{' (mechanism check)' if q.mechanism_only else ''}", file=out)
    if c.leaderboard.ratings:
        print(f"leaderboard ({c.leaderboard.task or 'all'}): " + ", ".join(
            f"{r.model_id} {r.rating:.0f} [{r.ci_low:.0f}, {r.ci_high:.0f}]" for r in c.leaderboard.ratings), file=out)
    for note in c.notes:
        print(f"note: {note}", file=out)
    print(f"\n{c.verdict}", file=out)
    print(f"({c.elapsed_ms / 1000:.1f} s; {c.probes_run} probes run, {c.probes_cached} from cache)", file=out)
    for f in files:
        print(f"wrote {f}", file=out)
