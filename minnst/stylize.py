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

Before any image is stylised, the arguments, the model and every output path are checked,
and the memory of the largest image is estimated (``memory.estimate_stylize_memory``,
from the image headers): an image that cannot fit is refused with the estimate and a
``--size`` that fits. Each output appears atomically.

Exit codes as every minnst tool: 0, 2 for bad input (one line; for a folder every other
image is still processed, then 2 if any failed), 130 on Ctrl-C.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from PIL import Image

from . import images, video
from .backend import keep_freed_memory, select_device
from .cli import ArgumentParser, UsageError, error, run, whole
from .data import IMAGE_SUFFIXES, list_images
from .files import check_writable
from .images import ImageError
from .memory import (available_memory, estimate_stylize_memory, format_bytes, gpu_free_memory, largest_fitting,
                     memory_checks)
from .modelfile import ModelFileError, load_model
from .transformer import TransformerNet
from .weights import cache_dir, checkout_weights_dir

DEFAULT_MODEL = "starry_night.h5"
DEFAULT_OUTPUT_DIR = Path("minnst_out")
DEMO_PHOTO = images.DEMO_PHOTO
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
    """The demo input (``images.demo_photo``), or a usage error naming ``--input``."""
    try:
        return images.demo_photo()
    except ImageError as e:
        raise UsageError(f"{e}; pass --input FILE") from None


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
    if os.path.isdir(inp):
        out_dir = out or DEFAULT_OUTPUT_DIR
        if out_dir.suffix.lower() in OUTPUT_SUFFIXES:
            raise UsageError(f"--input is a folder, so --output must be a folder, not {out_dir}")
        files = list_images(inp)
        if not files:
            raise UsageError(f"no image files (.jpg, .png, …) in {inp}")
        return [(f, out_dir / f.relative_to(inp).parent / f"{f.stem}_{model_stem}.jpg") for f in files]
    if not os.path.exists(inp):
        raise UsageError(f"--input not found: {inp}")
    if out is not None and out.suffix.lower() in IMAGE_SUFFIXES and out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(f"cannot write {out}: use a .png or .jpg file name (or a folder)")
    if out is None or os.path.isdir(out) or out.suffix.lower() not in OUTPUT_SUFFIXES:
        out = (out or DEFAULT_OUTPUT_DIR) / f"{inp.stem}_{model_stem}.jpg"
    return [(inp, out)]


