"""``versus demo shadow`` (``make demo-shadow``): shadow routes decided on live traffic, on embedded defaults.

The primary is Versus' digits ViT (its OIP model ``vit-tensor``: preprocessed ``PIXELS``). Two routes on one
gateway, each mirroring every request (``mirror=1``) to a candidate served by tritonserver, whose repository
names its models' input ``PIXELS`` too, so that the gateway forwards the client's request bytes unchanged to
both sides:

- ``digits-triton``: the same network, exported to ONNX → "agreement >= 0.99" should hold;
- ``digits-weak``: the same network trained for 2 epochs → the bound should be violated.

A load generator replays the 360 held-out digits (never trained on) through the gateway's OIP port, one image per
ModelInfer request with ``model_name`` = the route, in passes, until every bound of the route is decided (it polls
GetRoute) or ``MAX_PASSES`` ran. A replayed image is a new request (a new request id); the page and the summary say
how many distinct images the pairs came from. The ground truth of the first pass is then sent as Feedback, so
that the page also shows both models' accuracy on labelled traffic. Each route's page (HTML) and report
(Markdown) are rendered by the gateway (RenderRoute) into the output folder.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from versus_cli.byo import DigitsStack, say

#: The primary's OIP model and input: the route's requests are what this model takes.
PRIMARY_MODEL, INPUT = "vit-tensor", "PIXELS"
BOUND = "agreement>=0.99"
CONCURRENCY = 8
MAX_PASSES = 8
POLL_S = 0.5
#: After the last request, how long the decisions may take to arrive (the gateway sends pairs once a second).
SETTLE_S = 10.0
#: A little longer than the gateway's once-a-second flush of pairs to the ranker.
FLUSH_S = 1.5


@dataclass(frozen=True)
class Route:
    name: str
    candidate: str  # the --deployment id
    model: str  # tritonserver's model
    expect: str  # the decision the demo should reach: "holds" or "violated"


ROUTES = (Route("digits-triton", "triton-digits", "digits", "holds"),
          Route("digits-weak", "triton-digits-weak", "digits-weak", "violated"))


@dataclass
class Replay:
    """What one route's load did and what the route's state was when it stopped."""

    route: Route
    images: int = 0
    sent: int = 0
    passes: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    view: object = None  # gateway_pb2.RouteView
    ids: list[tuple[str, int]] = field(default_factory=list)  # (request id, label) of the first pass


def held_out_pixels(processor_file: Path) -> tuple[list[bytes], list[int], tuple[int, int]]:
    """The 360 held-out digits as FP32 [3, H, W] little-endian pixels (the deployment's processor), their labels,
    and (H, W)."""
    import io

    from services.gateway.deployments import Processor
    from services.vit.builders import digits_splits

    processor = Processor.from_file(str(processor_file))
    held = digits_splits()[1]
    pixels = []
    for image in held.images:
        png = io.BytesIO()
        image.save(png, format="PNG")
        pixels.append(processor(png.getvalue()).astype("<f4").tobytes())
    return pixels, [int(label) for label in held.labels], (processor.height, processor.width)


def infer_request(route: str, request_id: str, pixels: bytes, size: tuple[int, int]):
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=route, id=request_id)
    request.inputs.add(name=INPUT, datatype="FP32", shape=[1, 3, *size])
    request.raw_input_contents.append(pixels)
    return request


def decided(view) -> bool:
    """Every bound of the route has left UNDECIDED."""
    from versus.ranker.v1 import routes_pb2

    done = (routes_pb2.DECISION_STATE_HOLDS, routes_pb2.DECISION_STATE_VIOLATED)
    return view.HasField("state") and bool(view.state.decisions) and all(
        d.state in done for d in view.state.decisions)


async def replay(target: str, route: Route, pixels: list[bytes], labels: list[int], size: tuple[int, int], *,
                 concurrency: int = CONCURRENCY, max_passes: int = MAX_PASSES) -> Replay:
    """Replay the images through the route until every bound is decided (or ``max_passes``); the route's view."""
    import grpc
    from tritonclient.grpc import service_pb2_grpc
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    out = Replay(route, images=len(pixels))
    started = time.monotonic()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(target) as channel:
        oip = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)

        async def poll() -> None:
            while True:
                out.view = (await gateway.GetRoute(gateway_pb2.GetRouteRequest(name=route.name), timeout=10)).route
                if decided(out.view):
                    stop.set()
                    return
                await asyncio.sleep(POLL_S)

        jobs = iter((p, i) for p in range(max_passes) for i in range(len(pixels)))

        async def client() -> None:
            for p, i in jobs:
                if stop.is_set():
                    return
                request_id = f"{route.name}-{p}-{i}"
                if p == 0:
                    out.ids.append((request_id, labels[i]))
                try:
                    await oip.ModelInfer(infer_request(route.name, request_id, pixels[i], size), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    out.failed.append(f"{exc.code().name}: {exc.details()}")
                out.sent += 1
                out.passes = max(out.passes, p + 1)

        poller = asyncio.create_task(poll())
        await asyncio.gather(*(client() for _ in range(concurrency)))
        try:  # the last pairs reach the ranker within about a second
            await asyncio.wait_for(asyncio.shield(poller), SETTLE_S)
        except TimeoutError:
            poller.cancel()
        out.seconds = time.monotonic() - started
    return out


def _state_name(state: int) -> str:
    from versus.ranker.v1 import routes_pb2

    return routes_pb2.DecisionState.Name(state).removeprefix("DECISION_STATE_").lower()


def decision_lines(result: Replay) -> list[str]:
    """One line per bound: its decision, the pairs it took and its interval then; and where the pairs came from."""
    view = result.view
    lines = []
    state = view.state if view is not None and view.HasField("state") else None
    if state is None:
        return [f"{result.route.name}: no route state ({getattr(view, 'state_error', '') or 'no pairs recorded'})"]
    for d in state.decisions:
        bound = f"{d.bound.metric} {d.bound.op} {d.bound.value:g}"
        if d.decided_at:
            i = d.interval_at_decision
            lines.append(f"{result.route.name}: {bound} {_state_name(d.decided_state).upper()} after {d.decided_after} "
                         f"pairs (interval [{i.lower:.4f}, {i.upper:.4f}], estimate {i.estimate:.4f}, "
                         f"{i.method}) at {d.decided_at}")
        else:
            i = d.interval
            lines.append(f"{result.route.name}: {bound} still UNDECIDED after {state.pairs} pairs "
                         f"(interval [{i.lower:.4f}, {i.upper:.4f}])")
    dropped = sum(state.counters.dropped.values())
    lines.append(f"{result.route.name}: {state.pairs} pairs from {state.distinct_inputs} distinct images "
                 f"({result.sent} requests in {result.passes} pass(es) over the {result.images} digits, "
                 f"{result.seconds:.1f}s; {dropped} mirrors dropped, {len(result.failed)} requests failed)")
    return lines


def reached(result: Replay) -> bool:
    """The route's decisions are the expected ones, and no client request failed."""
    from versus.ranker.v1 import routes_pb2

    want = {"holds": routes_pb2.DECISION_STATE_HOLDS, "violated": routes_pb2.DECISION_STATE_VIOLATED}[
        result.route.expect]
    view = result.view
    return (not result.failed and view is not None and decided(view)
            and all(d.decided_state == want for d in view.state.decisions))


def send_feedback(settings, result: Replay) -> str:
    """The ground truth of the first pass, as Feedback; one line on what the ranker stored."""
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc
    from versus.ranker.v1 import routes_pb2

    items = [routes_pb2.FeedbackItem(request_id=rid, row=0, label=str(label)) for rid, label in result.ids]
    with settings.channel() as channel:
        reply = gateway_pb2_grpc.GatewayServiceStub(channel).Feedback(
            gateway_pb2.FeedbackRequest(route=result.route.name, items=items), timeout=60,
            metadata=settings.metadata()).result
    return (f"{result.route.name}: feedback for {len(items)} requests: {reply.stored} labels stored, "
            f"{len(reply.unknown_request_ids)} request ids not paired")


def accuracy_line(settings, result: Replay) -> str:
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    with settings.channel() as channel:
        view = gateway_pb2_grpc.GatewayServiceStub(channel).GetRoute(
            gateway_pb2.GetRouteRequest(name=result.route.name), timeout=30, metadata=settings.metadata()).route
    result.view = view
    a = view.state.accuracy
    return (f"{result.route.name}: on {a.labelled} labelled rows the primary is right {a.primary.estimate:.1%}, "
            f"the candidate {a.candidate.estimate:.1%}; {a.discordant} discordant: {a.verdict}")


def write_pages(settings, name: str, out_dir: Path) -> list[Path]:
    """The route's page (HTML) and report (Markdown), rendered by the gateway."""
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    written = []
    with settings.channel() as channel:
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        for fmt, suffix in ((gateway_pb2.RENDER_FORMAT_HTML, "html"), (gateway_pb2.RENDER_FORMAT_MARKDOWN, "md")):
            reply = stub.RenderRoute(gateway_pb2.RenderRouteRequest(name=name, format=fmt), timeout=60,
                                     metadata=settings.metadata())
            path = out_dir / f"route-{name}.{suffix}"
            path.write_text(reply.content, encoding="utf-8")
            written.append(path)
    return written


def deployment_flags(stack: DigitsStack, primary: str) -> list[str]:
    """--deployment flags: the primary on Versus' vit-tensor, tritonserver's two models (the routes' candidates)."""
    vit = stack.services["vit"].target
    deps = [f"{primary}={vit},model={PRIMARY_MODEL},processor={stack.good / 'preprocessor_config.json'}",
            *(stack.triton_deployment(r.candidate, r.model) for r in ROUTES)]
    return [x for d in deps for x in ("--deployment", d)]


def route_flag(name: str, primary: str, candidate: str, mirror: float, *bounds: str) -> list[str]:
    return ["--route", f"{name}=primary:{primary},candidate:{candidate},mirror={mirror:g}"
            + "".join(f",bound={b}" for b in bounds)]


def run_demo_shadow(models_dir: Path, out_dir: Path, *, max_passes: int = MAX_PASSES) -> int:
    """Both routes, one after the other, through one gateway; 0 when both reach the expected decision."""
    from services.common.client import ClientSettings

    started = time.perf_counter()
    results: list[Replay] = []
    with DigitsStack(models_dir, out_dir, input_name=INPUT) as stack:
        flags = deployment_flags(stack, "versus-digits")
        for r in ROUTES:
            flags += route_flag(r.name, "versus-digits", r.candidate, 1, BOUND)
        gateway = stack.start_gateway(flags, "gateway.log")
        settings = ClientSettings(gateway.target)
        say(f"gateway SERVING on {gateway.target}: routes {', '.join(r.name for r in ROUTES)} (mirror=1, {BOUND})")
        pixels, labels, size = held_out_pixels(stack.good / "preprocessor_config.json")
        for route in ROUTES:
            say(f"\n== route {route.name}: versus-digits answers, {route.candidate} is mirrored every request; "
                f"{len(pixels)} held-out digits replayed until '{BOUND}' is decided ==")
            result = asyncio.run(replay(gateway.target, route, pixels, labels, size, max_passes=max_passes))
            results.append(result)
            for line in decision_lines(result):
                print(line, flush=True)
            if result.failed:
                say(f"{len(result.failed)} requests failed, e.g. {result.failed[0]}")
        say("\n== the ground truth of the first pass arrives (Feedback): accuracy on labelled traffic ==")
        time.sleep(FLUSH_S)  # the last pairs reach the ranker
        for result in results:
            print(send_feedback(settings, result), flush=True)
        time.sleep(FLUSH_S)
        for result in results:
            print(accuracy_line(settings, result), flush=True)
            for path in write_pages(settings, result.route.name, out_dir):
                print(f"wrote {path}", flush=True)
    ok = all(reached(r) for r in results)
    say(f"\nservices drained and exited with codes {stack.codes}; demo took {time.perf_counter() - started:.0f}s"
        + ("" if ok else "; a route did not reach its expected decision"))
    return 0 if ok and not any(stack.codes.values()) else 1
