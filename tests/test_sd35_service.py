"""The SD3.5 service on real channels with the project's tiny pipelines (random weights, real classes).

Assertions read what clients and operators see: status codes, ``google.rpc`` details and /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from conftest import InProcessServer, metric_sum
from PIL import Image
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc

from services.common.client import ErrorDetails, error_details
from services.sd35.config import Sd35Config
from services.sd35.requests import MAX_SEED
from services.sd35.scheduler import PROGRESS_INTERVAL_MS
from services.sd35.server import create_server

LARGE, TURBO, MEDIUM = sd35_pb2.VARIANT_LARGE, sd35_pb2.VARIANT_LARGE_TURBO, sd35_pb2.VARIANT_MEDIUM
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def sd35_config(dirs: dict[str, Path], **kw: object) -> Sd35Config:
    base = {"models": tuple(f"{v}={p}" for v, p in dirs.items()), "port": 0, "metrics_port": 0, "host": "127.0.0.1",
            "metrics_host": "127.0.0.1", "drain_delay_s": 0.0, "log_format": "text", "torch_threads": 1,
            "default_size": 128}
    return Sd35Config.from_env({}, **(base | kw))


@pytest.fixture(scope="module")
def server(sd35_dirs: dict[str, Path], adapter_root: Path):
    config = sd35_config(sd35_dirs, adapter_root=str(adapter_root), max_queue=2, max_adapters=3)
    with InProcessServer(create_server, config) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: InProcessServer):
    with server.channel() as ch:
        yield sd35_pb2_grpc.Sd35ServiceStub(ch)


def gen(variant: int = LARGE, **kw: object) -> sd35_pb2.GenerateRequest:
    fields = {"prompt": "a photo of a cat", "variant": variant, "width": 64, "height": 64, "steps": 4, "seed": 42} | kw
    return sd35_pb2.GenerateRequest(**fields)


def run(stub, request: sd35_pb2.GenerateRequest, timeout: float = 60) -> list[sd35_pb2.GenerateResponse]:
    return list(stub.Generate(request, timeout=timeout))


def result(events: list[sd35_pb2.GenerateResponse]) -> sd35_pb2.Result:
    assert events[-1].WhichOneof("event") == "result"
    return events[-1].result


def failure(call: Callable[[], object]) -> ErrorDetails:
    """The structured error of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call()
    return error_details(info.value)


def metric(server: InProcessServer, name: str, **labels: str) -> float:
    return metric_sum(server.metrics(), name, **labels)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@contextlib.contextmanager
def device_held(server: InProcessServer) -> Iterator[None]:
    """Occupy the device thread, so queue states are exact instead of racing the tiny pipeline."""
    started, gate = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        gate.wait(30)

    future = asyncio.run_coroutine_threadsafe(server.server.backend.run(hold), server.loop)
    assert started.wait(10)
    try:
        yield
    finally:
        gate.set()
        future.result(30)


# -- generation ----------------------------------------------------------------------------------------
def test_event_sequence_and_result(stub) -> None:
    events = run(stub, gen(steps=6, num_images=2))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "result" and kinds.count("result") == 1
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    steps = [p.step for p in progress]
    assert steps[0] == 1 and steps[-1] == 6 and steps == sorted(set(steps))
    assert all(p.total_steps == 6 for p in progress)
    assert all(b.elapsed_ms >= a.elapsed_ms for a, b in zip(progress, progress[1:], strict=False))
    r = result(events)
    assert list(r.seeds) == [42, 43] and r.variant == LARGE and r.steps == 6 and (r.width, r.height) == (64, 64)
    for img in r.images:
        assert img.mime_type == "image/png" and Image.open(io.BytesIO(img.data)).size == (64, 64)
    t = r.timings
    assert t.total_ms >= t.denoising_ms > 0 and t.text_encoding_ms > 0 and t.decode_ms > 0 and t.encode_ms > 0


