"""Which precision a ViT runs at: the one place ``auto`` is decided (no gRPC).

``auto`` means bf16 where the device computes it natively, else fp32: CUDA GPUs, and CPUs whose flags
list ``avx512_bf16`` or ``amx_bf16`` (oneDNN then runs bf16 matmuls in hardware). Elsewhere bf16 is
emulated and slower than fp32, so ``auto`` stays at fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: What ``--precision`` accepts; ``auto`` resolves to one of the others.
CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")
#: CPU flags (``/proc/cpuinfo``) that mean native bf16 matrix arithmetic.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first CPU's feature flags (empty where /proc/cpuinfo is missing, e.g. macOS)."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def auto_precision(device_type: str, flags: Iterable[str]) -> tuple[str, str]:
    """(precision, why) for ``auto`` on a device of ``device_type`` ('cuda', 'cpu') with CPU ``flags``."""
    if device_type == "cuda":
        return "bf16", "CUDA computes bf16 natively"
    native = sorted(BF16_CPU_FLAGS.intersection(flags))
    if native:
        return "bf16", f"the CPU has {', '.join(native)}"
    return "fp32", "no native bf16 on this CPU (no avx512_bf16 or amx_bf16 flag)"
