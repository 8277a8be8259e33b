"""Pack a folder of photos into one HDF5 training file: ``python -m minnst.make_dataset``.

    python -m minnst.make_dataset --images DIR --output train.h5 --size 256

Every image file under DIR (recursive, sorted) is decoded, its short side resized to
``--size`` (Lanczos) and the centre square cut out (``data.resize_center_crop``); the
result is the dataset ``images`` (N, size, size, 3) uint8, one chunk per image, with the
source names in ``names``. Unreadable files are skipped and counted. The file appears
atomically when complete. ``minnst.train_fast --dataset train.h5`` reads it
(``data.H5Images``), which saves decoding JPEGs at every step.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .cli import ArgumentParser, UsageError, run, whole
from .data import IMAGE_SUFFIXES, list_images, resize_center_crop
from .files import atomic_write, check_writable
from .images import MAX_SIZE, MIN_SIZE, ImageError, check_size, load_image


def make_dataset(images_dir, output, size: int = 256, limit: int | None = None,
                 progress: bool = True) -> tuple[int, int]:
    """Write the HDF5 file; returns ``(written, skipped)``. Raises ``UsageError`` when the
    folder is missing or holds no readable image."""
    import h5py
    from tqdm import tqdm

    size = check_size(size)
    d = Path(images_dir)
    if not d.is_dir():
        raise UsageError(f"--images: not a folder: {d}")
    files = list_images(d)[:limit] if limit else list_images(d)
    if not files:
        raise UsageError(f"no image files (.jpg, .png, …) in {d}")
    written, skipped = 0, 0
    with atomic_write(output) as tmp:
        with h5py.File(tmp, "w") as f:
            ds = f.create_dataset("images", shape=(len(files), size, size, 3), dtype=np.uint8,
                                  maxshape=(None, size, size, 3), chunks=(1, size, size, 3))
            names = []
            bar = None if progress else True  # None: a progress bar on a terminal only
            for p in tqdm(files, unit="img", disable=bar, file=sys.stderr):
                try:
                    ds[written] = resize_center_crop(load_image(p), size)
                except ImageError:
                    skipped += 1
                    continue
                names.append(str(p.relative_to(d)))
                written += 1
            if written == 0:
                raise UsageError(f"none of the {len(files)} image files in {d} could be read")
            ds.resize((written, size, size, 3))  # drop the slots of skipped files
            f.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
            f.attrs["size"] = size
            f.attrs["skipped"] = skipped
            f.attrs["source"] = str(d)
    return written, skipped


def _main(argv=None):
    p = ArgumentParser(prog="python -m minnst.make_dataset",
                       description="Resize and centre-crop a folder of photos into one HDF5 file "
                                   "(uint8) for python -m minnst.train_fast --dataset.")
    p.add_argument("--images", required=True, help="folder of photos (searched recursively)")
    p.add_argument("--output", required=True, help="HDF5 file to write, e.g. train.h5")
    p.add_argument("--size", type=whole(), default=256,
                   help=f"side of the square crops, {MIN_SIZE} to {MAX_SIZE} (256)")
    p.add_argument("--limit", type=whole(1), default=None, help="use only the first N files (sorted)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    if not Path(a.images).is_dir():
        raise UsageError(f"--images: no such folder: {a.images}")
    check_size(a.size, "--size")
    if Path(a.output).suffix.lower() in IMAGE_SUFFIXES:
        raise UsageError(f"--output is the HDF5 file to write, not an image: {a.output} (e.g. train.h5)")
    check_writable(a.output)
    written, skipped = make_dataset(a.images, a.output, a.size, a.limit, progress=not a.quiet)
    print(f"wrote {written} images of {a.size}x{a.size} to {a.output}"
          + (f" ({skipped} unreadable files skipped)" if skipped else ""))
    return 0


def main(argv=None) -> int:
    return run(_main, argv, prog="make_dataset")


if __name__ == "__main__":
    sys.exit(main())