def test_progress_is_coalesced_when_steps_are_short(stub) -> None:
    """Tiny steps take a few ms: at most one Progress per 50 ms, the first and the last step always."""
    events = run(stub, gen(steps=60))
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert progress[0].step == 1 and progress[-1].step == 60 and result(events).steps == 60
    gaps = [b.elapsed_ms - a.elapsed_ms for a, b in zip(progress[:-2], progress[1:-1], strict=True)]
    assert all(gap >= PROGRESS_INTERVAL_MS for gap in gaps), gaps
    assert len(progress) <= 2 + progress[-1].elapsed_ms / PROGRESS_INTERVAL_MS < 60


def test_variant_defaults_and_random_seeds(stub) -> None:
    turbo = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=TURBO, width=64, height=64)))
    assert (turbo.steps, turbo.guidance_scale) == (4, 0.0)
    large = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=LARGE, width=64, height=64, steps=2)))
    assert large.guidance_scale == pytest.approx(3.5)
    medium = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=MEDIUM, width=256, height=256, steps=2)))
    assert medium.guidance_scale == pytest.approx(4.5)
    unset = [result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=TURBO, width=64, height=64, num_images=2)))
             for _ in range(2)]
    for r in unset:  # a random seed in range, returned per image
        assert 0 <= r.seeds[0] <= MAX_SEED and r.seeds[1] == r.seeds[0] + 1
    assert unset[0].seeds[0] != unset[1].seeds[0]  # two draws from 2^63 values


def test_unset_size_fits_each_variants_pixel_budget(stub) -> None:
    """The service default (128) is below Medium's minimum (256x256): a request that leaves the size unset
    gets the nearest size inside the variant's budget instead of INVALID_ARGUMENT."""
    medium = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=MEDIUM, steps=1)))
    assert (medium.width, medium.height) == (256, 256)
    large = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=LARGE, steps=1)))
    assert (large.width, large.height) == (128, 128)


def test_same_seed_same_bytes_and_per_image_seeds(stub) -> None:
    a = result(run(stub, gen(num_images=2)))
    b = result(run(stub, gen(num_images=2)))
    assert [i.data for i in a.images] == [i.data for i in b.images]
    assert a.images[0].data != a.images[1].data  # seed 42 and 43 differ
    other = result(run(stub, gen(seed=7)))
    assert other.images[0].data != a.images[0].data


def test_output_formats_and_previews(stub) -> None:
    for fmt, mime in ((sd35_pb2.OUTPUT_FORMAT_JPEG, "image/jpeg"), (sd35_pb2.OUTPUT_FORMAT_WEBP, "image/webp")):
        r = result(run(stub, gen(output_format=fmt)))
        assert r.images[0].mime_type == mime and Image.open(io.BytesIO(r.images[0].data)).format in ("JPEG", "WEBP")
    events = run(stub, gen(steps=6, preview_every=2, num_images=2))
    previews = [e.preview for e in events if e.WhichOneof("event") == "preview"]
    assert [p.step for p in previews] == [2, 4] and all(len(p.images) == 2 for p in previews)
    assert Image.open(io.BytesIO(previews[0].images[0].data)).size == (8, 8)  # latent resolution


