"""Shadow routes: the primary's latency called directly and through the gateway mirroring 0%, 25% and 100% of
its requests, in one run → docs/BENCHMARKS.md (section ``shadow``).

    python bench/shadow.py [--quick] [--rounds 5] [--requests 1000] [--pin]

- The deployments of ``make demo-shadow``: the primary is Versus' digits ViT (``versus serve vit``, OIP model
  ``vit-tensor``), the candidate tritonserver serving the same network (ONNX in its Python backend), a ranker
  storing the pairs; all on this machine.
- One gateway with three routes on the same primary and candidate, ``mirror=0``, ``mirror=0.25`` and
  ``mirror=1``: the same process, the same pass-through; only the share mirrored differs.
- The same client for the four conditions: ``bench/loadgen.py`` (asyncio, its own process) sends ModelInfer with
  one held-out digit (FP32 [1, 3, 32, 32]) per request, 1 or 4 at a time (``CLIENTS``), ``model_name`` =
  ``vit-tensor`` (direct) or the route (through the gateway); the request id is left empty (the gateway makes one).
- Within each round the four conditions run one after the other at each concurrency, the order rotated every
  round; p50 and p99 per run, medians over rounds, and the ratios per round (their median and range).

The goal (issue 24): p99 at 100% mirroring ≤ 1.05 × p99 at 0%. On a machine with two cores the candidate's
compute shares the primary's cores, so the 100% figure holds that contention too, not only the gateway's work.
``--pin`` separates the two as far as one machine can: what would run in other pods — tritonserver (the
candidate, with its backend processes) and the ranker (which computes the route's statistics on every batch) —
runs on the last CPU; the primary, the gateway and the client on the others. The figures go to the section
``shadow-pinned``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import run_clients  # noqa: E402
from bench.report import git_rev, machine, reexec_with, write_section  # noqa: E402
from versus_cli.launch import SERVICE_ENV  # noqa: E402

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: condition → the share mirrored (None: straight to the primary, no gateway)
CONDITIONS = {"direct": None, "mirror 0%": 0.0, "mirror 25%": 0.25, "mirror 100%": 1.0}
PRIMARY, CANDIDATE = "versus-digits", "triton-digits"
#: 1 caller: the primary has a core to itself; 4: the two cores are saturated (the mirror's work competes).
CLIENTS = (1, 4)
Runs = dict[tuple[str, int], list[tuple[float, float]]]  # (condition, clients) → (p50 ms, p99 ms) per round


def pin_tree(pid: int, cpus: set[int]) -> int:
    """Every thread of ``pid`` and of its descendants onto ``cpus`` (threads and children made later inherit it);
    the number of threads moved."""
    import psutil

    moved = 0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        for thread in proc.threads():
            os.sched_setaffinity(thread.id, cpus)
            moved += 1
    return moved


def pin_stack(stack: object, gateway: object) -> str:
    """The candidate (tritonserver and its backends) and the ranker on the last CPU; the primary, the gateway and
    this process (the client processes start from here) on the others; what was done, in words."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least two CPUs")
    elsewhere, rest = {cpus[-1]}, set(cpus[:-1])
    pin_tree(stack.triton.proc.pid, elsewhere)  # type: ignore[attr-defined]
    pin_tree(stack.services["ranker"].proc.pid, elsewhere)  # type: ignore[attr-defined]
    for svc in (stack.services["vit"], gateway):  # type: ignore[attr-defined]
        pin_tree(svc.proc.pid, rest)
    pin_tree(os.getpid(), rest)
    return f"tritonserver (with its backends) and the ranker on CPU {cpus[-1]}; the primary, the gateway and the " \
           f"client on CPU(s) {', '.join(map(str, sorted(rest)))}"


def route_name(share: float) -> str:
    return f"bench-m{round(share * 100)}"


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def payloads(model: str, pixels: list[bytes], size: tuple[int, int]) -> list[bytes]:
    from versus_cli.shadow import infer_request

    return [infer_request(model, "", p, size).SerializeToString() for p in pixels]


