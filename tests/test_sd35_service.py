"""The SD3.5 service on real channels with the project's tiny pipelines (random weights, real classes)."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import grpc
import pytest
from PIL import Image

from conftest import InProcessServer
from services.sd35.config import Sd35Config
from services.sd35.server import create_server
from versus.sd35.v1 import sd35_pb2, sd35_pb2_grpc

LARGE, TURBO, MEDIUM = sd35_pb2.VARIANT_LARGE, sd35_pb2.VARIANT_LARGE_TURBO, sd35_pb2.VARIANT_MEDIUM


def sd35_config(dirs: dict[str, Path], **kw: object) -> Sd35Config:
    base = {"models": tuple(f"{v}={p}" for v, p in dirs.items()), "port": 0, "metrics_port": 0, "host": "127.0.0.1",
            "metrics_host": "127.0.0.1", "drain_delay_s": 0.0, "log_format": "text", "torch_threads": 1,
            "default_size": 128}
    return Sd35Config.from_env({}, **(base | kw))


@pytest.fixture(scope="module")
def server(sd35_dirs: dict[str, Path], adapter_root: Path):  # noqa: ANN201
    with InProcessServer(create_server, sd35_config(sd35_dirs, adapter_root=str(adapter_root), max_queue=2)) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: InProcessServer):  # noqa: ANN201
    with server.channel() as ch:
        yield sd35_pb2_grpc.Sd35ServiceStub(ch)


def gen(variant: int = LARGE, **kw: object) -> sd35_pb2.GenerateRequest:
    fields = {"prompt": "a photo of a cat", "variant": variant, "width": 64, "height": 64, "steps": 4, "seed": 42} | kw
    return sd35_pb2.GenerateRequest(**fields)


def run(stub, request: sd35_pb2.GenerateRequest, timeout: float = 60) -> list[sd35_pb2.GenerateResponse]:  # noqa: ANN001
    return list(stub.Generate(request, timeout=timeout))


def result(events: list[sd35_pb2.GenerateResponse]) -> sd35_pb2.Result:
    assert events[-1].WhichOneof("event") == "result"
    return events[-1].result


def test_event_sequence_and_result(stub) -> None:  # noqa: ANN001
    events = run(stub, gen(steps=6, num_images=2))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "queued" and kinds[-1] == "result" and kinds.count("result") == 1
    progress = [e.progress for e in events if e.WhichOneof("event") == "progress"]
    assert [p.step for p in progress] == list(range(1, 7)) and all(p.total_steps == 6 for p in progress)
    assert all(b.elapsed_ms >= a.elapsed_ms for a, b in zip(progress, progress[1:]))
    r = result(events)
    assert list(r.seeds) == [42, 43] and r.variant == LARGE and r.steps == 6 and (r.width, r.height) == (64, 64)
    for img in r.images:
        assert img.mime_type == "image/png" and Image.open(io.BytesIO(img.data)).size == (64, 64)
    t = r.timings
    assert t.total_ms >= t.denoising_ms > 0 and t.text_encoding_ms > 0 and t.decode_ms > 0 and t.encode_ms > 0


def test_variant_defaults(stub) -> None:  # noqa: ANN001
    turbo = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=TURBO, width=64, height=64)))
    assert (turbo.steps, turbo.guidance_scale) == (4, 0.0)
    large = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=LARGE, width=64, height=64, steps=2)))
    assert large.guidance_scale == pytest.approx(3.5)
    medium = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=MEDIUM, width=256, height=256, steps=2)))
    assert medium.guidance_scale == pytest.approx(4.5)
    unset_seed = result(run(stub, sd35_pb2.GenerateRequest(prompt="x", variant=TURBO, width=64, height=64)))
    assert unset_seed.seeds[0] != turbo.seeds[0] or unset_seed.seeds[0] >= 0


def test_same_seed_same_bytes_and_per_image_seeds(stub) -> None:  # noqa: ANN001
    a = result(run(stub, gen(num_images=2)))
    b = result(run(stub, gen(num_images=2)))
    assert [i.data for i in a.images] == [i.data for i in b.images]
    assert a.images[0].data != a.images[1].data  # seed 42 and 43 differ
    other = result(run(stub, gen(seed=7)))
    assert other.images[0].data != a.images[0].data


def test_output_formats_and_previews(stub) -> None:  # noqa: ANN001
    for fmt, mime in ((sd35_pb2.OUTPUT_FORMAT_JPEG, "image/jpeg"), (sd35_pb2.OUTPUT_FORMAT_WEBP, "image/webp")):
        r = result(run(stub, gen(output_format=fmt)))
        assert r.images[0].mime_type == mime and Image.open(io.BytesIO(r.images[0].data)).format in ("JPEG", "WEBP")
    events = run(stub, gen(steps=6, preview_every=2, num_images=2))
    previews = [e.preview for e in events if e.WhichOneof("event") == "preview"]
    assert [p.step for p in previews] == [2, 4] and all(len(p.images) == 2 for p in previews)
    assert Image.open(io.BytesIO(previews[0].images[0].data)).size == (8, 8)  # latent resolution


def test_medium_uses_skip_layer_guidance_where_layers_exist(stub) -> None:  # noqa: ANN001
    info = stub.GetModelInfo(sd35_pb2.GetModelInfoRequest(), timeout=10)
    by_variant = {v.variant: v for v in info.variants}
    assert list(by_variant[MEDIUM].skip_guidance_layers) == [7, 8, 9]
    assert (by_variant[LARGE].default_steps, by_variant[TURBO].default_steps, by_variant[MEDIUM].default_steps) == (28, 4, 40)
    assert by_variant[MEDIUM].min_pixels == 65536 and by_variant[LARGE].max_pixels == 1048576
    assert all(v.model.license == "stabilityai-ai-community" and v.model.parameters > 0 for v in info.variants)


def _bad(**kw: object) -> sd35_pb2.GenerateRequest:
    return gen(**kw)


BAD = {
    "empty-prompt": (_bad(prompt="  "), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    "long-prompt": (_bad(prompt="x" * 2001), grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    "long-negative": (_bad(negative_prompt="x" * 2001), grpc.StatusCode.INVALID_ARGUMENT, "negative_prompt"),
    "width-not-16": (_bad(width=70), grpc.StatusCode.INVALID_ARGUMENT, "width"),
    "height-not-16": (_bad(height=100), grpc.StatusCode.INVALID_ARGUMENT, "height"),
    "over-budget": (_bad(width=1024, height=1040), grpc.StatusCode.INVALID_ARGUMENT, "width"),
    "medium-under-budget": (_bad(variant=MEDIUM, width=128, height=128), grpc.StatusCode.INVALID_ARGUMENT, "width"),
    "steps-0": (_bad(steps=0), grpc.StatusCode.INVALID_ARGUMENT, "steps"),
    "steps-101": (_bad(steps=101), grpc.StatusCode.INVALID_ARGUMENT, "steps"),
    "guidance-21": (_bad(guidance_scale=21), grpc.StatusCode.INVALID_ARGUMENT, "guidance_scale"),
    "guidance-negative": (_bad(guidance_scale=-1), grpc.StatusCode.INVALID_ARGUMENT, "guidance_scale"),
    "images-5": (_bad(num_images=5), grpc.StatusCode.INVALID_ARGUMENT, "num_images"),
    "seq-513": (_bad(max_sequence_length=513), grpc.StatusCode.INVALID_ARGUMENT, "max_sequence_length"),
    "bad-format": (_bad(output_format=9), grpc.StatusCode.INVALID_ARGUMENT, "output_format"),
    "bad-variant": (_bad(variant=9), grpc.StatusCode.INVALID_ARGUMENT, "variant"),
    "unknown-adapter": (_bad(adapters=[sd35_pb2.AdapterWeight(name="nope", weight=1)]), grpc.StatusCode.NOT_FOUND,
                        "adapters[0]"),
}


@pytest.mark.parametrize("case", BAD)
def test_validation(case: str, stub) -> None:  # noqa: ANN001
    request, code, field = BAD[case]
    with pytest.raises(grpc.RpcError) as info:
        run(stub, request)
    assert info.value.code() == code and info.value.details().startswith(field), info.value.details()


def test_variant_not_hosted_is_not_found(sd35_dirs: dict[str, Path]) -> None:
    with InProcessServer(create_server, sd35_config({"large-turbo": sd35_dirs["large-turbo"]})) as srv, \
            srv.channel() as ch:
        with pytest.raises(grpc.RpcError) as info:
            run(sd35_pb2_grpc.Sd35ServiceStub(ch), gen(variant=LARGE))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        ok = result(run(sd35_pb2_grpc.Sd35ServiceStub(ch), sd35_pb2.GenerateRequest(prompt="x", width=64, height=64)))
        assert ok.variant == TURBO  # unset variant → the server's default (first hosted)


def test_cancel_stops_within_one_step_and_pipeline_is_reusable(server: InProcessServer, stub) -> None:  # noqa: ANN001
    call = stub.Generate(gen(steps=100, width=128, height=128), timeout=120)
    for event in call:
        if event.WhichOneof("event") == "progress" and event.progress.step == 3:
            call.cancel()
            break
    backend = server.server.backend
    deadline = time.monotonic() + 20
    while not any(j.outcome == "cancelled" for j in backend.jobs("large")) and time.monotonic() < deadline:
        time.sleep(0.05)
    job = [j for j in backend.jobs("large") if j.outcome == "cancelled"][-1]
    assert 3 <= job.steps_run <= 4, job.steps_run
    assert result(run(stub, gen())).images  # immediately reusable


def test_deadline_stops_generation(server: InProcessServer, stub) -> None:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as info:
        run(stub, gen(steps=100, width=256, height=256), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.0)
    job = [j for j in server.server.backend.jobs("large") if j.params.steps == 100 and j.params.width == 256][-1]
    assert job.outcome in ("deadline", "cancelled") and job.steps_run < 100


def test_queue_is_ordered_bounded_and_cancelled_waiters_never_start(server: InProcessServer, stub) -> None:  # noqa: ANN001
    backend = server.server.backend
    long = stub.Generate(gen(steps=60, width=128, height=128, prompt="first"), timeout=120)
    first_events = iter(long)
    assert next(first_events).WhichOneof("event") == "queued"
    while backend.queues["large"].running is None:
        time.sleep(0.01)
    waiting = stub.Generate(gen(prompt="second", steps=2), timeout=120)
    second_events = iter(waiting)
    assert next(second_events).queued.position == 0
    abandoned = stub.Generate(gen(prompt="third", steps=2), timeout=120)
    third_events = iter(abandoned)
    assert next(third_events).queued.position == 1
    with pytest.raises(grpc.RpcError) as info:  # max_queue=2: the fourth waiter is refused
        run(stub, gen(prompt="fourth", steps=2))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    abandoned.cancel()
    rest_first = [e for e in first_events]
    rest_second = [e for e in second_events]
    assert rest_first[-1].WhichOneof("event") == "result" and rest_second[-1].WhichOneof("event") == "result"
    time.sleep(0.2)
    prompts = [j.params.prompt for j in backend.jobs("large") if j.outcome == "ok"]
    assert prompts.index("first") < prompts.index("second") and "third" not in prompts


def test_lora_load_effect_unload(stub) -> None:  # noqa: ANN001
    base = result(run(stub, gen())).images[0].data
    loaded = stub.LoadAdapter(sd35_pb2.LoadAdapterRequest(name="ex", path="loras/example.safetensors", variant=LARGE),
                              timeout=60).adapter
    assert loaded.rank == 4 and loaded.path == "loras/example.safetensors" and loaded.size_bytes > 0
    assert [a.name for a in stub.ListAdapters(sd35_pb2.ListAdaptersRequest(), timeout=10).adapters] == ["ex"]
    with_lora = result(run(stub, gen(adapters=[sd35_pb2.AdapterWeight(name="ex", weight=1.0)]))).images[0].data
    assert with_lora != base
    assert result(run(stub, gen())).images[0].data == base  # loaded but not requested: base output
    with pytest.raises(grpc.RpcError) as dup:
        stub.LoadAdapter(sd35_pb2.LoadAdapterRequest(name="ex", path="loras/example.safetensors", variant=LARGE), timeout=60)
    assert dup.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stub.UnloadAdapter(sd35_pb2.UnloadAdapterRequest(name="ex", variant=LARGE), timeout=60)
    assert result(run(stub, gen())).images[0].data == base  # byte-identical after unloading
    with pytest.raises(grpc.RpcError) as gone:
        stub.UnloadAdapter(sd35_pb2.UnloadAdapterRequest(name="ex", variant=LARGE), timeout=60)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("path, code", [
    ("/etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
    ("../outside.safetensors", grpc.StatusCode.INVALID_ARGUMENT),
    ("loras/../../x.safetensors", grpc.StatusCode.INVALID_ARGUMENT),
    ("loras/example.bin", grpc.StatusCode.INVALID_ARGUMENT),
    ("link.safetensors", grpc.StatusCode.INVALID_ARGUMENT),
    ("loras/missing.safetensors", grpc.StatusCode.NOT_FOUND),
    ("", grpc.StatusCode.INVALID_ARGUMENT),
])
def test_adapter_path_traversal_is_refused(path: str, code: grpc.StatusCode, stub, adapter_root: Path) -> None:  # noqa: ANN001
    outside = adapter_root.parent / "outside.safetensors"
    outside.write_bytes(b"x")
    link = adapter_root / "link.safetensors"
    if not link.exists():
        os.symlink(outside, link)
    with pytest.raises(grpc.RpcError) as info:
        stub.LoadAdapter(sd35_pb2.LoadAdapterRequest(name="bad", path=path, variant=LARGE), timeout=30)
    assert info.value.code() == code, info.value.details()


def test_metrics(server: InProcessServer, stub) -> None:  # noqa: ANN001
    import urllib.request

    run(stub, gen())
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.server.metrics_port}/metrics", timeout=10).read().decode()
    for needle in ('versus_generation_seconds_count{model="large"}', 'versus_step_seconds_count{model="large"}',
                   'versus_images_generated_total{model="large"}', 'versus_queue_depth{model="large"}',
                   'grpc_server_handled_total{grpc_code="OK",grpc_method="Generate"'):
        assert needle in text, needle
