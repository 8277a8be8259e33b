"""Benchmarks: ``python -m minnst.bench [WORKLOAD …] [--sizes 256,512,1024] [--json [FILE]]
[--compare-torch]``; workloads ``vgg`` (alias ``conv``: VGG16's convolutions forward and
forward+backward), ``gatys``, ``fast``, or ``all``.

Every number is the minimum over at least ``--repeat`` timed runs after one warm-up run
(more for short workloads, until each has run 1.5 s; ``best_times``), measured
in this process next to NumPy's own float32 matrix multiply, so the ratios (the fraction
of the machine's GEMM rate that a workload reaches) are comparable across machines.
Peak memory is the high-water mark of the arrays allocated during one run (tracemalloc,
which NumPy reports to), over what was allocated before it.

``--compare-torch`` runs the same workloads in PyTorch (if installed; never a dependency
of minnst) in the same process, with the same weights, sizes and thread count, and adds
``torch_seconds`` and ``ratio_vs_torch`` (minnst time / PyTorch time: lower is better),
the two timed in alternation, run by run, so that both see the same state of the machine.
The PyTorch code lives here and nowhere else.

``--isa avx2`` runs every library at AVX2 (OpenBLAS's Haswell kernels, oneDNN's and ATen's
AVX2 code: an AVX2-only machine, emulated on a wider CPU), ``--isa native`` at the widest
each has for the CPU (``cpu.ISA_ENVIRONMENT``). The libraries read those variables when
they load, so the benchmark then runs in a child process with that environment.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc

import numpy as np

from . import cpu
from .backend import keep_freed_memory
from .cli import ArgumentParser, UsageError, run, whole
from .files import check_writable, write_text_atomic

WORKLOADS = ("vgg", "gatys", "fast", "video", "gatys-tiled")
IN_ALL = ("vgg", "gatys", "fast", "video")  # gatys-tiled is slow (print sizes): asked for by name
PROG = "python -m minnst.bench"


# --------------------------------------------------------------------------- machine

def blas_info() -> dict:
    pool = cpu.blas_pool()
    if pool is None:  # threadpoolctl missing or confused: report what we can
        return {"blas": "unknown", "threads": os.cpu_count()}
    return {"blas": f"{pool.get('internal_api')} {pool.get('version')}", "threads": pool.get("num_threads")}


def machine_info() -> dict:
    info = {"cpu": cpu.cpu_info()["model"], "cpu_flags": cpu.flag_summary(),
            "blas_kernels": cpu.blas_kernels(), "cores": os.cpu_count(), "numpy": np.__version__,
            "python": platform.python_version(),
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
    info.update(blas_info())
    return info


# --------------------------------------------------------------------------- timing

# A number at a small size takes a tenth of a second, and this kind of machine (a VM
# sharing its host) has slow spells of up to half again that length: short workloads run
# until each function has had MIN_SECONDS of timed runs (at most MAX_RUNS), long ones
# ``repeat`` times.
MIN_SECONDS = 1.5
MAX_RUNS = 15


def best_times(fns, repeat: int = 3, warmup: int = 1) -> list[float]:
    """The best time of each function in ``fns``, timed in alternation (f₀, f₁, …, f₀,
    f₁, …) after ``warmup`` calls each, so that a slow spell of the machine falls on both
    sides of a comparison rather than on one: at least ``repeat`` rounds, and more until
    every function has run ``MIN_SECONDS`` in all (``MAX_RUNS`` rounds at most)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    best = [float("inf")] * len(fns)
    spent = [0.0] * len(fns)
    rounds = 0
    while rounds < repeat or (rounds < MAX_RUNS and min(spent) < MIN_SECONDS):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            dt = time.perf_counter() - t
            best[i], spent[i] = min(best[i], dt), spent[i] + dt
        rounds += 1
    return best


def best_time(fn, repeat: int = 3, warmup: int = 1) -> float:
    """``best_times`` of one function."""
    return best_times([fn], repeat, warmup)[0]


def peak_mb(fn) -> float:
    """High-water mark (MB) of memory allocated while ``fn`` runs, above the start."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 2**20


def matmul_gflops(n: int = 4096, repeat: int = 3) -> float:
    """NumPy float32 n×n matrix multiply rate, the machine's reference GEMM speed."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    t = best_time(lambda: np.matmul(a, b, out=out), repeat)
    return 2 * n**3 / t / 1e9


# --------------------------------------------------------------------------- PyTorch twins

