"""Stylise photos with a trained network in one forward pass: ``python -m minnst.stylize``.

    python -m minnst.stylize                                   # the demo photo, default model
    python -m minnst.stylize --input photo.jpg                 # -> minnst_out/photo_<model>.jpg
    python -m minnst.stylize --model M.h5 --input DIR --output OUTDIR [--size 1024]

* ``--model``: a file written by ``minnst.train_fast`` (default: the shipped
  ``starry_night.h5``, see ``default_model_path``), or a training checkpoint.
* ``--input``: an image file or a folder (every image under it, recursively; the output
  folder mirrors the tree). Without ``--input``: matplotlib's sample photo
  ``grace_hopper.jpg``.
* ``--output``: a file for a file input, a folder for a folder input (default
  ``minnst_out/``); a file name is ``<stem>_<model stem>.jpg`` in the folder.
* ``--size``: the longest side is resized to this before stylising (default: as is; the
  network runs at any resolution).

Exit codes as every minnst tool: 0, 2 for bad input (one line; for a folder every other
image is still processed, then 2 if any failed), 130 on Ctrl-C.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from . import images
from .backend import keep_freed_memory, select_device
from .cli import ArgumentParser, UsageError, error, run
from .data import IMAGE_SUFFIXES, list_images
from .images import ImageError
from .transformer import TransformerNet
from .files import make_dir
from .modelfile import ModelFileError, load_model
from .weights import cache_dir, checkout_weights_dir

DEFAULT_MODEL = "starry_night.h5"
DEFAULT_OUTPUT_DIR = Path("minnst_out")
DEMO_PHOTO = "grace_hopper.jpg"  # ships with matplotlib (a public-domain US Navy photo)
OUTPUT_SUFFIXES = (".jpg", ".jpeg", ".png")


def default_model_path() -> Path:
    """The shipped model: ``<checkout>/weights/starry_night.h5`` in a source checkout, else
    where ``pip install`` put it (``<prefix>/share/minnst/``), else
    ``$MINNST_HOME/starry_night.h5`` (default ``~/.cache/minnst``)."""
    installed = Path(sys.prefix) / "share" / "minnst"
    for d in (checkout_weights_dir(), installed, cache_dir()):
        if d is not None and (d / DEFAULT_MODEL).is_file():
            return d / DEFAULT_MODEL
    raise ModelFileError(f"the default model {DEFAULT_MODEL} is not in weights/ of a source checkout "
                         f"nor in {cache_dir()}; pass --model MODEL.h5")


def demo_photo() -> Path:
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data(DEMO_PHOTO, asfileobj=False))


def load_network(path) -> TransformerNet:
    """A model file, or the model inside a training checkpoint (to look at a run's progress)."""
    _, config, _ = load_model(path)
    if config.get("kind") == "minnst-train-checkpoint":
        from .train_fast import read_checkpoint

        cfg, net, _, meta = read_checkpoint(path)
        net.meta = {"style": Path(cfg.style).name, "iterations": meta["step"]}
        return net.eval()
    return TransformerNet.load(path)


def stylize_file(net: TransformerNet, src, dst, size=None, meta: dict | None = None, style=None) -> Path:
    img = images.load_image(src, size=size)
    return images.save_image(dst, net.stylize(img, style), metadata=meta)


def parse_style(text: str):
    """``--style``: ``NAME`` or a blend ``a=0.6,b=0.4`` (weights ≥ 0, normalised later)."""
    if "=" not in text:
        return text.strip()
    blend = {}
    for part in text.split(","):
        name, _, w = part.partition("=")
        try:
            weight = float(w)
        except ValueError:
            raise UsageError(f"--style: {part!r} is not NAME=WEIGHT") from None
        if not name.strip() or not (weight >= 0 and weight != float("inf")):
            raise UsageError(f"--style: {part!r} needs a name and a finite weight ≥ 0")
        blend[name.strip()] = blend.get(name.strip(), 0.0) + weight
    return blend


def _plan(inp: Path, out: Path | None, model_stem: str) -> list[tuple[Path, Path]]:
    """(source, destination) pairs for a file or folder input."""
    if inp.is_dir():
        out_dir = out or DEFAULT_OUTPUT_DIR
        if out_dir.suffix.lower() in OUTPUT_SUFFIXES:
            raise UsageError(f"--input is a folder, so --output must be a folder, not {out_dir}")
        files = list_images(inp)
        if not files:
            raise UsageError(f"no image files (.jpg, .png, …) in {inp}")
        return [(f, out_dir / f.relative_to(inp).parent / f"{f.stem}_{model_stem}.jpg") for f in files]
    if not inp.exists():
        raise UsageError(f"--input not found: {inp}")
    if out is not None and out.suffix.lower() in IMAGE_SUFFIXES and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"cannot write {out}: use a .png or .jpg file name (or a folder)")
    if out is None or out.is_dir() or out.suffix.lower() not in OUTPUT_SUFFIXES:
        out = (out or DEFAULT_OUTPUT_DIR) / f"{inp.stem}_{model_stem}.jpg"
    return [(inp, out)]