def test_model_info_reports_what_the_engine_applies(stub) -> None:
    from versus.common.v1 import common_pb2

    info = stub.GetModelInfo(sd35_pb2.GetModelInfoRequest(), timeout=10)
    by_variant = {v.variant: v for v in info.variants}
    # Medium's model card asks for layers 7-9; the tiny transformer has 10 layers, so all three apply.
    assert list(by_variant[MEDIUM].skip_guidance_layers) == [7, 8, 9]
    assert list(by_variant[LARGE].skip_guidance_layers) == []
    steps = (by_variant[LARGE].default_steps, by_variant[TURBO].default_steps, by_variant[MEDIUM].default_steps)
    assert steps == (28, 4, 40)
    assert by_variant[MEDIUM].min_pixels == 65536 and by_variant[LARGE].max_pixels == 1048576
    assert all(v.max_side >= 256 and str(v.max_side) == v.model.properties["max_side"] for v in info.variants)
    assert (info.default_variant, info.max_queue, info.max_adapters, info.max_prompt_chars) == (LARGE, 2, 3, 2000)
    for v in info.variants:  # which weights are served: the builders' provenance and a digest of the files
        assert v.model.properties["weights_kind"] == "random" and len(v.model.properties["weights_digest"]) == 64
    assert len({v.model.properties["weights_digest"] for v in info.variants}) == 3
    for v in info.variants:
        assert v.model.license == "stabilityai-ai-community" and v.model.parameters > 0
        assert v.model.precision == common_pb2.PRECISION_FP32 and v.model.family == "sd3.5"
        # the service default (128) fitted into each variant's pixel budget: Medium starts at 256x256
        expected = 256 if v.variant == MEDIUM else 128
        assert (v.default_width, v.default_height) == (expected, expected)


# -- validation -------------------------------------------------------------------------------------------
BAD = {
    "empty-prompt": (gen(prompt="  "), ["prompt"]),
    "long-prompt": (gen(prompt="x" * 2001), ["prompt"]),
    "huge-prompt": (gen(prompt="x" * 200_000), ["prompt"]),
    "long-negative": (gen(negative_prompt="x" * 2001), ["negative_prompt"]),
    "width-not-16": (gen(width=70), ["width"]),
    "height-not-16": (gen(height=100), ["height"]),
    "negative-width": (gen(width=-64), ["width"]),
    "beyond-max-side": (gen(width=16384, height=16), ["width"]),
    "over-budget": (gen(width=1024, height=1040), ["width", "height"]),
    "medium-under-budget": (gen(variant=MEDIUM, width=128, height=128), ["width", "height"]),
    "steps-0": (gen(steps=0), ["steps"]),
    "steps-101": (gen(steps=101), ["steps"]),
    "guidance-21": (gen(guidance_scale=21), ["guidance_scale"]),
    "guidance-negative": (gen(guidance_scale=-1), ["guidance_scale"]),
    "guidance-nan": (gen(guidance_scale=float("nan")), ["guidance_scale"]),
    "guidance-inf": (gen(guidance_scale=float("inf")), ["guidance_scale"]),
    "seed-negative": (gen(seed=-1), ["seed"]),
    "seed-too-big": (gen(seed=MAX_SEED + 1), ["seed"]),
    "images-5": (gen(num_images=5), ["num_images"]),
    "images-negative": (gen(num_images=-1), ["num_images"]),
    "seq-513": (gen(max_sequence_length=513), ["max_sequence_length"]),
    "preview-101": (gen(preview_every=101), ["preview_every"]),
    "preview-negative": (gen(preview_every=-1), ["preview_every"]),
    "bad-format": (gen(output_format=9), ["output_format"]),
    "bad-variant": (gen(variant=9), ["variant"]),
    "adapter-weight-5": (gen(adapters=[sd35_pb2.AdapterWeight(name="a", weight=5)]), ["adapters[0].weight"]),
    "adapter-weight-nan": (gen(adapters=[sd35_pb2.AdapterWeight(name="a", weight=float("nan"))]),
                           ["adapters[0].weight"]),
    "adapter-name-huge": (gen(adapters=[sd35_pb2.AdapterWeight(name="a", weight=1),
                                        sd35_pb2.AdapterWeight(name="n" * 20_000, weight=1)]), ["adapters[1].name"]),
    "adapter-name-nul": (gen(adapters=[sd35_pb2.AdapterWeight(name="a\x00b", weight=1)]), ["adapters[0].name"]),
    "adapter-twice": (gen(adapters=[sd35_pb2.AdapterWeight(name="a", weight=1)] * 2), ["adapters"]),
    "several-at-once": (gen(width=70, steps=0, seed=-5), ["width", "steps", "seed"]),
}


