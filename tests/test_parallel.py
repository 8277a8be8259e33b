"""minnst.parallel: the thread pool, the GIL-free GEMM, and that every layer cut into
``pmap`` tasks gives the same bits on one thread and on several (and agrees with the
naive twins on several)."""
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


def test_pmap_uses_several_threads_and_restores_blas_threads():
    libs = parallel._blas_libraries()
    before = [c.get_num_threads() for c in libs]
    barrier = threading.Barrier(2, timeout=10)
    names = set()

    def task(t):
        names.add(threading.current_thread().name)
        assert all(c.get_num_threads() == 1 for c in libs)  # BLAS at one thread inside
        barrier.wait()  # would time out if the two tasks ran one after the other
        return t

    with parallel.workers(2):
        assert parallel.pmap(task, [0, 1]) == [0, 1]
    assert len(names) == 2
    assert [c.get_num_threads() for c in libs] == before


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


@pytest.mark.parametrize("N, rows, max_rows", [(1, 7, None), (4, 64, None), (2, 100, 9), (3, 2, None)])
def test_image_bands_cover_every_row_once(N, rows, max_rows):
    tasks = parallel.image_bands(N, rows, max_rows)
    assert len(tasks) >= min(parallel.MIN_TASKS, N * rows)
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


CONV_CASES = [  # N, C, F, k, stride, pad, pad_mode, size, winograd
    (1, 64, 64, 3, 1, 1, "reflect", 13, True),   # Winograd (the residual blocks), one image
    (3, 64, 64, 3, 1, 1, "zero", 10, True),      # Winograd (VGG)
    (2, 5, 7, 3, 1, 1, "reflect", 11, False),    # shifted GEMM
    (1, 3, 8, 9, 1, 4, "reflect", 17, False),    # thin input (the first layer)
    (2, 8, 3, 9, 1, 4, "reflect", 15, False),    # thin output (the last layer)
    (2, 6, 5, 3, 2, 1, "reflect", 13, False),    # im2col, stride 2
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[1]}to{c[2]}k{c[3]}s{c[4]}")
def test_conv_same_bits_on_one_and_two_threads_and_naive(rng, dtype, case):
    N, C, F, k, s, p, mode, size, wino = case
    x = rng.standard_normal((N, C, size, size)).astype(dtype)
    w = (rng.standard_normal((F, C, k, k)) / np.sqrt(C * k * k)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    wt = winograd.winograd_transform(w) if wino else None

    def run():
        y, cache = conv.conv2d_forward(x, w, b, s, p, mode, wino=wt)
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
