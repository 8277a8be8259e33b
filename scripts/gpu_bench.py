"""GPU benchmark: ``python scripts/gpu_bench.py [--size 512] [--json FILE]``.

Times, on the GPU that CuPy sees (CUDA events; median of ``--repeat`` runs after
warm-ups):

* VGG16 forward + backward at size², from the pastiche to the Gatys layers
  (relu1_1 … relu5_1 and relu4_2), with the hand-written kernels (the default dispatch)
  and, for comparison, with the layers' generic CuPy array code (kernels switched off);
* the Gatys objective (``gatys.Objective.loss_and_grad`` on the device, and the float64
  host boundary ``flat_loss_and_grad`` that scipy calls);
* a short L-BFGS-B run (``--lbfgs`` iterations), extrapolated to 500 iterations;
* each kernel at VGG16's sizes, with its effective memory bandwidth.

The VGG16 weights are the converted ones when present (``weights.vgg16_path()``), else
random: the timings do not depend on the values. Targets (issue 8, H100-class):
forward+backward < 15 ms, 500 L-BFGS iterations < 10 s.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if os.environ.get("MINNST_FAKE_GPU"):  # dry run on the CPU stand-in (tests/kernel_emu)
    sys.path.insert(0, str(ROOT / "tests"))
    from kernel_emu import fake_cupy

    fake_cupy.install()

import cupy as cp  # noqa: E402

from minnst import losses  # noqa: E402
from minnst.layers import activations, im2col, normalization, padding, pooling, resampling  # noqa: E402
from minnst.vgg import VGG16, expected_shapes  # noqa: E402

GATYS_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]


def gpu_time(fn, repeat: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``repeat`` runs, by CUDA events."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return float(np.median(times))


def load_vgg(pooling="avg"):
    try:
        from minnst import weights

        path = weights.vgg16_path()
        if Path(path).exists():
            return VGG16.load(path, pooling=pooling, xp=cp), "converted VGG16 weights"
    except Exception:
        pass
    r = np.random.default_rng(0)
    w = {n: ((r.standard_normal(ws) * np.sqrt(2.0 / np.prod(ws[1:]))).astype(np.float32),
             np.zeros(bs, np.float32)) for n, (ws, bs) in expected_shapes().items()}
    return VGG16(w, pooling=pooling).to(cp, np.float32), "random weights"


@contextlib.contextmanager
def kernels_off():
    """The layers' generic CuPy array code instead of the hand-written kernels."""
    mods = (activations, pooling, normalization, resampling, losses)
    saved = [m.is_gpu_array for m in mods]
    for m in mods:
        m.is_gpu_array = lambda a: False
    try:
        yield
    finally:
        for m, f in zip(mods, saved):
            m.is_gpu_array = f


def bench_vgg(net, size, repeat):
    x = cp.asarray(np.random.default_rng(1).standard_normal((1, 3, size, size)), dtype=cp.float32)

    def fwd():
        return net.forward(x, GATYS_LAYERS)

    def fwd_bwd():
        feats, cache = net.forward(x, GATYS_LAYERS)
        return net.backward({l: feats[l] for l in GATYS_LAYERS}, cache)

    out = {"forward_ms": gpu_time(fwd, repeat), "forward_backward_ms": gpu_time(fwd_bwd, repeat)}
    with kernels_off():
        out["forward_backward_ms_without_kernels"] = gpu_time(fwd_bwd, repeat)
    return out


