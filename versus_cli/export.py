"""``versus export onnx`` and ``versus triton export|serve-local``: model conversion and a local Triton.

Wired into the ``versus`` parser by :func:`add_parsers`; heavy modules are imported only when a command
runs. :class:`LocalTriton` starts the tritonserver bundled with ``nvidia-pytriton`` on a repository
(tests, benchmarks and ``versus triton serve-local``).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from services.common.config import DeprecatedFlag


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTriton:
    """The bundled tritonserver on ``repo`` (CPU, Python backend), as a context manager.

    ``with LocalTriton(repo) as triton: ... triton.url`` — waits until every model is ready; the log
    is kept in ``log_path`` (shown in the error when the server exits early).
    """

    def __init__(self, repo: Path, *, log_path: Path | None = None, grpc_port: int = 0) -> None:
        self.repo = repo
        self.grpc_port = grpc_port or _free_port()
        self._tmp = tempfile.TemporaryDirectory(prefix="versus-triton-")
        self.log_path = log_path or Path(self._tmp.name) / "tritonserver.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout_s: float = 120.0, wait_models: tuple[str, ...] = ()) -> LocalTriton:
        from services.vit.triton_repo import bundled_tritonserver, server_command, server_environment, stage_backends

        binary = bundled_tritonserver()
        if binary is None:
            raise FileNotFoundError("tritonserver is not installed (pip install nvidia-pytriton)")
        backends = stage_backends(Path(self._tmp.name))
        cmd = server_command(binary, self.repo, backends, grpc_port=self.grpc_port, http_port=_free_port(),
                             metrics_port=_free_port())
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, env=server_environment(), stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout_s, wait_models)
        return self

    def wait_ready(self, timeout_s: float, models: tuple[str, ...] = ()) -> None:
        import tritonclient.grpc as triton_grpc

        deadline = time.monotonic() + timeout_s
        with triton_grpc.InferenceServerClient(self.url) as client:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    tail = self.log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{tail}")
                try:
                    if client.is_server_ready() and all(client.is_model_ready(m) for m in models):
                        return
                except Exception:  # noqa: BLE001, S110 - not listening yet
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"tritonserver on {self.url} not ready after {timeout_s:.0f}s (log {self.log_path})")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LocalTriton:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()


# -- commands -----------------------------------------------------------------------------------
def cmd_export_onnx(args: argparse.Namespace) -> int:
    from services.vit.onnx_export import export_onnx

    report = export_onnx(Path(args.model), Path(args.out), quantize_to=args.quantize,
                         calibration=Path(args.calibration) if args.calibration else None,
                         images=Path(args.images) if args.images else None, log_fn=print)
    print(f"exported {report.precision} ({report.quantization}) to {args.out}; serve it with "
          f"`versus serve vit --backend onnx --model {args.out}`")
    return 0


def cmd_triton_export(args: argparse.Namespace) -> int:
    from services.vit.onnx_engine import EXPORT_META
    from services.vit.onnx_export import export_onnx
    from services.vit.triton_repo import RepoOptions, write_repository

    options = RepoOptions(name=args.name, platform=args.platform, max_batch_size=args.max_batch_size,
                          max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                          device=_instance_device(args.device, args.platform),
                          threads=args.threads)
    from services.common.hub import resolve_source

    source = resolve_source(args.model).path  # a directory, or a hub id already in the cache (offline)
    with tempfile.TemporaryDirectory(prefix="versus-export-") as tmp:
        if not (source / EXPORT_META).exists():  # a checkpoint: export it first
            export_onnx(source, Path(tmp), quantize_to=args.quantize, log_fn=print)
            source = Path(tmp)
        model_dir = write_repository(source, Path(args.out), options)
    print(f"wrote {model_dir} ({options.platform}, {options.device}); serve it with tritonserver "
          f"--model-repository={args.out} and `versus serve vit --backend triton --triton-model {options.name} "
          f"--model {model_dir}`")
    return 0


def cmd_triton_serve_local(args: argparse.Namespace) -> int:
    triton = LocalTriton(Path(args.repo), grpc_port=args.grpc_port)
    try:
        triton.start()
        print(f"tritonserver serving {args.repo} on {triton.url} (log {triton.log_path}); Ctrl-C stops it")
        assert triton.proc is not None
        return triton.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        triton.stop()


def _instance_device(device: str, platform: str) -> str:
    """``--device`` in the vocabulary of ``versus serve`` (auto|cpu|cuda|cuda:N); 'gpu' still works for a release."""
    if device == "gpu":
        print("versus: --device gpu is deprecated and will be removed in the next release; use --device cuda",
              file=sys.stderr)
        return "cuda"
    if device == "auto":
        return "cuda" if platform == "onnxruntime" else "cpu"
    return device


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` and ``triton`` to the ``versus`` command's subparsers."""
    export = sub.add_parser("export", help="convert a model for another runtime")
    export_sub = export.add_subparsers(dest="export_command", required=True)
    onnx = export_sub.add_parser("onnx", help="ViT checkpoint → ONNX model directory (parity-checked)")
    onnx.add_argument("--model", required=True, help="ViT checkpoint directory (safetensors)")
    onnx.add_argument("--out", required=True, help="output directory (a model directory for --backend onnx)")
    onnx.add_argument("--quantize", choices=("none", "int8"), default="none",
                      help="int8: ONNX Runtime quantization (dynamic, or static QDQ with --calibration)")
    onnx.add_argument("--calibration", default="", help="directory of calibration images (static int8)")
    onnx.add_argument("--images", default="", help="directory of images for the parity check (default: synthetic)")
    onnx.set_defaults(func=cmd_export_onnx)

    triton = sub.add_parser("triton", help="Triton Inference Server repositories")
    triton_sub = triton.add_subparsers(dest="triton_command", required=True)
    tex = triton_sub.add_parser("export", help="write a Triton model repository for a ViT")
    tex.add_argument("--model", required=True, help="ViT checkpoint or `versus export onnx` directory")
    tex.add_argument("--out", required=True, help="repository directory (the model goes in OUT/NAME)")
    tex.add_argument("--name", default="vit", help="model name in the repository")
    tex.add_argument("--platform", choices=("onnxruntime", "python"), default="onnxruntime",
                     help="onnxruntime: production (GPU); python: ONNX Runtime in Triton's Python backend (runs here)")
    tex.add_argument("--quantize", choices=("none", "int8"), default="none", help="when --model is a checkpoint")
    tex.add_argument("--max-batch-size", type=int, default=32)
    tex.add_argument("--max-queue-delay-us", type=int, default=2000, help="dynamic batcher's max queue delay")
    tex.add_argument("--instances", type=int, default=1, help="model instances")
    tex.add_argument("--device", default="auto", metavar="{auto,cpu,cuda,cuda:N}",
                     help="where the instances run (auto: cuda for onnxruntime, cpu for python; 'gpu' is a "
                     "deprecated spelling of cuda)")
    tex.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per instance (python platform)")
    tex.set_defaults(func=cmd_triton_export)
    local = triton_sub.add_parser("serve-local", help="run the bundled tritonserver (CPU) on a repository")
    local.add_argument("--repo", required=True)
    local.add_argument("--port", dest="grpc_port", type=int, default=8001, help="gRPC port")
    local.add_argument("--grpc-port", dest="grpc_port", type=int, action=DeprecatedFlag, new_flag="--port",
                       help=argparse.SUPPRESS)
    local.set_defaults(func=cmd_triton_serve_local)
