"""Redraw the figures of docs/fast.md from the shipped model and the run's log.

    python scripts/fast_figures.py [--model weights/starry_night.h5]
        [--log training/starry_night/log.jsonl] [--data ../shared/data] [--out docs/img]

Writes fast_tubingen_starry_night.jpg (the photo stylised at 512 px),
fast_results_starry_night.jpg (three held-out photos over their stylisations, 512 px
longest side, shown 256 px high) and fast_loss_starry_night.png (the run's loss curves).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minnst import images  # noqa: E402
from minnst.stylize import load_network  # noqa: E402
from minnst.train_fast import plot_losses  # noqa: E402

PHOTOS = ("golden_gate.jpg", "hoover_tower_night.jpg", "chicago.jpg")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=ROOT / "weights" / "starry_night.h5", type=Path)
    p.add_argument("--log", default=ROOT / "training" / "starry_night" / "log.jsonl", type=Path)
    p.add_argument("--data", default=ROOT.parent / "shared" / "data", type=Path)
    p.add_argument("--out", default=ROOT / "docs" / "img", type=Path)
    args = p.parse_args()
    net = load_network(args.model)

    img = images.load_image(args.data / "content" / "tubingen.jpg", size=512)
    images.save_image(args.out / "fast_tubingen_starry_night.jpg", net.stylize(img))

    columns = []
    for name in PHOTOS:
        photo = images.load_image(args.data / "content" / name, size=512)
        pair = [images.resize(a, shape=(256, round(256 * photo.shape[1] / photo.shape[0])))
                for a in (photo, net.stylize(photo))]
        columns.append(np.concatenate(pair, axis=0))  # photo over its stylisation
    strip = images.to_uint8(np.concatenate(columns, axis=1))
    Image.fromarray(strip).save(args.out / "fast_results_starry_night.jpg", quality=85, optimize=True)

    plot_losses(args.log, args.out / "fast_loss_starry_night.png")
    print(f"wrote 3 figures to {args.out}")


if __name__ == "__main__":
    main()
