"""The tiled Gatys evaluation on a Dask cluster (``gatys.Objective(cluster=…)``,
``gatys.objective.ClusterTiles``, ``stylize(cluster=…)``), on the 2-process ``cluster2``.

* the same bits: targets, loss, every term and the gradient of a distributed evaluation
  equal the serial tiled ones exactly (both poolings, both normalisations, float64 and
  float32, two styles blended, each tiled itself), and a short ``stylize`` run is
  the serial tiled run, image and losses identical;
* the work ran on the workers as two waves of per-tile tasks, the content targets stayed
  there, and the net did not travel: a worker whose VGG16 differs from the client's is
  refused;
* a worker killed in the middle of an evaluation: Dask reruns its tasks and recomputes
  the content targets it held, and the evaluation is still the serial one.
"""
import os
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest

from minnst import gatys, procedural, tiling
from minnst.gatys.objective import weights_digest
from minnst.vgg import VGG16

from test_tiling import SHALLOW, image, pastiche

pytest.importorskip("distributed", reason="Dask not installed: pip install 'minnst[test]'")
from distributed import get_task_stream  # noqa: E402


@pytest.fixture(scope="module")
def nets(vgg16_path):
    """The client's networks, by (pooling, dtype)."""
    return {(p, d): VGG16.load(vgg16_path, pooling=p, dtype=d)
            for p in ("avg", "max") for d in (np.float32, np.float64)}


def setting(nets, pooling="avg", normalization="gatys", dtype=np.float64):
    """40×56 content, two styles blended 3:1 (50×44 and 18×19: in tiles of 16, both are
    tiled themselves), content
    relu2_2 and three style layers weighted unequally, TV: keyword arguments and images."""
    c = image(40, 56, 0, dtype)
    styles = [procedural.stained_glass(50, 44, seed=1).astype(dtype), image(18, 19, 3, dtype)]
    kw = dict(net=nets[pooling, dtype], style_blend_weights=[3, 1], pooling=pooling, normalization=normalization,
              alpha=2.0, beta=1e3 if normalization == "gatys" else 1e2, tv_weight=0.5, **SHALLOW)
    return c, styles, kw


def assert_same_evaluation(serial, dist, x):
    """Targets, loss, terms and gradient: the same bits."""
    for l, A in serial.style_targets.items():
        assert np.array_equal(dist.style_targets[l], A), l
    ls, gs = serial.loss_and_grad(x)
    ld, gd = dist.loss_and_grad(x)
    assert ld == ls and serial.last == dist.last
    assert gd.dtype == gs.dtype and np.array_equal(gd, gs), np.abs(gd - gs).max() / np.abs(gs).max()


@pytest.mark.parametrize("pooling, normalization, dtype", [("avg", "gatys", np.float64),
                                                          ("max", "johnson", np.float64),
                                                          ("avg", "johnson", np.float32)])
def test_distributed_tiled_equals_serial(cluster2, nets, pooling, normalization, dtype):
    """Tiles of 16 (smaller than relu3_1's receptive field): 3×4 tiles, each pass one task
    per tile, the content targets one task per tile once, the style images one task per
    tile; the result is the serial tiled one, bit for bit, evaluated twice."""
    c, styles, kw = setting(nets, pooling, normalization, dtype)
    serial = gatys.Objective(c, styles, tile=16, **kw)
    with get_task_stream(client=cluster2.client) as stream:
        dist = gatys.Objective(c, styles, tile=16, cluster=cluster2, **kw)
        x = pastiche(c)
        assert_same_evaluation(serial, dist, x)
        assert_same_evaluation(serial, dist, pastiche(c, seed=8))
    assert dist.tile_count == serial.tile_count == 12
    assert dist.content_targets is None and len(dist.content_tiles) == 12
    # distinct task keys: a task the scheduler runs again (a worker that missed its
    # heartbeats on a loaded machine) is still one task per tile
    ran = Counter(key.split("-")[0] for key in {t["key"] for t in stream.data})
    style_tiles = sum(tiling.tile_count(*s.shape[:2], 16) for s in styles)  # 12 + 4
    assert ran["tile_content_targets"] == 12 and ran["tile_style_target"] == style_tiles
    assert ran["tile_gram_sums"] == ran["tile_gradient"] == 2 * 12  # two evaluations
    # the tiles ran on the cluster's workers (which of them takes a task is the scheduler's
    # choice: a worker busy or slow to start may leave them all to the other, so not asserted)
    assert {t["worker"] for t in stream.data} <= set(cluster2.client.scheduler_info()["workers"])


