"""minnst.files: atomic writes leave either the old file or the whole new one, never a
temp file; sha256 of a file read in chunks equals hashlib's of its bytes."""
from __future__ import annotations

import hashlib

import pytest

from minnst.files import atomic_write, sha256_file, write_text_atomic


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and tmp.name.startswith(".f.")
        assert not target.exists()
        tmp.write_text("one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as tmp:
            tmp.write_text("two")
            raise RuntimeError("boom")
    assert target.read_text() == "one"  # untouched
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]  # temp removed
    fresh = tmp_path / "fresh.bin"
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(fresh) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert not fresh.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_write_text_atomic(tmp_path):
    target = tmp_path / "d" / "t.txt"
    assert write_text_atomic(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode("utf-8")
    write_text_atomic(target, "abc  x\n", encoding="ascii")
    assert target.read_bytes() == b"abc  x\n" and [p.name for p in target.parent.iterdir()] == ["t.txt"]
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(target, "é", encoding="ascii")
    assert target.read_bytes() == b"abc  x\n"


def test_sha256_file(tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one 1 MiB chunk
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk=7) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
