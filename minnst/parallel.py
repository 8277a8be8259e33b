"""Both cores for the CPU layers: a small persistent thread pool and one helper, ``pmap``.

OpenBLAS splits one matrix product over its threads, which pays only for large, square
products; the layers' products are small or thin (a band of 4096 rows times 128
channels, the 16 Winograd products of a band of tiles, the weight gradient's (F, C)
output summed over 65536 rows), and the NumPy passes between them (padding, transforms,
normalisation, ReLU, resizing) run on one core whatever BLAS does. Measured on the
2-core machine, a training step of the transformer ran *slower* with two BLAS threads
than with one (residual convs' backward 1.16 s vs 0.50 s).

So the layers cut their work into independent tasks themselves — images of the batch,
bands of rows, each writing its own part of the output — and
``pmap(fn, tasks)`` runs them on ``num_workers()`` threads (the calling thread is one of
them) while every BLAS library runs one thread. NumPy and BLAS release the GIL in their
loops, so the threads really run at once; the Python between the calls is short.

Deterministic: how a layer cuts its work depends only on the shapes, never on the number
of threads, and each task writes its own output (partial sums, as for a weight gradient,
are returned and added in task order). The results are therefore the same bits for any
number of threads, 1 included, and from run to run.

``num_workers()`` is the BLAS thread count of the moment (``OPENBLAS_NUM_THREADS`` and
``threadpoolctl.threadpool_limits`` apply to both), unless ``workers(n)`` says otherwise.
``gemm`` is the matrix product the tasks call where they accumulate in place: SciPy's
BLAS wrappers keep the GIL during the product, a ctypes call into ``cblas_?gemm`` does not.
Inside a parallel region, or while another thread holds the pool, ``pmap`` runs its tasks
in order on the calling thread: nesting is safe. CuPy arrays never come here (the layers
call ``pmap`` only on their NumPy paths).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import threading

import numpy as np
from concurrent.futures import ThreadPoolExecutor

MIN_TASKS = 4  # layers cut their work into at least this many tasks (2 workers: 2 each)

_state = {"pool": None, "blas": None, "override": None}  # created on first use
_region = threading.Lock()  # held while a pmap runs in parallel


def _after_fork_in_child():
    # a forked child has none of the pool's threads: start a new pool on its first pmap
    global _region
    _state["pool"] = None
    _region = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_libraries():
    """threadpoolctl controllers of the loaded BLAS libraries (NumPy's and SciPy's
    OpenBLAS here: SciPy's is imported first so that it is among them)."""
    if _state["blas"] is None:
        try:
            import scipy.linalg.blas  # noqa: F401  (loads SciPy's BLAS, used by the shifted GEMM)
            from threadpoolctl import ThreadpoolController

            _state["blas"] = [c for c in ThreadpoolController().lib_controllers
                              if c.user_api == "blas"]
        except Exception:  # no threadpoolctl, or a library it cannot drive
            _state["blas"] = []
    return _state["blas"]


def num_workers() -> int:
    """Threads that ``pmap`` uses now: ``workers(n)`` if set, else the BLAS thread count
    (1 inside a parallel region)."""
    if _region.locked():
        return 1
    if _state["override"] is not None:
        return _state["override"]
    libs = _blas_libraries()
    if not libs:
        return os.cpu_count() or 1
    return max(1, max(c.get_num_threads() for c in libs))


@contextlib.contextmanager
def workers(n: int):
    """Run ``pmap`` on ``n`` threads inside the block, whatever the BLAS setting (tests)."""
    old = _state["override"]
    _state["override"] = max(1, int(n))
    try:
        yield
    finally:
        _state["override"] = old


def pmap(fn, tasks) -> list:
    """``[fn(t) for t in tasks]``, the tasks spread over ``num_workers()`` threads with
    BLAS at one thread each. Tasks must not write to the same memory; each result is
    returned in task order, whichever thread computed it."""
    tasks = list(tasks)
    W = min(num_workers(), len(tasks))
    if W <= 1 or not _region.acquire(blocking=False):
        return [fn(t) for t in tasks]
    try:
        libs = _blas_libraries()
        saved = [c.get_num_threads() for c in libs]
        for c in libs:
            c.set_num_threads(1)
        try:
            results = [None] * len(tasks)
            counter = itertools.count()  # next() is atomic: each task runs exactly once

            def work():
                for i in iter(counter.__next__, None):
                    if i >= len(tasks):
                        return
                    results[i] = fn(tasks[i])

            if _state["pool"] is None:
                _state["pool"] = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2) - 1,
                                                    thread_name_prefix="minnst")
            futures = [_state["pool"].submit(work) for _ in range(W - 1)]
            try:
                work()
            finally:
                errors = [f.exception() for f in futures]  # waits for all of them
            for e in errors:
                if e is not None:
                    raise e
            return results
        finally:
            for c, n in zip(libs, saved):
                c.set_num_threads(n)
    finally:
        _region.release()