def bench_objective(net, size, repeat, lbfgs_iters):
    from minnst import gatys
    from minnst.optim import lbfgs

    r = np.random.default_rng(2)
    content = cp.asarray(r.uniform(0, 1, (size, size, 3)), dtype=cp.float32)
    style = cp.asarray(r.uniform(0, 1, (size, size, 3)), dtype=cp.float32)
    obj = gatys.Objective(content, [style], net=net, pooling=net.pooling)
    x = cp.asarray(r.uniform(0, 1, (size, size, 3)), dtype=cp.float32)
    z = r.uniform(0, 1, size * size * 3)
    out = {"loss_and_grad_ms": gpu_time(lambda: obj.loss_and_grad(x), repeat)}
    t0 = time.perf_counter()
    for _ in range(repeat):
        obj.flat_loss_and_grad(z)
    out["flat_loss_and_grad_ms"] = (time.perf_counter() - t0) / repeat * 1e3
    if lbfgs_iters:
        its, evals = [0], [0]

        def fun(zz):
            evals[0] += 1
            return obj.flat_loss_and_grad(zz)

        def count(_):
            its[0] += 1

        t0 = time.perf_counter()
        lbfgs(fun, z, 0.0, 1.0, lbfgs_iters, on_iteration=count)
        seconds = time.perf_counter() - t0
        out.update(lbfgs_iterations=its[0], lbfgs_evaluations=evals[0], lbfgs_seconds=seconds,
                   lbfgs_500_iterations_estimate_s=seconds / max(its[0], 1) * 500)
    return out


def bench_kernels(size, repeat):
    """Each kernel-backed layer at VGG16's block-1 size (64 × size²), and effective GB/s
    (bytes read + written once, a lower bound on the traffic)."""
    r = np.random.default_rng(3)
    x = cp.asarray(r.standard_normal((1, size, size, 64)), dtype=cp.float32).transpose(0, 3, 1, 2)
    n = x.size * 4
    y, rc = activations.relu_forward(x)
    p, pc = pooling.avgpool2d_forward(x, 2, 2)
    m, mc = pooling.maxpool2d_forward(x, 2, 2)
    xpad = cp.asarray(r.standard_normal((1, size + 2, size + 2, 64)), dtype=cp.float32)
    rows = max(1, min(size, (64 << 20) // (size * 9 * 64 * 4)))
    cases = {
        "relu_forward": (lambda: activations.relu_forward(x), 2 * n),
        "relu_backward": (lambda: activations.relu_backward(y, rc), 3 * n),
        "avgpool2x2_forward": (lambda: pooling.avgpool2d_forward(x, 2, 2), 1.25 * n),
        "avgpool2x2_backward": (lambda: pooling.avgpool2d_backward(p, pc), 1.25 * n),
        "maxpool2x2_forward": (lambda: pooling.maxpool2d_forward(x, 2, 2), 1.3 * n),
        "maxpool2x2_backward": (lambda: pooling.maxpool2d_backward(m, mc), 1.3 * n),
        "instance_norm_forward": (lambda: normalization.instance_norm_forward(x, None, None), 3 * n),
        "upsample2x_forward": (lambda: resampling.upsample_nearest2d_forward(p, 2), 1.25 * n),
        "content_loss": (lambda: losses.content_loss(x, y), 3 * n),
        "tv_loss": (lambda: losses.tv_loss(x[0].transpose(1, 2, 0)[:, :, :3]), 2 * n * 3 / 64),
        "pad2d_zero_1": (lambda: padding.pad2d(x, 1), 2 * n),
        f"im2col_3x3_{rows}rows": (lambda: im2col.im2col(xpad, 3, 3, 1, 0, rows, size),
                                   10 * rows * size * 64 * 4),
    }
    out = {}
    for name, (fn, nbytes) in cases.items():
        ms = gpu_time(fn, repeat)
        out[name] = {"ms": ms, "GB/s": nbytes / (ms * 1e-3) / 1e9}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--lbfgs", type=int, default=20, help="L-BFGS iterations to time (0: none)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    net, wdesc = load_vgg()
    result = {"device": name, "cupy": getattr(cp, "__version__", "?"),
              "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "size": args.size,
              "weights": wdesc}
    print(f"device: {name}; {args.size}x{args.size}; {wdesc}", flush=True)
    result["vgg16"] = bench_vgg(net, args.size, args.repeat)
    print("vgg16:", json.dumps(result["vgg16"]), flush=True)
    result["objective"] = bench_objective(net, args.size, max(3, args.repeat // 2), args.lbfgs)
    print("objective:", json.dumps(result["objective"]), flush=True)
    result["kernels"] = bench_kernels(args.size, args.repeat)
    for k, v in result["kernels"].items():
        print(f"  {k:28s} {v['ms']:8.3f} ms  {v['GB/s']:8.1f} GB/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