def torch_module(threads):
    """PyTorch, set to ``threads`` intra-op threads, or None when it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(int(threads or os.cpu_count() or 1))
    return torch


def torch_vgg(torch, net, upto="relu5_1"):
    """A PyTorch function ``x -> {layer: tensor}`` over minnst's VGG16 weights."""
    from . import vgg

    F = torch.nn.functional
    params = {n: (torch.from_numpy(np.ascontiguousarray(w)), torch.from_numpy(np.ascontiguousarray(b)))
              for n, (w, b) in net.weights.items()}
    names = vgg.LAYER_NAMES[:vgg.LAYER_NAMES.index(upto) + 1]

    def forward(x):
        out, h = {}, x
        for name in names:
            if name.startswith("conv"):
                h = F.conv2d(h, *params[name], padding=1)
            elif name.startswith("relu"):
                h = F.relu(h)
            else:
                h = F.avg_pool2d(h, 2) if net.pooling == "avg" else F.max_pool2d(h, 2)
            out[name] = h
        return out

    return forward


def torch_gatys(torch, obj):
    """A PyTorch function ``img -> (loss, grad)`` for the same objective as ``obj``
    (``gatys.Objective``: same targets, layers, weights, normalisation)."""
    from . import images

    tnet = torch_vgg(torch, obj.net, upto=obj.layers[-1])
    mean = torch.from_numpy(images.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.from_numpy(images.IMAGENET_STD).reshape(1, 3, 1, 1)
    P = {l: torch.from_numpy(np.asarray(t)) for l, t in obj.content_targets.items()}
    A = {l: torch.from_numpy(np.asarray(t)) for l, t in obj.style_targets.items()}
    style_w = dict(zip(obj.style_layers, obj.style_layer_weights))

    def loss_and_grad(img):
        xt = torch.from_numpy(img).requires_grad_(True)
        feats = tnet((xt.permute(2, 0, 1)[None] - mean) / std)
        total = 0.0
        for l in obj.layers:
            F = feats[l]
            N, C, H, W = F.shape
            if l in P:
                d = F - P[l]
                total = total + obj.alpha * (0.5 * (d * d).sum() if obj.normalization == "gatys"
                                             else (d * d).sum() / (N * C * H * W))
            if l in A:
                Fm = F.reshape(N, C, H * W)
                G = Fm @ Fm.transpose(1, 2)
                if obj.normalization == "gatys":
                    e = ((G - A[l]) ** 2).sum() / (4 * C * C * (H * W) ** 2)
                else:
                    e = ((G / (C * H * W) - A[l]) ** 2).sum() / N
                total = total + obj.beta * style_w[l] * e
        if obj.tv_weight:
            tv = ((xt[1:] - xt[:-1]) ** 2).sum() + ((xt[:, 1:] - xt[:, :-1]) ** 2).sum()
            total = total + obj.tv_weight * tv
        total.backward()
        return float(total.detach()), xt.grad

    return loss_and_grad


def torch_layer(torch, layer, params):
    """A PyTorch function mirroring a minnst layer tree (the transformer's building
    blocks); ``params`` maps each minnst parameter array's id to its torch tensor."""
    from .layers import (BatchNorm2d, Conv2d, ConvTranspose2d, InstanceNorm2d, ReLU, Residual,
                         ScaledTanh, Sequential, Upsample)

    F = torch.nn.functional
    p = {k: params[id(v)] for k, v in layer.params.items()}
    if isinstance(layer, Residual):
        body = torch_layer(torch, layer.layers["body"], params)
        return lambda x: x + body(x)
    if isinstance(layer, Sequential):
        fns = [torch_layer(torch, child, params) for child in layer.layers.values()]

        def seq(x):
            for fn in fns:
                x = fn(x)
            return x
        return seq
    if isinstance(layer, Conv2d):
        mode = "reflect" if layer.pad_mode == "reflect" else "constant"
        pad = (layer.padding,) * 4
        return lambda x: F.conv2d(F.pad(x, pad, mode=mode) if layer.padding else x,
                                  p["weight"], p.get("bias"), stride=layer.stride)
    if isinstance(layer, ConvTranspose2d):
        return lambda x: F.conv_transpose2d(x, p["weight"], p.get("bias"), stride=layer.stride,
                                            padding=layer.padding, output_padding=layer.output_padding)
    if isinstance(layer, InstanceNorm2d):
        return lambda x: F.instance_norm(x, weight=p.get("weight"), bias=p.get("bias"), eps=layer.eps)
    if isinstance(layer, BatchNorm2d):
        return lambda x: F.batch_norm(x, None, None, p["weight"], p["bias"], training=True, eps=layer.eps)
    if isinstance(layer, ReLU):
        return F.relu
    if isinstance(layer, Upsample):
        return lambda x: F.interpolate(x, scale_factor=layer.scale, mode="nearest")
    if isinstance(layer, ScaledTanh):
        return lambda x: layer.offset + layer.scale * torch.tanh(x)
    raise TypeError(f"no PyTorch twin for {type(layer).__name__}")


def torch_train_step(torch, net, loss):
    """A PyTorch function ``batch -> total`` doing what ``train_fast.train_step`` does:
    the transformer, the perceptual loss (same VGG16, targets, weights), backward, Adam."""
    from . import images

    params = {id(v): torch.from_numpy(np.array(v)).requires_grad_(True) for v in net.params.values()}
    tnet = torch_layer(torch, net, params)
    p = loss.loss  # the perceptual.PerceptualLoss inside train_fast.TrainingLoss
    tvgg = torch_vgg(torch, p.net, upto=p.layers[-1])
    opt = torch.optim.Adam(list(params.values()), lr=1e-3)
    mean = torch.from_numpy(images.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.from_numpy(images.IMAGENET_STD).reshape(1, 3, 1, 1)
    A = {l: torch.from_numpy(np.asarray(t)) for l, t in loss.targets.items()}
    content_layer = p.content_layers[0]
    layer_w = dict(zip(p.style_layers, p.style_layer_weights))  # w_l / C_l²

    def step(batch):
        x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32))
        N = x.shape[0]
        with torch.no_grad():
            pc = tvgg((x / 255.0 - mean) / std)[content_layer]
        y = tnet(x)
        feats = tvgg((y / 255.0 - mean) / std)
        Fc = feats[content_layer]
        total = p.alpha * ((Fc - pc) ** 2).sum() / Fc.numel()
        for l in p.style_layers:
            f = feats[l]
            n, C, H, W = f.shape
            fm = f.reshape(n, C, H * W)
            G = fm @ fm.transpose(1, 2) / (C * H * W)
            total = total + p.beta * layer_w[l] * ((G - A[l]) ** 2).sum() / n
        yi = y / 255.0
        tv = ((yi[:, :, 1:] - yi[:, :, :-1]) ** 2).sum() + ((yi[:, :, :, 1:] - yi[:, :, :, :-1]) ** 2).sum()
        total = total + p.tv_weight * tv / N
        opt.zero_grad()
        total.backward()
        opt.step()
        return float(total.detach())

    return step


