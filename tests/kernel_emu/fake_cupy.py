"""A CPU stand-in for CuPy, to run the GPU code paths and tests/test_gpu.py without a GPU.

``install()`` puts a module named ``cupy`` into ``sys.modules`` whose arrays are NumPy
arrays of a subclass defined "in" that module, so ``backend.is_gpu_array`` is true for
them and minnst takes its GPU branches; its ``RawModule`` compiles the kernel sources
through the emulator (emu.py), so the launchers run the real kernels. Like CuPy, it
refuses to mix its arrays with host NumPy arrays in arithmetic, and ``.get()`` returns a
host copy. It says nothing about CuPy's own behaviour beyond that, nor about speed:
only ``MINNST_FAKE_GPU=1 python -m pytest tests/test_gpu.py`` uses it.
"""
from __future__ import annotations

import sys
import time
import types

import numpy as np

from . import emu


class ndarray(np.ndarray):
    """A "device" array: NumPy memory, CuPy's type module and its strictness."""

    def get(self):
        return np.array(self.view(np.ndarray), copy=True)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        out = kwargs.get("out", ())
        for a in inputs + tuple(out):
            if isinstance(a, np.ndarray) and not isinstance(a, ndarray) and a.ndim > 0:
                raise TypeError(f"fake cupy: {ufunc.__name__} mixes a host NumPy array into "
                                f"device arithmetic (CuPy refuses implicit transfers)")
        inputs = tuple(a.view(np.ndarray) if isinstance(a, ndarray) else a for a in inputs)
        if out:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, ndarray) else o for o in out)
        return _wrap(getattr(ufunc, method)(*inputs, **kwargs))


ndarray.__module__ = "cupy"


def _wrap(r):
    if isinstance(r, ndarray):
        return r
    if isinstance(r, np.ndarray):
        return r.view(ndarray)
    if isinstance(r, np.generic):
        return np.asarray(r).view(ndarray)  # CuPy reductions give 0-d arrays
    if isinstance(r, tuple):
        return tuple(_wrap(x) for x in r)
    if isinstance(r, list):
        return [_wrap(x) for x in r]
    return r


class RawModule:
    def __init__(self, code, options=(), name_expressions=()):
        self._mod = emu.load_code(code, list(name_expressions))

    def get_function(self, name):
        fn = self._mod.get_function(name)

        def call(grid, block, args, shared_mem=0):
            host = tuple(a.view(np.ndarray) if isinstance(a, ndarray) else a for a in args)
            for a in args:
                if isinstance(a, np.ndarray) and not isinstance(a, ndarray):
                    raise TypeError("fake cupy: a host NumPy array passed to a kernel")
            fn(grid, block, host, shared_mem)
        return call


class _Event:
    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed(start, end):
    return (end.t - start.t) * 1e3


class _Module(types.ModuleType):
    def __getattr__(self, name):
        obj = getattr(np, name)
        if callable(obj) and not isinstance(obj, type):
            return lambda *a, **k: _wrap(obj(*a, **k))
        return obj


def install(threads=64, max_blocks=4):
    """Register the fake as ``cupy`` (for this process) and shrink the launch grids so the
    emulated kernels stay fast."""
    mod = _Module("cupy")
    mod.__file__ = __file__
    mod.ndarray = ndarray
    mod.RawModule = RawModule
    mod.asnumpy = lambda a: a.get() if isinstance(a, ndarray) else np.asarray(a)
    cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, deviceSynchronize=lambda: None,
                                      getDeviceProperties=lambda i: {"name": b"fake cupy (CPU)"}),
        Event=_Event, get_elapsed_time=_elapsed,
        Device=lambda i=0: types.SimpleNamespace(synchronize=lambda: None),
        Stream=types.SimpleNamespace(null=types.SimpleNamespace(synchronize=lambda: None)))
    mod.cuda = cuda
    mod.get_default_memory_pool = lambda: types.SimpleNamespace(
        used_bytes=lambda: 0, total_bytes=lambda: 0, free_all_blocks=lambda: None)
    sys.modules["cupy"] = mod
    from minnst.kernels import launch
    from minnst.layers import normalization

    launch.THREADS, launch.MAX_BLOCKS = threads, max_blocks
    normalization.NORM_BLOCK_NHWC, normalization.NORM_BLOCK_NCHW = (8, 4), (1, 16)
    return mod