def header_hw(path) -> tuple[int, int] | None:
    """``(H, W)`` of an image file as ``images.load_image`` will see it (EXIF rotation
    applied), read from its header only; None if the header cannot be read (``load_image``
    then reports the file)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except Exception:  # any unreadable header: the decode will name the problem
        return None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def check_memory(net: TransformerNet, sources, size, device: str) -> int | None:
    """Refuse (``UsageError``) the largest of ``sources`` at ``size`` (None: as is) if its
    estimate does not fit in the memory there is, naming a ``--size`` that fits; else
    return its estimate in bytes (None when no header could be read)."""
    worst = None
    for src in sources:
        hw = header_hw(src)
        if hw is None:
            continue
        target = images.fit_longest(*hw, size) if size else hw
        est = estimate_stylize_memory(net, *target, device, source_hw=hw)
        if worst is None or est["total"] > worst[3]["total"]:
            worst = (src, hw, target, est)
    if worst is None:
        return None
    src, hw, (h, w), est = worst
    free = gpu_free_memory() if device == "gpu" else None
    for where, part, have in memory_checks(device, available_memory(), free):
        if have is None or est[part] <= have:
            continue
        fit = largest_fitting(lambda s: estimate_stylize_memory(net, *images.fit_longest(*hw, s), device,
                                                                source_hw=hw)[part],
                              images.MIN_SIZE, max(h, w) - 1, have)
        hint = f"try --size {fit}" if fit else "it is too large for this machine at any size"
        raise UsageError(f"stylising {src} at {w}×{h} needs about {format_bytes(est[part])} of {where} "
                         f"memory but only {format_bytes(have)} is available: {hint}")
    return est["total"]


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m minnst.stylize",
                       description="Stylise an image or a folder with a trained feed-forward network.")
    p.add_argument("--model", help=f"model file from minnst.train_fast (default: the shipped {DEFAULT_MODEL})")
    p.add_argument("--input", help=f"image file or folder (default: matplotlib's {DEMO_PHOTO})")
    p.add_argument("--output", help=f"output file or folder (default: {DEFAULT_OUTPUT_DIR}/)")
    p.add_argument("--style", help="with a many-style model: a style NAME, or a blend a=0.6,b=0.4 "
                                   "(default: the model's first style)")
    p.add_argument("--list-styles", action="store_true", help="print the model's styles, one per line, and exit")
    p.add_argument("--size", type=whole(), default=None,
                   help=f"longest side before stylising, {images.MIN_SIZE} to {images.MAX_SIZE} (default: as is)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default=None, help="(auto; or MINNST_DEVICE)")
    p.add_argument("--stabilize", choices=video.STABILIZE, default="flow",
                   help="a video: blend each frame with the previous one along the optical flow, "
                        "against flicker (default), or none: frame by frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _main(argv=None):
    a = _parser().parse_args(argv)
    if a.size is not None:
        images.check_size(a.size, "--size")
    model_path = Path(a.model) if a.model else default_model_path()
    net = load_network(model_path)
    if a.list_styles:
        for name in net.styles:
            print(name)
        return 0
    inp = Path(a.input) if a.input else demo_photo()
    if os.path.isfile(inp) and inp.suffix.lower() in video.INPUT_SUFFIXES:
        return _video(a, inp, net, model_path)
    jobs = _plan(inp, Path(a.output) if a.output else None, model_path.stem)
    for _, dst in jobs:
        check_writable(dst)
    style = parse_style(a.style) if a.style else (net.styles[0] if net.config.styles else None)
    try:
        net.style_mix(style)
    except ValueError as e:
        raise UsageError(f"--style: {e}") from None
    device = select_device(a.device)
    need = check_memory(net, [src for src, _ in jobs], a.size, device.name)
    avail = available_memory()
    if need is not None and avail is not None and 2 * need < avail:
        keep_freed_memory()  # faster allocations, but a fragmented heap: only with room to spare
    net = net.to(device.xp)
    style_text = a.style or (style or net.meta.get("style", ""))
    meta = {"minnst": "stylize", "model": model_path.name, "style": style_text}
    from tqdm import tqdm

    failed, t0 = [], time.monotonic()
    bar = True if a.quiet or len(jobs) == 1 else None  # None: on a terminal only
    for src, dst in tqdm(jobs, unit="img", disable=bar, file=sys.stderr):
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
            print(f"skipped: {msg}")
        more = f" (all {len(failed)} listed above)" if len(failed) > 1 else ""
        return error(f"{len(failed)} of {len(jobs)} images could not be read: {failed[0]}{more}", "stylize")
    return 0


def _video_output(inp: Path, out: Path | None, model_stem: str) -> Path:
    """The output file of a clip: ``--output`` if it names a video file, else
    ``<stem>_<model stem><suffix>`` in ``--output`` (a folder) or ``minnst_out/``."""
    if out is not None and out.suffix and not os.path.isdir(out):
        if out.suffix.lower() not in video.OUTPUT_FORMATS:
            raise UsageError(f"--input is a video, so --output must be a {', '.join(video.OUTPUT_FORMATS)} "
                             f"file (or a folder), not {out}")
        return out
    suffix = inp.suffix.lower() if inp.suffix.lower() in video.OUTPUT_FORMATS else ".mp4"
    return (out or DEFAULT_OUTPUT_DIR) / f"{inp.stem}_{model_stem}{suffix}"


def _video(a, inp: Path, net: TransformerNet, model_path: Path) -> int:
    """``--input clip.mp4``: stylise a clip (``video.stylize_video``), progress in frames."""
    from tqdm import tqdm

    dst = check_writable(_video_output(inp, Path(a.output) if a.output else None, model_path.stem))
    style = parse_style(a.style) if a.style else (net.styles[0] if net.config.styles else None)
    try:
        net.style_mix(style)
    except ValueError as e:
        raise UsageError(f"--style: {e}") from None
    info = video.probe(inp)  # a bad clip fails here, before the model moves to a device
    device = select_device(a.device)
    keep_freed_memory()
    net = net.to(device.xp)
    bar = tqdm(total=info.total, unit="frame", disable=True if a.quiet else None, file=sys.stderr)
    try:
        stats = video.stylize_video(net, inp, dst, style=style, size=a.size, stabilize=a.stabilize,
                                    progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    audio = f", audio {stats['audio']}" if stats["audio"] else ""
    print(f"wrote {dst} ({stats['frames']} frames, {stats['width']}x{stats['height']} at {stats['fps']:.3g} fps"
          f"{audio}; {stats['frames_per_second']:.2f} frames/s)")
    return 0


def main(argv=None) -> int:
    return run(_main, argv, prog="stylize")


if __name__ == "__main__":
    sys.exit(main())
