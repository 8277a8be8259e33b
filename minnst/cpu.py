"""What the CPU is, for the choices that depend on it and for the benchmark's header.

``cpu_info()`` reads ``/proc/cpuinfo`` once (Linux; elsewhere the fields it cannot read
are empty): the model name, the vendor, the family number and the vector extensions that
matter to a float32 GEMM. ``blas_kernels()`` is the kernel set the BLAS library loaded
(OpenBLAS's "Haswell" is AVX2, "SkylakeX" AVX-512), which is not always what the CPU
could run: ``OPENBLAS_CORETYPE`` chooses it for OpenBLAS, and on an AVX-512 CPU set to
Haswell its GEMMs run at half the CPU's peak rate while PyTorch's oneDNN uses the full
width. ``isa_environment`` gives the variables that make every library run one width (the
benchmark's ``--isa``).
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache

# the extensions worth naming, widest last: ``simd`` reports the widest present
SIMD_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"))
EXTRA_FLAGS = ("avx512_vnni", "avx512_bf16", "amx_tile")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """``{"model", "vendor", "family", "flags"}``: strings, the family an int (-1 when
    unknown) and the set of /proc/cpuinfo flags, of the first CPU listed."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    try:
        family = int(fields.get("cpu family", "-1"))
    except ValueError:
        family = -1
    return {"model": fields.get("model name") or platform.processor() or platform.machine(),
            "vendor": fields.get("vendor_id", ""), "family": family,
            "flags": frozenset(fields.get("flags", "").split())}


def simd(info: dict | None = None) -> str:
    """The widest float vector extension of the CPU: "AVX-512", "AVX2" or "none known"."""
    flags = (info or cpu_info())["flags"]
    found = [name for flag, name in SIMD_FLAGS if flag in flags]
    return found[-1] if found else "none known"


def flag_summary(info: dict | None = None) -> str:
    """The vector extensions present, e.g. "avx2 avx512f avx512_vnni avx512_bf16"."""
    flags = (info or cpu_info())["flags"]
    return " ".join(f for f in [flag for flag, _ in SIMD_FLAGS] + list(EXTRA_FLAGS) if f in flags) or "-"


def is_zen5(info: dict | None = None) -> bool:
    """AMD family 1Ah (Zen 5), where the shifted GEMM's thin products run slowest
    against Winograd (``conv.winograd_min_wide``)."""
    info = info or cpu_info()
    return info["vendor"] == "AuthenticAMD" and info["family"] == 0x1A


def blas_pool() -> dict | None:
    """threadpoolctl's description of the first BLAS library loaded (``internal_api``,
    ``version``, ``num_threads``, ``architecture``, …), or None without one."""
    try:
        from threadpoolctl import threadpool_info

        return next((p for p in threadpool_info() if p.get("user_api") == "blas"), None)
    except Exception:  # threadpoolctl missing or confused
        return None


def blas_architecture() -> str:
    """The BLAS library's kernel set ("Haswell", "SkylakeX", …), or "unknown"."""
    return (blas_pool() or {}).get("architecture") or "unknown"


def blas_kernels() -> str:
    """``blas_architecture()``, with ``OPENBLAS_CORETYPE`` named when it is set."""
    forced = os.environ.get("OPENBLAS_CORETYPE")
    text = blas_architecture()
    return f"{text} (OPENBLAS_CORETYPE={forced})" if forced else text


# OpenBLAS kernel sets below AVX-512 (threadpoolctl's "architecture" names)
NARROW_BLAS_KERNELS = ("Haswell", "Zen", "SandyBridge", "Sandybridge", "Nehalem", "Prescott", "Core2")


def blas_width_note(info: dict | None = None, kernels: str | None = None) -> str | None:
    """A one-line warning when the CPU has AVX-512 but the BLAS runs narrower kernels
    (its float32 GEMMs then reach about half the CPU's rate), else None."""
    kernels = blas_kernels() if kernels is None else kernels
    if simd(info) != "AVX-512" or kernels.split(" ")[0] not in NARROW_BLAS_KERNELS:
        return None
    how = ("OPENBLAS_CORETYPE chooses them: SkylakeX takes the AVX-512 ones"
           if "OPENBLAS_CORETYPE" in kernels else "the BLAS does not know this CPU")
    return (f"the CPU has AVX-512 but the BLAS runs its {kernels.split(' ')[0]} (AVX2) kernels, "
            f"about half the CPU's float32 GEMM rate ({how})")


# The environment of ``bench --isa``: every library at one vector width. "avx2" caps each at
# AVX2 (an AVX2-only machine, emulated on a wider CPU: OpenBLAS's Haswell kernels,
# oneDNN's AVX2 convolutions, ATen's AVX2 loops); "native" removes the caps, so that each
# picks the widest kernels it has for the CPU. None: the variable is removed. The
# libraries read these when they load, so they must be set before the process starts.
ISA_ENVIRONMENT = {
    "avx2": {"OPENBLAS_CORETYPE": "Haswell", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "native": {"OPENBLAS_CORETYPE": None, "ONEDNN_MAX_CPU_ISA": None, "ATEN_CPU_CAPABILITY": None},
}


def isa_environment(isa: str, env=None, info: dict | None = None) -> dict:
    """A copy of ``env`` (default ``os.environ``) with the variables of
    ``ISA_ENVIRONMENT[isa]`` set or removed. ValueError for an unknown ``isa``, or "avx2"
    on a CPU without it."""
    if isa not in ISA_ENVIRONMENT:
        raise ValueError(f"unknown vector width {isa!r}: choose one of {', '.join(ISA_ENVIRONMENT)}")
    if isa == "avx2" and "avx2" not in (info or cpu_info())["flags"]:
        raise ValueError("this CPU has no AVX2")
    out = dict(os.environ if env is None else env)
    for key, value in ISA_ENVIRONMENT[isa].items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def isa_in_effect(isa: str, env=None) -> bool:
    """Whether ``env`` (default ``os.environ``) already holds ``ISA_ENVIRONMENT[isa]``."""
    env = os.environ if env is None else env
    return all(env.get(k) == v for k, v in ISA_ENVIRONMENT[isa].items())