def mirrored_counts(target: str) -> dict[str, tuple[int, int, dict[str, int]]]:
    """Per route: (requests, mirrored, dropped by reason) this gateway counted."""
    import grpc
    from versus.gateway.v1 import gateway_pb2, gateway_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        views = gateway_pb2_grpc.GatewayServiceStub(channel).ListRoutes(gateway_pb2.ListRoutesRequest(), timeout=30)
    return {v.route.name: (v.local.requests, v.local.mirrored, dict(v.local.dropped)) for v in views.routes}


def measure(models_dir: Path, rounds: int, requests: int, pin: bool = False
            ) -> tuple[Runs, dict[str, tuple[int, int, dict[str, int]]], str]:
    from versus_cli.byo import DigitsStack
    from versus_cli.shadow import INPUT, PRIMARY_MODEL, deployment_flags, held_out_pixels, route_flag

    runs: Runs = {(c, n): [] for c in CONDITIONS for n in CLIENTS}
    with tempfile.TemporaryDirectory(prefix="versus-bench-shadow-") as tmp, \
            DigitsStack(models_dir, Path(tmp), input_name=INPUT) as stack:
        flags = deployment_flags(stack, PRIMARY)
        for share in CONDITIONS.values():
            if share is not None:
                flags += route_flag(route_name(share), PRIMARY, CANDIDATE, share)
        gateway = stack.start_gateway(flags, "gateway.log")
        placement = pin_stack(stack, gateway) if pin else ""
        pixels, _, size = held_out_pixels(stack.good / "preprocessor_config.json")
        pixels = pixels[:64]
        calls = {c: (stack.services["vit"].target, payloads(PRIMARY_MODEL, pixels, size)) if share is None
                 else (gateway.target, payloads(route_name(share), pixels, size)) for c, share in CONDITIONS.items()}
        names = list(CONDITIONS)
        for r in range(rounds):
            for clients in CLIENTS:
                for c in names[r % len(names):] + names[:r % len(names)]:  # each condition in every position
                    target, reqs = calls[c]
                    result = run_clients(target, MODEL_INFER, reqs, requests, clients, warmup=2 * clients)
                    p50, p99 = result.p50_ms, percentile(result.latencies_ms, 99)
                    runs[c, clients].append((p50, p99))
                    print(f"round {r + 1} x{clients} {c}: p50 {p50:.2f} ms p99 {p99:.2f} ms ({result.rps:.0f} req/s)",
                          flush=True)
        counts = mirrored_counts(gateway.target)
    return runs, counts, placement


def ratios(runs: Runs, a: str, b: str, clients: int, k: int) -> list[float]:
    return [x[k] / y[k] for x, y in zip(runs[a, clients], runs[b, clients], strict=True)]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def table_rows(runs: Runs, counts: dict[str, tuple[int, int, dict[str, int]]]) -> list[str]:
    rows = []
    for clients in CLIENTS:
        for c, share in CONDITIONS.items():
            p50 = statistics.median(x[0] for x in runs[c, clients])
            p99 = statistics.median(x[1] for x in runs[c, clients])
            vs0 = "—" if share is None else (f"{spread(ratios(runs, c, 'mirror 0%', clients, 0))} / "
                                              f"{spread(ratios(runs, c, 'mirror 0%', clients, 1))}")
            rows.append(f"| {clients} | {c} | {p50:.2f} | {p99:.2f} | {vs0} |")
    mirrored = []
    for c, share in CONDITIONS.items():
        if share is not None:
            n, m, dropped = counts.get(route_name(share), (0, 0, {}))
            lost = sum(dropped.values())
            mirrored.append(f"{c}: {m} of {n} ({m / max(1, n):.1%})" + (f", {lost} dropped {dropped}" if lost else ""))
    return [*rows, "", "Requests the gateway mirrored over the whole run (warm-ups included): " + "; ".join(mirrored)
            + "."]


