"""Run minnst's CUDA kernels on the CPU: compile each ``.cu`` with g++ against
``cuda_emu.h`` and launch its kernels over their whole grid on NumPy buffers (ctypes).

    mod = load_module("relu.cu", launch.name_expressions("relu.cu"))
    mod.get_function("relu_forward<float>")((blocks,), (threads,), (x, y, np.int64(n)))

``load_module`` has the signature of ``minnst.kernels.launch.host_module`` and the module
it returns quacks like ``cupy.RawModule``, so the tests swap it in and call the real
launchers (``activations.relu_forward_gpu`` …) on NumPy arrays.

Per source, a generated C++ file includes the header and the unmodified ``.cu`` and adds
one ``extern "C"`` wrapper per template instantiation, which hands the argument values
and their type codes to ``emu::launch`` (checked against the kernel's parameter types).
The shared library is cached in ``build/kernel_emu/`` under a hash of everything that
goes into it, so only edited sources are recompiled.

A launch is stricter than CuPy: array arguments must be C-contiguous NumPy arrays,
scalars must be NumPy scalars, and every array is copied into a buffer with random guard
bytes on both sides that must be intact after the launch (out-of-bounds writes). Each
launch runs twice, on separate copies, once with blocks and threads in increasing order
and once in decreasing order (see cuda_emu.h); the two results must be bit-identical,
which catches missing barriers and write races (the kernels use no atomics, so a
race-free kernel's result does not depend on the schedule). The results are then copied
back into the caller's arrays.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from minnst.kernels.launch import KERNEL_DIR

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
ROOT = HERE.parents[1]
BUILD = Path(os.environ.get("MINNST_EMU_BUILD", ROOT / "build" / "kernel_emu"))
CXX = os.environ.get("CXX", "g++")
CXXFLAGS = ["-std=c++17", "-O1", "-fPIC", "-shared", "-DMINNST_EMU",
            "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]
MAX_THREADS = 256   # MINNST_MAX_BLOCK of common.h: the kernels' static scratch size
GUARD = 64          # guard bytes on each side of every array argument

_CODES = {("f", 4): "f4", ("f", 8): "f8", ("i", 4): "i4", ("i", 8): "i8",
          ("u", 1): "u1", ("u", 4): "u4"}
_LOADED: dict = {}  # (source, names) -> EmuModule, for this test process


class EmulationError(RuntimeError):
    """A launch the emulator refused or a kernel misbehaved (bad argument, divergent
    barrier, out-of-bounds write)."""


def _code(dtype) -> str:
    dt = np.dtype(dtype)
    try:
        return _CODES[(dt.kind, dt.itemsize)]
    except KeyError:
        raise EmulationError(f"no kernel parameter type for dtype {dt}") from None


def _wrapper(source: str, names) -> str:
    lines = ['#include "cuda_emu.h"', f'#include "{KERNEL_DIR / source}"', ""]
    for i, expr in enumerate(names):
        lines.append(
            f'extern "C" int emu_kernel_{i}(const unsigned* geom, void** vals, const char** codes, '
            f'int nargs, char* err, int errlen)\n'
            f'{{ return emu::launch(&{expr}, geom, vals, codes, nargs, err, errlen); }}')
    return "\n".join(lines) + "\n"


def _inputs_hash(source: str, text: str) -> str:
    h = hashlib.sha256()
    h.update(text.encode())
    h.update(" ".join([CXX] + CXXFLAGS).encode())
    for path in [HEADER, KERNEL_DIR / source, *sorted(KERNEL_DIR.glob("*.h"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def build(source: str, names) -> Path:
    """Compile (or find in the cache) the shared library for ``source``; its path."""
    text = _wrapper(source, names)
    so = BUILD / f"{Path(source).stem}-{_inputs_hash(source, text)}.so"
    if so.exists():
        return so
    BUILD.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
        cpp = Path(tmp) / f"{Path(source).stem}_emu.cpp"
        cpp.write_text(text)
        out = Path(tmp) / so.name
        cmd = [CXX, *CXXFLAGS, f"-I{HERE}", f"-I{KERNEL_DIR}", str(cpp), "-o", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise EmulationError(f"g++ could not compile {source} for the emulation:\n{r.stderr[-6000:]}")
        os.replace(out, so)  # atomic: a concurrent run sees either nothing or the whole file
    return so


def load_code(code: str, names) -> "EmuModule":
    """Like ``load_module`` for source text (what CuPy's RawModule receives): the text is
    stored under build/kernel_emu/ by its hash and compiled from there."""
    BUILD.mkdir(parents=True, exist_ok=True)
    path = BUILD / f"code-{hashlib.sha256(code.encode()).hexdigest()[:16]}.cu"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(code)
        os.replace(tmp, path)
    return load_module(str(path), names)


def load_module(source: str, names) -> "EmuModule":
    key = (source, tuple(names))
    mod = _LOADED.get(key)
    if mod is None:
        mod = _LOADED[key] = EmuModule(build(source, names), names)
    return mod


class EmuModule:
    """The compiled kernels of one source, looked up like ``cupy.RawModule``."""

    def __init__(self, so: Path, names):
        self.lib = ctypes.CDLL(str(so))
        self.index = {re.sub(r"\s+", "", n): i for i, n in enumerate(names)}

    def get_function(self, name: str) -> "EmuFunction":
        i = self.index.get(re.sub(r"\s+", "", name))
        if i is None:
            raise EmulationError(f"no kernel {name!r} in this module (have {sorted(self.index)})")
        fn = getattr(self.lib, f"emu_kernel_{i}")
        fn.restype = ctypes.c_int
        return EmuFunction(fn, name)


def _dims(v, what):
    v = tuple(int(d) for d in (v if isinstance(v, (tuple, list)) else (v,)))
    if not 1 <= len(v) <= 3:
        raise EmulationError(f"{what} must have 1 to 3 dimensions, got {v}")
    return v + (1,) * (3 - len(v))


class _Guarded:
    """A copy of a C-contiguous array between two runs of random guard bytes."""

    def __init__(self, a: np.ndarray, rng):
        self.array = a
        self.nbytes = a.nbytes
        self.buf = np.empty(self.nbytes + 2 * GUARD, dtype=np.uint8)
        self.guard = rng.integers(0, 256, 2 * GUARD, dtype=np.uint8)
        self.buf[:GUARD] = self.guard[:GUARD]
        self.buf[GUARD + self.nbytes:] = self.guard[GUARD:]
        self.buf[GUARD:GUARD + self.nbytes] = a.reshape(-1).view(np.uint8)
        self.ptr = ctypes.c_void_p(self.buf.ctypes.data + GUARD)

    def data(self):
        return self.buf[GUARD:GUARD + self.nbytes]

    def check_guards(self, i, name):
        before = self.buf[:GUARD]
        after = self.buf[GUARD + self.nbytes:]
        if not (np.array_equal(before, self.guard[:GUARD]) and np.array_equal(after, self.guard[GUARD:])):
            raise EmulationError(f"{name}: argument {i} ({self.array.dtype}{list(self.array.shape)}): "
                                 f"a write outside the array (guard bytes changed)")

    def finish(self, i, name):
        """Copy the result back into the caller's array."""
        data = self.data()
        flat = self.array.reshape(-1).view(np.uint8)
        if self.array.flags.writeable:
            flat[...] = data
        elif not np.array_equal(flat, data):
            raise EmulationError(f"{name}: argument {i} is read-only but was written")


class EmuFunction:
    """One kernel instantiation, called like ``cupy.RawKernel``:
    ``kernel(grid, block, args, shared_mem=0)``."""

    def __init__(self, fn, name):
        self.fn = fn
        self.name = name
        self.rng = np.random.default_rng(0)

    def __call__(self, grid, block, args, shared_mem=0):
        grid, block = _dims(grid, "grid"), _dims(block, "block")
        if int(np.prod(block)) > MAX_THREADS:
            raise EmulationError(f"{self.name}: block {block} has more than {MAX_THREADS} threads, "
                                 f"the size of the kernels' shared scratch arrays")
        runs = [self._run(grid, block, args, shared_mem, schedule) for schedule in (0, 1)]
        for i, (a, b) in enumerate(zip(*runs)):
            if not np.array_equal(a.data(), b.data()):
                raise EmulationError(
                    f"{self.name}: argument {i} ({a.array.dtype}{list(a.array.shape)}) differs between "
                    f"the increasing and decreasing thread schedules: a missing __syncthreads or "
                    f"a race between threads or blocks")
        for i, g in enumerate(runs[0]):
            g.finish(i, self.name)

    def _run(self, grid, block, args, shared_mem, schedule):
        """One launch under ``schedule``; returns the guarded copies, in argument order."""
        n = len(args)
        vals = (ctypes.c_void_p * max(n, 1))()
        codes = (ctypes.c_char_p * max(n, 1))()
        keep, guarded = [], {}
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise EmulationError(f"{self.name}: argument {i} is not C-contiguous "
                                         f"(raw kernels ignore strides)")
                key = (a.ctypes.data, a.nbytes)
                g = guarded.get(key)
                if g is None:
                    for (p, nb) in guarded:
                        if p < key[0] + key[1] and key[0] < p + nb:
                            raise EmulationError(f"{self.name}: argument {i} overlaps another "
                                                 f"array argument without being the same array")
                    g = guarded[key] = _Guarded(a, self.rng)
                vals[i] = ctypes.addressof(g.ptr)
                code = "*" + _code(a.dtype)
            elif isinstance(a, np.generic):
                storage = ctypes.create_string_buffer(a.tobytes(), a.itemsize)
                keep.append(storage)
                vals[i] = ctypes.addressof(storage)
                code = _code(a.dtype)
            else:
                raise EmulationError(f"{self.name}: argument {i} is a {type(a).__name__}: pass "
                                     f"NumPy arrays and NumPy scalars (np.int32, np.float32, …)")
            codes[i] = code.encode()
        geom = (ctypes.c_uint * 8)(*grid, *block, int(shared_mem), schedule)
        err = ctypes.create_string_buffer(1024)
        rc = self.fn(geom, vals, codes, ctypes.c_int(n), err, ctypes.c_int(len(err)))
        if rc != 0:
            raise EmulationError(f"{self.name}: {err.value.decode(errors='replace')}")
        for i, g in enumerate(guarded.values()):
            g.check_guards(i, self.name)
        return list(guarded.values())
