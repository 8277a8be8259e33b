"""minnst.parallel: the thread pool (and the one BLAS setting it makes), the helpers that
cut work, the GIL-free GEMM, ``matmul``, and that every layer cut into ``pmap`` tasks
gives the same bits on one thread and on several (and agrees with the naive twins on
several)."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from minnst import parallel
from minnst.layers import activations, conv, normalization, pooling, resampling, winograd


# --------------------------------------------------------------------------- pmap

def test_pmap_keeps_task_order_and_runs_each_task_once():
    seen = []
    with parallel.workers(3):
        out = parallel.pmap(lambda t: seen.append(t) or t * t, range(50))
    assert out == [t * t for t in range(50)]
    assert sorted(seen) == list(range(50))


def test_pmap_uses_several_threads():
    barrier = threading.Barrier(2, timeout=10)
    names = set()

    def task(t):
        names.add(threading.current_thread().name)
        barrier.wait()  # would time out if the two tasks ran one after the other
        return t

    with parallel.workers(2):
        assert parallel.pmap(task, [0, 1]) == [0, 1]
    assert len(names) == 2


POOL_SCRIPT = """
from threadpoolctl import threadpool_info
from minnst import parallel
def blas():
    return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
import scipy.linalg.blas  # (loaded before the first look, as the pool loads it)
print(parallel.num_workers(), blas())
parallel.pmap(lambda t: t, range(8))
print(parallel.num_workers(), blas())
parallel.pmap(lambda t: t, range(8))
print(parallel.start(), blas())
try:
    parallel.start(parallel.num_workers() + 1)
except ValueError:
    print("ValueError")
"""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_the_pool_takes_the_blas_thread_count_once_and_sets_blas_to_one(threads):
    """In a fresh process: the worker count is the BLAS thread count met when the pool is
    made (by the first pmap); BLAS is at one thread from then on, and pmap changes nothing
    around its calls; the count cannot change afterwards."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads)
    out = subprocess.run([sys.executable, "-c", POOL_SCRIPT], capture_output=True, text=True,
                         env=env, check=True).stdout.split("\n")
    assert out[:4] == [f"{threads} [{threads}]", f"{threads} [1]", f"{threads} [1]", "ValueError"]


