"""An Open Inference Protocol (KServe V2 gRPC) client for registered image classifiers.

It reads what the endpoint is from ModelMetadata (see :mod:`services.gateway.deployments`), and sends one
image per ModelInfer request. Every answer is checked against the contract the endpoint declared: an
FP32 ``[n, N]`` output of exactly ``n * N`` values. Trouble is sorted as the evidence rules want it:

- :class:`EndpointOutage` — the endpoint cannot answer now (UNAVAILABLE, DEADLINE_EXCEEDED,
  RESOURCE_EXHAUSTED, CANCELLED, NOT_FOUND while running): retried with back-off, then UNAVAILABLE;
- :class:`EndpointFault` — it answered out of contract (INTERNAL, UNKNOWN, INVALID_ARGUMENT for a request
  built from its own metadata, a wrong shape or size): CONTRADICTED, with what was seen.

Uses the generated code that tritonclient ships (package ``inference``), the one copy in the process.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from services.common.client import ErrorDetails, error_details
from services.common.errors import ConfigError
from services.gateway.deployments import DeploymentSpec, Processor, read_labels

OUTAGE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                grpc.StatusCode.CANCELLED, grpc.StatusCode.NOT_FOUND}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class EndpointOutage(Exception):
    def __init__(self, details: ErrorDetails) -> None:
        super().__init__(details.describe())
        self.details = details


class EndpointFault(Exception):
    """The endpoint answered out of its own contract; ``seen`` says what it sent."""

    def __init__(self, seen: str) -> None:
        super().__init__(seen)
        self.seen = seen


@dataclass
class Endpoint:
    """What an endpoint is, read from its metadata and the user's files."""

    input_name: str
    input_datatype: str  # "BYTES" or "FP32"
    output_name: str
    num_labels: int
    labels: list[str]
    platform: str = ""
    versions: list[str] = field(default_factory=list)
    processor: Processor | None = None

    def describe(self) -> str:
        kind = "encoded images" if self.input_datatype == "BYTES" else "FP32 pixels"
        return (f"{self.input_name} ({kind}) → {self.output_name} FP32 [-1, {self.num_labels}]"
                + (f", platform {self.platform}" if self.platform else ""))