@pytest.mark.parametrize("case", BAD)
def test_validation_names_every_bad_field(case: str, stub) -> None:
    request, fields = BAD[case]
    d = failure(lambda: run(stub, request))
    assert d.code == INVALID and d.reason == "INVALID_ARGUMENT" and d.domain == "versus", d
    assert [f for f, _ in d.violations] == fields and d.message.startswith(fields[0]), d
    assert len(d.message) < 400  # client input is quoted, never echoed in full


def test_unknown_adapter_is_not_found_with_resource_info(stub) -> None:
    d = failure(lambda: run(stub, gen(adapters=[sd35_pb2.AdapterWeight(name="nope", weight=1)])))
    assert (d.code, d.reason, d.resource_type, d.resource_name) == (NOT_FOUND, "ADAPTER_NOT_FOUND", "adapter", "nope")
    assert d.message.startswith("adapters[0].name")


@pytest.mark.parametrize("prompt", ["\x00" * 2000, "🙂" * 2000, "\u200b", "\ufeff" * 50, "a\u0301" * 1000,
                                    "<|endoftext|></s><pad>" * 90, "a\r\n\t\x0b\x0c" * 300, "\U000e0001" * 200])
def test_hostile_prompts_generate(prompt: str, stub) -> None:
    """Tokenizers meet NUL bytes, control and zero-width characters, special-token text, long input."""
    r = result(run(stub, gen(prompt=prompt, negative_prompt=prompt, steps=1, max_sequence_length=512)))
    assert len(r.images) == 1


def test_variant_not_hosted_is_not_found(sd35_dirs: dict[str, Path]) -> None:
    with InProcessServer(create_server, sd35_config({"large-turbo": sd35_dirs["large-turbo"]})) as srv, \
            srv.channel() as ch:
        d = failure(lambda: run(sd35_pb2_grpc.Sd35ServiceStub(ch), gen(variant=LARGE)))
        assert (d.code, d.reason, d.resource_type, d.resource_name) == (NOT_FOUND, "VARIANT_NOT_HOSTED", "variant",
                                                                        "large")
        ok = result(run(sd35_pb2_grpc.Sd35ServiceStub(ch), sd35_pb2.GenerateRequest(prompt="x", width=64, height=64)))
        assert ok.variant == TURBO  # unset variant → the server's default (first hosted)


# -- cancellation, deadlines, the queue ----------------------------------------------------------------------
def test_cancel_stops_within_one_step_and_pipeline_is_reusable(server: InProcessServer, stub) -> None:
    steps_before = metric(server, "versus_step_seconds_count", model="large")
    cancelled = metric(server, "versus_cancellations_total", model="large", reason="cancelled")
    deadline = metric(server, "versus_cancellations_total", model="large", reason="deadline")
    call = stub.Generate(gen(steps=100, width=256, height=256), timeout=120)
    seen = 0
    for event in call:
        if event.WhichOneof("event") == "progress":
            seen = event.progress.step
            call.cancel()
            break
    assert call.code() == grpc.StatusCode.CANCELLED and seen >= 1
    wait_for(lambda: metric(server, "versus_cancellations_total", model="large", reason="cancelled") == cancelled + 1)
    assert metric(server, "versus_cancellations_total", model="large", reason="deadline") == deadline
    steps_run = metric(server, "versus_step_seconds_count", model="large") - steps_before
    assert seen <= steps_run <= seen + 1, (seen, steps_run)  # stopped within one step of the cancel
    wait_for(lambda: metric(server, "grpc_server_handled_total", grpc_method="Generate", grpc_code="CANCELLED") >= 1)
    assert result(run(stub, gen())).images  # immediately reusable


