"""The numbers and the figure of docs/video.md.

    python scripts/video_figures.py [--photos ../shared/data/content] [--model weights/starry_night.h5]
                                    [--frames 12] [--size 512] [--out docs/img/video_strip.jpg]

1. For each photo (tubingen, chicago, toy_figures) and each clip with known motion
   (``video.camera_clip``: pans of 3 and 8 px per frame, zooms of 1 and 3 % per frame) at
   512×384: the network runs once per frame; every stabiliser setting then runs on the same
   outputs. Printed: per setting, the warping error (true motion) relative to frame by
   frame (mean over the clips, the worst in brackets), sharpness (``video.sharpness``:
   mean gradient and Laplacian variance, of the luma and of R, G, B) relative to frame by
   frame (mean, the lowest in brackets), and the stabiliser's time per frame run after
   the network (not overlapped with it as ``stylize_frames`` does), as a markdown table.
2. ``--out``: four consecutive frames of the tubingen pan, cropped at 1:1: the input,
   frame by frame, stabilised, and each one's change ``|O_t − warp(O_{t−1})|`` (true
   motion; ×3, so that 85 grey levels are white); needs ``--frames`` ≥ 8.

The photos are read from ``--photos`` (not part of the repository); nothing is written but
the figure.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from minnst import images, video
from minnst.transformer import TransformerNet
from minnst.video import StabilizerConfig

PHOTOS = ("tubingen", "chicago", "toy_figures")
CLIPS = (("pan", 3.0), ("pan", 8.0), ("zoom", 1.0), ("zoom", 3.0))
SETTINGS = {
    "default (α 0.8, DIS, cubic, equaliser)": StabilizerConfig(),
    "no equaliser": StabilizerConfig(equalize=False),
    "α 0.7": StabilizerConfig(alpha=0.7),
    "α 0.9": StabilizerConfig(alpha=0.9),
    "flow: DIS preset FAST": StabilizerConfig(flow="dis-fast"),
    "flow: DIS preset MEDIUM": StabilizerConfig(flow="dis-medium"),
    "flow: Farnebäck": StabilizerConfig(flow="farneback"),
    "bilinear warp": StabilizerConfig(interpolation="linear"),
}


def clip_record(net, frames, flows):
    """Frame-by-frame outputs and, per setting, stabilised outputs and times."""
    S, t_net = [], []
    for f in frames:
        t0 = time.perf_counter()
        S.append(net.stylize(f / 255.0) * 255.0)
        t_net.append(time.perf_counter() - t0)
    rec = {"network": float(np.mean(t_net[1:])), "none": [images.to_uint8(s / 255.0) for s in S]}
    for name, cfg in SETTINGS.items():
        stab, outs, t = video.Stabilizer(cfg), [], []
        for f, s in zip(frames, S):
            t0 = time.perf_counter()
            outs.append(images.to_uint8(stab(f, s) / 255.0))
            t.append(time.perf_counter() - t0)
        rec[name] = outs
        rec[name + " s"] = float(np.mean(t[1:]))
    return rec


KEYS = ("gradient", "laplacian", "gradient_rgb", "laplacian_rgb")


def metrics(outs, flows):
    """(warping error, the four ``video.sharpness`` numbers), means over the clip."""
    err = np.mean([video.warping_error(outs[t - 1], outs[t], flows[t]) for t in range(1, len(outs))])
    sharp = [video.sharpness(o) for o in outs]
    return (err, *(np.mean([s[k] for s in sharp]) for k in KEYS))


def strip(frames, flows, plain, stable, out, t0=4, n=4, crop=(96, 128, 192, 256)):
    y, x, h, w = crop

    def change(outs, t):
        d = np.abs(outs[t].astype(np.float32) - video.warp(outs[t - 1], flows[t])).mean(-1)
        return np.repeat(np.clip(3 * d, 0, 255).astype(np.uint8)[..., None], 3, -1)

    rows = [("input", [frames[t] for t in range(t0, t0 + n)]),
            ("frame by frame", [plain[t] for t in range(t0, t0 + n)]),
            ("stabilised", [stable[t] for t in range(t0, t0 + n)]),
            ("change, frame by frame", [change(plain, t) for t in range(t0, t0 + n)]),
            ("change, stabilised", [change(stable, t) for t in range(t0, t0 + n)])]
    label_w, gap = 150, 4
    canvas = Image.new("RGB", (label_w + n * (w + gap), len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, tiles) in enumerate(rows):
        draw.text((6, r * (h + gap) + h // 2 - 6), label, fill="black")
        for c, tile in enumerate(tiles):
            canvas.paste(Image.fromarray(np.ascontiguousarray(tile[y:y + h, x:x + w])),
                         (label_w + c * (w + gap), r * (h + gap)))
    for q in (85, 75, 65):
        canvas.save(out, quality=q, optimize=True)
        if Path(out).stat().st_size <= 300_000:
            break
    print(f"wrote {out} ({Path(out).stat().st_size // 1000} KB), frames {t0}–{t0 + n - 1}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default="../shared/data/content")
    p.add_argument("--model", default="weights/starry_night.h5")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--out", default="docs/img/video_strip.jpg")
    a = p.parse_args(argv)
    net = TransformerNet.load(a.model)
    H, W = 3 * a.size // 4, a.size
    table = {name: [] for name in SETTINGS}
    t_net = []
    for photo in PHOTOS:
        img = images.load_image(Path(a.photos) / f"{photo}.jpg", size=2 * a.size)
        for motion, step in CLIPS:
            frames, flows = video.camera_clip(img, a.frames, H, W, motion, step)
            rec = clip_record(net, frames, flows)
            t_net.append(rec["network"])
            base = metrics(rec["none"], flows)
            line = f"{photo:12s} {motion} {step:g}: frame by frame {base[0]:.2f}"
            for name in SETTINGS:
                m = metrics(rec[name], flows)
                table[name].append((*(a / b for a, b in zip(m, base)), rec[name + " s"]))
                if name.startswith("default"):
                    line += f", stabilised {m[0]:.2f} ({m[0] / base[0]:.2f}×)"
            print(line, flush=True)
            if photo == "tubingen" and (motion, step) == ("pan", 3.0) and a.out and a.frames >= 8:
                strip(frames, flows, rec["none"], rec[next(iter(SETTINGS))], a.out)
    tn = float(np.mean(t_net))
    print(f"\nnetwork: {tn:.3f} s per frame at {W}x{H} (mean over {len(t_net)} clips)\n")
    print("| setting | warping error | gradient | Laplacian var. | gradient, RGB | Laplacian var., RGB "
          "| stabiliser s/frame | time, sequential |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in table.items():
        r = np.array(rows)  # (clips, 6): error and sharpness ratios, stabiliser seconds
        ts = float(np.mean(r[:, 5]))
        cells = [f"{r[:, 0].mean():.2f} ({r[:, 0].max():.2f})"]
        cells += [f"{r[:, k].mean():.2f} ({r[:, k].min():.2f})" for k in range(1, 5)]
        print(f"| {name} | {' | '.join(cells)} | {ts:.3f} | {(tn + ts) / tn:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