def test_cluster_without_a_tile_gives_every_worker_tiles(cluster2, nets):
    """No tile given: ``tiling.tile_for_workers`` (28 px here: 2×2 tiles for 2 workers),
    and the same bits as the serial evaluation in those tiles."""
    c, styles, kw = setting(nets)
    dist = gatys.Objective(c, styles, cluster=cluster2, **kw)
    assert dist.tile == tiling.tile_for_workers(40, 56, 2) == 28 and dist.tile_count == 4
    assert_same_evaluation(gatys.Objective(c, styles, tile=28, **kw), dist, pastiche(c))


def test_workers_refuse_other_weights(cluster2, nets):
    """The workers load VGG16 themselves (only a digest of the client's travels); a client
    network whose weights differ is refused with the reason."""
    c, styles, kw = setting(nets)
    other = VGG16(dict(kw["net"].weights), pooling="avg")
    w, b = other.weights["conv5_1"]
    other.weights["conv5_1"] = (w, b + 1e-3)
    assert weights_digest(other) != weights_digest(kw["net"])
    with pytest.raises(ValueError, match="weights .* differ from the client's"):
        gatys.Objective(c, styles, tile=16, cluster=cluster2, **dict(kw, net=other))


def test_stylize_on_a_cluster_is_the_serial_run(cluster2, nets):
    """Two scales (the first within one tile: evaluated here, whole), two styles, style
    scale, luminance: ``stylize(cluster=…)`` gives the serial tiled run's image and losses
    exactly."""
    c, styles = image(45, 60, 0, np.float32), [procedural.stained_glass(50, 50, seed=1), image(40, 40, 2)]
    cfg = gatys.GatysConfig(scales=[24, 56], iterations=3, style_blend_weights=[2, 1], style_scale=0.7,
                            style_weight=1e4, preserve_colors="luminance", device="cpu", quiet=True, tile=20,
                            **SHALLOW)
    net = nets["avg", np.float32]
    a = gatys.stylize(c, styles, cfg, net=net)
    b = gatys.stylize(c, styles, cfg, net=net, cluster=cluster2)
    assert b.evaluations == a.evaluations and b.iterations == a.iterations
    assert [h["loss"] for h in b.history] == [h["loss"] for h in a.history]
    assert np.array_equal(b.image, a.image)


def test_a_worker_killed_mid_evaluation(cluster2, nets):
    """Kill the worker running a pass-2 task while the evaluation runs: Dask reruns its
    tasks on the other worker and recomputes the content targets it held; the result is
    still the serial one, bit for bit, and so is the next evaluation (on a restarted
    worker, which loads its VGG16 again)."""
    c = image(64, 80, 0)
    styles = [procedural.stained_glass(40, 40, seed=1).astype(np.float64)]
    kw = dict(net=nets["avg", np.float64], tv_weight=0.5, **SHALLOW)
    serial = gatys.Objective(c, styles, tile=16, **kw)
    dist = gatys.Objective(c, styles, tile=16, cluster=cluster2, **kw)
    x = pastiche(c)
    expected = serial.loss_and_grad(x)
    client = cluster2.client
    dist.loss_and_grad(pastiche(c, seed=9))  # the workers hold the content targets now
    pids = client.run(os.getpid)  # {worker address: its process id}

    out = {}
    run = threading.Thread(target=lambda: out.update(result=dist.loss_and_grad(x)))
    with get_task_stream(client=client) as stream:
        run.start()
        victim, deadline = None, time.monotonic() + 60
        while victim is None and run.is_alive() and time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items()
                    if any(k.startswith("tile_gradient") for k in keys)]
            victim = busy[0] if busy else None
            time.sleep(0.005)
        assert victim is not None, "the evaluation ended before a pass-2 task was seen"
        os.kill(pids[victim], signal.SIGKILL)
        killed_while_running = run.is_alive()
        run.join(120)
    assert killed_while_running and not run.is_alive()
    assert victim not in cluster2.workers
    redone = Counter(t["key"].split("-")[0] for t in stream.data)
    assert redone["tile_content_targets"] > 0  # the victim's, recomputed from their crops
    loss, grad = out["result"]
    assert loss == expected[0] and np.array_equal(grad, expected[1])
    client.wait_for_workers(2, timeout=60)
    assert_same_evaluation(serial, dist, pastiche(c, seed=10))