def test_deadline_stops_generation(server: InProcessServer, stub) -> None:
    steps_before = metric(server, "versus_step_seconds_count", model="large")
    cancelled = metric(server, "versus_cancellations_total", model="large", reason="cancelled")
    deadline = metric(server, "versus_cancellations_total", model="large", reason="deadline")
    d = failure(lambda: run(stub, gen(steps=100, width=256, height=256), timeout=0.5))
    assert d.code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: metric(server, "versus_cancellations_total", model="large", reason="deadline") == deadline + 1)
    assert metric(server, "versus_cancellations_total", model="large", reason="cancelled") == cancelled
    assert metric(server, "versus_step_seconds_count", model="large") - steps_before < 100


def _first(call) -> sd35_pb2.GenerateResponse:
    return next(iter(call))


def _cancel_and_wait(server: InProcessServer, call) -> None:
    """Cancel a call and wait until the server has seen it go."""
    before = metric(server, "grpc_server_handled_total", grpc_method="Generate", grpc_code="CANCELLED")
    call.cancel()
    wait_for(lambda: metric(server, "grpc_server_handled_total", grpc_method="Generate", grpc_code="CANCELLED")
             == before + 1)


def test_queue_is_ordered_bounded_and_cancelled_waiters_never_start(server: InProcessServer, stub) -> None:
    images = metric(server, "versus_images_generated_total", model="large")
    dropped = metric(server, "versus_cancellations_total", model="large", reason="cancelled_in_queue")
    with device_held(server):
        first = stub.Generate(gen(prompt="first", steps=3), timeout=60)
        assert _first(first).queued.position == 0  # then handed to the (held) device
        second = stub.Generate(gen(prompt="second", steps=2), timeout=60)
        assert _first(second).queued.position == 0
        third = stub.Generate(gen(prompt="third", steps=2), timeout=60)
        assert _first(third).queued.position == 1
        d = failure(lambda: run(stub, gen(prompt="fourth", steps=2)))  # max_queue=2: refused at once
        assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL")
        assert d.retry_after_s is not None and d.retry_after_s > 0
        assert metric(server, "versus_queue_depth", model="large") == 2
        _cancel_and_wait(server, third)
    finished = {}
    for name, call in (("second", second), ("first", first)):
        events = list(call)
        assert events[-1].WhichOneof("event") == "result"
        finished[name] = events[-1].result
    wait_for(lambda: metric(server, "versus_cancellations_total", model="large", reason="cancelled_in_queue")
             == dropped + 1)
    assert metric(server, "versus_images_generated_total", model="large") == images + 2  # third never ran
    # second started when first had finished on the device: it waited at least first's device time.
    t = finished["first"].timings
    assert finished["second"].timings.queue_ms >= t.text_encoding_ms + t.denoising_ms + t.decode_ms


def test_retry_hint_grows_with_the_work_ahead(server: InProcessServer, stub) -> None:
    with device_held(server):
        calls = [stub.Generate(gen(prompt="running", steps=4), timeout=60),
                 stub.Generate(gen(prompt="w1", steps=2), timeout=60),
                 stub.Generate(gen(prompt="w2", steps=2), timeout=60)]
        for call in calls:
            _first(call)
        light = failure(lambda: run(stub, gen(prompt="probe", steps=1)))
        _cancel_and_wait(server, calls[2])
        calls.append(stub.Generate(gen(prompt="w3", steps=90), timeout=60))  # takes w2's place
        _first(calls[3])
        heavy = failure(lambda: run(stub, gen(prompt="probe", steps=1)))
        stopped = metric(server, "versus_cancellations_total", model="large")
        for call in (calls[0], calls[1], calls[3]):
            _cancel_and_wait(server, call)
    # Cancelled while held: the running job stops before its first step, the waiters never start.
    wait_for(lambda: metric(server, "versus_cancellations_total", model="large") == stopped + 3)
    for d in (light, heavy):
        assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUEUE_FULL") and d.retry_after_s > 0
    # 4 + 2 + 2 steps ahead, then 4 + 2 + 90: the same seconds per step, 12 times the work.
    assert heavy.retry_after_s > 5 * light.retry_after_s, (light.retry_after_s, heavy.retry_after_s)


