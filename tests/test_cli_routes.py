"""``versus routes list|show|report|feedback`` against an in-process gRPC GatewayService serving the route RPCs
over canned RouteViews (the renderer behind RenderRoute is the real one): output, files, exit codes, batching of
feedback and the errors for bad files and unknown routes."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest
from test_routes_pages import HOLDS, LONG, state, view
from versus.gateway.v1 import gateway_pb2 as gw
from versus.gateway.v1 import gateway_pb2_grpc
from versus.ranker.v1 import routes_pb2 as rt

from services.gateway.pages import route_render
from versus_cli import cli
from versus_cli import routes as routes_cli


class RouteService(gateway_pb2_grpc.GatewayServiceServicer):
    """The gateway's route RPCs over fixed views; Feedback knows the request ids ``req-0`` … ``req-N``."""

    def __init__(self, *views: gw.RouteView, known: int = 25_000) -> None:
        self.views = {v.route.name: v for v in views}
        self.known = known
        self.feedback: list[gw.FeedbackRequest] = []
        self.labels: dict[tuple[str, int], str] = {("req-1", 0): "3"}
        self.metadata: list[dict] = []

    def _route(self, name: str, context: grpc.ServicerContext) -> gw.RouteView:
        self.metadata.append(dict(context.invocation_metadata()))
        if name not in self.views:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no route {name[:64]!r} on this gateway")
        return self.views[name]

    def ListRoutes(self, request, context):
        return gw.ListRoutesResponse(routes=list(self.views.values()))

    def GetRoute(self, request, context):
        return gw.GetRouteResponse(route=self._route(request.name, context))

    def RenderRoute(self, request, context):
        v = self._route(request.name, context)
        if request.format == gw.RENDER_FORMAT_HTML:
            return gw.RenderRouteResponse(content=route_render.render_route_html(v), mime_type="text/html")
        return gw.RenderRouteResponse(content=route_render.render_route_markdown(v), mime_type="text/markdown")

    def Feedback(self, request, context):
        if len(request.items) > 10_000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "more than 10,000 items")
        self.feedback.append(request)
        result = rt.RecordFeedbackResponse()
        for item in request.items:
            number = item.request_id.removeprefix("req-")
            if not number.isdigit() or int(number) >= self.known:
                result.unknown_request_ids.append(item.request_id)
                continue
            key = (item.request_id, item.row)
            if key not in self.labels:
                self.labels[key] = item.label
                result.stored += 1
            elif self.labels[key] == item.label:
                result.duplicates += 1
            else:  # the first label stays
                result.conflicting_request_ids.append(item.request_id)
        return gw.FeedbackResponse(result=result)


@pytest.fixture
def gateway():
    long_route = view(state(HOLDS))
    long_route.route.name = "long"
    long_route.route.candidate_id = LONG[:300]
    service = RouteService(view(state(HOLDS)), long_route)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield service, f"127.0.0.1:{port}"
    server.stop(None)


def versus(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_and_show_print_rich_tables(gateway, capsys, monkeypatch) -> None:
    service, target = gateway
    monkeypatch.setenv("COLUMNS", "100")
    code, out, _ = versus(capsys, "routes", "list", "--gateway", target)
    assert code == 0 and "digits" in out and "holds;" in out and "p99_ratio ≤" in out
    assert all(len(line) <= 100 for line in out.splitlines()), "a 300-character id folds inside its cell"
    assert "r" * 101 not in out and out.count("r" * 10) >= 20 and out.count("r") >= 300
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = versus(capsys, "routes", "show", "digits", "--gateway", target, "--token", "s3cret")
    assert code == 0 and "epoch 2: 700 pairs, 700 rows, 360 distinct inputs" in out
    assert "after 612 pairs" in out and "McNemar p, fixed n, for reference only: 0.0042" in out
    assert "past the mirror deadline 2, mirror queue full 11" in out and "p99_ratio ≤ 1.1" in out
    assert service.metadata[-1]["authorization"] == "Bearer s3cret"


def test_report_writes_markdown_or_html(gateway, capsys, tmp_path) -> None:
    _, target = gateway
    code, out, _ = versus(capsys, "routes", "report", "digits", "--gateway", target)
    assert code == 0 and out.startswith("# Route digits\n") and "## Decisions" in out
    page = tmp_path / "route.html"
    code, out, _ = versus(capsys, "routes", "report", "digits", "--gateway", target, "--format", "html",
                          "--out", str(page))
    assert code == 0 and f"wrote {page}" in out
    assert page.read_text().startswith("<!doctype html>") and page.read_text().count("<svg") == 2


def test_unknown_route_is_one_line_and_exit_1(gateway, capsys) -> None:
    _, target = gateway
    code, out, err = versus(capsys, "routes", "show", "nope", "--gateway", target)
    assert code == 1 and out == "" and err.startswith("versus: NOT_FOUND") and "no route 'nope'" in err
    assert len(err.splitlines()) == 1


def test_feedback_is_sent_in_batches_with_a_summary(gateway, capsys, tmp_path) -> None:
    service, target = gateway
    lines = ["request_id,label,row", "req-1,3", "req-1,3,0", "req-1,5,1", "missing,7"]
    lines += [f"req-{i},{i % 10},0" for i in range(2, 21_000)]
    lines.append("req-1,9")  # a second label for a labelled row: conflicting
    path = tmp_path / "labels.csv"
    path.write_text("\n".join(lines) + "\n")
    code, out, _ = versus(capsys, "routes", "feedback", str(path), "--route", "digits", "--gateway", target)
    assert code == 0
    assert [len(r.items) for r in service.feedback] == [10_000, 10_000, 1_003]
    assert all(r.route == "digits" for r in service.feedback)
    assert service.feedback[0].items[2] == rt.FeedbackItem(request_id="req-1", label="5", row=1)
    text = " ".join(out.split())
    assert "sent 21,003 labels in 3 calls: 20,999 stored, 2 duplicates" in text
    assert "1 unknown, 1 conflicting" in text and "unknown request ids" in text and "missing" in text


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    ("", "holds no feedback"),
    ("request_id,label\n", "holds no feedback"),
    ("req-1\n", "line 1: expected request_id,label[,row], got 1 columns"),
    ("req-1,3\nreq-2,4,0,9\n", "line 2: expected request_id,label[,row], got 4 columns"),
    ("req-1,3,-1\n", "line 1: row must be a whole number >= 0"),
    ("req-1,3,x\n", "line 1: row must be a whole number >= 0"),
    (",3\n", "line 1: the request id and the label must not be empty"),
    (b"\xff\xfe\x00", "is not UTF-8 text"),
])
def test_bad_feedback_files_are_clear_errors_before_any_call(gateway, capsys, tmp_path, content, message) -> None:
    service, target = gateway
    path = tmp_path / "labels.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, out, err = versus(capsys, "routes", "feedback", str(path), "--gateway", target)
    assert code == 1 and message in err and err.startswith("versus: ") and service.feedback == []


def test_batches_never_exceed_the_limit() -> None:
    sizes = [len(b) for b in routes_cli.batches(list(range(25_001)))]
    assert sizes == [10_000, 10_000, 5_001] and routes_cli.FEEDBACK_BATCH == 10_000
