"""Pure unit tests of the shared runtime: config, the status table, the micro-batcher."""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from services.common import errors
from services.common.batcher import MicroBatcher
from services.common.config import ServerConfig
from services.common.metrics import Metrics
from services.common.status import STATUS_BY_ERROR, status_for
from services.vit import errors as vit_errors
from services.vit.config import VitConfig


# -- config ---------------------------------------------------------------------------------------
def test_config_from_env_parses_types() -> None:
    cfg = VitConfig.from_env({"VIT_MODEL": "/m", "VIT_MAX_BATCH_SIZE": "8", "VIT_MAX_WAIT_MS": "2.5",
                              "VIT_REFLECTION": "false", "VIT_PRECISION": "bf16"})
    assert (cfg.model, cfg.max_batch_size, cfg.max_wait_ms, cfg.reflection, cfg.precision) == (
        "/m",
        8,
        2.5,
        False,
        "bf16",
    )
    assert cfg.port == 50051 and cfg.metrics_port == 9101


def test_flags_override_env() -> None:
    parser = argparse.ArgumentParser()
    VitConfig.add_arguments(parser)
    args = parser.parse_args(["--model", "/flag", "--max-batch-size", "4", "--no-reflection"])
    cfg = VitConfig.from_args(args, {"VIT_MODEL": "/env", "VIT_MAX_QUEUE": "100"})
    assert (cfg.model, cfg.max_batch_size, cfg.max_queue, cfg.reflection) == ("/flag", 4, 100, False)


