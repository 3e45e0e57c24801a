"""Shadow routes: the primary's latency called directly and through the gateway mirroring 0%, 25% and 100% of
its requests, in one run → docs/BENCHMARKS.md (section ``shadow``).

    python bench/shadow.py [--quick] [--rounds 5] [--requests 1000] [--rate 50] [--pin]

- The deployments of ``make demo-shadow``: the primary is Versus' digits ViT (``versus serve vit``, OIP model
  ``vit-tensor``), the candidate tritonserver serving the same network (ONNX in its Python backend), a ranker
  storing the pairs; all on this machine.
- One gateway with three routes on the same primary and candidate, ``mirror=0``, ``mirror=0.25`` and
  ``mirror=1``: the same process, the same pass-through; only the share mirrored differs.
- The same client for the four conditions: ``bench/loadgen.py`` (asyncio, its own process) sends ModelInfer with
  one held-out digit (FP32 [1, 3, 32, 32]) per request, ``model_name`` = ``vit-tensor`` (direct) or the route
  (through the gateway); the request id is left empty (the gateway makes one). Three loads: closed loops of 1 and
  4 callers (each sends its next request when its last one returned: the machine runs as fast as it can, so at
  100% mirroring the mirrors' CPU competes with the requests), and an open loop at ``--rate`` requests a second
  (sent on schedule whatever is outstanding; latency counted from the scheduled send), the way production traffic
  arrives at a deployment sized with headroom.
- The CPU time per request of the gateway, the primary, the candidate and the ranker (each process's user + system
  time over the run, with its children), so the mirror's cost is shown as work, not only as latency.
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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Load:
    """Closed loop of ``clients`` callers, or (``rate`` > 0) an open loop at ``rate`` requests a second."""

    clients: int
    rate: float = 0.0

    def __str__(self) -> str:
        return f"{self.rate:g}/s open loop" if self.rate else f"{self.clients} caller{'s' * (self.clients > 1)}"


@dataclass
class Run:
    p50: float
    p99: float
    cpu_ms: dict[str, float]  # process → its CPU per request (user + system), warm-ups included (see PROCESSES)


#: The processes whose CPU each run measures (with their children: tritonserver's backend stubs).
PROCESSES = ("gateway", "primary", "candidate", "ranker")


#: 1 caller: the primary has a core to itself; 4: the two cores are saturated (the mirror's work competes).
CLOSED = (Load(1), Load(4))
Runs = dict[tuple[str, Load], list[Run]]  # (condition, load) → one Run per round


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


def cpu_ms(pid: int) -> float:
    """User + system CPU of ``pid`` and its children so far, in ms."""
    import psutil

    root = psutil.Process(pid)
    return 1e3 * sum(sum(proc.cpu_times()[:2]) for proc in [root, *root.children(recursive=True)])


def measure(models_dir: Path, rounds: int, requests: int, loads: tuple[Load, ...], pin: bool = False
            ) -> tuple[Runs, dict[str, tuple[int, int, dict[str, int]]], str]:
    from versus_cli.byo import DigitsStack
    from versus_cli.shadow import INPUT, PRIMARY_MODEL, deployment_flags, held_out_pixels, route_flag

    runs: Runs = {(c, load): [] for c in CONDITIONS for load in loads}
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
        pids = dict(zip(PROCESSES, (gateway.proc.pid, stack.services["vit"].proc.pid, stack.triton.proc.pid,
                                    stack.services["ranker"].proc.pid), strict=True))
        names = list(CONDITIONS)
        for r in range(rounds):
            for load in loads:
                for c in names[r % len(names):] + names[:r % len(names)]:  # each condition in every position
                    target, reqs = calls[c]
                    warmup = 2 * load.clients
                    cpu_before = {name: cpu_ms(pid) for name, pid in pids.items()}
                    result = run_clients(target, MODEL_INFER, reqs, requests, load.clients, warmup=warmup,
                                         rate=load.rate)
                    used = {name: (cpu_ms(pid) - cpu_before[name]) / (requests + warmup) for name, pid in pids.items()}
                    run = Run(result.p50_ms, percentile(result.latencies_ms, 99), used)
                    runs[c, load].append(run)
                    print(f"round {r + 1} {load} {c}: p50 {run.p50:.2f} ms p99 {run.p99:.2f} ms ({result.rps:.0f} "
                          f"req/s; CPU ms per request: {', '.join(f'{k} {v:.2f}' for k, v in used.items())})",
                          flush=True)
        counts = mirrored_counts(gateway.target)
    return runs, counts, placement


def ratios(runs: Runs, a: str, b: str, load: Load, field: str) -> list[float]:
    return [getattr(x, field) / getattr(y, field) for x, y in zip(runs[a, load], runs[b, load], strict=True)]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def med(runs: Runs, c: str, load: Load, field: str) -> float:
    return statistics.median(getattr(x, field) for x in runs[c, load])


def med_cpu(runs: Runs, c: str, load: Load, process: str) -> float:
    return statistics.median(x.cpu_ms[process] for x in runs[c, load])


def table_rows(runs: Runs, counts: dict[str, tuple[int, int, dict[str, int]]], loads: tuple[Load, ...]) -> list[str]:
    rows = []
    for load in loads:
        for c, share in CONDITIONS.items():
            vs0 = "—" if share is None else (f"{spread(ratios(runs, c, 'mirror 0%', load, 'p50'))} / "
                                              f"{spread(ratios(runs, c, 'mirror 0%', load, 'p99'))}")
            cpu = " | ".join(f"{med_cpu(runs, c, load, name):.2f}" for name in PROCESSES)
            rows.append(f"| {load} | {c} | {med(runs, c, load, 'p50'):.2f} | {med(runs, c, load, 'p99'):.2f} | {vs0} "
                        f"| {cpu} |")
    mirrored = []
    for c, share in CONDITIONS.items():
        if share is not None:
            n, m, dropped = counts.get(route_name(share), (0, 0, {}))
            lost = sum(dropped.values())
            mirrored.append(f"{c}: {m} of {n} ({m / max(1, n):.1%})" + (f", {lost} dropped {dropped}" if lost else ""))
    return [*rows, "", "Requests the gateway mirrored over the whole run (warm-ups included): " + "; ".join(mirrored)
            + "."]


def mirror_cpu(runs: Runs, loads: tuple[Load, ...]) -> str:
    """The gateway's CPU per mirror: (CPU per request at 100% − at 0%), per load (median over rounds)."""
    parts = []
    for load in loads:
        pairs = zip(runs["mirror 100%", load], runs["mirror 0%", load], strict=True)
        per_mirror = statistics.median(a.cpu_ms["gateway"] - b.cpu_ms["gateway"] for a, b in pairs)
        parts.append(f"{load}: {per_mirror:.2f} ms")
    return "; ".join(parts)