def _main(argv=None):
    p = ArgumentParser(prog="python -m minnst.stylize",
                       description="Stylise an image or a folder with a trained feed-forward network.")
    p.add_argument("--model", help=f"model file from minnst.train_fast (default: the shipped {DEFAULT_MODEL})")
    p.add_argument("--input", help=f"image file or folder (default: matplotlib's {DEMO_PHOTO})")
    p.add_argument("--output", help=f"output file or folder (default: {DEFAULT_OUTPUT_DIR}/)")
    p.add_argument("--style", help="with a many-style model: a style NAME, or a blend a=0.6,b=0.4 "
                                   "(default: the model's first style)")
    p.add_argument("--list-styles", action="store_true", help="print the model's styles, one per line, and exit")
    p.add_argument("--size", type=int, default=None, help="longest side before stylising (default: as is)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default=None, help="(auto; or MINNST_DEVICE)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if a.size is not None:
        images.check_size(a.size, "--size")
    model_path = Path(a.model) if a.model else default_model_path()
    if a.list_styles:
        for name in load_network(model_path).styles:
            print(name)
        return 0
    inp = Path(a.input) if a.input else demo_photo()
    jobs = _plan(inp, Path(a.output) if a.output else None, model_path.stem)
    for folder in sorted({dst.parent for _, dst in jobs}):
        make_dir(folder)
    device = select_device(a.device)
    keep_freed_memory()
    net = load_network(model_path).to(device.xp)
    style = parse_style(a.style) if a.style else (net.styles[0] if net.config.styles else None)
    try:
        net.style_mix(style)
    except ValueError as e:
        raise UsageError(f"--style: {e}") from None
    style_text = a.style or (style or net.meta.get("style", ""))
    meta = {"minnst": "stylize", "model": model_path.name, "style": style_text}
    from tqdm import tqdm

    failed, t0 = [], time.monotonic()
    for src, dst in tqdm(jobs, unit="img", disable=a.quiet or len(jobs) == 1, file=sys.stderr):
        try:
            stylize_file(net, src, dst, a.size, meta, style)
        except ImageError as e:
            if len(jobs) == 1:
                raise
            failed.append(str(e))
            continue
        if len(jobs) == 1:
            print(f"wrote {dst} ({time.monotonic() - t0:.2f} s)")
    if len(jobs) > 1:
        print(f"wrote {len(jobs) - len(failed)} images under {a.output or DEFAULT_OUTPUT_DIR} "
              f"in {time.monotonic() - t0:.1f} s")
    if failed:
        for msg in failed:
            print(f"stylize: skipped: {msg}", file=sys.stderr)
        return error(f"{len(failed)} of {len(jobs)} images could not be read", "stylize")
    return 0


def main(argv=None) -> int:
    return run(_main, argv, prog="stylize")


if __name__ == "__main__":
    sys.exit(main())