def chunks(total: int, parts: int):
    """``[(start, stop), …]``: ``range(total)`` cut into ``min(parts, total)`` runs of
    nearly equal length (the first ones one longer)."""
    parts = max(1, min(parts, total))
    q, r = divmod(total, parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + q + (k < r))
    return list(zip(bounds[:-1], bounds[1:]))


def image_bands(N: int, rows: int, max_rows: int | None = None):
    """Tasks ``(n, r0, r1)`` over a batch of N images of ``rows`` rows each: every image
    cut into bands of nearly equal height, at most ``max_rows`` rows each (a cache or
    memory bound of the caller), and enough bands that the batch makes at least
    ``MIN_TASKS`` tasks. Depends on the shapes only (see the module docstring)."""
    per_image = -(-MIN_TASKS // max(N, 1))
    if max_rows:
        per_image = max(per_image, -(-rows // max_rows))
    return [(n, r0, r1) for n in range(N) for r0, r1 in chunks(rows, per_image)]


# --------------------------------------------------------------------------- a GEMM that lets go of the GIL

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _cblas(dtype):
    """``(function, int type)`` of the loaded BLAS's ``cblas_?gemm`` through ctypes, or
    None. SciPy's ``scipy.linalg.blas`` wrappers hold the GIL during the product (two
    threads calling them run one after the other); a ctypes call releases it."""
    key = ("cblas", np.dtype(dtype).char)
    if key not in _state:
        import ctypes

        _state[key] = None
        letter = "s" if np.dtype(dtype) == np.float32 else "d"
        real = ctypes.c_float if letter == "s" else ctypes.c_double
        names = [(f"cblas_{letter}gemm", ctypes.c_int), (f"scipy_cblas_{letter}gemm", ctypes.c_int),
                 (f"scipy_cblas_{letter}gemm64_", ctypes.c_int64), (f"cblas_{letter}gemm64_", ctypes.c_int64)]
        for lib in _blas_libraries():
            try:
                dll = ctypes.CDLL(lib.filepath)
            except OSError:
                continue
            for name, integer in names:
                fn = getattr(dll, name, None)
                if fn is not None:
                    fn.restype = None
                    fn.argtypes = [ctypes.c_int] * 3 + [integer] * 3 + [real, ctypes.c_void_p, integer,
                                                                         ctypes.c_void_p, integer, real,
                                                                         ctypes.c_void_p, integer]
                    _state[key] = fn
                    break
            if _state[key] is not None:
                break
    return _state[key]


def _operand(a):
    """(transpose flag, leading dimension) of a 2-D array for row-major cblas, or None
    when neither axis has unit stride."""
    it = a.itemsize
    (r, k), (s0, s1) = a.shape, a.strides
    if (s1 == it or k == 1) and s0 > 0 and s0 % it == 0 and s0 // it >= max(1, k):
        return _NO_TRANS, s0 // it
    if (s0 == it or r == 1) and s1 > 0 and s1 % it == 0 and s1 // it >= max(1, r):
        return _TRANS, s1 // it
    return None


def gemm(a, b, c, alpha=1.0, beta=1.0):
    """``c[...] = alpha · a @ b + beta · c`` in place, for 2-D float32/float64 NumPy arrays
    with one unit stride each (any views: slices, transposes). Calls the BLAS's
    ``cblas_?gemm`` through ctypes, which releases the GIL, so ``pmap`` tasks multiply at
    the same time; falls back to NumPy (same result up to rounding) without one."""
    M, K = a.shape
    N = b.shape[1]
    if M == 0 or N == 0:
        return c
    fn = _state.get(("cblas", c.dtype.char), False)
    if fn is False:
        fn = _cblas(c.dtype)
    oc = _operand(c)
    if oc is not None and oc[0] == _TRANS:
        return gemm(b.T, a.T, c.T, alpha, beta)  # cᵀ = bᵀ aᵀ: c.T is row-major
    if fn is None or oc is None or K == 0 or not (a.dtype == b.dtype == c.dtype):
        c *= beta
        c += alpha * (a @ b)
        return c
    oa, ob = _operand(a), _operand(b)
    if oa is None:
        a, oa = np.ascontiguousarray(a), (_NO_TRANS, K)
    if ob is None:
        b, ob = np.ascontiguousarray(b), (_NO_TRANS, N)
    fn(_ROW_MAJOR, oa[0], ob[0], M, N, K, alpha, a.ctypes.data, oa[1], b.ctypes.data, ob[1],
       beta, c.ctypes.data, oc[1])
    return c


def batch_slices(shape):
    """Index tuples that cut an (N, C, H, W) array into the ``image_bands`` tasks (rows of
    each image), for elementwise passes: ``pmap(lambda s: np.maximum(x[s], 0, out=y[s]), …)``.
    Any other number of dimensions: one task, the whole array."""
    if len(shape) != 4:
        return [(Ellipsis,)]
    return [(slice(n, n + 1), slice(None), slice(r0, r1)) for n, r0, r1 in image_bands(shape[0], shape[2])]
