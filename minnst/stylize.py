"""Stylise photos with a trained network in one forward pass: ``python -m minnst.stylize``.

    python -m minnst.stylize                                   # the demo photo, default model
    python -m minnst.stylize --input photo.jpg                 # -> minnst_out/photo_<model>.jpg
    python -m minnst.stylize --model M.h5 --input DIR --output OUTDIR [--size 1024]
    python -m minnst.stylize --input DIR --output OUTDIR --workers 4    # on a Dask cluster
    python -m minnst.stylize --input clip.mp4 --output out.mp4 [--stabilize none]

* ``--model``: a file written by ``minnst.train_fast`` (default: the shipped
  ``twelve_styles.h5``, see ``default_model_path``), or a training checkpoint.
* ``--style``: a many-style model's style, ``NAME`` or a blend ``a=0.6,b=0.4`` (default:
  its first, ``TransformerNet.default_style``); ``--list-styles`` prints them.
* ``--input``: an image file, a folder (every image under it, recursively; the output
  folder mirrors the tree) or a video clip (``video.INPUT_SUFFIXES``). Without
  ``--input``: matplotlib's sample photo ``grace_hopper.jpg``.
* ``--output``: a file for a file input, a folder for a folder input (default
  ``minnst_out/``); a file name is ``<stem>_<model stem>.jpg`` in the folder.
* ``--size``: the longest side is resized to this before stylising (default: as is; the
  network runs at any resolution).
* ``--workers N`` (a Dask LocalCluster of N processes here) or ``--scheduler ADDRESS`` (a
  running cluster; ``distributed``): each image is a task, or each chunk of a clip's
  frames (``video.split_frames``, led by the frames that warm the stabiliser up). The
  workers need no shared file system: the model file's bytes go to every worker once and
  each worker builds the network once (``worker_network``); a task carries its image's
  bytes (or the chunk's decoded frames) and returns the output file's bytes (or the
  stylised frames), which this process writes, in order, as they come back. The outputs
  are the same bytes as without a cluster: both run ``render_image`` (for a clip, the
  same frames: ``video.stylize_chunk_frames``; with ``--stabilize flow`` the chunks'
  seams differ a little, docs/video.md). ``--device`` is each worker's choice.
* ``--skip-existing``: outputs that exist are left as they are (every output appears
  atomically, so one that exists is complete): to finish an interrupted job.

Before any image is stylised, the arguments, the model and every output path are checked,
and (without a cluster: the workers' memory is theirs) the memory of the largest image is
estimated (``memory.estimate_stylize_memory``, from the image headers): an image that
cannot fit is refused with the estimate and a ``--size`` that fits.

Exit codes as every minnst tool: 0, 2 for bad input (one line; for a folder every other
image is still processed, then 2 if any failed; a scheduler that does not answer), 130 on
Ctrl-C (the outputs written so far are complete).
"""
from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

from PIL import Image

from . import distributed, images, video
from .backend import keep_freed_memory, select_device
from .cli import ArgumentParser, UsageError, add_cluster_arguments, cluster_requested, error, run, whole
from .data import IMAGE_SUFFIXES, list_images
from .files import atomic_write, check_writable
from .images import ImageError
from .memory import (available_memory, estimate_stylize_memory, format_bytes, gpu_free_memory, largest_fitting,
                     memory_checks)
from .modelfile import ModelFileError, load_model
from .transformer import TransformerNet
from .weights import cache_dir, checkout_weights_dir

DEFAULT_MODEL = "twelve_styles.h5"  # one network, the twelve paintings of data/styles (docs/fast.md)
DEFAULT_OUTPUT_DIR = Path("minnst_out")
DEMO_PHOTO = images.DEMO_PHOTO
OUTPUT_SUFFIXES = (".jpg", ".jpeg", ".png")


def default_model_path() -> Path:
    """The shipped model: ``<checkout>/weights/<DEFAULT_MODEL>`` in a source checkout, else
    where ``pip install`` put it (``<prefix>/share/minnst/``), else
    ``$MINNST_HOME/<DEFAULT_MODEL>`` (default ``~/.cache/minnst``)."""
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
    """A model file, or the model inside a training checkpoint (to look at a run's
    progress); ``path`` may also be the file's bytes (a cluster worker's copy)."""
    _, config, _ = load_model(path)
    if config.get("kind") == "minnst-train-checkpoint":
        from .train_fast import read_checkpoint

        cfg, net, _, meta = read_checkpoint(path)
        net.meta = {"style": Path(cfg.style).name, "iterations": meta["step"]}
        return net.eval()
    return TransformerNet.load(path)