# --------------------------------------------------------------------------- workloads

# A Winograd F(4×4, 3×3) tile needs (4 + 2)² = 36 products for 4·4·9 = 144 of the direct
# convolution: the ideal 3×3 stride-1 layer does a quarter of the direct multiply-adds
# (the transforms, memory traffic and thin products not counted: a bound, not a plan).
WINOGRAD4_FACTOR = 36 / 144


def winograd4_ideal(flops_3x3: float, flops_other: float = 0.0) -> float:
    """Multiply-add FLOPs of an ideal F(4×4, 3×3) Winograd on ``flops_3x3`` direct FLOPs
    of 3×3 stride-1 layers, plus ``flops_other`` of the layers it cannot take."""
    return flops_3x3 * WINOGRAD4_FACTOR + flops_other


def transformer_conv_flops(net, N: int, H: int, W: int) -> tuple[float, float]:
    """``(direct, winograd_ideal)``: multiply-add FLOPs (2 per MAC) of the convolutions of
    one forward of ``net`` (a ``TransformerNet``) on N × 3 × H × W, and the same with
    every 3×3 stride-1 layer at ``WINOGRAD4_FACTOR`` of its count. The shapes are
    ``memory.transformer_layer_shapes``'; normalisation, ReLU and resizing are not counted."""
    from .layers import Conv2d, ConvTranspose2d
    from .memory import transformer_layer_shapes

    convs = [l for _, l in net.named_layers() if isinstance(l, (Conv2d, ConvTranspose2d))]
    shapes = [s for s in transformer_layer_shapes(net, H, W) if s.kind in ("Conv2d", "ConvTranspose2d")]
    total = {"3x3": 0.0, "other": 0.0}
    for layer, shape in zip(convs, shapes, strict=True):
        k = layer.params["weight"].shape[2]
        (c, h, w), (f, oh, ow) = shape.x, shape.y
        if isinstance(layer, Conv2d):
            macs, three = oh * ow * c * f * k * k, k == 3 and layer.stride == 1
        else:  # each input position scatters its k × k taps
            macs, three = h * w * c * f * k * k, False
        total["3x3" if three else "other"] += 2 * N * macs
    return total["3x3"] + total["other"], winograd4_ideal(total["3x3"], total["other"])


def train_step_flops(net, loss, N: int, S: int) -> tuple[float, float]:
    """``(direct, winograd_ideal)`` FLOPs of one training step on N × S × S photos: the
    network's forward, its weight gradient (the forward's count again) and input gradient
    (again, less the first layer's: ``input_grad=False``); the loss network's forward and
    input gradient to its deepest layer on the output, and its forward to the content
    layer on the photos (the content targets). All of VGG16's layers are 3×3, stride 1."""
    from .vgg import LAYER_NAMES, forward_flops

    fwd, fwd_ideal = transformer_conv_flops(net, N, S, S)
    first = net.layers["down1"].layers["conv"].params["weight"]
    first_flops = 2 * N * S * S * first.size  # stride 1, "same" padding
    layers = [*loss.loss.content_layers, *loss.loss.style_layers]
    deepest = max(layers, key=LAYER_NAMES.index)
    vgg = 2 * forward_flops(S, S, deepest, N) + forward_flops(S, S, max(loss.loss.content_layers,
                                                                         key=LAYER_NAMES.index), N)
    direct = 3 * fwd - first_flops + vgg
    ideal = 3 * fwd_ideal - first_flops + winograd4_ideal(vgg)
    return direct, ideal


