"""Start a Versus service as a real process and wait until it is SERVING (demo, e2e tests, bench)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

#: glibc malloc settings that remove slow first calls and two-thread preprocessing stalls.
SERVICE_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}


def wait_serving(target: str, timeout_s: float, credentials: grpc.ChannelCredentials | None = None,
                 proc: subprocess.Popen | None = None) -> None:
    """Poll grpc.health.v1 until SERVING; raise TimeoutError (or RuntimeError if ``proc`` died)."""
    deadline = time.monotonic() + timeout_s
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"service exited with code {proc.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout_s:.0f}s")


class ServiceStartError(RuntimeError):
    """A service process exited or hung before serving; the message carries its own last words and log."""


def log_tail(path: Path | None, lines: int = 6) -> str:
    """The last lines of a service log, JSON log records reduced to their level and message."""
    if path is None or not path.exists():
        return ""
    out = []
    for raw in path.read_text(errors="replace").splitlines()[-lines:]:
        try:
            record = json.loads(raw)
            extra = record.get("error") or (record.get("exc") or "").strip().splitlines()[-1:] or ""
            extra = extra[0] if isinstance(extra, list) else extra
            out.append(f"{record.get('level', '')} {record.get('msg', '')} {extra}".strip())
        except (ValueError, AttributeError):
            out.append(raw)
    return "\n".join("    " + line[:400] for line in out)


class ServiceProcess:
    """``versus serve NAME ...`` in a child process on free ports."""

    def __init__(self, service: str, args: Sequence[str], *, env: dict[str, str] | None = None,
                 log_path: Path | None = None) -> None:
        self.service = service
        self.args = list(args)
        self.env = {**os.environ, **SERVICE_ENV, **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0
        self._tmp = tempfile.TemporaryDirectory(prefix=f"versus-{service}-")
        self._log = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def _port_file(self) -> Path:
        return Path(self._tmp.name) / "ports.json"

    def launch(self) -> ServiceProcess:
        """Start the process and return at once (several services can load at the same time);
        :meth:`wait_ready` then waits for it to serve."""
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - closed in _cleanup
        log = self._log or subprocess.DEVNULL
        cmd = [sys.executable, "-m", "versus_cli", "serve", self.service, "--host", "127.0.0.1", "--port", "0",
               "--metrics-port", "0", "--metrics-host", "127.0.0.1", "--port-file", str(self._port_file), *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log)
        return self

    def start(self, timeout_s: float = 120.0, credentials: grpc.ChannelCredentials | None = None) -> ServiceProcess:
        """Launch and wait until health says SERVING (or raise ServiceStartError with its own words)."""
        return self.launch().wait_ready(timeout_s, credentials)

    def wait_ready(self, timeout_s: float = 120.0, credentials: grpc.ChannelCredentials | None = None
                   ) -> ServiceProcess:
        assert self.proc is not None, "launch() first"
        port_file = self._port_file
        deadline = time.monotonic() + timeout_s
        try:
            while not port_file.exists() or not port_file.read_text():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with code {self.proc.returncode} before serving")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"did not start within {timeout_s:.0f}s")
                time.sleep(0.1)
            ports = json.loads(port_file.read_text())
            self.port, self.metrics_port = ports["port"], ports["metrics_port"]
            wait_serving(self.target, max(1.0, deadline - time.monotonic()), credentials, self.proc)
        except (RuntimeError, TimeoutError) as exc:
            self.kill()
            tail = log_tail(self.log_path)
            where = f"log: {self.log_path}" if self.log_path else "no log file (pass log_path)"
            raise ServiceStartError(f"{self.service} service failed to start: {exc}; {where}"
                                    + (f"\n  its last log lines:\n{tail}" if tail else "")) from None
        return self

    @property
    def started(self) -> bool:
        """A process was launched (it may have exited since)."""
        return self.proc is not None

    def stop(self) -> int:
        """Drain a running process (SIGTERM); the exit code, also of one that already exited."""
        assert self.proc is not None
        return self.terminate() if self.proc.poll() is None else int(self.proc.returncode)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._close_log()

    def _close_log(self) -> None:
        if self._log is not None and self.proc is not None and self.proc.poll() is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_log()

    def __enter__(self) -> ServiceProcess:
        # ``with ServiceProcess(...).start(timeout_s=...) as svc`` must not launch a second process (the first
        # would be orphaned, serving on after the test).
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        self._tmp.cleanup()
