"""The ``versus`` command line: serve, call, build models, run the demo.

Every subcommand parses its own flags; nothing heavy is imported until a subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from services.common import registry
from services.common.config import DeprecatedFlag
from services.common.errors import VersusError
from versus_cli import export as export_commands
from versus_cli import routes as routes_commands
from versus_cli.extras import missing_extra


class CliError(Exception):
    """A mistake in how the command was called (a missing file, a bad flag value): one line, exit 1."""

# -- serve --------------------------------------------------------------------------------------
#: Model stacks a service's extra installs: a missing one is an install step, not a crash.
_MODEL_STACK = ("torch", "transformers", "diffusers", "accelerate", "safetensors", "peft", "onnxruntime")


def _config_class(name: str) -> type:
    """The service's config class (light: imports no model code, so ``--help`` and the ranker stay torch-free)."""
    return registry.spec(name).config_class()


def _create_server(name: str) -> Callable:
    """The service's ``create_server`` — imported only for the service being started. A model stack that is
    not installed is named with the extra that installs it."""
    spec = registry.spec(name)
    try:
        return spec.create_server()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in _MODEL_STACK:
            raise
        raise CliError(f"versus serve {name} needs {exc.name}, which this install lacks: "
                       f"pip install 'versus[{spec.extra}]'") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from services.common.logs import configure_logging

    config = _config_class(args.service).from_args(args)
    create_server = _create_server(args.service)
    configure_logging(config.log_level, config.log_format)

    async def run() -> None:
        server, _ = create_server(config)
        await server.serve()

    asyncio.run(run())
    return 0


# -- client commands ----------------------------------------------------------------------------
def _client_settings(args: argparse.Namespace):
    from services.common.client import ClientSettings

    return ClientSettings(args.target, token=_client_token(args), tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                          tls_key=args.tls_key, server_name=args.tls_server_name)


def _client_token(args: argparse.Namespace) -> str:
    """The bearer token: --token, or the file --token-file names, or $VERSUS_TOKEN (in that order)."""
    if args.token and args.token_file:
        raise CliError("give --token or --token-file, not both")
    if args.token_file:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CliError(f"cannot read --token-file {args.token_file}: {exc.strerror or exc}") from None
        if not token:
            raise CliError(f"--token-file {args.token_file} is empty")
        return token
    return args.token or os.environ.get("VERSUS_TOKEN", "").strip()


def _images(paths: Sequence[str]) -> list:
    from versus.common.v1 import common_pb2

    return [common_pb2.Image(data=_read(p)) for p in paths]


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None


