"""The Hugging Face hub client's own cache layout, and a fake hub on loopback, holding the project's builds.

``put_in_hub_cache`` writes what ``huggingface_hub`` writes after a download:
``models--ORG--NAME/refs/main`` (the commit), ``snapshots/<commit>/<path>`` as relative links into
``blobs/``, LFS files (weights) named by their sha256 and other files by their git blob id.
:class:`FakeHub` answers the requests ``snapshot_download`` makes (repo info, recursive tree, HEAD and
GET of ``/{repo}/resolve/{commit}/{path}`` with ``X-Repo-Commit``, ``ETag`` and ``X-Linked-Etag``), so
``--allow-download`` runs the real hub client against it through ``HF_ENDPOINT``. It also answers the
model-info API (``/api/models/{repo}?expand=downloads&expand=likes``) with the figures in ``stats``, after
``stall_s`` seconds (a hub that hangs), for the ranker's adoption readings.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".onnx")


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's object id


@dataclass(frozen=True)
class RepoFile:
    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def blob_name(self) -> str:
        return self.sha256 if self.lfs else git_blob_id(self.data)


def repo_files(model_dir: Path) -> list[RepoFile]:
    return [RepoFile(p.relative_to(model_dir).as_posix(), p.read_bytes())
            for p in sorted(model_dir.rglob("*")) if p.is_file()]


def put_in_hub_cache(model_dir: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """Lay ``model_dir`` out in ``cache`` as the hub client does; returns the snapshot directory."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for f in repo_files(model_dir):
        blob = repo / "blobs" / f.blob_name
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(f.data)
        link = snapshot / f.path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@dataclass
class FakeHub:
    """A hub serving ``repos`` (repo id → model directory) at one commit each, on 127.0.0.1."""

    repos: dict[str, Path] = field(default_factory=dict)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    requests: list[str] = field(default_factory=list)
    #: repo id → the model-info API's figures ({"downloads": 30-day downloads, "likes": likes}).
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    stall_s: float = 0.0

    def __post_init__(self) -> None:
        self.files = {repo: {f.path: f for f in repo_files(d)} for repo, d in self.repos.items()}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
                self._answer()

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                status, data, headers = hub.reply(self.path.split("?", 1)[0])
                self.send_response(status)
                for k, v in {"Content-Length": str(len(data)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that gave up on a stalled answer (BrokenPipeError) is what the test wants

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def reply(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) for one request path, as the hub answers it."""
        as_json = {"Content-Type": "application/json"}
        for repo, figures in self.stats.items():
            if path == f"/api/models/{repo}":
                time.sleep(self.stall_s)
                return 200, json.dumps({"id": repo, "modelId": repo, **figures}).encode(), as_json
        for repo, files in self.files.items():
            if path == f"/api/models/{repo}/revision/main":
                doc = {"id": repo, "modelId": repo, "sha": self.commit, "siblings": [{"rfilename": p} for p in files]}
                return 200, json.dumps(doc).encode(), as_json
            if path == f"/api/models/{repo}/tree/{self.commit}":
                tree = [{"type": "file", "path": f.path, "size": len(f.data), "oid": git_blob_id(f.data)}
                        | ({"lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}} if f.lfs else {})
                        for f in files.values()]
                return 200, json.dumps(tree).encode(), as_json
            prefix = f"/{repo}/resolve/{self.commit}/"
            if path.startswith(prefix) and path[len(prefix):] in files:
                f = files[path[len(prefix):]]
                headers = {"X-Repo-Commit": self.commit, "ETag": f'"{git_blob_id(f.data)}"'}
                if f.lfs:
                    headers |= {"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))}
                return 200, f.data, headers
        return 404, b'{"error": "Repository not found"}', as_json | {"X-Error-Code": "RepoNotFound"}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
