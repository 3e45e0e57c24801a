"""``versus routes list|show NAME|report NAME|feedback FILE``: a gateway's shadow and canary routes (GatewayService
ListRoutes, GetRoute, RenderRoute, Feedback) as rich tables, a Markdown or HTML report, and delayed labels sent
from a CSV file (``request_id,label[,row]``) in batches of at most 10,000.

The words for decision states and intervals come from the route page (``services.gateway.pages.route_render``),
so that the terminal and the page say the same thing.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from versus_cli.terminal import console

#: Feedback items per call (the gateway refuses more).
FEEDBACK_BATCH = 10_000
#: Unknown or conflicting request ids printed before "… and N more".
SHOWN_IDS = 10
HEADER = ("request_id", "label")


class FeedbackFileError(ValueError):
    """A feedback file that cannot be read as ``request_id,label[,row]`` (the message names the line)."""


def read_feedback(path: Path) -> list[Any]:
    """The FeedbackItems of a CSV file ``request_id,label[,row]`` (an optional header line naming those columns)."""
    from versus.ranker.v1 import routes_pb2

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FeedbackFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FeedbackFileError(f"{path} is not UTF-8 text") from None
    items = []
    for number, cells in enumerate(csv.reader(text.splitlines()), start=1):
        if not cells or all(not c.strip() for c in cells):
            continue
        cells = [c.strip() for c in cells]
        if number == 1 and tuple(cells[:2]) == HEADER:
            continue
        if len(cells) not in (2, 3):
            raise FeedbackFileError(f"{path} line {number}: expected request_id,label[,row], got {len(cells)} "
                                    "columns")
        if not cells[0] or not cells[1]:
            raise FeedbackFileError(f"{path} line {number}: the request id and the label must not be empty")
        row = cells[2] if len(cells) == 3 else "0"
        if not row.isdigit() or int(row) >= 2**31:
            raise FeedbackFileError(f"{path} line {number}: row must be a whole number >= 0, got {row[:40]!r}")
        items.append(routes_pb2.FeedbackItem(request_id=cells[0], label=cells[1], row=int(row)))
    if not items:
        raise FeedbackFileError(f"{path} holds no feedback (expected lines request_id,label[,row])")
    return items


def batches(items: list[Any], size: int = FEEDBACK_BATCH) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass
class FeedbackTally:
    stored: int = 0
    duplicates: int = 0
    unknown: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)

    def add(self, result: Any) -> None:
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.unknown += result.unknown_request_ids
        self.conflicting += result.conflicting_request_ids


def _ids(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" … and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def print_feedback(tally: FeedbackTally, items: int, calls: int, out: Console) -> None:
    out.print(f"sent {items:,} labels in {calls} call{'s' if calls != 1 else ''}: {tally.stored:,} stored, "
              f"{tally.duplicates:,} duplicates (already stored with the same label), {len(tally.unknown):,} unknown, "
              f"{len(tally.conflicting):,} conflicting")
    if tally.unknown:
        out.print(f"unknown request ids (no pair of the route carries them yet; gateways send pairs at most once a "
                  f"second): {_ids(tally.unknown)}")
    if tally.conflicting:
        out.print(f"conflicting (the row already has another label; the first label stays): {_ids(tally.conflicting)}")


def routes_table(views: list[Any]) -> Table:
    from services.gateway.pages.route_render import decision_summary, interval_text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("route", "mode", "primary → candidate", "pairs", "agreement", "decisions"):
        table.add_column(name, overflow="fold")
    for v in views:
        s = v.state if v.HasField("state") else None
        mode = f"{v.route.mode} {v.route.share:.0%}" + (" rolled back" if s and s.rolled_back else "")
        table.add_row(v.route.name, mode, f"{v.route.primary_id} → {v.route.candidate_id}",
                      f"{s.pairs:,}" if s else "—", interval_text(s.agreement) if s else "—",
                      decision_summary(s.decisions) if s else (v.state_error or "no pairs yet"))
    return table


def _table(*columns: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    return table


def print_route(v: Any, out: Console) -> None:
    """One route: its declaration, decisions, latency and errors, labelled accuracy and dropped mirrors."""
    from services.gateway.pages.route_render import (
        bound_text,
        decided_text,
        drop_rows,
        interval_text,
        state_words,
    )

    r = v.route
    out.print(f"route {r.name}: {r.mode} {r.share:.0%}, primary {r.primary_id}, candidate {r.candidate_id}, "
              f"alpha {r.alpha:g}")
    if not v.HasField("state"):
        out.print(f"no shared state: {v.state_error or 'the ranker holds no pairs for this route'}")
        return
    s = v.state
    if s.rolled_back:
        out.print(f"ROLLED BACK at {s.rolled_back_at}: {s.rollback_reason}")
    out.print(f"epoch {s.epoch}: {s.pairs:,} pairs, {s.rows:,} rows, {s.distinct_inputs:,} distinct inputs; "
              f"agreement {interval_text(s.agreement)}")
    decisions = _table("bound", "state", "interval now", "pairs", "decided")
    for d in s.decisions:
        decisions.add_row(bound_text(d.bound), state_words(d.state), interval_text(d.interval, with_n=False),
                          f"{d.interval.n:,}", decided_text(d))
    out.print(decisions)
    latency = _table("side", "p50 ms", "p99 ms", "p99 sequence (ms)", "error rate")
    for side, lat, err in (("primary", s.primary_latency, s.primary_error_rate),
                           ("candidate", s.candidate_latency, s.candidate_error_rate)):
        latency.add_row(side, f"{lat.p50_s * 1000:.4g}", f"{lat.p99_s * 1000:.4g}",
                        interval_text(lat.p99_interval, scale=1000, with_n=False), interval_text(err))
    out.print(latency)
    a = s.accuracy
    if a.labelled:
        out.print(f"labelled rows {a.labelled:,}: primary {interval_text(a.primary, with_n=False)}, candidate "
                  f"{interval_text(a.candidate, with_n=False)}; {a.discordant:,} discordant, candidate right in "
                  f"{a.candidate_right:,}: {a.verdict} (McNemar p, fixed n, for reference only: "
                  f"{a.mcnemar_p_fixed_n:.3g})")
    drops = drop_rows(v)
    out.print("dropped mirrors: " + (", ".join(f"{d.words} {d.total:,}" for d in drops) or "none"))


def _stub(args: argparse.Namespace) -> tuple[Any, Any]:
    from versus.gateway.v1 import gateway_pb2_grpc

    from versus_cli.cli import _client_settings

    settings = _client_settings(args)
    return settings, gateway_pb2_grpc.GatewayServiceStub


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    settings, stub_class = _stub(args)
    with settings.channel() as channel:
        return getattr(stub_class(channel), method)(request, timeout=args.timeout, metadata=settings.metadata())


def _json(message: Any) -> None:
    import json

    from google.protobuf.json_format import MessageToDict

    print(json.dumps(MessageToDict(message, preserving_proto_field_name=True), indent=2))


def cmd_list(args: argparse.Namespace) -> int:
    from versus.gateway.v1 import gateway_pb2

    reply = _call(args, "ListRoutes", gateway_pb2.ListRoutesRequest())
    if args.json:
        _json(reply)
    elif not reply.routes:
        console().print("this gateway serves no route")
    else:
        console().print(routes_table(list(reply.routes)))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from versus.gateway.v1 import gateway_pb2

    reply = _call(args, "GetRoute", gateway_pb2.GetRouteRequest(name=args.name))
    if args.json:
        _json(reply)
    else:
        print_route(reply.route, console())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from versus.gateway.v1 import gateway_pb2

    fmt = gateway_pb2.RENDER_FORMAT_HTML if args.format == "html" else gateway_pb2.RENDER_FORMAT_MARKDOWN
    reply = _call(args, "RenderRoute", gateway_pb2.RenderRouteRequest(name=args.name, format=fmt))
    if args.out:
        Path(args.out).write_text(reply.content, encoding="utf-8")
        console().print(f"wrote {args.out}")
    else:
        print(reply.content, end="")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from versus.gateway.v1 import gateway_pb2

    from versus_cli.cli import CliError

    try:
        items = read_feedback(Path(args.file))
    except FeedbackFileError as exc:
        raise CliError(str(exc)) from None
    tally, calls = FeedbackTally(), 0
    settings, stub_class = _stub(args)
    with settings.channel() as channel:
        stub = stub_class(channel)
        for batch in batches(items):
            reply = stub.Feedback(gateway_pb2.FeedbackRequest(route=args.route, items=batch), timeout=args.timeout,
                                  metadata=settings.metadata())
            tally.add(reply.result)
            calls += 1
    print_feedback(tally, len(items), calls, console())
    return 0


def add_parsers(sub: Any, client_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    """``versus routes ...`` on the gateway (``--target``/``--gateway``, token and TLS flags as other clients)."""
    routes = sub.add_parser("routes", help="shadow and canary routes of a gateway: list, show, report, feedback")
    routes_sub = routes.add_subparsers(dest="routes_command", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        p = routes_sub.add_parser(name, help=text)
        client_flags(p)
        p.add_argument("--gateway", dest="target", help="HOST:PORT of the gateway (same as --target)")
        p.set_defaults(target="localhost:50050", func=func)
        return p

    command("list", cmd_list, "every route with its decisions")
    command("show", cmd_show, "one route: decisions, latency, accuracy, dropped mirrors").add_argument("name")
    report = command("report", cmd_report, "the route's report (Markdown, or the HTML page)")
    report.add_argument("name")
    report.add_argument("--out", default="", help="write it to this file (default: stdout)")
    report.add_argument("--format", choices=("md", "html"), default="md")
    feedback = command("feedback", cmd_feedback, "delayed labels from a CSV file request_id,label[,row]")
    feedback.add_argument("file")
    feedback.add_argument("--route", default="", help="the route (default: the one that recorded each request id)")