def _row(name, size, seconds, flops, peak, torch_seconds=None, ideal_flops=None):
    """One result. ``flops``: the direct convolutions' multiply-add FLOPs (the useful work);
    ``ideal_flops``: those of an ideal F(4×4, 3×3) Winograd (``winograd4_ideal``), from
    which ``_main`` derives the time it would take at the matmul rate."""
    row = {"workload": name, "size": size, "seconds": seconds,
           "gflops": flops / seconds / 1e9 if flops else None, "peak_mb": peak}
    if ideal_flops:
        row["winograd4_ideal_gflop"] = ideal_flops / 1e9
    if torch_seconds is not None:
        row["torch_seconds"] = torch_seconds
        row["ratio_vs_torch"] = seconds / torch_seconds
    return row


def bench_vgg(sizes, repeat, torch=None):
    """VGG16 through relu5_1: forward, and forward + backward to the input."""
    from . import vgg

    net = vgg.VGG16.load(pooling="avg")
    tnet = torch_vgg(torch, net) if torch else None
    rows = []
    for s in sizes:
        x = np.random.default_rng(0).standard_normal((1, 3, s, s), dtype=np.float32)

        def fwd():  # features only, as PyTorch's under no_grad
            return net.forward(x, ["relu5_1"], backward=False)

        def fwd_bwd():
            feats, cache = net.forward(x, ["relu5_1"])
            return net.backward({"relu5_1": np.ones_like(feats["relu5_1"])}, cache)

        def t_fwd():
            with torch.no_grad():
                return tnet(torch.from_numpy(x))["relu5_1"]

        def t_fwd_bwd():
            xt = torch.from_numpy(x).requires_grad_(True)
            tnet(xt)["relu5_1"].sum().backward()
            return xt.grad

        flops = vgg.forward_flops(s, s, "relu5_1")  # every VGG16 convolution is 3×3, stride 1
        for name, fn, tfn, fl in (("vgg16_forward", fwd, t_fwd, flops),
                                  ("vgg16_forward_backward", fwd_bwd, t_fwd_bwd, 2 * flops)):
            t, tt = best_times([fn, tfn], repeat) if torch else (best_time(fn, repeat), None)
            rows.append(_row(name, s, t, fl, peak_mb(fn), tt, ideal_flops=winograd4_ideal(fl)))
    return rows


def bench_gatys(sizes, repeat, torch=None):
    """One L-BFGS-B iteration of the Gatys objective (content relu4_2, style relu1_1 … relu5_1,
    TV): the best of ``repeat`` iterations, timed after the first three (whose line searches
    may take extra evaluations), each from scipy's callback to the next; peak memory of a
    2-iteration run (targets, L-BFGS-B workspace, forward + backward). Also one
    evaluation of the loss and its gradient (``gatys_loss_and_grad``), the workload that
    ``torch`` (when given) repeats for the comparison."""
    from . import gatys, procedural, vgg

    net = vgg.VGG16.load(pooling="avg")
    rows = []
    for s in sizes:
        yy, xx = np.mgrid[0:s, 0:s] / s
        content = np.clip(np.stack([xx, yy, 0.5 + 0.4 * np.sin(9 * xx * yy)], -1), 0, 1).astype(np.float32)
        style = procedural.stained_glass(s, s, seed=0)
        stamps = []
        cfg = gatys.GatysConfig(size=s, iterations=repeat + 4, device="cpu", quiet=True)
        gatys.stylize(content, [style], cfg, net=net, callback=lambda p: stamps.append(time.perf_counter()))
        t = min(b - a for a, b in zip(stamps[3:], stamps[4:]))
        flops = 2 * vgg.forward_flops(s, s, "relu5_1")
        mb = peak_mb(lambda: gatys.stylize(content, [style], gatys.GatysConfig(
            size=s, iterations=2, device="cpu", quiet=True), net=net))
        obj = gatys.Objective(content, [style], net=net)
        x = np.random.default_rng(0).random((s, s, 3), dtype=np.float32)
        t_torch = None
        if torch:
            t_fn = torch_gatys(torch, obj)
            ref_loss, ref_grad = t_fn(x)
            loss, grad = obj.loss_and_grad(x)
            ref_grad = ref_grad.numpy()
            # relative norm error: float32 itself is ~4e-2 off float64 in the max norm at
            # 256² for both libraries (the G − A cancellation); they agree far closer
            err = float(np.linalg.norm(grad - ref_grad) / np.linalg.norm(ref_grad))
            if abs(loss - ref_loss) > 1e-4 * abs(ref_loss) or err > 1e-2:
                raise RuntimeError(f"PyTorch twin disagrees: loss {loss} vs {ref_loss}, grad error {err:.1e}")
            t_eval, t_torch = best_times([lambda: obj.loss_and_grad(x), lambda: t_fn(x)], repeat)
        else:
            t_eval = best_time(lambda: obj.loss_and_grad(x), repeat)
        rows.append(_row("gatys_loss_and_grad", s, t_eval, flops, peak_mb(lambda: obj.loss_and_grad(x)), t_torch,
                         ideal_flops=winograd4_ideal(flops)))
        rows.append(_row("gatys_lbfgs_iteration", s, t, flops, mb, ideal_flops=winograd4_ideal(flops)))
    return rows


