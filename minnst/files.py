"""Small file utilities every module shares: atomic writes and sha256 digests.

``atomic_write(path)`` yields a temp path in the same directory and ``os.replace``-s it
onto ``path`` only when the block finishes, so a killed process never leaves a
half-written file under the real name (images, model files, checkpoints, records).

    with atomic_write("out.png") as tmp:
        image.save(tmp)
    write_text_atomic("record.json", text)
    sha256_file("vgg16.h5")     # hex digest, read in 1 MiB chunks
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterator


class OutputPathError(ValueError):
    """An output cannot be written where it was asked (a folder that cannot be made, a
    parent that is a file, no permission); one line naming the path."""


def make_dir(path) -> Path:
    """``mkdir -p path``, or ``OutputPathError`` in plain words (e.g. a parent is a file)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputPathError(f"cannot create the folder {path}: a file of that name is in the way") from None
    except NotADirectoryError:
        raise OutputPathError(f"cannot create the folder {path}: part of its path is a file") from None
    except OSError as e:
        raise OutputPathError(f"cannot create the folder {path}: {e.strerror}") from None
    return path


@contextlib.contextmanager
def atomic_write(path) -> Iterator[Path]:
    """Yield a temp path in ``path``'s directory; ``os.replace`` it onto ``path`` on success.

    On an exception the temp file is removed and ``path`` is left as it was. Parent
    directories are created. The temp name keeps ``path``'s suffix (``.x.ab12cd.tmp.png``)
    so tools that look at the extension still work; it is created with mode 0666 & ~umask.
    """
    path = Path(path)
    make_dir(path.parent)
    if path.is_dir():
        raise OutputPathError(f"cannot write {path}: it is a folder")
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        except PermissionError:
            raise OutputPathError(f"cannot write into the folder {path.parent}: permission denied") from None
        os.close(fd)
        break
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` through ``atomic_write``; returns ``path`` as a ``Path``."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
