"""The Dask glue: minnst's many independent pieces on a cluster (``--workers`` / ``--scheduler``).

    with distributed.cluster(workers=2) as c:            # a LocalCluster of 2 processes
        for i, ok, value in c.map_ordered(task, items):   # results in the items' order
            ...

One machine stays the default and needs nothing extra: this module imports Dask only when
``cluster`` is asked for a cluster (``pip install 'minnst[distributed]'``).

The pieces (docs/distributed.md)
--------------------------------
* ``cluster(workers=N)`` starts a ``LocalCluster`` of N worker processes, one task thread
  each; ``cluster(scheduler=ADDRESS)`` connects to a running one (``dask scheduler`` on one
  machine, ``dask worker ADDRESS`` on the others). It checks that every worker runs the
  same minnst, sets each worker's threads (``WorkerThreads``: workers on a host × their
  threads = the host's cores, through ``parallel.start``, also for workers that join or
  are restarted later), and says where the dashboard is.
* ``Cluster.map_ordered(fn, items)`` runs ``fn(item, *args)`` for every item, at most a
  window of tasks in flight (memory stays bounded however many items there are), and
  yields the outcomes in the items' order as soon as each is known, so that the client
  writes each output as it streams back. A task whose worker dies is run again by Dask
  (``allowed-failures``); a task that raises yields its exception.
* ``Cluster.broadcast(obj)`` puts one object (a model's bytes, the Gram targets) on every
  worker once; tasks take the returned future as an argument instead of the object.
* On a worker, ``worker_cached(key, make)`` builds a thing once per process (VGG16, a
  transformer network) and returns the same object to every later task.

Functions sent to the workers are pickled by reference, so each worker needs minnst (the
same version) installed; inputs travel as arrays or bytes, outputs come back as bytes
and the client writes them (``files.atomic_write``): workers need no shared file system.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from typing import Any, Callable, Iterable, Iterator

from .errors import ClusterError, WorkerDied

CONNECT_TIMEOUT_S = 10  # a scheduler that does not answer within this is an error
INSTALL_HINT = "pip install 'minnst[distributed]'"


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _import_distributed():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ClusterError(f"--workers and --scheduler need Dask: {INSTALL_HINT}") from None
    return distributed


# --------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------

_cache: dict = {}
_cache_lock = threading.RLock()  # re-entrant: a ``make`` may itself use ``worker_cached``


def worker_cached(key, make: Callable[[], Any]):
    """``make()`` once per process for each ``key`` (hashable), then the same object: what a
    worker loads once (VGG16, a network) and every later task reuses. Thread-safe."""
    with _cache_lock:
        if key not in _cache:
            _cache[key] = make()
        return _cache[key]


def worker_vgg16(pooling: str, dtype="float32", device: str = "cpu"):
    """This process's VGG16 (``vgg.VGG16.load`` from the weights this machine has), loaded
    once per (pooling, dtype, device): the one home of that cache key for every task."""
    import numpy as np

    from .backend import select_device
    from .vgg import VGG16

    dtype = np.dtype(dtype)
    return worker_cached(("vgg16", pooling, dtype.str, device),
                         lambda: VGG16.load(pooling=pooling, dtype=dtype, xp=select_device(device).xp))


def worker_info() -> dict:
    """What the client checks on each worker: minnst's version, cores, BLAS pool size."""
    import minnst

    from . import parallel

    return {"minnst": minnst.__version__, "cores": os.cpu_count() or 1,
            "threads": parallel.num_workers()}


