"""LoRA adapter files: where LoadAdapter may read them, and what makes one acceptable (no torch, no gRPC).

Everything here runs before the device thread sees the file, so a client's mistake — a path that
leaves the root, is too long or holds a NUL byte, a file that is not safetensors (random bytes, empty,
truncated) or holds no LoRA tensors — is refused as INVALID_ARGUMENT / NOT_FOUND naming ``path``,
and never reaches the INTERNAL fallback. What only the pipeline can tell (tensors that do not fit the
model) is checked by ``Sd35Runner.load_adapter``.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from safetensors import SafetensorError, safe_open

from services.common.errors import VersusError, quote
from services.sd35.errors import AdapterLoadingDisabled, AdapterNotFound, BadAdapterPath, InvalidAdapter

#: Longest LoadAdapter path, in characters, and longest path component, in UTF-8 bytes (NAME_MAX).
MAX_PATH_CHARS = 1024
MAX_COMPONENT_BYTES = 255
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


@dataclass(frozen=True)
class AdapterInfo:
    """A loaded (or about to be loaded) adapter; ``path`` is relative to the adapter root."""

    name: str
    variant: str
    path: str
    rank: int
    size_bytes: int


def os_error(exc: OSError, relative: str) -> VersusError:
    """The client's view of an OS error on a path it chose; re-raises the server's own faults (EIO …)."""
    mapped = _client_os_error(exc, relative)
    if mapped is None:
        raise exc
    return mapped


def _client_os_error(exc: OSError, relative: str) -> VersusError | None:
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return AdapterNotFound(f"path: no adapter file {quote(relative)} under the adapter root",
                               resource_type="adapter", resource_name=relative)
    if code in (errno.ENAMETOOLONG, errno.ELOOP):
        return BadAdapterPath("path", f"cannot be resolved: {errno.errorcode.get(code, code)}")
    if code in (errno.EACCES, errno.EPERM):
        return BadAdapterPath("path", "cannot be read by the server (permission denied)")
    return None


def _check_text(relative: str) -> PurePosixPath:
    if not relative:
        raise BadAdapterPath("path", "is required")
    if len(relative) > MAX_PATH_CHARS:
        raise BadAdapterPath("path", f"{len(relative)} characters exceed the limit of {MAX_PATH_CHARS}")
    if "\x00" in relative:
        raise BadAdapterPath("path", "must not contain a NUL character")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or Path(relative).is_absolute():
        raise BadAdapterPath("path", "must be relative to the adapter root")
    if ".." in pure.parts:
        raise BadAdapterPath("path", "must not contain '..'")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_BYTES for part in pure.parts):
        raise BadAdapterPath("path", f"has a component longer than {MAX_COMPONENT_BYTES} bytes")
    if pure.suffix != ".safetensors":
        raise BadAdapterPath("path", "only .safetensors files can be loaded")
    return pure


def resolve(root: str, relative: str) -> Path:
    """The file ``relative`` names strictly under ``root``, or the client's error."""
    if not root:
        raise AdapterLoadingDisabled("adapter loading is disabled; start the service with --adapter-root DIR")
    pure = _check_text(relative)
    root_path = Path(root).resolve()
    try:
        full = (root_path / pure).resolve()
        if not full.is_relative_to(root_path):
            raise BadAdapterPath("path", "resolves outside the adapter root (symlink)")
        mode = full.stat().st_mode
    except RuntimeError as exc:  # Python 3.11's resolve() reports a symlink loop this way
        raise BadAdapterPath("path", "is a symlink loop") from exc
    except OSError as exc:
        raise os_error(exc, relative) from exc
    if not stat.S_ISREG(mode):
        raise AdapterNotFound(f"path: {quote(relative)} is not a regular file", resource_type="adapter",
                              resource_name=relative)
    return full


def _tensor_shapes(file: Path, relative: str) -> dict[str, tuple[list[int], str]]:
    try:
        with safe_open(str(file), "numpy") as f:
            return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}
    except SafetensorError as exc:
        raise InvalidAdapter("path", f"is not a valid safetensors file ({str(exc)[:120]})") from exc
    except OSError as exc:
        raise os_error(exc, relative) from exc


def inspect(file: Path, relative: str) -> tuple[int, int]:
    """``(rank, size in bytes)`` of a LoRA file, after checking that it is one: safetensors, with 2-D
    floating-point tensors whose names contain ``lora``. Reads the header only."""
    tensors = _tensor_shapes(file, relative)
    lora = {k: v for k, v in tensors.items() if "lora" in k}
    if not lora:
        raise InvalidAdapter("path", "holds no LoRA tensors (no tensor name contains 'lora')")
    for key, (shape, dtype) in lora.items():
        if len(shape) != 2 or dtype not in _FLOAT_DTYPES:
            raise InvalidAdapter("path", f"tensor {quote(key)} is {dtype} {shape}; LoRA tensors are 2-D floats")
    ranks = [shape[0] for key, (shape, _) in lora.items() if "lora_A" in key or "lora_down" in key]
    try:
        size = file.stat().st_size
    except OSError as exc:
        raise os_error(exc, relative) from exc
    return max(ranks, default=0), size