class ImageJob(NamedTuple):
    """One image as a task carries it: its bytes, not its path (workers need no shared
    file system)."""
    name: str     # the source's path here, for messages
    data: bytes   # the source file's bytes (images.read_image_bytes)
    suffix: str   # the output's format: ".jpg" or ".png"


def render_image(job: ImageJob, net: TransformerNet, size=None, style=None, meta: dict | None = None) -> bytes:
    """The output file's bytes for one image: decoded (longest side resized to ``size``),
    stylised by ``net`` in ``style``, encoded by ``job.suffix`` with ``meta``. The one
    function that both this process and the cluster's tasks run, so that their outputs
    are the same bytes. ``ImageError`` for a source that cannot be decoded."""
    img = images.decode_image(job.data, size, job.name)
    return images.encode_image(net.stylize(img, style), job.suffix, meta)


def write_output(dst, data: bytes) -> Path:
    """``data`` written to ``dst`` atomically (``files.atomic_write``)."""
    with atomic_write(dst) as tmp:
        tmp.write_bytes(data)
    return Path(dst)


def stylize_file(net: TransformerNet, src, dst, size=None, meta: dict | None = None, style=None) -> Path:
    """Stylise the image file ``src`` into ``dst`` (format by its suffix)."""
    job = ImageJob(str(src), images.read_image_bytes(src), Path(dst).suffix)
    return write_output(dst, render_image(job, net, size, style, meta))


# --------------------------------------------------------------------------------------
# On a cluster: the worker side
# --------------------------------------------------------------------------------------


def worker_network(model: bytes, sha256: str, device: str | None) -> TransformerNet:
    """On a cluster worker: the network of the model file's bytes ``model`` on ``device``
    (``--device``, resolved by the worker: a GPU worker uses CuPy), built once per worker
    process and then reused by its every task (``distributed.worker_cached``, keyed by the
    file's ``sha256`` and the device; the style is a per-call argument of
    ``net.stylize``, so one network serves them all)."""
    return distributed.worker_cached(("stylize", sha256, device),
                                     lambda: load_network(model).to(select_device(device).xp))


def _image_task(job: ImageJob, model, sha256, device, size, style, meta) -> bytes:
    return render_image(job, worker_network(model, sha256, device), size, style, meta)


def _chunk_task(chunk: video.Chunk, model, sha256, device, style, stabilize) -> list[video.Frame]:
    return video.stylize_chunk_frames(worker_network(model, sha256, device), chunk, style, stabilize)


# --------------------------------------------------------------------------------------
# On a cluster, or here: the client side
# --------------------------------------------------------------------------------------


def broadcast_model(c, model_path) -> tuple:
    """The model file's bytes on every worker of the cluster ``c``, once: ``(future,
    sha256)``, the arguments of ``worker_network`` a task takes."""
    data = Path(model_path).read_bytes()
    return c.broadcast(data), hashlib.sha256(data).hexdigest()