def write_report(command: str, runs: Runs, counts: dict[str, tuple[int, int, dict[str, int]]], rounds: int,
                 requests: int, seconds: float, loadavg: tuple[float, float], placement: str = "") -> None:
    goals, overhead = [], []
    for clients in CLIENTS:
        goal = ratios(runs, "mirror 100%", "mirror 0%", clients, 1)
        met = statistics.median(goal) <= 1.05
        goals.append(f"{clients} caller(s) {spread(goal)}, {'met' if met else 'not met'}")
        extra = statistics.median(a[0] - b[0] for a, b in zip(runs["mirror 0%", clients], runs["direct", clients],
                                                              strict=True))
        overhead.append(f"{clients} caller(s): p50 {spread(ratios(runs, 'mirror 0%', 'direct', clients, 0))}, p99 "
                        f"{spread(ratios(runs, 'mirror 0%', 'direct', clients, 1))}, {extra:.2f} ms added at the p50")
    lines = [
        "## Shadow routes: the primary's latency direct and through the gateway mirroring 0%, 25%, 100%"
        + (", candidate on its own CPU" if placement else ""),
        "",
        f"Command: `{command}` (commit {git_rev()}, {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min). "
        f"Machine: {machine()}; shared with other work (1-minute load average {loadavg[0]:.1f} at the start, "
        f"{loadavg[1]:.1f} at the end), so the figures are medians over {rounds} rounds in which the four "
        "conditions run in a rotated order, and the ratios are per round (median, range).",
        "",
        "Primary: Versus' digits ViT (`versus serve vit`, OIP model `vit-tensor`, torch, 1 thread). Candidate: "
        "tritonserver serving the same network (ONNX in its Python backend, 1 ORT thread). One gateway with three "
        "routes on them, `mirror=0`, `mirror=0.25`, `mirror=1`, and a ranker storing the pairs, all on this machine. "
        f"Client: `bench/loadgen.py`, 1 or 4 concurrent callers, {requests} ModelInfer requests per run, one "
        "held-out digit (FP32 [1, 3, 32, 32]) each.",
        "",
        "| callers | condition | p50 ms | p99 ms | ÷ mirror 0%: p50 / p99 (range) |",
        "|---:|---|---:|---:|---:|",
        *table_rows(runs, counts),
        "",
        f"Goal: p99 at 100% mirroring ≤ 1.05 × p99 at 0%: {'; '.join(goals)}. "
        + (f"Placement (`--pin`): {placement}. Neither the candidate's compute nor the ranker's statistics take the "
           "primary's CPU, so the ratio holds the gateway's own mirroring work (the second call, the digest, the "
           "pairing, the recorder), which here runs on the CPU the primary shares with the gateway (in a cluster the "
           "gateway is its own pod). "
           if placement else
           "The candidate's compute and the ranker's statistics share the primary's two cores here, so the ratio "
           "holds that contention as well as the gateway's own mirroring work; `--pin` (section shadow-pinned) "
           "separates them as far as one machine can."),
        f"The gateway's own overhead (mirror 0% ÷ direct): {'; '.join(overhead)}.",
    ]
    write_section("shadow-pinned" if placement else "shadow", "\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default=os.environ.get("VERSUS_MODELS_DIR", str(ROOT / ".models")))
    parser.add_argument("--quick", action="store_true", help="two rounds of 200 requests (smoke run)")
    parser.add_argument("--rounds", type=int, default=0, help="rotated rounds (default 5; --quick: 2)")
    parser.add_argument("--requests", type=int, default=0, help="requests per run (default 1000; --quick: 200)")
    parser.add_argument("--pin", action="store_true", help="candidate on the last CPU, the rest on the others "
                                                           "(section shadow-pinned)")
    args = parser.parse_args()
    reexec_with(SERVICE_ENV)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rounds = args.rounds or (2 if args.quick else 5)
    requests = args.requests or (200 if args.quick else 1000)
    runs, counts, placement = measure(Path(args.models_dir), rounds, requests, args.pin)
    command = "python bench/shadow.py " + " ".join(sys.argv[1:])
    write_report(command.strip(), runs, counts, rounds, requests, time.perf_counter() - started,
                 (load_before, os.getloadavg()[0]), placement)


if __name__ == "__main__":
    main()
