"""Where a model's files are: a local directory, or a hub id resolved through the Hugging Face cache.

No torch here. ``ORG/NAME`` that is not an existing directory is a hub id: it is looked up in the hub
client's own cache (``HF_HUB_CACHE``, or ``HF_HOME``/hub; ``models--ORG--NAME/refs/main`` names the
snapshot, ``snapshots/<commit>/…`` holds the files as links into ``blobs/``). Offline unless the
deployer allows downloads; then the hub client fetches the snapshot (``HF_ENDPOINT`` names the hub).
``HF_HUB_OFFLINE=1`` (the images set it) is a default: ``--allow-download`` overrides it for that fetch.
Either way the model is then loaded from the snapshot directory with the real ``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.common.errors import ModelLoadError

#: ``ORG/NAME``: what the hub accepts as a model repository id.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
#: Never fetched: pickle checkpoints (refused anyway) and other frameworks' weights.
IGNORED_FILES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.h5", "*.msgpack", "*.ot", "*.gguf")
_ONLINE = threading.Lock()


@dataclass(frozen=True)
class ModelSource:
    """A model as given (``source``) and the directory ``from_pretrained`` reads (``path``)."""

    source: str
    path: Path
    hub_id: str = ""  # set when ``source`` was resolved through the hub cache
    revision: str = ""  # the snapshot's commit


def is_hub_id(source: str) -> bool:
    return bool(HUB_ID.fullmatch(source)) and not Path(source).exists()


def hub_cache(cache_dir: str | None = None) -> str:
    """The cache the hub client searches (its own default unless ``cache_dir`` is given)."""
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def resolve_source(source: str, *, allow_download: bool = False, allow_patterns: list[str] | None = None,
                   cache_dir: str | None = None) -> ModelSource:
    """A directory as it is; a hub id through the cache (fetched only with ``allow_download``).

    ``allow_patterns`` limits a download to the files the loader reads. Raises ModelLoadError with one
    line naming the id and the cache searched when the model is not there.
    """
    path = Path(source)
    if path.is_dir():
        return ModelSource(source, path)
    if not is_hub_id(source):
        raise ModelLoadError(f"model directory {source} does not exist")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = hub_cache(cache_dir)
    try:
        with _online(allow_download):
            snapshot = Path(snapshot_download(source, cache_dir=cache_dir, local_files_only=not allow_download,
                                              allow_patterns=allow_patterns, ignore_patterns=list(IGNORED_FILES)))
    except LocalEntryNotFoundError as exc:
        if not allow_download:
            raise ModelLoadError(f"model {source} is neither a directory nor in the Hugging Face cache {cache} "
                                 "(no snapshot under models--" + source.replace("/", "--") + "); pass "
                                 "--allow-download to fetch it") from exc
        why = str(exc).splitlines()[0]
        raise ModelLoadError(f"model {source} is not in the Hugging Face cache {cache} and could not be "
                             f"downloaded from {constants.ENDPOINT}: {why}") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"model {source} could not be fetched into the Hugging Face cache {cache}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    return ModelSource(source, snapshot, hub_id=source, revision=snapshot.name)


@contextlib.contextmanager
def _online(allow_download: bool) -> Iterator[None]:
    """The hub client online for one fetch the deployer allowed, whatever ``HF_HUB_OFFLINE`` says.

    The client reads its offline switch (``constants.HF_HUB_OFFLINE``, from the environment at import) on every
    request; an image's ``HF_HUB_OFFLINE=1`` is the default for everything else, ``--allow-download`` the
    deployer's explicit word for this model. One fetch at a time flips it, and it is put back after."""
    from huggingface_hub import constants

    if not allow_download or not constants.HF_HUB_OFFLINE:
        yield
        return
    with _ONLINE:
        constants.HF_HUB_OFFLINE = False
        try:
            yield
        finally:
            constants.HF_HUB_OFFLINE = True