def stylize_images(jobs, net: TransformerNet, model_path, size=None, style=None, meta: dict | None = None,
                   cluster=None, device: str | None = None,
                   progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Stylise each ``(source, destination)`` of ``jobs`` and write the outputs
    (``write_output``) in order as they come: here with ``net`` (on its device), or on
    ``cluster`` (a ``distributed.Cluster``), one task per image, each worker with its own
    network from ``model_path``'s bytes on ``device``; at most the cluster's window of
    images in flight. ``progress(1)`` after each image. Returns the messages of the
    sources that could not be read or decoded (the others are written all the same); any
    other error of a task is raised."""
    failed, sent = [], []

    def readable():
        for src, dst in jobs:
            try:
                data = images.read_image_bytes(src)
            except ImageError as e:
                failed.append(str(e))
                progress(1)
                continue
            sent.append(dst)  # before its task exists: the outcome's index finds it
            yield ImageJob(str(src), data, Path(dst).suffix)

    if cluster is None:
        fn, args = render_image, (net,)
    else:
        fn, args = _image_task, (*broadcast_model(cluster, model_path), device)
    for i, ok, value in distributed.run_ordered(cluster, fn, readable(), *args, size, style, meta,
                                                progress=progress):
        if ok:
            write_output(sent[i], value)
        elif isinstance(value, ImageError):
            failed.append(str(value))
        else:
            raise value
    return failed


def stylize_video_chunks(cluster, src, dst, model_path, style=None, size: int | None = None, stabilize="flow",
                         device: str | None = None, progress: Callable | None = None) -> dict:
    """``video.stylize_video`` on ``cluster``: this process decodes the clip and cuts it
    into chunks (``video.split_frames``: ``video.chunk_length`` frames each, led by the
    ``video.WARMUP_FRAMES`` before them when stabilised); each chunk is a task
    (``video.stylize_chunk_frames`` on a worker) and the returned frames are encoded here
    in order (``video.write_video``: the source's timestamps and audio). At most one
    chunk more than there are workers is in flight (a chunk of 240 + 24 frames at
    512×288 is 117 MB), so memory does not grow with the clip. Returns
    ``stylize_video``'s statistics and ``chunk``, the frames per chunk."""
    info = video.probe(src)
    warmup = 0 if stabilize == "none" else video.WARMUP_FRAMES
    length = video.chunk_length(info.total, cluster.n_workers, warmup)
    chunks = video.split_frames(video.read_frames(src, size), length, warmup)
    model, sha256 = broadcast_model(cluster, model_path)
    outcomes = cluster.map_ordered(_chunk_task, chunks, model, sha256, device, style, stabilize,
                                   window=cluster.n_workers + 1, key="stylize-chunk")

    def frames():
        for _, ok, value in outcomes:
            if not ok:
                raise value
            yield from value

    stats = video.write_video(dst, frames(), src, progress, info.total, info.rate)
    stats.update(frames_per_second=stats["frames"] / stats["seconds"], stabilize=stabilize, chunk=length)
    return stats


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


def output_tag(model_path: Path, net: TransformerNet, style) -> str:
    """What an output's default name adds to the input's stem: the model's stem, and for a
    many-style model the style (``starry_night``) or the blend (``a0.6+b0.4``), so that
    different styles of one model do not overwrite each other."""
    if not net.config.styles or style is None:
        return model_path.stem
    if isinstance(style, str):
        return f"{model_path.stem}_{style}"
    return f"{model_path.stem}_" + "+".join(f"{k}{v:g}" for k, v in style.items())


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
                       description="Stylise an image, a folder of images or a video clip with a trained "
                                   "feed-forward network; with --workers or --scheduler, on a Dask cluster.")
    p.add_argument("--model", help=f"model file from minnst.train_fast (default: the shipped {DEFAULT_MODEL})")
    p.add_argument("--input", help=f"image file, folder or video clip (default: matplotlib's {DEMO_PHOTO})")
    p.add_argument("--output", help=f"output file or folder (default: {DEFAULT_OUTPUT_DIR}/)")
    p.add_argument("--style", help="with a many-style model: a style NAME, or a blend a=0.6,b=0.4 "
                                   "(default: the model's first style)")
    p.add_argument("--list-styles", action="store_true", help="print the model's styles, one per line, and exit")
    p.add_argument("--size", type=whole(), default=None,
                   help=f"longest side before stylising, {images.MIN_SIZE} to {images.MAX_SIZE} (default: as is)")
    p.add_argument("--device", choices=("cpu", "gpu", "auto"), default=None,
                   help="(auto; or MINNST_DEVICE; on a cluster each worker resolves it: gpu workers use CuPy)")
    p.add_argument("--stabilize", choices=video.STABILIZE, default="flow",
                   help="a video: blend each frame with the previous one along the optical flow, "
                        "against flicker (default), or none: frame by frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    g = add_cluster_arguments(p)
    g.description = ("each image, or each chunk of a clip's frames, is a task; images come out the same "
                     "bytes as without a cluster (docs/video.md: clips)")
    return p


def _style(a, net: TransformerNet):
    """``--style`` (default: the model's first style of a many-style model), checked."""
    style = parse_style(a.style) if a.style else net.default_style
    try:
        net.style_mix(style)
    except ValueError as e:
        raise UsageError(f"--style: {e}") from None
    return style


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
    style = _style(a, net)
    jobs = _plan(inp, Path(a.output) if a.output else None, output_tag(model_path, net, style))
    for _, dst in jobs:
        check_writable(dst)
    todo = [(src, dst) for src, dst in jobs if not (a.skip_existing and os.path.exists(dst))]
    if not todo:
        print(f"nothing to do: {'the output exists' if len(jobs) == 1 else f'all {len(jobs)} outputs exist'} "
              f"(--skip-existing)")
        return 0
    if not cluster_requested(a):
        device = select_device(a.device)
        need = check_memory(net, [src for src, _ in todo], a.size, device.name)
        avail = available_memory()
        if need is not None and avail is not None and 2 * need < avail:
            keep_freed_memory()  # faster allocations, but a fragmented heap: only with room to spare
        net = net.to(device.xp)
    style_text = a.style or (style or net.meta.get("style", ""))
    meta = {"minnst": "stylize", "model": model_path.name, "style": style_text}
    from tqdm import tqdm

    t0 = time.monotonic()
    with distributed.cluster(workers=a.workers, scheduler=a.scheduler) as c, \
            tqdm(total=len(todo), unit="img", disable=True if a.quiet or len(jobs) == 1 else None,
                 file=sys.stderr) as bar:  # disable None: on a terminal only
        failed = stylize_images(todo, net, model_path, a.size, style, meta, cluster=c, device=a.device,
                                progress=bar.update)
    if len(jobs) == 1:
        if failed:
            raise ImageError(failed[0])
        print(f"wrote {todo[0][1]} ({time.monotonic() - t0:.2f} s)")
        return 0
    skipped = f" ({len(jobs) - len(todo)} existing left as they were)" if len(todo) < len(jobs) else ""
    print(f"wrote {len(todo) - len(failed)} images under {a.output or DEFAULT_OUTPUT_DIR}{skipped} "
          f"in {time.monotonic() - t0:.1f} s")
    if failed:
        for msg in failed:
            print(f"skipped: {msg}")
        more = f" (all {len(failed)} listed above)" if len(failed) > 1 else ""
        return error(f"{len(failed)} of {len(todo)} images could not be read: {failed[0]}{more}", "stylize")
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
    """``--input clip.mp4``: stylise a clip (``video.stylize_video``, or
    ``stylize_video_chunks`` on a cluster), progress in frames."""
    from tqdm import tqdm

    style = _style(a, net)
    dst = check_writable(_video_output(inp, Path(a.output) if a.output else None,
                                       output_tag(model_path, net, style)))
    if a.skip_existing and os.path.exists(dst):
        print(f"nothing to do: {dst} exists (--skip-existing)")
        return 0
    info = video.probe(inp)  # a bad clip fails here, before the model moves to a device
    with distributed.cluster(workers=a.workers, scheduler=a.scheduler) as c, \
            tqdm(total=info.total, unit="frame", disable=True if a.quiet else None, file=sys.stderr) as bar:
        progress = lambda done, total: bar.update(done - bar.n)  # noqa: E731
        if c is None:
            device = select_device(a.device)
            keep_freed_memory()
            stats = video.stylize_video(net.to(device.xp), inp, dst, style=style, size=a.size,
                                        stabilize=a.stabilize, progress=progress)
        else:
            stats = stylize_video_chunks(c, inp, dst, model_path, style, a.size, a.stabilize, a.device, progress)
    audio = f", audio {stats['audio']}" if stats["audio"] else ""
    chunks = f", in chunks of {stats['chunk']}" if "chunk" in stats else ""
    print(f"wrote {dst} ({stats['frames']} frames, {stats['width']}x{stats['height']} at {stats['fps']:.3g} fps"
          f"{audio}{chunks}; {stats['frames_per_second']:.2f} frames/s)")
    return 0


def main(argv=None) -> int:
    return run(_main, argv, prog="stylize")


if __name__ == "__main__":
    sys.exit(main())
