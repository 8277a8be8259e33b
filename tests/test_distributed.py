"""The Dask glue itself (``minnst.distributed``): the outcomes of ``run_ordered`` on a
cluster and in this process, the thread split, addresses refused before a client exists."""
import os

import pytest

pytest.importorskip("distributed", reason="Dask not installed: pip install 'minnst[test]'")

from minnst import distributed  # noqa: E402
from minnst.errors import ClusterError  # noqa: E402


def square_or_fail(x, offset=0):
    if x == 3:
        raise ValueError("three")
    return x * x + offset


def test_run_ordered_gives_the_same_outcomes_here_and_on_a_cluster(cluster2):
    here = list(distributed.run_ordered(None, square_or_fail, range(7), offset=1))
    there = list(cluster2.map_ordered(square_or_fail, range(7), offset=1, window=2))
    assert [i for i, _, _ in here] == [i for i, _, _ in there] == list(range(7))
    for (_, ok_a, a), (_, ok_b, b) in zip(here, there):
        assert ok_a == ok_b
        assert (a == b) if ok_a else (type(a) is type(b) is ValueError and str(a) == str(b) == "three")
    assert [v for _, ok, v in here if ok] == [x * x + 1 for x in range(7) if x != 3]


def pool_size():
    from minnst import parallel

    return parallel.num_workers()


def test_workers_get_their_share_of_the_cores(cluster2):
    """Two workers on this host: cores / 2 threads each (at least 1); one worker alone: all
    the cores, where Dask's nanny would have left it at one BLAS thread."""
    list(cluster2.map_ordered(square_or_fail, range(4), window=4))  # each worker sets up at its first task
    assert cluster2.hosts == {"127.0.0.1": 2}
    assert set(cluster2.client.run(pool_size).values()) <= {distributed.threads_for(os.cpu_count(), 2, 1)}
    with distributed.cluster(workers=1, say=None) as c:
        assert set(c.client.run(pool_size).values()) == {1}  # the nanny's OPENBLAS_NUM_THREADS=1
        list(c.map_ordered(square_or_fail, range(2)))
        assert set(c.client.run(pool_size).values()) == {os.cpu_count()}


def test_threads_for():
    assert distributed.threads_for(8, 2, 1) == 4
    assert distributed.threads_for(8, 3, 1) == 2
    assert distributed.threads_for(2, 4, 1) == 1
    assert distributed.threads_for(16, 2, 2) == 4


@pytest.mark.parametrize("address, words", [("nonsense://", "unknown address scheme"),
                                            ("tcp://", "no host"),
                                            ("tcp://host:port", "invalid literal")])
def test_malformed_scheduler_addresses_are_refused_at_once(address, words):
    with pytest.raises(ClusterError, match=words):
        with distributed.cluster(scheduler=address, say=None):
            pass


def test_nothing_asked_means_no_cluster_and_both_is_an_error():
    with distributed.cluster() as c:
        assert c is None
    with pytest.raises(ClusterError, match="not both"):
        with distributed.cluster(workers=1, scheduler="tcp://127.0.0.1:8786"):
            pass
