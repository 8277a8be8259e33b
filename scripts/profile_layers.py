"""Per-layer times of the fast method's workloads, to find where a run spends its time.

    python scripts/profile_layers.py [train] [stylize] [vgg]

train: the transformer's forward + backward, batch 4 at 256² (residual rows summed over the
five blocks); stylize: its inference at 512²; vgg: VGG16 to relu4_3, batch 4 at 256²,
forward + backward, per call of each layer function (keyed by the convolution's path,
``conv2d_forward``'s ``method``). Milliseconds, the mean of a few runs after a warm-up.
The worker count is the one ``minnst.parallel.start`` takes: the BLAS thread count met at
start-up (OPENBLAS_NUM_THREADS); BLAS then runs one thread inside the workers. Like the
command-line tools, the script keeps freed memory in the heap (``keep_freed_memory``).
Each layer is timed by a wrapper, so the totals are a little above the benchmark's
(python -m minnst.bench fast).
"""
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from minnst import parallel
from minnst import vgg as vggmod
from minnst.backend import keep_freed_memory
from minnst.layers.base import _Container
from minnst.transformer import TransformerConfig, TransformerNet

T = collections.defaultdict(float)


def wrap(net):
    for name, layer in net.named_layers():
        if isinstance(layer, _Container):
            continue
        key = "res*." + name.split(".")[-1] if name.startswith("res") else name
        f, b = layer.forward, layer.backward

        def fw(x, key=key, f=f):
            t = time.perf_counter()
            r = f(x)
            T[(key, "f")] += time.perf_counter() - t
            return r

        def bw(dy, c, key=key, b=b):
            t = time.perf_counter()
            r = b(dy, c)
            T[(key, "b")] += time.perf_counter() - t
            return r

        layer.forward, layer.backward = fw, bw


def report(title, reps):
    print(f"== {title}, ms")
    names = list(dict.fromkeys(k for k, _ in T))
    for n in names:
        print(f"  {n:30s} f {T.get((n, 'f'), 0) / reps * 1e3:8.1f}  b {T.get((n, 'b'), 0) / reps * 1e3:8.1f}")
    tf = sum(v for (_, k), v in T.items() if k == "f") / reps * 1e3
    tb = sum(v for (_, k), v in T.items() if k == "b") / reps * 1e3
    print(f"  total f {tf:.0f} b {tb:.0f}")
    T.clear()


def main(what):
    keep_freed_memory()
    print(f"# {parallel.start()} workers")
    rng = np.random.default_rng(0)
    if "train" in what:
        net = TransformerNet(TransformerConfig(width=1.0), seed=0)
        wrap(net)
        x = rng.uniform(0, 255, (4, 3, 256, 256)).astype(np.float32)
        dy = rng.standard_normal((4, 3, 256, 256)).astype(np.float32)  # not constant: a
        for rep in range(4):  # constant dy vanishes in the norms' backward (denormals)
            if rep == 2:  # two warm-ups: the first touches of fresh memory end with the second
                T.clear()  # (up2's norm and ReLU 27 and 18 ms after one, 12 and 2.5 after two)
            y, c = net.forward(x)
            net.backward(dy, c)
        report("transformer forward + backward, batch 4 at 256²", 2)
    if "stylize" in what:
        net = TransformerNet(TransformerConfig(width=1.0), seed=0)
        wrap(net)
        x = rng.uniform(0, 255, (1, 3, 512, 512)).astype(np.float32)
        net.infer(x)
        T.clear()
        for _ in range(3):
            net.infer(x)
        report("stylisation at 512²", 3)
    if "vgg" in what:
        net = vggmod.VGG16.load(pooling="max")
        x = rng.standard_normal((4, 3, 256, 256)).astype(np.float32)
        layers = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
        for fname in ("conv2d_forward", "conv2d_backward", "relu_forward", "relu_backward",
                      "maxpool2d_forward", "maxpool2d_backward"):
            f = getattr(vggmod, fname)

            def timed(*a, f=f, fname=fname, **k):
                t = time.perf_counter()
                r = f(*a, **k)
                path = {"conv2d_forward": lambda: r[1].method, "conv2d_backward": lambda: a[1].method}
                tag = path[fname]() + " " if fname in path else ""
                key = f"{fname.split('_')[0]} {tag}{tuple(a[0].shape[1:])}"
                T[(key, fname.rsplit("_", 1)[1][0])] += time.perf_counter() - t
                return r

            setattr(vggmod, fname, timed)
        g = {l: None for l in layers}
        for rep in range(3):
            if rep == 1:
                T.clear()
            feats, cache = net.forward(x, layers)
            for l in layers:
                g[l] = g[l] if g[l] is not None else rng.standard_normal(feats[l].shape).astype(np.float32)
            net.backward(g, cache)
        report("VGG16 to relu4_3, batch 4 at 256², forward + backward", 2)


if __name__ == "__main__":
    main(sys.argv[1:] or ["train", "stylize", "vgg"])