def bench_fast(sizes, repeat, torch=None):
    """The feed-forward method with Johnson's full-width network (random weights):
    stylisation of one image at each size (and its speed-up over 500 L-BFGS iterations
    at that size, from one Gatys loss+gradient evaluation per iteration), and one
    training step, batch 4 at 256² (the size is fixed by the method)."""
    from . import gatys, procedural, vgg
    from .optim import Adam
    from .train_fast import TrainingLoss, train_step
    from .transformer import TransformerConfig, TransformerNet

    rows = []
    # eval mode, as ``TransformerNet.stylize`` runs it (the convolutions keep their Winograd kernels)
    net = TransformerNet(TransformerConfig(width=1.0), seed=0).eval()
    tinfer = None
    if torch:
        params = {id(v): torch.from_numpy(np.array(v)) for v in net.params.values()}
        tinfer = torch_layer(torch, net, params)
    vnet = vgg.VGG16.load(pooling="avg")
    for s in sizes:
        x = np.random.default_rng(0).uniform(0, 255, (1, 3, s, s)).astype(np.float32)
        tt = None
        if torch:
            with torch.no_grad():
                ref = tinfer(torch.from_numpy(x)).numpy()
                # pixels in [0, 255]; float32 rounding alone moves them by ~0.004 at 256²
                diff = float(np.abs(net.infer(x) - ref).max())
                if diff > 0.05:
                    raise RuntimeError(f"PyTorch twin of the transformer disagrees by {diff:.3g}")
                t, tt = best_times([lambda: net.infer(x), lambda: tinfer(torch.from_numpy(x))], repeat)
        else:
            t = best_time(lambda: net.infer(x), repeat)
        direct, ideal = transformer_conv_flops(net, 1, s, s)
        row = _row("transformer_stylize", s, t, direct, peak_mb(lambda: net.infer(x)), tt, ideal_flops=ideal)
        content = np.random.default_rng(1).random((s, s, 3), dtype=np.float32)
        obj = gatys.Objective(content, [procedural.stained_glass(s, s, seed=0)], net=vnet)
        t_eval = best_time(lambda: obj.loss_and_grad(content), 1)
        row["speedup_vs_500_lbfgs"] = 500 * t_eval / t
        rows.append(row)
        del obj
    # one training step, batch 4 at 256², the loss network as in train_fast (max pooling)
    lossnet = vgg.VGG16.load(pooling="max")
    style = procedural.stained_glass(256, 256, seed=0)
    loss = TrainingLoss(lossnet, style)
    batch = np.random.default_rng(2).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    tnet = TransformerNet(TransformerConfig(width=1.0), seed=0)
    opt = Adam(tnet.params, lr=1e-3)
    tt = None
    if torch:
        step = torch_train_step(torch, TransformerNet(TransformerConfig(width=1.0), seed=0), loss)
        ours = train_step(TransformerNet(TransformerConfig(width=1.0), seed=0),
                          Adam(TransformerNet(TransformerConfig(width=1.0), seed=0).params), loss, batch, np)[0]
        theirs = step(batch)
        if abs(ours - theirs) > 1e-3 * abs(theirs):
            raise RuntimeError(f"PyTorch twin of the training step disagrees: {ours} vs {theirs}")
        t, tt = best_times([lambda: train_step(tnet, opt, loss, batch, np), lambda: step(batch)], repeat)
    else:
        t = best_time(lambda: train_step(tnet, opt, loss, batch, np), repeat)
    direct, ideal = train_step_flops(tnet, loss, 4, 256)
    rows.append(_row("train_step_b4_256", 256, t, direct, peak_mb(lambda: train_step(tnet, opt, loss, batch, np)),
                     tt, ideal_flops=ideal))
    return rows


