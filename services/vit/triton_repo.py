"""``versus triton export``: a Triton Inference Server model repository for an exported ViT (no gRPC).

Two platforms, one input/output contract (``pixel_values`` → ``logits``, ``last_hidden_state``,
``hidden_states``; see :mod:`services.vit.onnx_export`; the python platform may give the input another name):

- ``onnxruntime`` (production): ``model.onnx`` served by Triton's ONNX Runtime backend on GPU
  instances, with dynamic batching and a bounded queue delay.
- ``python`` (runs here): the tritonserver in the ``nvidia-pytriton`` wheel ships only the Python
  backend, so the same ``model.onnx`` runs under ONNX Runtime inside Triton's Python stub
  (:mod:`services.vit.triton_python_model`), CPU instances.

The repository also holds the processor config and ``config.json`` next to ``config.pbtxt``, so the
service can take ``--model REPO/NAME`` for its preprocessing and labels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ConfigError
from services.vit.engine import ONNX_FILE
from services.vit.onnx_engine import EXPORT_META, INPUT, read_export_meta

PLATFORMS = ("onnxruntime", "python")
#: Model-config parameter that tells the service which precision the repository's model runs at.
PRECISION_PARAMETER = "versus_precision"


@dataclass(frozen=True)
class RepoOptions:
    """What goes into ``config.pbtxt``."""

    name: str = "vit"
    platform: str = "onnxruntime"
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    instances: int = 1
    device: str = "cuda"  # cpu | cuda | cuda:N (the instance group's kind, and its GPU when N is given)
    threads: int = 0  # ORT intra-op threads of the python platform (0 = ORT default)
    # The model's input name on the wire. The python platform may rename it (a candidate that must take the
    # requests another server's model takes, e.g. Versus' ``vit-tensor`` PIXELS); ONNX Runtime's backend
    # needs the graph's own name.
    input_name: str = INPUT

    def __post_init__(self) -> None:
        if self.platform not in PLATFORMS:
            raise ConfigError(f"--platform must be one of {PLATFORMS}")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.platform == "python" and self.device != "cpu":
            raise ConfigError("the python platform runs ONNX Runtime on the CPU: use --device cpu")
        if min(self.max_batch_size, self.instances) < 1 or self.max_queue_delay_us < 0 or self.threads < 0:
            raise ConfigError("--max-batch-size and --instances must be >= 1, delays and threads >= 0")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}", self.input_name):
            raise ConfigError(f"the input name must be 1..64 letters, digits, '_', '.', '-', got {self.input_name!r}")
        if self.platform == "onnxruntime" and self.input_name != INPUT:
            raise ConfigError(f"the onnxruntime platform takes the graph's input name {INPUT!r}; only the python "
                              "platform renames it")


def _dims(values: list[int]) -> str:
    return ", ".join(str(v) for v in values)


def config_pbtxt(options: RepoOptions, *, image_size: int, num_labels: int, tokens: int, hidden: int,
                 layers: int, precision: str) -> str:
    """The model configuration (protobuf text format)."""
    backend = "onnxruntime" if options.platform == "onnxruntime" else "python"
    kind = "KIND_CPU" if options.device == "cpu" else "KIND_GPU"
    gpus = f" gpus: [ {options.device.split(':')[1]} ]" if ":" in options.device else ""
    outputs = (("logits", [num_labels]), ("last_hidden_state", [tokens, hidden]),
               ("hidden_states", [layers + 1, tokens, hidden]))
    params = {PRECISION_PARAMETER: precision}
    if options.platform == "python":
        params["intra_op_threads"] = str(options.threads)
    lines = [
        f'name: "{options.name}"',
        f'backend: "{backend}"',
        f"max_batch_size: {options.max_batch_size}",
        f'input [ {{ name: "{options.input_name}" data_type: TYPE_FP32 '
        f"dims: [ {_dims([3, image_size, image_size])} ] }} ]",
        "output [",
        ",\n".join(f'  {{ name: "{n}" data_type: TYPE_FP32 dims: [ {_dims(d)} ] }}' for n, d in outputs),
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}",
        f"instance_group [ {{ count: {options.instances} kind: {kind}{gpus} }} ]",
        *(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items()),
    ]
    return "\n".join(lines) + "\n"


def write_repository(export_dir: Path, repo: Path, options: RepoOptions) -> Path:
    """Write ``repo/NAME`` from an ONNX export directory; returns the model directory."""
    from transformers import AutoConfig

    meta = read_export_meta(export_dir)
    config = AutoConfig.from_pretrained(export_dir, local_files_only=True)
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    model_dir = repo / options.name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(export_dir / ONNX_FILE, version / ONNX_FILE)
    if options.platform == "python":
        shutil.copyfile(Path(__file__).with_name("triton_python_model.py"), version / "model.py")
    for name in ("config.json", "preprocessor_config.json", EXPORT_META):
        shutil.copyfile(export_dir / name, model_dir / name)
    text = config_pbtxt(options, image_size=config.image_size, num_labels=config.num_labels, tokens=tokens,
                        hidden=config.hidden_size, layers=config.num_hidden_layers,
                        precision=meta.get("precision", "fp32"))
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return model_dir


# -- the tritonserver in the nvidia-pytriton wheel, run here ----------------------------------------
def bundled_tritonserver() -> Path | None:
    """The ``tritonserver`` binary the nvidia-pytriton wheel ships, or None when it is not installed."""
    try:
        import pytriton
    except ImportError:
        return None
    binary = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
    return binary if binary.is_file() else None


def stage_backends(workdir: Path) -> Path:
    """A backend directory for the bundled server: its Python backend plus the stub for THIS interpreter's
    Python version (the wheel keeps the stubs apart)."""
    import pytriton

    dist = Path(pytriton.__file__).parent / "tritonserver"
    target = workdir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(dist / "python_backend_stubs" / version / "triton_python_backend_stub",
                 target / "triton_python_backend_stub")
    return workdir / "backends"


def server_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the bundled tritonserver.

    Pitfall: the Python 3.11 stub links libpython3.11; unless ``LD_LIBRARY_PATH`` holds the running
    interpreter's LIBDIR it loads the system libpython (another build, or none). The stub's interpreter
    must also import numpy and onnxruntime from this environment (``PYTHONPATH``).
    """
    import pytriton

    env = dict(os.environ if base is None else base)
    libs = [str(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    site = sysconfig.get_paths()["purelib"]
    env["PYTHONPATH"] = ":".join([site, env.get("PYTHONPATH", "")]).rstrip(":")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def server_command(binary: Path, repo: Path, backends: Path, *, grpc_port: int, http_port: int,
                   metrics_port: int) -> list[str]:
    """The tritonserver command line for a local CPU run."""
    return [str(binary), f"--model-repository={repo}", f"--backend-directory={backends}",
            f"--grpc-port={grpc_port}", f"--http-port={http_port}", f"--metrics-port={metrics_port}",
            "--allow-metrics=false", "--log-verbose=0", "--exit-on-error=true", "--strict-readiness=true"]


def describe_repository(model_dir: Path) -> dict:
    """A summary for the CLI: the config and the export it came from."""
    return {"model_dir": str(model_dir), "config": (model_dir / "config.pbtxt").read_text(encoding="utf-8"),
            "export": json.loads((model_dir / EXPORT_META).read_text(encoding="utf-8"))}