#: Calls go round-robin over every address the target resolves to (``dns:///`` a headless Service: one connection
#: per pod; ``ipv4:A,B``), not over one connection to whichever pod a ClusterIP picked. Nothing is retried here: a
#: forwarded request is its client's to retry, and a mirror is never retried.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def deployment_channel(spec: DeploymentSpec, interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None
                       ) -> grpc.aio.Channel:
    """The channel to a registered deployment, for comparisons and for routes alike: round-robin, keepalive, the
    deployment's TLS root, 64 MiB messages."""
    options = [("grpc.service_config", SERVICE_CONFIG),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_permit_without_calls", 1)]
    if spec.tls_ca:
        creds = grpc.ssl_channel_credentials(Path(spec.tls_ca).read_bytes())
        return grpc.aio.secure_channel(spec.target, creds, options=options, interceptors=interceptors or None)
    return grpc.aio.insecure_channel(spec.target, options=options, interceptors=interceptors or None)


class OipClient:
    """One registered deployment's channel."""

    def __init__(self, spec: DeploymentSpec) -> None:
        self.spec = spec
        self.channel = deployment_channel(spec)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        token = spec.token()
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.endpoint: Endpoint | None = None

    async def close(self) -> None:
        await self.channel.close()

    async def _unary(self, method: str, request: object, timeout_s: float) -> object:
        try:
            return await getattr(self.stub, method)(request, timeout=max(0.001, timeout_s), metadata=self.metadata)
        except grpc.RpcError as err:
            details = error_details(err)
            if details.code in OUTAGE_CODES:
                raise EndpointOutage(details) from None
            if details.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                raise ConfigError(f"deployment {self.spec.id}: {details.describe()} (check token-file=)") from None
            raise EndpointFault(f"{method} answered {details.describe()[:200]}") from None

    async def describe(self, timeout_s: float) -> Endpoint:
        """Read ModelMetadata and decide whether this is an image classifier (ConfigError if not)."""
        meta = await self._unary("ModelMetadata", service_pb2.ModelMetadataRequest(
            name=self.spec.model, version=self.spec.version), timeout_s)
        self.endpoint = await self._endpoint(meta, timeout_s)  # type: ignore[arg-type]
        return self.endpoint

    async def _endpoint(self, meta: service_pb2.ModelMetadataResponse, timeout_s: float) -> Endpoint:
        where = f"deployment {self.spec.id} ({self.spec.target}, model {self.spec.model})"
        images = [t for t in meta.inputs if t.datatype == "BYTES" or (t.datatype == "FP32" and len(t.shape) == 4)]
        if len(images) != 1 or len(meta.inputs) != 1:
            shown = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in meta.inputs) or "none"
            raise ConfigError(f"{where} is not an image classifier: needs one BYTES or FP32 [-1,3,H,W] input, "
                              f"has {shown}")
        image = images[0]
        processor = None
        if image.datatype == "FP32":
            if not self.spec.processor:
                raise ConfigError(f"{where} takes FP32 pixels: give processor=preprocessor_config.json")
            processor = Processor.from_file(self.spec.processor)
            if list(image.shape[1:]) not in ([3, processor.height, processor.width], [3, -1, -1]):
                raise ConfigError(f"{where}: input {image.name} {list(image.shape)} does not take the processor's "
                                  f"3x{processor.height}x{processor.width}")
        logits = [t for t in meta.outputs if t.datatype == "FP32" and len(t.shape) == 2]
        if self.spec.output:
            logits = [t for t in meta.outputs if t.name == self.spec.output]
            if not logits or logits[0].datatype != "FP32" or len(logits[0].shape) != 2:
                raise ConfigError(f"{where}: output={self.spec.output} is not an FP32 [-1, N] output")
        if len(logits) != 1:
            names = ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in meta.outputs) or "none"
            raise ConfigError(f"{where}: needs exactly one FP32 [-1, N] output (or output=NAME), has {names}")
        out = logits[0]
        n = int(out.shape[1])
        labels = read_labels(self.spec.labels) if self.spec.labels else await self._read_label_output(
            meta, image, processor, n, timeout_s)
        if n > 0 and len(labels) != n:
            raise ConfigError(f"{where}: {len(labels)} labels but output {out.name} has {n} columns")
        return Endpoint(image.name, image.datatype, out.name, n if n > 0 else len(labels), labels, meta.platform,
                        list(meta.versions), processor)

    async def _read_label_output(self, meta: service_pb2.ModelMetadataResponse, image: object,
                                 processor: Processor | None, n: int, timeout_s: float) -> list[str]:
        """Labels from a BYTES label output: one request with top_k = N pairs each label with its
        probability column (the label output lists labels best first)."""
        where = f"deployment {self.spec.id}"
        bytes_out = [t for t in meta.outputs if t.datatype == "BYTES"]
        if len(bytes_out) != 1 or n <= 0:
            raise ConfigError(f"{where}: its labels cannot be read (no labels= file and no single BYTES label "
                              "output beside a fixed-width FP32 output)")
        probe = Endpoint(image.name, image.datatype, "", n, [], processor=processor)  # type: ignore[attr-defined]
        request = self._request(probe, [_probe_png()], extra_outputs=(bytes_out[0].name,))
        request.parameters["top_k"].int64_param = n
        scores_name = [t.name for t in meta.outputs if t.datatype == "FP32" and len(t.shape) == 2]
        request.outputs[0].name = self.spec.output or scores_name[0]
        reply = await self._unary("ModelInfer", request, timeout_s)
        scores = _fp32_output(reply, request.outputs[0].name, 1, n)[0]  # type: ignore[arg-type]
        names = _bytes_output(reply, bytes_out[0].name)  # type: ignore[arg-type]
        labels = _classification_labels(names, n) or _labels_by_rank(names, scores)
        if labels is None:
            raise ConfigError(f"{where}: its labels cannot be read from {bytes_out[0].name} (got {len(names)} "
                              f"names for {n} columns, or tied scores): give labels=FILE")
        return labels

    def _request(self, endpoint: Endpoint, images: list[bytes], extra_outputs: tuple[str, ...] = ()
                 ) -> service_pb2.ModelInferRequest:
        request = service_pb2.ModelInferRequest(model_name=self.spec.model, model_version=self.spec.version)
        tensor = request.inputs.add(name=endpoint.input_name, datatype=endpoint.input_datatype)
        if endpoint.input_datatype == "BYTES":
            tensor.shape.extend([len(images)])
            encoded = np.empty(len(images), dtype=np.object_)
            encoded[:] = images
            request.raw_input_contents.append(serialize_byte_tensor(encoded).item())
        else:
            assert endpoint.processor is not None
            pixels = np.stack([endpoint.processor(d) for d in images])
            tensor.shape.extend(pixels.shape)
            request.raw_input_contents.append(pixels.astype("<f4").tobytes())
        request.outputs.add(name=endpoint.output_name)
        for name in extra_outputs:
            request.outputs.add(name=name)
        return request

    async def infer(self, images: list[bytes], timeout_s: float, request_id: str = "") -> tuple[np.ndarray, dict]:
        """Scores [len(images), N] for encoded images, and the response parameters (e.g. weights_digest)."""
        endpoint = self.endpoint
        assert endpoint is not None, "describe() first"
        try:
            request = self._request(endpoint, images)
        except (OSError, ValueError) as exc:  # the image would not preprocess: the set's fault, not the endpoint's
            raise ValueError(f"preprocessing failed: {exc}") from None
        request.id = request_id
        reply = await self._unary("ModelInfer", request, timeout_s)
        scores = _fp32_output(reply, endpoint.output_name, len(images), endpoint.num_labels)  # type: ignore[arg-type]
        params = {k: _param_value(v) for k, v in reply.parameters.items()}  # type: ignore[attr-defined]
        return scores, params