def bench_video(sizes, repeat, torch=None, frames=10):
    """Video with the shipped model (``stylize.default_model_path``; a random width-0.5
    network if there is none): a pan (3 px/frame) and a zoom (1 %/frame) of ``frames``
    4:3 frames over a procedural picture (``video.camera_clip``: the true motion is
    known), stylised frame by frame and with the flow stabiliser (``measure_stability``:
    each frame both ways, alternately, so both see the same load). Rows, per size (the
    frame's long side): ``video_frame_by_frame`` and ``video_stabilized``, seconds per
    frame (the network; the network with the stabiliser as ``stylize_frames`` runs it),
    warping error (true motion; and with the Farnebäck flow
    of the input frames), sharpness (``video.sharpness``: mean gradient and Laplacian
    variance of the luma and of R, G, B), means over the two clips; and ``video_file_*``:
    ``stylize_video`` on the pan encoded as H.264 (decode + stylise + encode, best of two
    alternated runs). ``repeat`` is unused: each frame is its own sample."""
    import tempfile
    from fractions import Fraction

    try:
        from . import procedural, video
        from .stylize import default_model_path
        from .transformer import TransformerConfig, TransformerNet

        import cv2  # noqa: F401  (the stabiliser's optical flow)
    except ImportError as e:
        print(f"# video skipped ({e}): pip install 'minnst[video]'", file=sys.stderr)
        return []
    try:
        net, model = TransformerNet.load(default_model_path()), default_model_path().name
    except ValueError:
        net, model = TransformerNet(TransformerConfig(width=0.5), seed=0), "random width 0.5"
    rows = []
    for s in sizes:
        H, W = 3 * s // 4 // 2 * 2, s
        scene = procedural.stained_glass(H * 3 // 2, W * 3 // 2, seed=0)
        clips = {"pan": video.camera_clip(scene, frames, H, W, "pan", 3.0),
                 "zoom": video.camera_clip(scene, frames, H, W, "zoom", 1.0)}
        ms = [video.measure_stability(net, *clip, style=net.default_style) for clip in clips.values()]
        sharp = ("gradient", "laplacian", "gradient_rgb", "laplacian_rgb")  # video.sharpness
        t_net = float(np.mean([m["seconds_network"] for m in ms]))
        t_stab = float(np.mean([m["seconds_stabilized"] for m in ms]))

        def stabilize_two():  # the stabiliser's own memory: two frames, the second blended
            stab = video.Stabilizer()
            for f, o in zip(clips["pan"][0][:2], ms[0]["none"]["outputs"][:2]):
                stab(f, o.astype(np.float32))

        mb = peak_mb(stabilize_two)
        for name, mode, seconds in (("video_frame_by_frame", "none", t_net),
                                    ("video_stabilized", "flow", t_stab)):
            row = _row(name, s, seconds, None, mb)
            row.update({k: float(np.mean([m[mode][k] for m in ms]))
                        for k in ("warping_error", "warping_error_flow", *sharp)})
            row.update({"frames_per_second": 1 / seconds, "model": model, "clips": list(clips)})
            rows.append(row)
        base, stab = rows[-2], rows[-1]
        stab.update({"time_ratio": stab["seconds"] / base["seconds"],
                     "error_ratio": stab["warping_error"] / base["warping_error"],
                     **{f"{k}_ratio": stab[k] / base[k] for k in sharp}})
        print(f"# video {W}x{H} ({model}): warping error {base['warping_error']:.2f} -> "
              f"{stab['warping_error']:.2f} ({stab['error_ratio']:.2f}x, target <= 0.5) at "
              f"{stab['time_ratio']:.2f}x the time (target <= 1.3); sharpness (luma; RGB): gradient "
              f"{stab['gradient_ratio']:.2f}x; {stab['gradient_rgb_ratio']:.2f}x, Laplacian variance "
              f"{stab['laplacian_ratio']:.2f}x; {stab['laplacian_rgb_ratio']:.2f}x")
        try:
            import av  # noqa: F401  (decoding and encoding)
        except ImportError:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "pan.mp4")
            video.write_video(src, (video.Frame(i, i, Fraction(1, 30), f) for i, f in enumerate(clips["pan"][0])),
                              rate=Fraction(30))
            best = {"none": np.inf, "flow": np.inf}
            for mode in ("none", "flow", "none", "flow"):  # alternated: the best of two each
                st = video.stylize_video(net, src, os.path.join(tmp, f"{mode}.mp4"), style=net.default_style,
                                         stabilize=mode)
                best[mode] = min(best[mode], st["seconds"] / st["frames"])
            for name, mode in (("video_file_frame_by_frame", "none"), ("video_file_stabilized", "flow")):
                rows.append(_row(name, s, best[mode], None, 0.0))
                rows[-1]["frames_per_second"] = 1 / best[mode]
    return rows


