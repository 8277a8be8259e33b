"""Small file utilities every module shares: atomic writes, output checks, sha256 digests.

``atomic_write(path)`` yields a temp path in the same directory and ``os.replace``-s it
onto ``path`` only when the block finishes, so a killed process never leaves a
half-written file under the real name (images, model files, checkpoints, records).
``check_writable(path)`` says up front, creating nothing, whether ``atomic_write`` could
write there: the command lines call it on every output before any work starts.

    check_writable("out/result.png")
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


def _temp_name(path: Path) -> str:
    """The name ``atomic_write`` writes first: ``.<stem>.<8 hex>.tmp<suffix>``."""
    return f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _exists(path: Path) -> bool:
    try:
        os.stat(path)
        return True
    except (OSError, ValueError):
        return False


def check_writable(path) -> Path:
    """``path`` as a ``Path`` if ``atomic_write`` could write it, else ``OutputPathError``
    naming the problem: ``path`` is a folder, part of its folder is a file, the nearest
    existing folder is not writable, or a name is too long (counting the temp name).
    Nothing is created."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise OutputPathError(f"cannot write {path}: it names a folder, not a file")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:
        raise OutputPathError(f"cannot write {path!r}: the name cannot be encoded") from None
    if os.path.isdir(path):
        raise OutputPathError(f"cannot write {path}: it is a folder")
    existing = next((p for p in (path.parent, *path.parent.parents) if _exists(p)), None)
    if existing is None:  # a relative path in a current folder that was deleted
        raise OutputPathError(f"cannot write {path}: none of its folders exists")
    if not os.path.isdir(existing):
        raise OutputPathError(f"cannot write {path}: {existing} is a file, not a folder")
    limit = _name_max(existing)
    missing = path.parent.relative_to(existing).parts if existing != path.parent else ()
    for part in (*missing, _temp_name(path)):
        if len(os.fsencode(part)) > limit:
            raise OutputPathError(f"cannot write {path}: the name {part[:40]}… is longer than {limit} bytes")
    if len(os.fsencode(path.absolute())) + 20 >= 4096:
        raise OutputPathError(f"cannot write {path}: the path is too long")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write into the folder {existing}: permission denied")
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
        tmp = path.with_name(_temp_name(path))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        except PermissionError:
            raise OutputPathError(f"cannot write into the folder {path.parent}: permission denied") from None
        except OSError as e:
            raise OutputPathError(f"cannot write {path}: {e.strerror or e}") from None
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