def cmd_classify(args: argparse.Namespace) -> int:
    from versus.vit.v1 import vit_pb2, vit_pb2_grpc

    settings = _client_settings(args)
    with settings.channel() as channel:
        stub = vit_pb2_grpc.VitServiceStub(channel)
        request = vit_pb2.ClassifyRequest(images=_images(args.files), head=args.head)
        if args.top_k is not None:
            request.top_k = args.top_k
        reply = stub.Classify(request,
                              timeout=args.timeout, metadata=settings.metadata())
    if args.json:
        doc = {
            "model_id": reply.model_id,
            "timings": _fields(reply.timings),
            "results": [
                {
                    "file": f,
                    "labels": [{"index": lab.index, "label": lab.label, "score": lab.score} for lab in r.labels],
                }
                for f, r in zip(args.files, reply.results, strict=True)
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    for f, r in zip(args.files, reply.results, strict=True):
        print(f)
        for lab in r.labels:
            print(f"  {lab.score:7.4f}  {lab.label}")
    t = reply.timings
    print(f"[{reply.model_id}] queue {t.queue_ms:.1f} ms, compute {t.compute_ms:.1f} ms, total {t.total_ms:.1f} ms")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from versus.vit.v1 import vit_pb2, vit_pb2_grpc

    settings = _client_settings(args)
    pooling = vit_pb2.POOLING_MEAN if args.pooling == "mean" else vit_pb2.POOLING_CLS
    with settings.channel() as channel:
        stub = vit_pb2_grpc.VitServiceStub(channel)
        reply = stub.Embed(
            vit_pb2.EmbedRequest(
                images=_images(args.files), pooling=pooling, layers=args.layer or [], normalize=args.normalize
            ),
            timeout=args.timeout,
            metadata=settings.metadata(),
        )
    results = [
        {"file": f, "embeddings": [{"layer": e.layer, "values": list(e.values)} for e in r.embeddings]}
        for f, r in zip(args.files, reply.results, strict=True)
    ]
    if args.json:
        print(json.dumps({"model_id": reply.model_id, "dimension": reply.dimension, "results": results}))
        return 0
    for item in results:
        for e in item["embeddings"]:
            head = ", ".join(f"{v:.4f}" for v in e["values"][:6])
            print(f"{item['file']} layer {e['layer']}: dim {len(e['values'])} [{head}, ...]")
    return 0


def _ranker_call(args: argparse.Namespace, method: str, request):
    """Call one RankerService method; with --json print the reply and return None."""
    from google.protobuf.json_format import MessageToDict
    from versus.ranker.v1 import ranker_pb2_grpc

    settings = _client_settings(args)
    with settings.channel() as channel:
        stub = ranker_pb2_grpc.RankerServiceStub(channel)
        reply = getattr(stub, method)(request, timeout=args.timeout, metadata=settings.metadata())
    if args.json:
        print(
            json.dumps(
                MessageToDict(reply, always_print_fields_with_no_presence=True, preserving_proto_field_name=True),
                indent=2,
            )
        )
        return None
    return reply


def cmd_rank(args: argparse.Namespace) -> int:
    from versus.ranker.v1 import ranker_pb2

    reply = _ranker_call(args, "Score", ranker_pb2.ScoreRequest(model_ids=args.models))
    if reply is None:
        return 0
    for s in reply.scores:
        name = s.display_name if s.display_name == s.model_id else f"{s.display_name} ({s.model_id})"
        shared = (f"{s.shared_composite:.1f}/100 on {', '.join(reply.shared_dimensions)}"
                  if reply.shared_dimensions else "no shared dimension")
        print(f"{name}: {shared} (ranked on); own composite {s.composite:.1f}/100, confidence {s.confidence:.0%}, "
              f"matched {s.times_matched} times")
        for sub in s.sub_scores:
            value = "missing" if sub.missing else f"{sub.score:5.1f}"
            print(f"  {sub.dimension:<12} {value:>7}  (weight {sub.weight:.2f})  {sub.explanation}")
    print("leaders: " + ", ".join(f"{lab.dimension} → {lab.model_id}" for lab in reply.leaders))
    print(reply.verdict)
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from versus.ranker.v1 import ranker_pb2

    reply = _ranker_call(args, "GetLeaderboard", ranker_pb2.GetLeaderboardRequest(task=args.task))
    if reply is None:
        return 0
    print(
        f"task {reply.task or '(all)'}: {reply.matches} matches, {reply.bootstrap_rounds} bootstrap rounds, "
        f"anchor {reply.anchor_model or '(mean)'}"
    )
    print(f"{'rank':>4}  {'model':<36} {'rating':>8}  {'95% CI':>17}  {'matches':>7}  W/L/T")
    for r in reply.ratings:
        print(
            f"{r.rank:>4}  {r.model_id:<36} {r.rating:8.1f}  [{r.ci_low:7.1f}, {r.ci_high:7.1f}]  "
            f"{r.times_matched:>7}  {r.wins}/{r.losses}/{r.ties}"
        )
    for note in reply.notes:
        print(f"note: {note}")
    return 0


def _generate_request(args: argparse.Namespace):
    from versus.sd35.v1 import sd35_pb2

    from versus_cli.calls import enum_value

    request = sd35_pb2.GenerateRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        width=args.width,
        height=args.height,
        num_images=args.n,
        output_format=enum_value(sd35_pb2.OutputFormat, "OUTPUT_FORMAT", args.format),
        max_sequence_length=args.max_sequence_length,
        preview_every=args.preview_every,
    )
    if args.variant:
        request.variant = enum_value(sd35_pb2.Variant, "VARIANT", args.variant)
    for name, value in (("steps", args.steps), ("guidance_scale", args.guidance), ("seed", args.seed)):
        if value is not None:
            setattr(request, name, value)
    for spec in args.adapter or []:
        name, _, weight = spec.partition("=")
        try:
            request.adapters.add(name=name, weight=float(weight or 1.0))
        except ValueError:
            raise CliError(f"--adapter {spec!r}: expected NAME=WEIGHT with a number for WEIGHT") from None
    return request


def cmd_generate(args: argparse.Namespace) -> int:
    from versus.sd35.v1 import sd35_pb2

    from versus_cli.calls import generate_images, output_paths
    from versus_cli.terminal import GenerationProgress, console

    request = _generate_request(args)
    with GenerationProgress(None if args.quiet else console(stderr=True)) as show:
        result = generate_images(_client_settings(args), request, timeout=args.timeout, on_event=show)
    paths = output_paths(args.output, len(result.images))
    for path, image in zip(paths, result.images, strict=True):
        path.write_bytes(image.data)
    t = result.timings
    meta = {
        "files": [str(p) for p in paths],
        "seeds": list(result.seeds),
        "variant": sd35_pb2.Variant.Name(result.variant),
        "steps": result.steps,
        "guidance_scale": round(result.guidance_scale, 4),
        "width": result.width,
        "height": result.height,
        "timings": _fields(t),
    }
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        print(
            f"wrote {', '.join(meta['files'])} (seeds {meta['seeds']}, {meta['variant']}, {result.steps} steps, "
            f"{result.width}x{result.height}, {t.total_ms / 1000:.2f}s)"
        )
    return 0


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**64:
        raise argparse.ArgumentTypeError(f"a seed is 0..2**64-1, got {text}")
    return value


def eval_fields(args: argparse.Namespace, request):
    """The eval-set fields of a CompareRequest (the seed only when given: unset, the gateway draws one)."""
    request.eval_set, request.eval_budget_s = args.eval_set, args.eval_budget
    if args.sample_seed is not None:
        request.eval_sample_seed = args.sample_seed
    return request


def cmd_compare(args: argparse.Namespace) -> int:
    from versus_cli.compare import compare_request, print_summary, run_compare, write_reports

    request = eval_fields(args, compare_request(args))
    comparison = run_compare(_client_settings(args), request, timeout=args.timeout, quiet=args.quiet or args.json)
    files = write_reports(_client_settings(args), comparison, Path(args.out), timeout=args.timeout) if args.out \
        else []
    if args.json:
        from google.protobuf.json_format import MessageToDict

        doc = MessageToDict(comparison, preserving_proto_field_name=True)
        for judgement in doc.get("judgements", []):
            judgement.pop("image_png", None)  # the images are in the HTML report; keep the JSON readable
        for pair in doc.get("eval", {}).get("pairs", []):
            for disagreement in pair.get("disagreements", []):
                disagreement.pop("thumbnail_png", None)
        doc["files"] = [str(f) for f in files]
        print(json.dumps(doc, indent=2))
    elif comparison.HasField("eval"):
        from versus_cli.byo import print_eval_summary

        print_eval_summary(comparison, files)
    else:
        print_summary(comparison, files)
    return 0


# -- models -------------------------------------------------------------------------------------
def cmd_models_build(args: argparse.Namespace) -> int:
    from versus_cli.models import build_model

    out = build_model(args.name, Path(args.out), base=Path(args.base) if args.base else None)
    print(f"built {args.name} in {out}")
    return 0


def cmd_models_pull(args: argparse.Namespace) -> int:
    from versus_cli.models import pull_model

    for hub_id in args.ids:
        source = pull_model(hub_id, args.cache, args.include)
        print(f"pulled {hub_id} at {source.revision} into {args.cache}")
    return 0


def cmd_weights_fingerprint(args: argparse.Namespace) -> int:
    from services.vit.fingerprint import fingerprint_vit

    doc = fingerprint_vit(Path(args.path))
    top1 = ", ".join(str(o["top5"][0]) for o in doc["outputs"])
    print(f"recorded the known answers of {args.path} (weights sha256 {doc['weights_digest']}): top-1 {top1} on "
          f"{len(doc['outputs'])} reference images, in {Path(args.path) / 'versus-known-answers.json'}")
    return 0


def cmd_demo_byo(args: argparse.Namespace) -> int:
    from versus_cli.byo import run_demo_byo

    return run_demo_byo(Path(args.models_dir), Path(args.out))


def cmd_demo_shadow(args: argparse.Namespace) -> int:
    from versus_cli.shadow import run_demo_shadow

    passes = {"max_passes": args.max_passes} if args.max_passes else {}
    return run_demo_shadow(Path(args.models_dir), Path(args.out), **passes)


def cmd_demo(args: argparse.Namespace) -> int:
    from versus_cli.demo import run_demo

    return run_demo(Path(args.models_dir), Path(args.out), json_out=args.json)


def _version() -> str:
    """The installed distribution's version (the source tree's pyproject when run uninstalled)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("versus")
    except PackageNotFoundError:
        return "0+unknown (not installed)"


def _fields(message: object) -> dict[str, object]:
    """A flat message's fields under their proto names (``--json`` keys follow the contract)."""
    return {f.name: getattr(message, f.name) for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


# -- parser -------------------------------------------------------------------------------------
def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="localhost:50051", help="HOST:PORT of the service")
    p.add_argument("--token", default="", help="bearer token (visible in the process list: prefer --token-file "
                                               "or $VERSUS_TOKEN)")
    p.add_argument("--token-file", default="", help="file holding the bearer token (e.g. a mounted Secret)")
    p.add_argument("--tls-ca", default="", help="PEM CA that signed the server certificate (enables TLS)")
    p.add_argument("--tls-cert", default="", help="client certificate (mTLS)")
    p.add_argument("--tls-key", default="", help="client key (mTLS)")
    p.add_argument("--tls-server-name", default="", help="expected server name in its certificate")
    p.add_argument("--timeout-s", dest="timeout", type=float, default=60.0, help="deadline in seconds")
    p.add_argument("--timeout", dest="timeout", type=float, action=DeprecatedFlag, new_flag="--timeout-s",
                   help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON document")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="versus", description="Versus model services and comparisons.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a service until SIGTERM")
    serve_sub = serve.add_subparsers(dest="service", required=True)
    for spec in registry.SERVICES:
        name = spec.name
        config_cls = spec.config_class()
        sp = serve_sub.add_parser(name, help=spec.summary)
        config_cls.add_arguments(sp)
        sp.set_defaults(func=cmd_serve)

    classify = sub.add_parser("classify", help="classify image files with the vit service")
    _add_client_flags(classify)
    classify.add_argument("files", nargs="+")
    classify.add_argument("--top-k", type=int, default=None, help="labels per image (default: the server's, 5)")
    classify.add_argument("--head", default="", help="custom head name")
    classify.set_defaults(func=cmd_classify)

    embed = sub.add_parser("embed", help="embed image files with the vit service")
    _add_client_flags(embed)
    embed.add_argument("files", nargs="+")
    embed.add_argument("--layer", type=int, action="append", help="hidden layer (repeatable; default final)")
    embed.add_argument("--pooling", choices=("cls", "mean"), default="cls")
    embed.add_argument("--normalize", action="store_true", help="L2-normalise vectors")
    embed.set_defaults(func=cmd_embed)

    generate = sub.add_parser("generate", help="text-to-image with the sd35 service, with a live progress bar")
    _add_client_flags(generate)
    generate.set_defaults(target="localhost:50052", timeout=600.0)
    generate.add_argument("prompt")
    generate.add_argument("--negative", default="", help="negative prompt")
    generate.add_argument(
        "--variant", choices=("large", "large-turbo", "medium"), default="", help="default: the server's"
    )
    generate.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    generate.add_argument("--steps", type=int, default=None, help="default: the variant's")
    generate.add_argument("--guidance", type=float, default=None, help="default: the variant's")
    generate.add_argument("--width", type=int, default=0)
    generate.add_argument("--height", type=int, default=0)
    generate.add_argument("-n", type=int, default=1, help="images (1-4); image i uses seed + i")
    generate.add_argument("--max-sequence-length", type=int, default=0)
    generate.add_argument("--adapter", action="append", help="NAME=WEIGHT (repeatable)")
    generate.add_argument("--format", choices=("png", "jpeg", "webp"), default="png")
    generate.add_argument("--preview-every", type=int, default=0)
    generate.add_argument("-o", "--output", default="out.png", help="file (several images: out-0.png, out-1.png...)")
    generate.add_argument("--quiet", action="store_true", help="no progress bar")
    generate.set_defaults(func=cmd_generate)

    rank = sub.add_parser("rank", help="0-100 scores of catalog models from the ranker")
    _add_client_flags(rank)
    rank.set_defaults(target="localhost:50053")
    rank.add_argument("models", nargs="+", help="catalog model ids")
    rank.set_defaults(func=cmd_rank)

    board = sub.add_parser("leaderboard", help="Bradley-Terry ratings from the ranker")
    _add_client_flags(board)
    board.set_defaults(target="localhost:50053")
    board.add_argument("--task", default="", help="only this task's matches")
    board.set_defaults(func=cmd_leaderboard)

    compare = sub.add_parser("compare", help="an evidence-backed comparison from the gateway, with progress")
    _add_client_flags(compare)
    compare.set_defaults(target="localhost:50050", timeout=600.0, func=cmd_compare)
    compare.add_argument("models", nargs="+", help="2-4 catalog model ids (with --eval-set: registered deployments)")
    compare.add_argument("--eval-set", default="", help="measure registered deployments live on this eval set")
    compare.add_argument("--eval-budget", type=float, default=0.0, help="seconds for the eval run (max 3600)")
    compare.add_argument("--sample-seed", type=_seed, default=None,
                         help="seed of the eval run's label-stratified image order (a run cut short measures that "
                              "random sample); default: the gateway draws one and the report prints it")
    compare.add_argument("--live", action="store_true", help="run live probes against the model services")
    compare.add_argument("--classes", default="", help="ImageNet classes for the quality probe (comma-separated)")
    compare.add_argument("--per-class", type=int, default=0, help="images per class (default: the gateway's)")
    compare.add_argument("--budget", type=float, default=0.0, help="seconds for the whole comparison")
    compare.add_argument("--head-to-head", action="store_true", help="duel the served SD3.5 variants")
    compare.add_argument("--record", action="store_true", help="record head-to-head outcomes in the ranker")
    compare.add_argument("--out", default="", help="write comparison.md and comparison.html into this directory")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")

    models = sub.add_parser("models", help="build the project's own models, pull hub models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    build = models_sub.add_parser("build", help="build NAME into --out DIR")
    build.add_argument(
        "name",
        help="vit-base-random, vit-tiny, vit-digits, sd35-large-tiny, sd35-large-turbo-tiny, "
        "sd35-medium-tiny, sd35-lora-example",
    )
    build.add_argument("--out", required=True)
    build.add_argument("--base", default="", help="base pipeline directory (sd35-lora-example)")
    build.set_defaults(func=cmd_models_build)
    pull = models_sub.add_parser("pull", help="fetch hub models into a Hugging Face cache (HF_TOKEN_PATH for gated; "
                                   "HF_HUB_OFFLINE=1: only check the cache)")
    pull.add_argument("ids", nargs="+", help="hub ids, ORG/NAME")
    pull.add_argument("--cache", required=True, help="hub cache directory (the services' HF_HUB_CACHE)")
    pull.add_argument("--include", action="append", default=[], help="only files matching this pattern (repeatable)")
    pull.set_defaults(func=cmd_models_pull)

    weights = sub.add_parser("weights", help="known answers of weight files an operator hashed")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    fingerprint = weights_sub.add_parser(
        "fingerprint", help="record the outputs of a ViT checkpoint directory on the shipped reference images "
                            "(versus-known-answers.json beside the weights, against their sha256)")
    fingerprint.add_argument("path", help="the checkpoint directory (config.json, *.safetensors, processor)")
    fingerprint.set_defaults(func=cmd_weights_fingerprint)

    demo = sub.add_parser("demo", help="build models, start the four services, run the demo comparison")
    demo.add_argument("--models-dir", default=".models", help="where built models are cached")
    demo.add_argument("--out", default="out/demo", help="where comparison.md, comparison.html and logs go")
    demo.add_argument("--json", default="", help="also write the demo's outcome to this JSON file")
    demo.set_defaults(func=cmd_demo)
    demo_sub = demo.add_subparsers(dest="demo_command", metavar="{shadow}", help="another demo (default: the "
                                   "comparison above)")
    shadow = demo_sub.add_parser("shadow", help="shadow routes on live traffic: Versus' digits ViT mirrored to "
                                 "tritonserver (the same network: holds) and to a weaker network (violated)")
    shadow.add_argument("--models-dir", default=".models", help="where built models are cached")
    shadow.add_argument("--out", default="out/demo-shadow", help="where the route pages, reports and logs go")
    shadow.add_argument("--max-passes", type=int, default=0, help="at most this many passes over the 360 digits "
                        "per route (default 8)")
    shadow.set_defaults(func=cmd_demo_shadow)
    demo_byo = sub.add_parser("demo-byo", help="compare deployments (Versus and tritonserver) on held-out digits")
    demo_byo.add_argument("--models-dir", default=".models", help="where built models are cached")
    demo_byo.add_argument("--out", default="out/demo-byo", help="where comparison.md, comparison.html and logs go")
    demo_byo.set_defaults(func=cmd_demo_byo)
    export_commands.add_parsers(sub)
    routes_commands.add_parsers(sub, _add_client_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Every failure is one line on stderr, ``versus: …``, and exit status 1."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place a failure becomes the user's line
        line = missing_extra(args, exc) if isinstance(exc, ModuleNotFoundError) else None
        print(f"versus: {line or describe_failure(exc)}", file=sys.stderr)
        if os.environ.get("VERSUS_DEBUG"):
            raise
        return 1


def describe_failure(exc: BaseException) -> str:
    """One line for a failed command: gRPC status and structured details, our errors, OS errors."""
    import grpc

    if isinstance(exc, grpc.RpcError):
        from services.common.client import error_details

        return error_details(exc).describe()
    if isinstance(exc, CliError | VersusError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return f"unexpected {type(exc).__name__}: {exc} (set VERSUS_DEBUG=1 for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