def bench_gatys_tiled(sizes, repeat, torch=None, tile: int = 512):
    """One evaluation of the Gatys loss and gradient, exactly, tile by tile
    (``Objective(tile=512)``) and untiled where the untiled one fits in memory: seconds,
    peak MB (tracemalloc, after the targets) and the overhead ratio (tiled / untiled)."""
    from . import gatys, procedural, vgg
    from .memory import available_memory, estimate_gatys_memory

    net = vgg.VGG16.load(pooling="avg")
    rows = []
    for s in sizes:
        yy, xx = np.mgrid[0:s, 0:s] / s
        content = np.clip(np.stack([xx, yy, 0.5 + 0.4 * np.sin(9 * xx * yy)], -1), 0, 1).astype(np.float32)
        style = procedural.stained_glass(min(s, 1024), min(s, 1024), seed=0)
        x = np.random.default_rng(0).random((s, s, 3), dtype=np.float32)
        flops = 2 * vgg.forward_flops(s, s, "relu5_1")
        need = estimate_gatys_memory(s, s, gatys.DEFAULT_CONTENT_LAYERS, gatys.DEFAULT_STYLE_LAYERS,
                                     [style.shape[:2]])["device"]
        avail = available_memory()
        t_whole = None
        if avail is None or need < 0.8 * avail:
            obj = gatys.Objective(content, [style], net=net)
            t_whole = best_time(lambda: obj.loss_and_grad(x), repeat)
            rows.append(_row("gatys_eval_untiled", s, t_whole, flops, peak_mb(lambda: obj.loss_and_grad(x))))
            del obj
        obj = gatys.Objective(content, [style], net=net, tile=tile)
        t_tiled = best_time(lambda: obj.loss_and_grad(x), repeat)
        row = _row(f"gatys_eval_tiled_{tile}", s, t_tiled, flops, peak_mb(lambda: obj.loss_and_grad(x)))
        row["tiles"] = obj.tile_count
        row["overhead_vs_untiled"] = t_tiled / t_whole if t_whole else None
        rows.append(row)
        del obj
    return rows


RUNNERS = {"vgg": bench_vgg, "gatys": bench_gatys, "fast": bench_fast, "video": bench_video,
           "gatys-tiled": bench_gatys_tiled}
DEFAULT_SIZES = {"gatys-tiled": [1024, 2048]}  # every other workload: 256, 512, 1024


# --------------------------------------------------------------------------- CLI

def _sizes(text):
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated whole numbers, got {text!r}") from None
    if not sizes or any(s < 32 or s > 4096 for s in sizes):
        raise argparse.ArgumentTypeError(f"each size must be between 32 and 4096, got {text!r}")
    return sizes


def build_parser():
    p = ArgumentParser(
        prog=PROG,
        description="Time minnst's workloads against this machine's float32 matrix-multiply rate.")
    p.add_argument("workloads", nargs="*", default=["all"], metavar="WORKLOAD",
                   help=f"any of {', '.join(WORKLOADS)} (conv is another name for vgg), or all (default)")
    p.add_argument("--sizes", type=_sizes, default=None,
                   help="image sizes (square), comma-separated, each 32 to 4096 (default: 256,512,1024; "
                        "1024,2048 for gatys-tiled)")
    p.add_argument("--repeat", type=whole(1, 1000), default=3,
                   help="timed runs per number at least (more for short workloads, up to 1.5 s or 15 "
                        "runs), the best is kept (default 3)")
    p.add_argument("--json", metavar="FILE", nargs="?", const="bench.json",
                   help="also write the results as JSON to FILE (default: bench.json)")
    p.add_argument("--compare-torch", action="store_true",
                   help="also time the same workloads in PyTorch (pip install torch==2.13.0)")
    p.add_argument("--isa", choices=tuple(cpu.ISA_ENVIRONMENT),
                   help="run every library (NumPy's OpenBLAS, PyTorch) at one vector width: avx2 "
                        "caps each at AVX2 (an AVX2-only machine, emulated), native lets each take "
                        "the widest it has for this CPU (default: as the environment sets)")
    return p