def test_start_takes_an_explicit_count():
    code = ("from threadpoolctl import threadpool_info\nfrom minnst import parallel\n"
            "print(parallel.start(3), parallel.num_workers(), "
            "sorted({p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3 3 [1]"


def test_nested_pmap_runs_in_order_on_the_calling_thread():
    def outer(t):
        assert parallel.num_workers() == 1
        return parallel.pmap(lambda u: (t, u, threading.current_thread().name), range(3))

    with parallel.workers(2):
        for row in parallel.pmap(outer, range(4)):
            assert len({name for _, _, name in row}) == 1


def test_pmap_reraises_and_the_pool_stays_usable():
    def task(t):
        if t == 3:
            raise ValueError("task 3")
        return t

    with parallel.workers(2):
        with pytest.raises(ValueError, match="task 3"):
            parallel.pmap(task, range(8))
        assert parallel.pmap(lambda t: t + 1, range(4)) == [1, 2, 3, 4]


def test_workers_override_and_blas_default():
    with parallel.workers(5):
        assert parallel.num_workers() == 5
    assert parallel.num_workers() == 1  # the test session runs one BLAS thread (conftest)
    with pytest.raises(ValueError):
        parallel.start(0)


def test_band_helpers():
    assert parallel.band_rows(100, 30, 10) == 3
    assert parallel.band_rows(10, 30, 10) == 1     # a row over the budget: a band of its own
    assert parallel.band_rows(10**6, 30, 10) == 10  # never more than the rows
    assert parallel.row_bands(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert parallel.row_bands(0, 4) == []
    assert parallel.chunks(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]


@pytest.mark.parametrize("min_tasks", [None, 2])
@pytest.mark.parametrize("N, rows, max_rows", [(1, 7, None), (4, 64, None), (2, 100, 9), (3, 2, None), (1, 16, 8)])
def test_image_bands_cover_every_row_once(N, rows, max_rows, min_tasks):
    tasks = parallel.image_bands(N, rows, max_rows, min_tasks)
    want = parallel.MIN_TASKS if min_tasks is None else min_tasks
    per_image = max(-(-want // N), -(-rows // (max_rows or rows)))
    assert len(tasks) == N * min(rows, per_image)  # as few bands as the bounds allow
    for n in range(N):
        bands = [(a, b) for m, a, b in tasks if m == n]
        assert bands[0][0] == 0 and bands[-1][1] == rows
        assert all(b1 == a2 for (_, b1), (a2, _) in zip(bands, bands[1:]))
        assert all(0 < b - a <= (max_rows or rows) for a, b in bands)


# --------------------------------------------------------------------------- gemm

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta, tb, tc", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 1), (0, 0, 1)])
@pytest.mark.parametrize("M, K, N", [(5, 7, 3), (1, 4, 6), (6, 1, 2), (33, 17, 1)])
def test_gemm_matches_numpy(rng, dtype, ta, tb, tc, M, K, N):
    def make(r, c, t):
        a = rng.standard_normal((c, r) if t else (r, c)).astype(dtype)
        return a.T if t else a

    a, b, c = make(M, K, ta), make(K, N, tb), make(M, N, tc)
    want = 0.5 * (a.astype(np.float64) @ b) + 2.0 * c
    parallel.gemm(a, b, c, alpha=0.5, beta=2.0)
    assert c.dtype == dtype
    assert np.abs(c - want).max() < (1e-5 if dtype == np.float32 else 1e-12) * (1 + np.abs(want).max())


def test_gemm_on_strided_slices_accumulates_in_place(rng):
    big = rng.standard_normal((40, 30)).astype(np.float32)
    a, b = big[2:9, 3:11], big[::2][:8, :5]
    out = np.zeros((10, 12), np.float32)
    c = out[1:8, 2:7]
    want = c + a @ b
    assert parallel.gemm(a, b, c) is c
    np.testing.assert_allclose(c, want, rtol=1e-5, atol=1e-5)
    assert not out[0].any() and not out[:, :2].any()  # nothing written outside the view


# --------------------------------------------------------------------------- matmul

# OpenBLAS's SkylakeX kernels sum each element in the same order whichever band of rows it
# lies in; its Haswell (AVX2) ones do not (parallel.matmul_bands). OPENBLAS_CORETYPE, when
# set, chooses them for the whole process.
BAND_EXACT_KERNELS = ("SkylakeX",)


def _kernels_keep_bits() -> bool:
    from minnst import cpu

    return cpu.blas_architecture() in BAND_EXACT_KERNELS


MATMUL_SHAPES = [
    ((1, 70000, 64), (1, 64, 64)),     # the style gradient of relu1_1 at 256², one image
    ((2, 5000, 128), (2, 128, 128)),   # a batch
    ((3, 20000, 32), (1, 32, 32)),     # a broadcast target
    ((9000, 100), (100, 80)),          # plain matrices
    ((300, 16), (16, 16)),             # too small to cut: one task
    ((2, 40, 512), (2, 512, 512)),     # few rows: bands of at least 64 rows
    ((1750, 32), (32, 300)),           # N not a multiple of 8: one task
    ((6335, 27), (27, 288)),           # an odd number of rows
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES)
def test_matmul_bits_do_not_depend_on_the_workers(rng, dtype, a_shape, b_shape):
    """Whatever the number of workers, the same bits: on kernels that keep them in bands
    those of one undivided product, on any BLAS those of the shape's own cut; and within
    float rounding of np.matmul."""
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    want = np.matmul(a, b)
    got = {}
    for n in (1, 2, 3):
        with parallel.workers(n):
            got[n] = parallel.matmul(a, b)
        assert got[n].shape == want.shape and got[n].dtype == want.dtype
        assert np.array_equal(got[n], got[1])
    if _kernels_keep_bits():
        assert np.array_equal(got[1], want)
    eps = np.finfo(dtype).eps
    assert np.abs(got[1] - want).max() <= 8 * a_shape[-1] * eps * np.abs(want).max()


MATMUL_CHILD = """
import numpy as np
from minnst import parallel, cpu
assert cpu.blas_kernels().startswith("SkylakeX"), cpu.blas_kernels()
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for a_shape, b_shape in {shapes!r}:
        a = rng.standard_normal(a_shape).astype(dtype)
        b = rng.standard_normal(b_shape).astype(dtype)
        want = np.matmul(a, b)
        for n in (1, 2, 3):
            with parallel.workers(n):
                assert np.array_equal(parallel.matmul(a, b), want), (a_shape, b_shape, dtype, n)
    for C, M, K in ((130, 5000, 576), (128, 16384, 288), (256, 4096, 1152)):
        x = rng.standard_normal((M, C)).astype(dtype)
        cols = rng.standard_normal((M, K)).astype(dtype)
        assert np.array_equal(parallel.matmul(x.T, cols), x.T @ cols)
print("ok")
"""


@pytest.mark.skipif("avx512f" not in __import__("minnst.cpu").cpu.cpu_info()["flags"],
                    reason="OpenBLAS's SkylakeX kernels need AVX-512")
def test_matmul_gives_the_bits_of_numpy_on_skylakex_kernels():
    """On the SkylakeX kernels (forced in a child process, whatever OPENBLAS_CORETYPE this
    one has): every cut and worker count gives one undivided product's bits."""
    env = dict(os.environ, OPENBLAS_CORETYPE="SkylakeX")
    out = subprocess.run([sys.executable, "-c", MATMUL_CHILD.format(shapes=MATMUL_SHAPES)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_runs_on_numpys_blas_whatever_order_the_libraries_are_listed_in(monkeypatch, dtype):
    """Other packages bring their own OpenBLAS (OpenCV: a 0.3.15) and threadpoolctl lists
    the loaded libraries in an order that changes from process to process; ``gemm`` takes
    NumPy's own in every order (a client that took OpenCV's in a third of its runs gave a
    Dask cluster's tiles other bits than its own serial run)."""
    import ctypes

    libs = parallel._blas_libraries()
    mine = [lib for lib in libs if parallel._numpy_first(lib)[0] == 0]
    if not mine:
        pytest.skip("NumPy's BLAS is not among the libraries threadpoolctl sees")
    letter = "s" if dtype == np.float32 else "d"
    dll = ctypes.CDLL(mine[0].filepath)
    names = (f"cblas_{letter}gemm", f"scipy_cblas_{letter}gemm", f"scipy_cblas_{letter}gemm64_",
             f"cblas_{letter}gemm64_")
    want = {ctypes.cast(getattr(dll, n), ctypes.c_void_p).value for n in names if hasattr(dll, n)}
    for order in (libs, libs[::-1]):
        monkeypatch.setitem(parallel._state, "blas", list(order))
        monkeypatch.delitem(parallel._state, ("cblas", np.dtype(dtype).char), raising=False)
        assert ctypes.cast(parallel._cblas(dtype), ctypes.c_void_p).value in want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_of_transposed_views(rng, dtype):
    """The transposed convolution's weight gradient, xᵀ (C, M) @ cols (M, KH·KW·F): the
    same bits on every worker count (np.matmul's on band-exact kernels)."""
    for C, M, K in ((130, 5000, 576), (128, 16384, 288), (256, 4096, 1152)):
        x = rng.standard_normal((M, C)).astype(dtype)
        cols = rng.standard_normal((M, K)).astype(dtype)
        with parallel.workers(1):
            one = parallel.matmul(x.T, cols)
        with parallel.workers(2):
            assert np.array_equal(parallel.matmul(x.T, cols), one)
        if _kernels_keep_bits():
            assert np.array_equal(one, x.T @ cols)
        assert np.abs(one - x.T @ cols).max() <= 8 * M * np.finfo(dtype).eps * np.abs(one).max()


def test_matmul_bands():
    tasks = parallel.matmul_bands(1, 262144, 64, 64)
    assert len(tasks) == parallel.MIN_TASKS and tasks[-1] == (0, 196608, 262144)
    assert parallel.matmul_bands(2, 100, 16, 16) == [(0, 0, 100), (1, 0, 100)]  # small: one each
    bands = parallel.matmul_bands(1, 1000, 512, 512)
    assert [r0 for _, r0, _ in bands] == [0, 256, 512, 768]   # whole tiles of 64 rows
    assert len(parallel.matmul_bands(1, 100000, 64, 300)) == 1  # N not a multiple of 8
    with pytest.raises(ValueError):
        parallel.matmul(np.zeros((3, 4)), np.zeros((5, 2)))


# --------------------------------------------------------------------------- layers: 1 thread == 2 threads

def _both(fn):
    """fn() on one thread and on two; returns both results (tuples of arrays or None)."""
    outs = []
    for n in (1, 2):
        with parallel.workers(n):
            r = fn()
        outs.append(r if isinstance(r, tuple) else (r,))
    return outs


def _same_bits(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        if u is None:
            assert v is None
        elif isinstance(u, (tuple, list)):
            _same_bits(u, v)
        elif isinstance(u, np.ndarray):
            assert u.dtype == v.dtype and u.shape == v.shape
            assert np.array_equal(u, v, equal_nan=True)


CONV_CASES = [  # N, C, F, k, stride, pad, pad_mode, size, method, transformed by the caller
    (1, 64, 64, 3, 1, 1, "reflect", 13, "winograd", False),  # the residual blocks, one image
    (3, 64, 64, 3, 1, 1, "zero", 10, "winograd", True),      # VGG
    (2, 5, 7, 3, 1, 1, "reflect", 11, "shifted", False),
    (1, 3, 16, 3, 1, 1, "zero", 19, "shifted", False),       # VGG's conv1_1: dx in runs of bands
    (1, 3, 8, 9, 1, 4, "reflect", 17, "thin_input", False),  # the first layer
    (2, 8, 3, 9, 1, 4, "reflect", 15, "thin_output", False), # the last layer
    (2, 6, 5, 3, 2, 1, "reflect", 13, "im2col", False),      # stride 2
    (2, 6, 5, 3, 1, 1, "zero", 12, "im2col", False),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[8]}-{c[1]}to{c[2]}k{c[3]}s{c[4]}")
def test_conv_same_bits_on_one_and_two_threads_and_naive(rng, dtype, case):
    N, C, F, k, s, p, mode, size, method, transformed = case
    x = rng.standard_normal((N, C, size, size)).astype(dtype)
    w = (rng.standard_normal((F, C, k, k)) / np.sqrt(C * k * k)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    wt = winograd.winograd_transform(w) if transformed else None

    def run():
        y, cache = conv.conv2d_forward(x, w, b, s, p, mode, method=method, wino=wt)
        assert cache.method == method
        dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
        return (np.ascontiguousarray(y),) + conv.conv2d_backward(dy, cache)

    one, two = _both(run)
    _same_bits(one, two)
    ref = conv.conv2d_naive(x, w, b, s, p, mode)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.abs(two[0] - ref).max() < tol * np.abs(ref).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [1, 4])
def test_elementwise_layers_same_bits_on_one_and_two_threads(rng, dtype, N):
    # channels-last memory, as the convolutions hand it out
    x = rng.standard_normal((N, 9, 10, 32)).astype(dtype).transpose(0, 3, 1, 2)
    dy = rng.standard_normal(x.shape).astype(dtype)
    g, bt = rng.standard_normal(32).astype(dtype), rng.standard_normal(32).astype(dtype)

    def norm():
        y, cache = normalization.instance_norm_forward(x, g, bt)
        return (y,) + normalization.instance_norm_backward(dy, cache)

    def relu():
        y, cache = activations.relu_forward(x)
        return y, activations.relu_backward(dy, cache)

    def pools():
        out = []
        for f, bwd in ((pooling.maxpool2d_forward, pooling.maxpool2d_backward),
                       (pooling.avgpool2d_forward, pooling.avgpool2d_backward)):
            for k, s in ((2, 2), (3, 2)):
                y, cache = f(x, k, s)
                out += [y, bwd(np.ones_like(y), cache)]
        return tuple(out)

    def upsample():
        y, cache = resampling.upsample_nearest2d_forward(x, 2)
        return y, resampling.upsample_nearest2d_backward(dy.repeat(2, 2).repeat(2, 3), cache)

    for fn in (norm, relu, pools, upsample):
        one, two = _both(fn)
        _same_bits(one, two)
    # and the split instance norm is the textbook formula
    y = norm()[0]
    mu = x.mean(axis=(2, 3), keepdims=True)
    ref = (x - mu) / np.sqrt(x.var(axis=(2, 3), keepdims=True) + 1e-5) * g.reshape(1, -1, 1, 1) + bt.reshape(1, -1, 1, 1)
    assert np.abs(y - ref).max() < (1e-5 if dtype == np.float32 else 1e-12) * np.abs(ref).max()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_pmap_works_in_a_forked_child():
    import multiprocessing as mp

    with parallel.workers(2):
        parallel.pmap(lambda t: t, range(4))  # the parent's pool exists before the fork
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(30)
    assert p.exitcode == 0 and q.get(timeout=5) == [0, 2, 4, 6]


def _child(q):
    with parallel.workers(2):
        q.put(parallel.pmap(lambda t: 2 * t, range(4)))


def test_add_into_adds_in_place_in_any_memory_order():
    rng = np.random.default_rng(3)
    for shape, cl in (((3, 4, 10, 6), False), ((2, 5, 7, 9), True), ((5, 6), False)):
        a = rng.standard_normal(shape)
        if cl:
            a = np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        b = rng.standard_normal(shape)
        expected = a + b
        out = parallel.add_into(a, b)
        assert out is a and np.array_equal(a, expected)
