"""Training photos: a folder of images or an HDF5 file, and reproducible shuffled batches.

* ``ImageFolder(dir, size)``: every readable image file under ``dir`` (sorted, recursive),
  each resized so its short side is ``size`` and centre-cropped to ``size × size`` when it
  is loaded.
* ``H5Images(path)``: the ``images`` dataset, ``(N, size, size, 3)`` uint8, of a file
  written by ``python -m minnst.make_dataset``.
* ``open_dataset(path, size)`` picks one by what ``path`` is.
* ``BatchSampler(n, batch_size, seed)``: epoch ``e`` visits the images in the order
  ``default_rng([seed, e]).permutation(n)``; a batch never straddles two epochs (the
  last ``n mod batch_size`` images of a permutation are skipped). The whole sampler state
  is ``(epoch, index)``, two integers that a checkpoint stores, so a resumed run draws
  exactly the batches the uninterrupted run would have.

Images come out as uint8 ``(B, size, size, 3)``; the trainer converts them, and may cut
``random_crops`` from them with offsets drawn from a generator seeded by the sampler state.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .images import ImageError, load_image, to_uint8

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def resize_center_crop(img, size: int) -> np.ndarray:
    """(H, W, 3) float [0, 1] or uint8 -> (size, size, 3) uint8: the short side resized to
    ``size`` (Lanczos, antialiased), then the centre square cut out."""
    a = to_uint8(img)
    h, w = a.shape[:2]
    if (h, w) != (size, size):
        s = size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        a = np.asarray(Image.fromarray(a).resize((nw, nh), Image.Resampling.LANCZOS))
        top, left = (nh - size) // 2, (nw - size) // 2
        a = a[top:top + size, left:left + size]
    return np.ascontiguousarray(a)


def random_crops(batch, size: int, rng) -> np.ndarray:
    """One random ``size × size`` window of each image of ``batch`` (B, S, S, 3), the
    offsets drawn from ``rng``: (B, size, size, 3), a copy."""
    B, S = batch.shape[0], batch.shape[1]
    if size >= S:
        return batch
    off = rng.integers(0, S - size + 1, size=(B, 2))
    return np.stack([batch[b, i:i + size, j:j + size] for b, (i, j) in enumerate(off)])


def list_images(directory) -> list[Path]:
    """Image files under ``directory`` (recursive, sorted, by suffix)."""
    d = Path(directory)
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder:
    """Images decoded on demand from a folder; ``self.skipped`` counts unreadable ones
    met so far (a batch replaces an unreadable image by the next readable one)."""

    def __init__(self, directory, size: int = 256):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ImageError(f"dataset folder not found: {self.directory}")
        self.files = list_images(self.directory)
        if not self.files:
            raise ImageError(f"no image files (.jpg, .png, …) in {self.directory}")
        self.size = int(size)
        self.skipped = 0

    def __len__(self):
        return len(self.files)

    def load(self, i: int) -> np.ndarray:
        return resize_center_crop(load_image(self.files[i]), self.size)

    def get_batch(self, indices) -> np.ndarray:
        out = np.empty((len(indices), self.size, self.size, 3), dtype=np.uint8)
        for b, i in enumerate(indices):
            for k in range(len(self.files)):  # skip forward past unreadable files
                try:
                    out[b] = self.load((int(i) + k) % len(self.files))
                    break
                except ImageError:
                    self.skipped += 1
            else:
                raise ImageError(f"no readable image in {self.directory}")
        return out


class H5Images:
    """The ``images`` (N, S, S, 3) uint8 dataset of an HDF5 file; ``size`` must match S
    (None accepts the file's)."""

    def __init__(self, path, size: int | None = None):
        import h5py

        self.path = Path(path)
        try:
            self._f = h5py.File(self.path, "r")
        except OSError:
            raise ImageError(f"{self.path} is not an HDF5 file (make one with "
                             f"`python -m minnst.make_dataset`)") from None
        ds = self._f.get("images")
        if ds is None or ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8 \
                or ds.shape[1] != ds.shape[2] or ds.shape[0] == 0:
            self._f.close()
            raise ImageError(f"{self.path} has no (N, S, S, 3) uint8 'images' dataset "
                             f"(make one with `python -m minnst.make_dataset`)")
        self.images = ds
        self.size = int(ds.shape[1])
        if size is not None and int(size) != self.size:
            self._f.close()
            raise ImageError(f"{self.path} holds {self.size}px images, but --image-size is {size}")
        self.skipped = 0

    def __len__(self):
        return int(self.images.shape[0])

    def get_batch(self, indices) -> np.ndarray:
        return np.stack([self.images[int(i)] for i in indices])  # (B, S, S, 3) uint8

    def close(self):
        self._f.close()


def open_dataset(path, size: int = 256):
    """An ``ImageFolder`` for a directory, else an ``H5Images`` for a file."""
    p = Path(path)
    if p.is_dir():
        return ImageFolder(p, size)
    if not p.exists():
        raise ImageError(f"dataset not found: {p} (a folder of images or an .h5 file)")
    return H5Images(p, size)


class BatchSampler:
    """Shuffled batches of indices, reproducible from ``seed`` and resumable from
    ``state()`` = ``{"epoch": e, "index": i}``."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, epoch: int = 0, index: int = 0):
        if n < batch_size:
            raise ValueError(f"dataset has {n} images, fewer than the batch size {batch_size}")
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.epoch, self.index = int(epoch), int(index)
        self._perm_epoch, self._perm = None, None

    def _permutation(self):
        if self._perm_epoch != self.epoch:
            self._perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            self._perm_epoch = self.epoch
        return self._perm

    def next(self) -> np.ndarray:
        if self.index + self.batch_size > self.n:
            self.epoch, self.index = self.epoch + 1, 0
        batch = self._permutation()[self.index:self.index + self.batch_size]
        self.index += self.batch_size
        return batch

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict):
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