def print_table(info, mm, rows):
    print(f"# {info['date']}  {info['cpu']}  ({info['cores']} cores), {info['blas']}, "
          f"{info['threads']} BLAS threads, numpy {info['numpy']}")
    print(f"# CPU flags: {info['cpu_flags']}; BLAS kernels: {info['blas_kernels']}"
          + (f"; PyTorch's CPU capability: {info['torch_capability']}" if "torch_capability" in info else ""))
    if info.get("isa"):
        caps = ", ".join(f"{k}={v}" if v else f"{k} unset" for k, v in cpu.ISA_ENVIRONMENT[info["isa"]].items())
        print(f"# --isa {info['isa']}: {caps}")
    note = cpu.blas_width_note(kernels=info["blas_kernels"])
    if note and info.get("isa") != "avx2":  # asked for
        print(f"# note: {note}")
    print(f"# NumPy float32 matmul (4096²): {mm:.1f} GFLOP/s")
    torch_cols = any("torch_seconds" in r for r in rows)
    print("# GFLOP/s and 'of matmul': the direct convolutions' FLOPs per second, and that as a fraction "
          "of the matmul rate; 'F(4,3) limit': the seconds at the matmul rate with every 3×3 layer an "
          "ideal Winograd F(4×4, 3×3) (a quarter of the products), and how many times that the run took")
    head = (f"{'workload':28s} {'size':>5s} {'seconds':>9s} {'GFLOP/s':>8s} {'of matmul':>9s} "
            f"{'F(4,3) limit':>12s} {'× limit':>7s} {'peak MB':>8s}")
    print(head + (f" {'torch s':>9s} {'vs torch':>8s}" if torch_cols else ""))
    for r in rows:
        gf = f"{r['gflops']:8.1f}" if r.get("gflops") else f"{'-':>8s}"
        fr = f"{r['fraction_of_matmul']:9.2f}" if r.get("fraction_of_matmul") else f"{'-':>9s}"
        lim = (f"{r['winograd4_limit_seconds']:12.3f} {r['times_winograd4_limit']:7.1f}"
               if r.get("winograd4_limit_seconds") else f"{'-':>12s} {'-':>7s}")
        line = f"{r['workload']:28s} {r['size']:5d} {r['seconds']:9.3f} {gf} {fr} {lim} {r['peak_mb']:8.0f}"
        if "torch_seconds" in r:
            line += f" {r['torch_seconds']:9.3f} {r['ratio_vs_torch']:8.2f}"
        if "tiles" in r:
            over = f", {r['overhead_vs_untiled']:.2f}× the untiled time" if r.get("overhead_vs_untiled") else ""
            line += f"   ({r['tiles']} tiles{over})"
        print(line)


def _main(argv=None):
    args = build_parser().parse_args(argv)
    chosen = list(IN_ALL) if "all" in args.workloads else args.workloads
    chosen = list(dict.fromkeys("vgg" if w == "conv" else w for w in chosen))
    for w in chosen:
        if w not in RUNNERS:
            raise UsageError(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)} or all")
    if args.json:
        check_writable(args.json)
    if args.isa and not cpu.isa_in_effect(args.isa):
        return _run_with_isa(args.isa, sys.argv[1:] if argv is None else list(argv))
    keep_freed_memory()
    info = machine_info()
    if args.isa:
        info["isa"] = args.isa
    torch = None
    if args.compare_torch:
        torch = torch_module(info["threads"])
        if torch is None:
            raise UsageError("--compare-torch needs PyTorch: pip install torch==2.13.0")
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_capability"] = torch.backends.cpu.get_cpu_capability()  # its ATen kernels' width
    mm = matmul_gflops()
    rows = []
    for w in chosen:
        rows += RUNNERS[w](args.sizes or DEFAULT_SIZES.get(w, [256, 512, 1024]), args.repeat, torch)
    for r in rows:
        r["fraction_of_matmul"] = r["gflops"] / mm if r.get("gflops") else None
        if r.get("winograd4_ideal_gflop"):  # the time at the matmul rate, ideal F(4×4, 3×3)
            r["winograd4_limit_seconds"] = r["winograd4_ideal_gflop"] / mm
            r["times_winograd4_limit"] = r["seconds"] / r["winograd4_limit_seconds"]
    print_table(info, mm, rows)
    for r in rows:
        if r.get("speedup_vs_500_lbfgs"):
            print(f"# stylising {r['size']}² in one pass is {r['speedup_vs_500_lbfgs']:.0f}× faster "
                  f"than 500 L-BFGS iterations at that size")
    fb = [r for r in rows if r["workload"] == "vgg16_forward_backward" and r["size"] == 512]
    if fb:
        print(f"# VGG16 forward+backward at 512²: {fb[0]['fraction_of_matmul']:.2f} of the matmul rate "
              f"(target ≥ 0.75)")
    if args.json:
        write_text_atomic(args.json, json.dumps({"machine": info, "matmul_gflops": mm, "results": rows},
                                                indent=2))
        print(f"# wrote {args.json}")
    return 0


def _run_with_isa(isa, argv) -> int:
    """The benchmark again, in a child process whose environment sets the vector width
    ``isa`` (``cpu.isa_environment``); returns its exit code."""
    try:
        env = cpu.isa_environment(isa)
    except ValueError as e:
        raise UsageError(f"--isa {isa}: {e}") from None
    return subprocess.call([sys.executable, "-m", "minnst.bench", *argv], env=env)


def main(argv=None) -> int:
    """``python -m minnst.bench``; returns the exit code (``minnst.cli``)."""
    return run(_main, argv, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
