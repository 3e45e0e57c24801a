"""Gateway benchmark → docs/BENCHMARKS.md: Compare with cached evidence, with live probes, and 16
concurrent comparisons of the same pair (the model services' /metrics show the probes ran once).

    python bench/gateway.py [--cached-calls 200] [--concurrent 16]

vit (vit-tiny), sd35 (the three tiny pipelines), ranker (SQLite) and the gateway run as real
processes on this machine, as in the demo.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import git_rev, machine, write_section  # noqa: E402
from versus_cli.launch import ServiceProcess  # noqa: E402

PAIR = ["vit-base-patch16-224", "stable-diffusion-3.5-large"]


def counts(svc: ServiceProcess) -> dict[str, float]:
    """grpc_server_handled_total per method of one service, from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{svc.metrics_port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "grpc_server_handled_total":
                out[s.labels["grpc_method"]] = out.get(s.labels["grpc_method"], 0) + s.value
    return out


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    return {k: int(v - before.get(k, 0)) for k, v in after.items() if v - before.get(k, 0)}


def gateway(targets: dict[str, ServiceProcess], log: Path) -> ServiceProcess:
    return ServiceProcess("gateway", ["--vit", targets["vit"].target, "--sd35", targets["sd35"].target,
                                      "--ranker", targets["ranker"].target, "--http-port", "-1",
                                      "--imagenet-classes", "tench,goldfish", "--drain-delay-s", "0",
                                      "--probe-size", "128"],  # as the demo: 1024 px takes minutes on a CPU
                          log_path=log).start(timeout_s=120)


def compare(target: str, live: bool, timeout: float = 600) -> tuple[float, object]:
    import grpc
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        stub = gateway_pb2_grpc.GatewayServiceStub(ch)
        t0 = time.perf_counter()
        reply = stub.Compare(gateway_pb2.CompareRequest(model_ids=PAIR, probes=gateway_pb2.ProbeOptions(live=live)),
                             timeout=timeout)
        return (time.perf_counter() - t0) * 1e3, reply.comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cached-calls", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=16)
    parser.add_argument("--models-dir", default=str(ROOT / ".models"))
    args = parser.parse_args()

    import grpc
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    from versus_cli.models import build_model

    models = Path(args.models_dir)
    for name in ("vit-tiny", "sd35-large-tiny", "sd35-large-turbo-tiny", "sd35-medium-tiny"):
        if not (models / name / "model.safetensors").exists() and not (models / name / "model_index.json").exists():
            build_model(name, models / name)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    common = ["--torch-threads", "1", "--drain-delay-s", "0"]
    services = {
        "vit": ServiceProcess("vit", ["--model", str(models / "vit-tiny"), *common], log_path=tmp / "vit.log"),
        "sd35": ServiceProcess("sd35", ["--model", f"large={models / 'sd35-large-tiny'}", "--model",
                                        f"large-turbo={models / 'sd35-large-turbo-tiny'}", "--model",
                                        f"medium={models / 'sd35-medium-tiny'}", "--default-size", "128", *common],
                               log_path=tmp / "sd35.log"),
        "ranker": ServiceProcess("ranker", ["--db", f"sqlite:///{tmp / 'r.db'}", "--drain-delay-s", "0"],
                                 log_path=tmp / "ranker.log"),
    }
    figures: dict[str, object] = {}
    try:
        for svc in services.values():
            svc.start(timeout_s=300)
        first = gateway(services, tmp / "gateway1.log")
        try:
            before = {n: counts(services[n]) for n in ("vit", "sd35")}
            live_ms, live = compare(first.target, live=True)
            one_run = {n: delta(counts(services[n]), before[n]) for n in ("vit", "sd35")}
            figures.update(live_ms=live_ms, probes_run=live.probes_run, one_run=one_run)
            with grpc.insecure_channel(first.target) as ch:
                stub = gateway_pb2_grpc.GatewayServiceStub(ch)
                req = gateway_pb2.CompareRequest(model_ids=PAIR, probes=gateway_pb2.ProbeOptions(live=True))
                stub.Compare(req, timeout=60)  # every probe fresh in the cache now
                cached = []
                for _ in range(args.cached_calls):
                    t0 = time.perf_counter()
                    reply = stub.Compare(req, timeout=60)
                    cached.append((time.perf_counter() - t0) * 1e3)
                    assert reply.comparison.probes_run == 0
            cached.sort()
            figures.update(cached_p50=statistics.median(cached), cached_p99=cached[int(0.99 * (len(cached) - 1))])
        finally:
            first.terminate()
        second = gateway(services, tmp / "gateway2.log")  # an empty cache
        try:
            before = {n: counts(services[n]) for n in ("vit", "sd35")}
            barrier = threading.Barrier(args.concurrent)
            results: list[tuple[float, object]] = []

            def one() -> None:
                barrier.wait()
                results.append(compare(second.target, live=True))

            threads = [threading.Thread(target=one) for _ in range(args.concurrent)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall_ms = (time.perf_counter() - t0) * 1e3
            concurrent_run = {n: delta(counts(services[n]), before[n]) for n in ("vit", "sd35")}
            figures.update(concurrent_wall_ms=wall_ms, concurrent_run=concurrent_run,
                           concurrent_p50=statistics.median(ms for ms, _ in results),
                           probes_run_total=sum(c.probes_run for _, c in results),
                           probes_cached_total=sum(c.probes_cached for _, c in results))
        finally:
            second.terminate()
    finally:
        for svc in services.values():
            if svc.started:
                svc.stop()
    print(figures)
    report(args, figures)


def report(args: argparse.Namespace, f: dict) -> None:
    same = f["one_run"] == f["concurrent_run"]
    lines = [
        "## Gateway: Compare with cached evidence, live, and 16 concurrent comparisons",
        "",
        f"`python bench/gateway.py --cached-calls {args.cached_calls} --concurrent {args.concurrent}` — "
        f"{machine()}, rev {git_rev()}. vit (vit-tiny), sd35 (three tiny pipelines), ranker (SQLite) and the "
        f"gateway as real processes on this 2-core machine; the pair {PAIR[0]} vs {PAIR[1]}.",
        "",
        "| what | figure |",
        "|---|---|",
        f"| Compare, live probes, empty cache | {f['live_ms']:.0f} ms ({f['probes_run']} probes run) |",
        f"| Compare with cached evidence, {args.cached_calls} sequential calls | p50 {f['cached_p50']:.1f} ms, "
        f"p99 {f['cached_p99']:.1f} ms (target p50 ≤ 50 ms) |",
        f"| {args.concurrent} concurrent live comparisons, fresh gateway | wall {f['concurrent_wall_ms']:.0f} ms, "
        f"p50 {f['concurrent_p50']:.0f} ms; {f['probes_run_total']} probes run and "
        f"{f['probes_cached_total']} shared/cached in all |",
        f"| model-service calls of ONE live comparison (from their /metrics) | {f['one_run']} |",
        f"| model-service calls of the {args.concurrent} concurrent comparisons | {f['concurrent_run']} |",
        "",
        f"The {args.concurrent} concurrent comparisons made {'exactly the same' if same else 'NOT the same'} calls to "
        "the model services as one comparison: every probe ran once and was shared (single flight).",
    ]
    write_section("gateway", "\n".join(lines))


if __name__ == "__main__":
    main()