@pytest.mark.parametrize(
    "env, fragment",
    [
        ({}, "VIT_MODEL"),
        ({"VIT_MODEL": "m", "VIT_PRECISION": "fp8"}, "VIT_PRECISION"),
        ({"VIT_MODEL": "m", "VIT_MAX_BATCH_SIZE": "zero"}, "VIT_MAX_BATCH_SIZE"),
        ({"VIT_MODEL": "m", "VIT_MAX_BATCH_SIZE": "0"}, "VIT_MAX_BATCH_SIZE"),
        ({"VIT_MODEL": "m", "VIT_TLS_CERT": "c.pem"}, "VIT_TLS_KEY"),
        ({"VIT_MODEL": "m", "VIT_TLS_CLIENT_CA": "ca.pem"}, "VIT_TLS_CERT"),
        ({"VIT_MODEL": "m", "VIT_REFLECTION": "maybe"}, "VIT_REFLECTION"),
        ({"VIT_MODEL": "m", "VIT_MAX_IMAGES_PER_REQUEST": "500"}, "VIT_MAX_QUEUE"),
    ],
)
def test_bad_config_names_the_setting(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(errors.ConfigError, match=fragment):
        VitConfig.from_env(env)


def test_token_file_and_masking(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    cfg = VitConfig.from_env({"VIT_MODEL": "m", "VIT_TOKEN_FILE": str(token)})
    assert cfg.resolved_token() == "s3cret"
    assert VitConfig.from_env({"VIT_MODEL": "m", "VIT_TOKEN": "x"}).describe()["token"] == "***"


def test_nothing_read_at_import(monkeypatch) -> None:
    monkeypatch.setenv("VERSUS_PORT", "1234")
    assert ServerConfig.from_env().port == 1234
    assert ServerConfig.from_env({}).port == 50050


# -- status table ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc, code",
    [
        (errors.InvalidArgument("f", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (vit_errors.InvalidImage("images[0]", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (vit_errors.HeadNotFound("x"), grpc.StatusCode.NOT_FOUND),
        (vit_errors.NoClassifier("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (vit_errors.PickleCheckpointRefused("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.ResourceExhausted("full", retry_after_s=1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.VersusError("x"), grpc.StatusCode.INTERNAL),
        (KeyError("boom"), grpc.StatusCode.INTERNAL),
    ],
)
def test_status_mapping(exc: BaseException, code: grpc.StatusCode) -> None:
    assert status_for(exc) == code


def test_every_error_class_has_a_message_attribute() -> None:
    for cls in STATUS_BY_ERROR:
        exc = cls("field", "problem") if cls is errors.InvalidArgument else cls("problem")
        assert "problem" in exc.message and str(exc) == exc.message


# -- batcher --------------------------------------------------------------------------------------
class Recorder:
    """A batch function that records batch sizes and can be slowed or blocked."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[int]) -> list[int]:
        self.gate.wait(10)
        time.sleep(self.delay_s)
        self.batches.append(list(items))
        return [i * 10 for i in items]


def run(coro):
    return asyncio.run(coro)


def make(rec: Recorder, **kw: object) -> MicroBatcher:
    opts = {"model": "m", "max_batch_size": 4, "max_queue": 16, "metrics": Metrics()} | kw
    return MicroBatcher(rec, ThreadPoolExecutor(1), **opts)  # type: ignore[arg-type]


def test_outputs_match_inputs_in_order() -> None:
    async def go() -> None:
        b = make(Recorder())
        b.start()
        results = await b.submit([1, 2, 3, 4, 5, 6])
        assert [r for r, _ in results] == [10, 20, 30, 40, 50, 60]
        assert max(s.batch_size for _, s in results) <= 4
        await b.close()

    run(go())


def test_lone_caller_is_not_delayed_and_busy_device_batches() -> None:
    async def go() -> None:
        rec = Recorder(delay_s=0.05)
        b = make(rec)
        b.start()
        t0 = time.perf_counter()
        await b.submit([1])
        assert time.perf_counter() - t0 < 0.5
        # While the first call computes, the others pile up and share the next batch.
        await asyncio.gather(*(b.submit([i]) for i in range(9)))
        assert max(len(x) for x in rec.batches) == 4
        await b.close()

    run(go())


def test_max_wait_holds_batch_until_full_or_timeout() -> None:
    async def go() -> None:
        rec = Recorder()
        b = make(rec, max_wait_ms=200)
        b.start()
        first = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.02)
        await asyncio.gather(first, b.submit([2]), b.submit([3]), b.submit([4]))
        assert rec.batches == [[1, 2, 3, 4]]
        t0 = time.perf_counter()
        await b.submit([5])
        assert 0.15 < time.perf_counter() - t0 < 2
        await b.close()

    run(go())


def test_queue_bound_refuses_whole_group_with_retry_hint() -> None:
    async def go() -> None:
        rec = Recorder()
        rec.gate.clear()  # block the device so the queue fills
        b = make(rec, max_queue=4, max_batch_size=1)
        b.start()
        running = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)  # item 0 is on the device now
        waiting = asyncio.ensure_future(b.submit([1, 2, 3]))
        await asyncio.sleep(0.01)
        with pytest.raises(errors.ResourceExhausted) as info:
            await b.submit([4, 5])
        assert info.value.retry_after_s and info.value.retry_after_s > 0
        rec.gate.set()
        assert [r for r, _ in await waiting] == [10, 20, 30]
        await running
        await b.close()

    run(go())


def test_cancelled_and_expired_items_are_dropped_before_compute() -> None:
    async def go() -> None:
        rec = Recorder()
        rec.gate.clear()
        b = make(rec, max_batch_size=1)
        b.start()
        blocker = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)
        cancelled = asyncio.ensure_future(b.submit([1, 2]))
        expiring = asyncio.ensure_future(b.submit([3], timeout_s=0.01))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        await asyncio.sleep(0.05)
        rec.gate.set()
        await blocker
        with pytest.raises(errors.DeadlineExceeded):
            await expiring
        assert sorted(i for batch in rec.batches for i in batch) == [0]
        assert b.stats.dropped_cancelled == 2 and b.stats.dropped_deadline == 1
        await b.close()

    run(go())


def test_wrong_output_count_fails_the_batch_callers() -> None:
    async def go() -> None:
        b = MicroBatcher(lambda items: items[:-1], ThreadPoolExecutor(1), model="m", max_batch_size=4, max_queue=8)
        b.start()
        with pytest.raises(errors.InternalError, match="outputs"):
            await b.submit([1, 2])
        await b.close()

    run(go())


def test_close_fails_waiting_items_with_unavailable() -> None:
    async def go() -> None:
        rec = Recorder()
        rec.gate.clear()
        b = make(rec, max_batch_size=1)
        b.start()
        first = asyncio.ensure_future(b.submit([0]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(b.submit([1]))
        await asyncio.sleep(0.01)
        await b.close()
        rec.gate.set()
        with pytest.raises(errors.Unavailable):
            await second
        first.cancel()

    run(go())


def test_weights_provenance_digest_and_kind(tmp_path) -> None:
    from services.common.weights import describe_weights, write_provenance

    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "config.json").write_text("{}")
    real = describe_weights(str(model))
    assert real.kind == "external" and len(real.digest) == 64  # no marker: someone else's, unverified
    write_provenance(model, "random", "vit-tiny")
    random_ = describe_weights(str(model))
    assert (random_.kind, random_.digest) == ("random", real.digest)  # the marker is not a weight file
    assert "vit-tiny" in random_.note
    (model / "model.safetensors").write_bytes(b"\x01" * 64)
    assert describe_weights(str(model)).digest != real.digest
    assert describe_weights("google/vit-base-patch16-224").kind == "unknown"  # not a directory: nothing hashed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert describe_weights(str(empty)).digest == ""


def test_an_async_batch_function_is_awaited_with_at_most_concurrency_batches_in_flight() -> None:
    """A remote engine takes several batches at once; a device thread one: the bound is the batcher's."""

    async def go(concurrency: int) -> int:
        in_flight = peak = 0

        async def run_batch(items: list[int]) -> list[int]:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            return [i * 10 for i in items]

        b = MicroBatcher(run_batch, None, model="m", max_batch_size=2, max_queue=64, concurrency=concurrency)
        b.start()
        results = await asyncio.gather(*(b.submit([i, i + 100]) for i in range(8)))
        assert [[r for r, _ in res] for res in results] == [[i * 10, (i + 100) * 10] for i in range(8)]
        await b.close()
        return peak

    assert run(go(1)) == 1
    assert run(go(3)) == 3


def test_a_blocking_batch_function_needs_an_executor() -> None:
    with pytest.raises(errors.ConfigError, match="executor"):
        MicroBatcher(lambda items: items, None, model="m", max_batch_size=2, max_queue=4)


def test_closing_fails_the_batch_in_flight_with_unavailable() -> None:
    async def go() -> None:
        started = asyncio.Event()

        async def hang(items: list[int]) -> list[int]:
            started.set()
            await asyncio.sleep(60)
            return items

        b = MicroBatcher(hang, None, model="m", max_batch_size=2, max_queue=4)
        b.start()
        waiting = asyncio.ensure_future(b.submit([1]))
        await started.wait()
        await b.close()
        with pytest.raises(errors.Unavailable):
            await waiting

    run(go())


def test_every_vit_engine_implements_the_one_async_contract() -> None:
    import inspect

    from services.vit.engine import Engine, LocalEngine
    from services.vit.onnx_engine import OnnxEngine
    from services.vit.torch_engine import TorchEngine
    from services.vit.triton_engine import TritonEngine

    for cls in (TorchEngine, OnnxEngine, TritonEngine):
        assert issubclass(cls, Engine) and not inspect.isabstract(cls)
        assert inspect.iscoroutinefunction(cls.infer)
    assert issubclass(TorchEngine, LocalEngine) and issubclass(OnnxEngine, LocalEngine)
    assert TritonEngine.concurrency > 1 and TorchEngine.concurrency == 1