# -- adapters ------------------------------------------------------------------------------------------------
def load(stub, name: str, path: str = "loras/example.safetensors", variant: int = LARGE):
    return stub.LoadAdapter(sd35_pb2.LoadAdapterRequest(name=name, path=path, variant=variant), timeout=60).adapter


def unload(stub, name: str, variant: int = LARGE) -> None:
    stub.UnloadAdapter(sd35_pb2.UnloadAdapterRequest(name=name, variant=variant), timeout=60)


def listed(stub) -> list[str]:
    return [a.name for a in stub.ListAdapters(sd35_pb2.ListAdaptersRequest(), timeout=10).adapters]


def test_lora_load_effect_unload(stub) -> None:
    base = result(run(stub, gen())).images[0].data
    loaded = load(stub, "ex")
    assert (loaded.rank, loaded.path, loaded.variant) == (4, "loras/example.safetensors", LARGE)
    assert loaded.size_bytes > 0 and listed(stub) == ["ex"]
    with_lora = result(run(stub, gen(adapters=[sd35_pb2.AdapterWeight(name="ex", weight=1.0)]))).images[0].data
    assert with_lora != base
    assert result(run(stub, gen())).images[0].data == base  # loaded but not requested: base output
    dup = failure(lambda: load(stub, "ex"))
    assert (dup.code, dup.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ADAPTER_ALREADY_LOADED")
    unload(stub, "ex")
    assert result(run(stub, gen())).images[0].data == base  # byte-identical after unloading
    gone = failure(lambda: unload(stub, "ex"))
    assert (gone.code, gone.reason, gone.resource_type) == (NOT_FOUND, "ADAPTER_NOT_FOUND", "adapter")


@pytest.fixture(scope="module")
def hostile_files(adapter_root: Path) -> Path:
    """Files a hostile client might point LoadAdapter at, under the adapter root."""
    import random

    import torch
    from safetensors.torch import load_file, save_file

    d = adapter_root / "hostile"
    d.mkdir(exist_ok=True)
    example_file = adapter_root / "loras" / "example.safetensors"
    example, good = example_file.read_bytes(), load_file(str(example_file))
    (d / "random.safetensors").write_bytes(random.Random(0).randbytes(4096))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "truncated.safetensors").write_bytes(example[: len(example) // 2])
    (d / "header-only.safetensors").write_bytes(example[: 8 + int.from_bytes(example[:8], "little")])
    (d / "bad-json.safetensors").write_bytes((9).to_bytes(8, "little") + b"{not json")
    save_file({"foo": torch.zeros(3)}, str(d / "no-lora.safetensors"))
    save_file({}, str(d / "no-tensors.safetensors"))
    save_file({k: torch.tensor(1.0) for k in good}, str(d / "scalars.safetensors"))
    save_file({k: v.to(torch.int32) for k, v in good.items()}, str(d / "ints.safetensors"))
    save_file({k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) for k, v in good.items()}, str(d / "shapes.safetensors"))
    save_file(dict(list(good.items())[:1]), str(d / "half.safetensors"))
    save_file({"text_encoder.foo.lora_A.weight": torch.zeros(4, 4)}, str(d / "no-module.safetensors"))
    save_file({"transformer.nothing_here.lora_A.weight": torch.zeros(4, 32),
               "transformer.nothing_here.lora_B.weight": torch.zeros(32, 4)}, str(d / "no-target.safetensors"))
    (d / "dir.safetensors").mkdir(exist_ok=True)
    if not (d / "loop.safetensors").is_symlink():
        (d / "loop.safetensors").symlink_to(d / "loop.safetensors")
    outside = adapter_root.parent / "outside.safetensors"
    outside.write_bytes(b"x")
    if not (adapter_root / "link.safetensors").is_symlink():
        (adapter_root / "link.safetensors").symlink_to(outside)
    return d


BAD_FILES = ["random", "empty", "truncated", "header-only", "bad-json", "no-lora", "no-tensors", "scalars", "ints",
             "shapes", "half", "no-module", "no-target"]


@pytest.mark.parametrize("name", BAD_FILES)
def test_file_that_is_not_a_lora_is_invalid_argument(name: str, stub, hostile_files: Path) -> None:
    d = failure(lambda: load(stub, "bad", f"hostile/{name}.safetensors"))
    assert (d.code, d.reason, [f for f, _ in d.violations]) == (INVALID, "INVALID_ADAPTER", ["path"]), d
    assert listed(stub) == []


def test_failed_loads_leave_the_pipeline_as_it_was(stub, hostile_files: Path) -> None:
    base = result(run(stub, gen())).images[0].data
    for name in BAD_FILES:
        with pytest.raises(grpc.RpcError):
            load(stub, f"bad-{name}", f"hostile/{name}.safetensors")
    assert listed(stub) == [] and result(run(stub, gen())).images[0].data == base
    load(stub, "after")  # the names and the pipeline still work
    with_lora = result(run(stub, gen(adapters=[sd35_pb2.AdapterWeight(name="after", weight=1.0)]))).images[0].data
    unload(stub, "after")
    assert with_lora != base and result(run(stub, gen())).images[0].data == base


BAD_PATHS = {
    "absolute": ("/etc/passwd", INVALID, "BAD_ADAPTER_PATH"),
    "climbs": ("../outside.safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "climbs-inside": ("loras/../../x.safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "not-safetensors": ("loras/example.bin", INVALID, "BAD_ADAPTER_PATH"),
    "symlink-out": ("link.safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "symlink-loop": ("hostile/loop.safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "empty": ("", INVALID, "BAD_ADAPTER_PATH"),
    "nul": ("loras/exa\x00mple.safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "long-component": ("a" * 300 + ".safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "long-path": ("a/" * 2000 + "x.safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "huge": ("x" * 20_000 + ".safetensors", INVALID, "BAD_ADAPTER_PATH"),
    "missing": ("loras/missing.safetensors", NOT_FOUND, "ADAPTER_NOT_FOUND"),
    "directory": ("hostile/dir.safetensors", NOT_FOUND, "ADAPTER_NOT_FOUND"),
    "under-a-file": ("loras/example.safetensors/x.safetensors", NOT_FOUND, "ADAPTER_NOT_FOUND"),
}


@pytest.mark.parametrize("case", BAD_PATHS)
def test_adapter_paths_a_client_gets_wrong(case: str, stub, hostile_files: Path) -> None:
    path, code, reason = BAD_PATHS[case]
    d = failure(lambda: load(stub, "bad", path))
    assert (d.code, d.reason) == (code, reason), d
    assert d.message.startswith("path") and len(d.message) < 400
    if code == INVALID:
        assert [f for f, _ in d.violations] == ["path"]


BAD_NAMES = {"empty": "", "dot": "a.b", "nul": "a\x00b", "newline": "ok\n", "space": "a b", "non-ascii": "café",
             "65-chars": "n" * 65, "huge": "n" * 20_000}


@pytest.mark.parametrize("case", BAD_NAMES)
def test_adapter_names_are_checked_before_anything_else(case: str, stub) -> None:
    for call in (lambda: load(stub, BAD_NAMES[case]), lambda: unload(stub, BAD_NAMES[case])):
        d = failure(call)
        assert (d.code, [f for f, _ in d.violations]) == (INVALID, ["name"]), d
        assert len(d.message) < 400  # quoted, not echoed: a 20,000-character name fits in the trailers


def test_concurrent_loads_of_one_name_have_one_winner(stub) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def attempt(call: Callable[[], object]) -> str:
        try:
            call()
        except grpc.RpcError as err:
            return error_details(err).reason
        return "OK"

    with ThreadPoolExecutor(8) as pool:
        loads = list(pool.map(lambda _: attempt(lambda: load(stub, "race")), range(8)))
    assert sorted(loads) == ["ADAPTER_ALREADY_LOADED"] * 7 + ["OK"], loads
    assert listed(stub) == ["race"]
    assert result(run(stub, gen(adapters=[sd35_pb2.AdapterWeight(name="race", weight=0.5)]))).images
    with ThreadPoolExecutor(4) as pool:
        unloads = list(pool.map(lambda _: attempt(lambda: unload(stub, "race")), range(4)))
    assert sorted(unloads) == ["ADAPTER_NOT_FOUND"] * 3 + ["OK"], unloads
    assert listed(stub) == []


def test_adapter_limit_is_resource_exhausted_without_retry(stub) -> None:
    names = ["one", "two", "three"]  # max_adapters=3
    for name in names:
        load(stub, name)
    try:
        d = failure(lambda: load(stub, "four"))
        assert (d.code, d.reason, d.retry_after_s) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_ADAPTERS", None)
    finally:
        for name in names:
            unload(stub, name)


def test_adapter_unloaded_while_a_request_waits_is_not_found(server: InProcessServer, stub) -> None:
    load(stub, "brief")
    with device_held(server):
        first = stub.Generate(gen(prompt="first", steps=2), timeout=60)
        _first(first)
        waiting = stub.Generate(gen(adapters=[sd35_pb2.AdapterWeight(name="brief", weight=1.0)]), timeout=60)
        _first(waiting)
        unloading = stub.UnloadAdapter.future(sd35_pb2.UnloadAdapterRequest(name="brief", variant=LARGE), timeout=60)
        wait_for(lambda: metric(server, "versus_rpcs_in_flight", grpc_method="UnloadAdapter") == 1)
    unloading.result()
    assert result(list(first)).images
    d = failure(lambda: list(waiting))
    assert (d.code, d.reason, d.resource_name) == (NOT_FOUND, "ADAPTER_NOT_FOUND", "brief")


def test_adapter_loading_disabled_without_root(sd35_dirs: dict[str, Path]) -> None:
    with InProcessServer(create_server, sd35_config({"large-turbo": sd35_dirs["large-turbo"]})) as srv, \
            srv.channel() as ch:
        d = failure(lambda: load(sd35_pb2_grpc.Sd35ServiceStub(ch), "x", variant=TURBO))
        assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "ADAPTER_LOADING_DISABLED")


# -- metrics ----------------------------------------------------------------------------------------------------
def test_metrics(server: InProcessServer, stub) -> None:
    run(stub, gen())
    m = server.metrics()
    for name in ("versus_generation_seconds_count", "versus_step_seconds_count", "versus_images_generated_total"):
        assert metric_sum(m, name, model="large") > 0, name
    assert 'versus_queue_depth{model="large"}' in m
    assert metric_sum(m, "versus_model_ready", model="medium") == 1
    assert metric_sum(m, "grpc_server_handled_total", grpc_code="OK", grpc_method="Generate") > 0


def test_raw_output_is_the_pngs_pixels_without_encoding(stub) -> None:  # noqa: ANN001
    """OUTPUT_FORMAT_RAW: width x height x 3 RGB bytes, the same pixels the PNG of the same request holds."""
    import io

    from PIL import Image

    png = result(run(stub, gen(seed=5, output_format=sd35_pb2.OUTPUT_FORMAT_PNG)))
    raw = result(run(stub, gen(seed=5, output_format=sd35_pb2.OUTPUT_FORMAT_RAW)))
    assert raw.images[0].mime_type == "application/x-raw-rgb"
    assert len(raw.images[0].data) == raw.width * raw.height * 3
    with Image.open(io.BytesIO(png.images[0].data)) as decoded:
        assert decoded.convert("RGB").tobytes() == raw.images[0].data