def _classification_labels(entries: list[str], n: int) -> list[str] | None:
    """Triton's classification extension: ``"<score>:<index>:<label>"`` for every column."""
    labels = [""] * n
    for entry in entries:
        parts = entry.split(":", 2)
        if len(parts) != 3 or not parts[1].isdigit() or not int(parts[1]) < n:
            return None
        labels[int(parts[1])] = parts[2]
    return labels if all(labels) else None


def _labels_by_rank(names: list[str], scores: np.ndarray) -> list[str] | None:
    """Plain label names, best first: paired with the columns by sorting the scores (no ties allowed)."""
    n = len(scores)
    if len(names) != n or len(set(np.round(scores, 7))) != n:
        return None
    labels = [""] * n
    for name, index in zip(names, np.argsort(-scores, kind="stable"), strict=True):
        labels[int(index)] = name
    return labels


def _probe_png() -> bytes:
    """A deterministic gradient PNG: any image will do to pair label names with score columns."""
    import io

    from PIL import Image

    img = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _param_value(p: service_pb2.InferParameter) -> object:
    return getattr(p, p.WhichOneof("parameter_choice")) if p.WhichOneof("parameter_choice") else None


def _fp32_output(reply: service_pb2.ModelInferResponse, name: str, rows: int, cols: int) -> np.ndarray:
    """The named FP32 output as [rows, cols], from raw or typed contents; EndpointFault when it is not that."""
    for i, out in enumerate(reply.outputs):
        if out.name != name:
            continue
        if out.datatype != "FP32" or list(out.shape) != [rows, cols]:
            raise EndpointFault(f"output {name} came back {out.datatype} {list(out.shape)}, expected FP32 "
                                f"[{rows}, {cols}]")
        if i < len(reply.raw_output_contents):
            raw = reply.raw_output_contents[i]
            if len(raw) != rows * cols * 4:
                raise EndpointFault(f"output {name}: {len(raw)} bytes for FP32 [{rows}, {cols}]")
            values = np.frombuffer(raw, dtype="<f4")
        else:
            values = np.asarray(out.contents.fp32_contents, dtype=np.float32)
            if values.size != rows * cols:
                raise EndpointFault(f"output {name}: {values.size} values for FP32 [{rows}, {cols}]")
        values = values.reshape(rows, cols)
        if not np.isfinite(values).all():
            raise EndpointFault(f"output {name} holds NaN or infinite scores")
        return values
    raise EndpointFault(f"the reply has no output {name} (outputs: {[o.name for o in reply.outputs]})")


def _bytes_output(reply: service_pb2.ModelInferResponse, name: str) -> list[str]:
    for i, out in enumerate(reply.outputs):
        if out.name != name:
            continue
        if i < len(reply.raw_output_contents):
            try:
                items = deserialize_bytes_tensor(reply.raw_output_contents[i])
            except struct.error:
                raise EndpointFault(f"output {name}: raw BYTES contents are not length-prefixed elements") from None
            return [bytes(b).decode("utf-8", "replace") for b in items]
        return [b.decode("utf-8", "replace") for b in out.contents.bytes_contents]
    return []