def threads_for(cores: int, workers_on_host: int, task_threads: int) -> int:
    """The CPU threads each task of a worker gets so that workers × task threads × these
    threads = the host's cores (at least 1)."""
    return max(1, cores // max(1, workers_on_host * task_threads))


_threads_set = False


def setup_worker(hosts: dict) -> int:
    """Once per worker process, before its first task: ``parallel.start`` with
    ``threads_for(cores, workers on this host, this worker's task threads)``. ``hosts``
    maps a host to its worker count (counted by the client when it connected); a worker
    on a host not listed (it joined later) counts itself alone. A restarted worker is a
    new process and sets its threads again. Returns the pool's thread count."""
    global _threads_set
    from . import parallel
    from .backend import keep_freed_memory

    with _cache_lock:
        if not _threads_set:
            from distributed import get_worker
            from distributed.comm import get_address_host

            try:
                w = get_worker()
                host, task_threads = get_address_host(w.address), w.state.nthreads
            except ValueError:  # not in a worker (a test calling a task function directly)
                host, task_threads = None, 1
            n = threads_for(os.cpu_count() or 1, hosts.get(host, 1), task_threads)
            try:
                parallel.start(n)
            except ValueError:  # the pool was made before: keep it
                pass
            # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set, which turns off
            # glibc's adaptive mmap threshold: every large array is then a fresh mmap (a
            # 1024×768 tiled evaluation on one worker: 50 s instead of 27 s)
            keep_freed_memory()
            _threads_set = True
    return parallel.num_workers()


def _call(fn, hosts, *args, **kwargs):
    setup_worker(hosts)
    return fn(*args, **kwargs)


# --------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------


class Cluster:
    """A connected Dask client (and the LocalCluster it started, if any)."""

    def __init__(self, client, local=None, hosts=None):
        self.client, self.local, self.hosts = client, local, dict(hosts or {})

    @property
    def workers(self) -> dict:
        """``{address: info}`` of the workers connected now."""
        return self.client.scheduler_info(n_workers=-1)["workers"] if _accepts_n_workers(self.client) \
            else self.client.scheduler_info()["workers"]

    @property
    def n_workers(self) -> int:
        return len(self.workers)

    @property
    def dashboard(self) -> str | None:
        try:
            return self.client.dashboard_link
        except Exception:  # no dashboard (bokeh missing): not an error
            return None

    def broadcast(self, obj):
        """``obj`` (any object, one future: a dict or list is not split) on every worker
        once; pass the returned future to tasks instead of ``obj``."""
        return self.client.scatter([obj], broadcast=True, hash=False)[0]

    def submit(self, fn: Callable, *args, key: str | None = None, **kwargs):
        """One task ``fn(*args, **kwargs)`` (worker set up as for ``map_ordered``; ``key``:
        its name's prefix on the dashboard); its future, whose result stays on the worker
        until released."""
        return self.client.submit(_call, fn, self.hosts, *args, pure=False,
                                  key=f"{key or getattr(fn, '__name__', 'task')}-{_token()}", **kwargs)

    def map_ordered(self, fn: Callable, items: Iterable, *args, window: int | None = None,
                    progress: Callable[[int], None] | None = None, key: str | None = None,
                    **kwargs) -> Iterator[tuple[int, bool, Any]]:
        """``fn(item, *args, **kwargs)`` for each item as a task; yields ``(index, ok,
        value)`` in the items' order: ``ok`` False when the task raised, with the exception
        as ``value``. At most ``window`` tasks (default 2 per worker, at least 2) are in
        flight; ``progress(1)`` after each task that finishes. Futures in ``args`` /
        ``kwargs`` (``broadcast``) are resolved on the worker."""
        window = window or max(2, 2 * self.n_workers)
        prefix = key or getattr(fn, "__name__", "task")
        pending: deque = deque()
        it = enumerate(items)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                try:
                    i, item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                fut = self.client.submit(_call, fn, self.hosts, item, *args, pure=False,
                                         key=f"{prefix}-{i}-{_token()}", **kwargs)
                pending.append((i, fut))
            if not pending:
                return
            i, fut = pending.popleft()
            try:
                error = fut.exception()  # waits; None when the task returned
            except Exception as e:  # cancelled (the cluster went away)
                error = e
            if progress is not None:
                progress(1)
            value, ok = (fut.result(), True) if error is None else (_plain(error), False)
            fut.release()
            yield i, ok, value

    def close(self):
        with contextlib.suppress(Exception):
            self.client.close()
        if self.local is not None:
            with contextlib.suppress(Exception):
                self.local.close()


def run_ordered(c: Cluster | None, fn: Callable, items: Iterable, *args,
                progress: Callable[[int], None] | None = None, **kwargs) -> Iterator[tuple[int, bool, Any]]:
    """``c.map_ordered(fn, items, *args, progress=, **kwargs)`` on a cluster, else the same
    calls one after the other in this process with the same outcomes: ``(index, ok,
    value)`` in order, ``value`` the exception of a call that raised (``Exception``s only:
    Ctrl-C stops the loop)."""
    if c is not None:
        yield from c.map_ordered(fn, items, *args, progress=progress, **kwargs)
        return
    for i, item in enumerate(items):
        try:
            outcome = (i, True, fn(item, *args, **kwargs))
        except Exception as e:
            outcome = (i, False, e)
        if progress is not None:
            progress(1)
        yield outcome


def _plain(error: BaseException) -> BaseException:
    """A task's exception as the caller should see it: ``KilledWorker`` → ``WorkerDied``."""
    if type(error).__name__ == "KilledWorker":
        return WorkerDied(f"the workers running it died repeatedly (out of memory?): {one_line(error)}")
    return error


def _accepts_n_workers(client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


_counter = iter(range(1 << 62))
_counter_lock = threading.Lock()


def _token() -> str:
    with _counter_lock:
        return f"{os.getpid()}-{next(_counter)}"


def _hosts(workers: dict) -> dict:
    from distributed.comm import get_address_host

    hosts: dict = {}
    for address in workers:
        h = get_address_host(address)
        hosts[h] = hosts.get(h, 0) + 1
    return hosts


@contextlib.contextmanager
def cluster(workers: int | None = None, scheduler: str | None = None, say: Callable[[str], None] | None = print,
            timeout: float | None = None) -> Iterator[Cluster | None]:
    """A ``Cluster`` for the block: a LocalCluster of ``workers`` processes, or the running
    cluster at ``scheduler``; None (nothing to do) when neither is given. An unreachable
    scheduler, both given, a missing Dask or workers without (this) minnst: ``ClusterError``.
    ``say`` gets the one line with the worker count and the dashboard address; ``timeout``
    (default ``CONNECT_TIMEOUT_S``) bounds the wait for the scheduler and its first worker."""
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and scheduler is not None:
        raise ClusterError("give --workers (a cluster on this machine) or --scheduler (a running one), not both")
    _import_distributed()
    from distributed import Client, LocalCluster

    local = None
    if scheduler is not None:
        _check_address(scheduler)
        try:
            client = Client(scheduler, timeout=f"{timeout}s", set_as_default=False)
        except Exception as e:  # OSError/TimeoutError (no answer), ValueError/TypeError (a bad address)
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {one_line(e) or type(e).__name__}") \
                from None
    else:
        local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                             silence_logs=logging.CRITICAL)
        client = Client(local, set_as_default=False)
    c = Cluster(client, local)
    try:
        c.hosts = _check_workers(c, scheduler, timeout)
        if say is not None:
            board = c.dashboard
            where = f"; dashboard {board}" if board else ""
            kind = "local cluster" if local is not None else f"cluster at {scheduler}"
            say(f"Dask {kind}: {sum(c.hosts.values())} workers{where}")
        yield c
    finally:
        c.close()


def _check_address(address: str) -> None:
    """Refuse an address Dask cannot parse before a ``Client`` is made: one made with such
    an address cannot be closed cleanly (it times out at exit, with a traceback)."""
    from distributed.comm import parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, location = parse_address(address)
        get_backend(scheme)
    except ValueError as e:
        raise ClusterError(f"--scheduler {address}: {one_line(e)}") from None
    if not location:
        raise ClusterError(f"--scheduler {address}: no host in the address (e.g. tcp://10.0.0.5:8786)")
    if scheme in ("tcp", "tls"):
        from distributed.comm.addressing import parse_host_port

        try:
            parse_host_port(location, 8786)
        except ValueError as e:
            raise ClusterError(f"--scheduler {address}: {one_line(e)}") from None


def _check_workers(c: Cluster, scheduler, timeout) -> dict:
    """Wait for a worker, check that each runs this minnst; ``{host: worker count}``."""
    import minnst

    if not c.workers:
        try:
            c.client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise ClusterError(f"no Dask worker joined the scheduler at {scheduler} within {timeout:g} s") from None
    try:
        infos = c.client.run(worker_info)
    except Exception as e:
        raise ClusterError(f"the Dask workers cannot run minnst ({one_line(e) or type(e).__name__}): "
                         f"install minnst on every worker machine") from None
    odd = {a: i["minnst"] for a, i in infos.items() if i["minnst"] != minnst.__version__}
    if odd:
        a, v = next(iter(odd.items()))
        raise ClusterError(f"worker {a} runs minnst {v}, this machine {minnst.__version__}: "
                         f"install the same version everywhere")
    return _hosts(infos)
