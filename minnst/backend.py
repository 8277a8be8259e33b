"""Array backend: NumPy on the CPU, CuPy on the GPU.

Numerical code never asks a global which device to use: it takes the array module
from its data with ``get_xp(x)``. Only the command-line tools choose a device, once,
with ``select_device`` (``--device``, else ``MINNST_DEVICE=cpu|gpu|auto``, which
``default_device_name`` alone reads), and move their arrays there with ``to_device``.
Importing minnst never imports CuPy or touches CUDA.

``keep_freed_memory`` is an opt-in tuning of the C allocator for a whole process: the
command-line tools decide whether to call it; nothing in the library does.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DEVICES = ("cpu", "gpu", "auto")
DEFAULT_DTYPE = np.float32  # run-time dtype; float64 is used by the gradient checks


class DeviceError(RuntimeError):
    """The requested device cannot be used (the CLI reports it as one line, exit 2)."""


def get_xp(*arrays):
    """The array module (numpy or cupy) that owns ``arrays``; numpy for host data."""
    for a in arrays:
        if type(a).__module__.split(".")[0] == "cupy":
            import cupy

            return cupy
    return np


def is_gpu_array(x) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def to_host(x):
    """A NumPy array with the values of ``x`` (a copy only when ``x`` lives on the GPU)."""
    if is_gpu_array(x):
        return x.get()
    return np.asarray(x)


def gpu_available() -> tuple[bool, str]:
    """Whether CuPy can really run a kernel here, and why not when it cannot.

    Importing CuPy is not enough (it installs on machines without a GPU), so we launch
    one tiny elementwise kernel and read the result back.
    """
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install
        return False, f"CuPy is not installed ({e.__class__.__name__}); pip install 'minnst[gpu]'"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "CuPy sees no CUDA device"
        a = cupy.arange(4, dtype=cupy.float32)
        if float((a * 2).sum().get()) != 12.0:
            return False, "a test kernel on the GPU returned a wrong result"
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        return False, f"CuPy cannot run a kernel on this machine ({first})"
    return True, ""


@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or "gpu"

    @property
    def xp(self):
        if self.name == "gpu":
            import cupy

            return cupy
        return np


def default_device_name() -> str:
    """The device asked for when none is named: ``$MINNST_DEVICE``, else "auto" (not
    checked here: ``select_device`` does). The one place that reads ``MINNST_DEVICE``."""
    return (os.environ.get("MINNST_DEVICE") or "auto").strip().lower()


def select_device(requested: str | None = None) -> Device:
    """Resolve a device name (``--device``; None: ``default_device_name()``) to a usable
    device.

    ``auto`` takes the GPU only where a kernel really runs; ``gpu`` where none works raises
    ``DeviceError`` with the reason in one line.
    """
    choice = (requested or default_device_name()).strip().lower()
    if choice not in DEVICES:
        raise DeviceError(f"unknown device {choice!r}: choose one of cpu, gpu, auto")
    if choice == "cpu":
        return Device("cpu")
    ok, why = gpu_available()
    if ok:
        return Device("gpu")
    if choice == "gpu":
        raise DeviceError(f"--device gpu was asked for, but {why}")
    return Device("cpu")


def to_device(x, device: Device, dtype=DEFAULT_DTYPE):
    """Copy a host array to ``device`` as ``dtype`` (contiguous)."""
    xp = device.xp
    return xp.ascontiguousarray(xp.asarray(x, dtype=dtype))


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed large blocks in the heap instead of returning them to the
    OS, for the rest of the process (``mallopt``: mmap threshold 1 GiB, trim threshold
    2 GiB). Opt-in: a program calls it once at start-up; the library never does.

    NumPy allocates every large array with malloc; above glibc's mmap threshold each one
    is a fresh mmap, so every layer of every iteration pays page faults on its output
    (8.3 ms to allocate and fill 64 MB, 3.0 ms once memory is reused). The price is a
    higher peak: freed blocks are reused but not returned, and fragment (a 1024² Gatys run
    peaked at 4.4 GB instead of 3.7), so it suits a run whose memory is well under what
    the machine has. Returns False where it is not available (non-glibc systems), which
    is harmless.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1
        ok = libc.mallopt(M_TRIM_THRESHOLD, 1 << 31) == 1 and ok
        return ok
    except (OSError, AttributeError):
        return False