def write_report(command: str, runs: Runs, counts: dict[str, tuple[int, int, dict[str, int]]], rounds: int,
                 requests: int, loads: tuple[Load, ...], seconds: float, loadavg: tuple[float, float],
                 placement: str = "") -> None:
    goals, overhead = [], []
    for load in loads:
        goal = ratios(runs, "mirror 100%", "mirror 0%", load, "p99")
        met = statistics.median(goal) <= 1.05
        goals.append(f"{load} {spread(goal)}, {'met' if met else 'not met'}")
        extra = statistics.median(a.p50 - b.p50 for a, b in zip(runs["mirror 0%", load], runs["direct", load],
                                                                strict=True))
        overhead.append(f"{load}: p50 {spread(ratios(runs, 'mirror 0%', 'direct', load, 'p50'))}, p99 "
                        f"{spread(ratios(runs, 'mirror 0%', 'direct', load, 'p99'))}, {extra:.2f} ms added at the p50")
    closed = [str(load.clients) for load in loads if not load.rate]
    opened = [f"{load.rate:g}" for load in loads if load.rate]
    lines = [
        "## Shadow routes: the primary's latency direct and through the gateway mirroring 0%, 25%, 100%"
        + (", candidate on its own CPU" if placement else ""),
        "",
        f"Command: `{command}` (commit {git_rev()}, {time.strftime('%Y-%m-%d')}, {seconds / 60:.1f} min). "
        f"Machine: {machine()}; 1-minute load average {loadavg[0]:.1f} at the start, {loadavg[1]:.1f} at the end; "
        f"the figures are medians over {rounds} rounds in which the four conditions run in a rotated order, and the "
        "ratios are per round (median, range).",
        "",
        "Primary: Versus' digits ViT (`versus serve vit`, OIP model `vit-tensor`, torch, 1 thread). Candidate: "
        "tritonserver serving the same network (ONNX in its Python backend, 1 ORT thread). One gateway with three "
        "routes on them, `mirror=0`, `mirror=0.25`, `mirror=1`, and a ranker storing the pairs, all on this machine. "
        f"Client: `bench/loadgen.py`, {requests} ModelInfer requests per run, one held-out digit "
        "(FP32 [1, 3, 32, 32]) each"
        + (f"; closed loops of {' and '.join(closed)} caller(s) (the next request when the last one returned: as "
           "fast as the machine goes)" if closed else "")
        + (f"; an open loop at {' and '.join(opened)} requests a second (sent on schedule whatever is outstanding, "
           "latency from the scheduled send)" if opened else "") + ". CPU columns: the process's user + system "
        "time over the run ÷ its requests (warm-ups included), with its children (tritonserver's Python backend "
        "stubs); CPU that is not the request's own (a process's timers, the ranker's statistics) is spread over the "
        "requests of the run, so a slower load shows more of it.",
        "",
        "| load | condition | p50 ms | p99 ms | ÷ mirror 0%: p50 / p99 (range) | CPU ms/request: gateway "
        "| primary | candidate | ranker |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        *table_rows(runs, counts, loads),
        "",
        f"Goal: p99 at 100% mirroring ≤ 1.05 × p99 at 0%: {'; '.join(goals)}. "
        + (f"Placement (`--pin`): {placement}. Neither the candidate's compute nor the ranker's statistics take the "
           "primary's CPU; what differs between 0% and 100% on the primary's CPU is the gateway's own mirroring work "
           "(the second call, the digest, the pairing, the recorder: its CPU per mirror below), which here runs on the "
           "CPU the primary shares with the gateway (in a cluster the gateway is its own pod), and when the "
           "candidate's answers arrive, since the candidate shares its CPU with the ranker's statistics. "
           if placement else
           "The candidate's compute and the ranker's statistics share the primary's two cores here, so the ratio "
           "holds that contention as well as the gateway's own mirroring work; `--pin` (section shadow-pinned) "
           "separates them as far as one machine can. "),
        f"The gateway's CPU per mirror (CPU per request at 100% − at 0%): {mirror_cpu(runs, loads)}.",
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
    parser.add_argument("--rate", type=float, default=50.0,
                        help="requests a second of the open-loop load (0: closed loops only; default 50)")
    parser.add_argument("--pin", action="store_true", help="candidate on the last CPU, the rest on the others "
                                                           "(section shadow-pinned)")
    args = parser.parse_args()
    reexec_with(SERVICE_ENV)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rounds = args.rounds or (2 if args.quick else 5)
    requests = args.requests or (200 if args.quick else 1000)
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    loads = CLOSED + ((Load(1, args.rate),) if args.rate else ())
    runs, counts, placement = measure(Path(args.models_dir), rounds, requests, loads, args.pin)
    command = "python bench/shadow.py " + " ".join(sys.argv[1:])
    write_report(command.strip(), runs, counts, rounds, requests, loads, time.perf_counter() - started,
                 (load_before, os.getloadavg()[0]), placement)


if __name__ == "__main__":
    main()
