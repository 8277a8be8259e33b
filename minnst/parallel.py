"""Both cores for the CPU layers: one persistent worker pool, ``pmap`` to run tasks on it,
and the helpers that cut a layer's work into tasks.

OpenBLAS splits one matrix product over its threads, which pays only for large, square
products; the layers' products are small or thin (a band of 4096 rows times 128
channels, the 16 Winograd products of a band of tiles, the weight gradient's (F, C)
output summed over 65536 rows), and the NumPy passes between them (padding, transforms,
normalisation, ReLU, resizing) run on one core whatever BLAS does. So the layers cut their
work into independent tasks themselves — images of the batch, bands of rows, each writing
its own part of the output — and ``pmap(fn, tasks)`` runs them on the pool's workers (the
calling thread is one of them), each task's BLAS calls on one thread. NumPy and BLAS
release the GIL in their loops, so the threads really run at once.

The pool, and the one process-wide setting minnst makes
--------------------------------------------------------
The pool is made once per process: by ``start(workers)``, which a program calls when it
wants to choose the moment and the count, else by the first ``pmap``. Then, and only then:

* it decides its worker count, once: ``start``'s argument, else the thread count of the
  loaded BLAS libraries at that moment (``OPENBLAS_NUM_THREADS``, or a
  ``threadpoolctl.threadpool_limits`` in force), else ``os.cpu_count()``;
* it sets every loaded BLAS library to one thread, for the rest of the process (BLAS
  threads inside two workers' tasks would fight over the cores). From then on the
  parallelism is the pool's. A product outside the layers' tasks that gains from every
  core (the style loss's gradient, the transposed convolution's products) goes through
  ``matmul``, which cuts it into tasks with the bits of one product. (The Gram matrix
  stays one product: NumPy computes FᵀF as a symmetric rank-k update, half the work of
  a GEMM, which OpenBLAS runs hardly faster on two threads than on one.)

Nothing else in minnst changes BLAS settings. ``workers(n)`` changes how many threads
``pmap`` uses inside a block (tests), without touching BLAS.

Deterministic
-------------
How a layer cuts its work depends only on the shapes, never on the number of threads,
and each task writes its own output (partial sums, as for a weight gradient, are returned
and added in task order). The results are therefore the same bits for any number of
workers, 1 included, and from run to run. Inside a task, or while another thread holds the
pool, ``pmap`` runs its tasks in order on the calling thread: nesting is safe. CuPy arrays
never come here (the layers call ``pmap`` only on their NumPy paths).

Cutting work
------------
One family; each path states its own bound with it (``conv.im2col_bands``,
``conv.shifted_band_rows``, ``conv.thin_bands``, ``winograd.winograd_band_rows``):

* ``band_rows(budget, row_bytes, rows)``: how many rows of ``row_bytes`` each fit a
  byte budget (a cache or memory bound), at least 1 and at most ``rows``;
* ``row_bands(rows, max_rows)``: ``range(rows)`` cut into consecutive bands of
  ``max_rows`` rows (the last one shorter), for loops over bands inside one task;
* ``chunks(total, parts)``: ``range(total)`` cut into ``parts`` runs of nearly equal length;
* ``image_bands(N, rows, max_rows)``: the tasks ``(n, r0, r1)`` of a batch, every image cut
  into nearly equal bands of at most ``max_rows`` rows, at least ``MIN_TASKS`` in all;
* ``batch_slices(shape)``: the same tasks as index tuples, for elementwise passes;
* ``matmul_bands(batch, M, K, N)``: the tasks of ``matmul``.

``gemm`` is the matrix product the tasks call where they accumulate in place: SciPy's BLAS
wrappers keep the GIL during the product, a ctypes call into ``cblas_?gemm`` (of NumPy's own
BLAS, whichever other OpenBLAS copies are loaded) does not.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import threading

import numpy as np
from concurrent.futures import ThreadPoolExecutor

MIN_TASKS = 4  # layers cut their work into at least this many tasks (2 workers: 2 each)

# the pool (worker count, executor), the BLAS controllers and the ``workers`` override;
# ``gemm`` adds its ctypes functions under ("cblas", dtype char). Each made on first use.
_state = {"workers": None, "executor": None, "blas": None, "override": None}
_region = threading.Lock()  # held while a pmap runs in parallel
_making = threading.Lock()  # held while the pool is made


def _after_fork_in_child():
    # a forked child has none of the pool's threads: it keeps the worker count (its BLAS
    # is already at one thread) and starts new threads on its first parallel pmap
    global _region, _making
    _state["executor"] = None
    _region = threading.Lock()
    _making = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_libraries():
    """threadpoolctl controllers of the loaded BLAS libraries (NumPy's and SciPy's
    OpenBLAS here: SciPy's is imported first so that it is among them)."""
    if _state["blas"] is None:
        try:
            import scipy.linalg.blas  # noqa: F401  (loads SciPy's BLAS, used by ``gemm``)
            from threadpoolctl import ThreadpoolController

            _state["blas"] = [c for c in ThreadpoolController().lib_controllers
                              if c.user_api == "blas"]
        except Exception:  # no threadpoolctl, or a library it cannot drive
            _state["blas"] = []
    return _state["blas"]


def _default_workers() -> int:
    """The worker count a pool made now takes: the BLAS libraries' thread count, else the
    number of CPUs."""
    libs = _blas_libraries()
    if not libs:
        return os.cpu_count() or 1
    return max(1, max(c.get_num_threads() for c in libs))


def start(workers: int | None = None) -> int:
    """Make the pool (once per process) and return its worker count.

    ``workers``: the count to use, else the BLAS libraries' thread count now (see the
    module docstring). Making the pool sets every BLAS library to one thread for the rest
    of the process. Calling ``start`` again returns the count already chosen; asking then
    for another count is a ``ValueError``.
    """
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with _making:
        if _state["workers"] is None:
            count = int(workers) if workers is not None else _default_workers()
            for c in _blas_libraries():
                c.set_num_threads(1)
            _state["workers"] = count
        elif workers is not None and int(workers) != _state["workers"]:
            raise ValueError(f"the worker pool was already made with {_state['workers']} "
                             f"workers; it cannot change to {workers}")
    return _state["workers"]


def num_workers() -> int:
    """Threads that ``pmap`` uses now: 1 inside a parallel region, the ``workers(n)``
    override inside its block, else the pool's count (the count it would take if made
    now, when it is not made yet)."""
    if _region.locked():
        return 1
    if _state["override"] is not None:
        return _state["override"]
    if _state["workers"] is not None:
        return _state["workers"]
    return _default_workers()


@contextlib.contextmanager
def workers(n: int):
    """Run ``pmap`` on ``n`` threads inside the block, whatever the pool's count (tests)."""
    old = _state["override"]
    _state["override"] = max(1, int(n))
    try:
        yield
    finally:
        _state["override"] = old


def _executor() -> ThreadPoolExecutor:
    """The pool's threads besides the caller's, made on the first parallel ``pmap``: one
    fewer than the workers, and at least one (for ``workers(n)`` in a one-worker
    process; more submitted work than threads just waits its turn)."""
    if _state["executor"] is None:
        _state["executor"] = ThreadPoolExecutor(max_workers=max(2, _state["workers"]) - 1,
                                                thread_name_prefix="minnst")
    return _state["executor"]


def pmap(fn, tasks) -> list:
    """``[fn(t) for t in tasks]``, the tasks spread over ``num_workers()`` threads (the
    caller included). Tasks must not write to the same memory; each result is returned
    in task order, whichever thread computed it. The first call makes the pool
    (``start``)."""
    tasks = list(tasks)
    if _state["workers"] is None:
        start()
    W = min(num_workers(), len(tasks))
    if W <= 1 or not _region.acquire(blocking=False):
        return [fn(t) for t in tasks]
    try:
        results = [None] * len(tasks)
        counter = itertools.count()  # next() is atomic: each task runs exactly once

        def work():
            for i in iter(counter.__next__, None):
                if i >= len(tasks):
                    return
                results[i] = fn(tasks[i])

        pool = _executor()
        futures = [pool.submit(work) for _ in range(W - 1)]
        try:
            work()
        finally:
            errors = [f.exception() for f in futures]  # waits for all of them
        for e in errors:
            if e is not None:
                raise e
        return results
    finally:
        _region.release()


# --------------------------------------------------------------------------- cutting work

def band_rows(budget: int, row_bytes: int, rows: int) -> int:
    """Rows per band so that a band of rows of ``row_bytes`` bytes each stays within
    ``budget`` bytes: ``budget // row_bytes``, at least 1 (a row over the budget is a band
    of its own) and at most ``rows``."""
    return max(1, min(rows, budget // max(1, row_bytes)))


def row_bands(rows: int, max_rows: int):
    """``[(r0, r1), …]``: rows ``0 … rows − 1`` in consecutive bands of ``max_rows`` rows,
    the last one shorter when ``max_rows`` does not divide ``rows``."""
    step = max(1, max_rows)
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


def chunks(total: int, parts: int):
    """``[(start, stop), …]``: ``range(total)`` cut into ``min(parts, total)`` runs of
    nearly equal length (the first ones one longer)."""
    parts = max(1, min(parts, total))
    q, r = divmod(total, parts)
    bounds = [0]
    for k in range(parts):
        bounds.append(bounds[-1] + q + (k < r))
    return list(zip(bounds[:-1], bounds[1:]))


def image_bands(N: int, rows: int, max_rows: int | None = None, min_tasks: int | None = None):
    """Tasks ``(n, r0, r1)`` over a batch of N images of ``rows`` rows each: every image
    cut into bands of nearly equal height, at most ``max_rows`` rows each (a cache or
    memory bound of the caller), and enough bands that the batch makes at least
    ``min_tasks`` tasks (default ``MIN_TASKS``). Depends on the shapes only (see the
    module docstring)."""
    per_image = -(-(MIN_TASKS if min_tasks is None else min_tasks) // max(N, 1))
    if max_rows:
        per_image = max(per_image, -(-rows // max_rows))
    return [(n, r0, r1) for n in range(N) for r0, r1 in chunks(rows, per_image)]


def batch_slices(shape):
    """Index tuples that cut an (N, C, H, W) array into the ``image_bands`` tasks (rows of
    each image), for elementwise passes: ``pmap(lambda s: np.maximum(x[s], 0, out=y[s]), …)``.
    Any other number of dimensions: one task, the whole array."""
    if len(shape) != 4:
        return [(Ellipsis,)]
    return [(slice(n, n + 1), slice(None), slice(r0, r1)) for n, r0, r1 in image_bands(shape[0], shape[2])]


def add_into(a, b):
    """``a += b`` in place, returns a: a NumPy a of 4 dimensions in the bands of
    ``batch_slices`` on the pool's workers (a gradient summed from two sources: 32 to 64 MB
    in a training step, on one thread before), any other array by its own ``+=``."""
    if isinstance(a, np.ndarray) and a.ndim == 4 and b.shape == a.shape:
        pmap(lambda s: np.add(a[s], b[s], out=a[s]), batch_slices(a.shape))
    else:
        a += b
    return a


def zeros(shape, dtype):
    """``np.zeros``, filled in the bands of ``batch_slices`` on the pool's workers (the
    shifted GEMM's padded input gradient: 68 MB at VGG16's conv1_2, batch 4, 8 ms on one
    thread)."""
    a = np.empty(shape, dtype=dtype)
    pmap(lambda s: a[s].fill(0), batch_slices(shape))
    return a


# --------------------------------------------------------------------------- a GEMM that lets go of the GIL

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _numpy_first(lib) -> tuple:
    """Sort key of the BLAS libraries for ``_cblas``: NumPy's own (the one ``np.matmul``
    runs on), then SciPy's, then any other, by path. Other packages bring their own
    OpenBLAS (OpenCV's opencv_python_headless.libs holds a 0.3.15), and the order in which
    threadpoolctl lists the loaded libraries changes from process to process: taking the
    first one with a ``cblas_?gemm`` made the products' bits depend on the run."""
    import scipy

    path = os.path.realpath(lib.filepath)

    def inside(module) -> bool:
        home = os.path.dirname(os.path.realpath(module.__file__))
        return path.startswith(home + os.sep) or path.startswith(home + ".libs" + os.sep)

    return (0 if inside(np) else 1 if inside(scipy) else 2, path)


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
        for lib in sorted(_blas_libraries(), key=_numpy_first):
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


# --------------------------------------------------------------------------- large products

MATMUL_MIN_ROWS = 64   # ``matmul`` cuts into bands of whole multiples of this many rows …
MATMUL_MIN_BAND = 2**22  # … and of at least this many multiply-adds …
MATMUL_COLUMNS = 8       # … and only products whose N is a multiple of this


def matmul_bands(batch: int, M: int, K: int, N: int):
    """The tasks ``(n, r0, r1)`` of ``matmul`` for ``batch`` products (M, K) @ (K, N): the
    M rows in bands of a multiple of MATMUL_MIN_ROWS rows (the last one takes the rest),
    enough for MIN_TASKS tasks over the batch; a product is one task when the bands would
    fall under MATMUL_MIN_BAND multiply-adds, or when N is not a multiple of
    MATMUL_COLUMNS.

    These are the conditions under which OpenBLAS's SkylakeX (AVX-512) kernels give every
    element the bits of one undivided product (checked by the tests): it multiplies a
    1-row matrix by GEMV and small products by other kernels; its GEMM kernels treat the
    rows after the last full tile of 16 rows, and in double precision the columns after
    the last multiple of 8 (for some M), differently. Its Haswell (AVX2) kernels give
    some rows other bits in a band than in the whole product, whatever the cut (float32:
    rows 12–15 of a 16-row band of a (70000, 64) @ (64, 64) product), so there the bits
    are those of these bands: they depend on the shapes only, not on the worker count."""
    least = max(MATMUL_MIN_ROWS, -(-MATMUL_MIN_BAND // max(1, K * N)))
    parts = max(1, min(-(-MIN_TASKS // max(batch, 1)), M // least))
    if N % MATMUL_COLUMNS:
        parts = 1
    rows = -(-M // parts)
    rows = -(-rows // MATMUL_MIN_ROWS) * MATMUL_MIN_ROWS  # rounded up to whole tiles
    return [(n, r0, r1) for n in range(batch) for r0, r1 in row_bands(M, rows)]


def matmul(a, b):
    """``a @ b`` on the pool's workers, for a large NumPy product outside the layers'
    tasks (the style loss's gradient, (N, M, C) @ (N, C, C) with M up to 262144
    positions), which would otherwise run on one thread (the pool holds BLAS at one).

    a (M, K) or (B, M, K), b (K, N) or (B, K, N); a batch of 1 broadcasts. The rows of
    the output are cut into bands (``matmul_bands``), one ``np.matmul`` per band. Each
    output element stays one dot product over K, which OpenBLAS's packed GEMM sums in the
    same order whichever band of rows it lies in, when the bands are as ``matmul_bands``
    cuts them: the same bits as ``np.matmul(a, b)`` on OpenBLAS's SkylakeX kernels
    (``tests/test_parallel.py`` checks; bands of columns would not be, in float64), and on
    any BLAS the same bits whatever the number of workers (the cut depends on the shapes
    only).
    Returns a new C-contiguous array, (M, N) or (B, M, N).
    """
    A = a[None] if a.ndim == 2 else a
    Bm = b[None] if b.ndim == 2 else b
    if A.ndim != 3 or Bm.ndim != 3 or A.shape[2] != Bm.shape[1]:
        raise ValueError(f"matmul: cannot multiply shapes {a.shape} and {b.shape}")
    batch = max(A.shape[0], Bm.shape[0])
    if A.shape[0] not in (1, batch) or Bm.shape[0] not in (1, batch):
        raise ValueError(f"matmul: batch sizes {A.shape[0]} and {Bm.shape[0]} do not broadcast")
    M, K, N = A.shape[1], A.shape[2], Bm.shape[2]
    out = np.empty((batch, M, N), dtype=np.result_type(A.dtype, Bm.dtype))

    def band(task):
        n, r0, r1 = task
        np.matmul(A[n if A.shape[0] > 1 else 0, r0:r1], Bm[n if Bm.shape[0] > 1 else 0],
                  out=out[n, r0:r1])

    pmap(band, matmul_bands(batch, M, K, N))
    return out[0] if a.ndim == 2 and b.ndim == 2 else out
