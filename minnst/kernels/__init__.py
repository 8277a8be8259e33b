"""Hand-written CUDA kernels for the GPU path: one ``*.cu`` source per family and the
runtime that compiles and launches them (``launch.py``).

Each kernel source starts with what it computes, its index decomposition, its launch
shape, its NumPy reference and its launcher. The launchers live beside their NumPy twins
in the ops' own modules (``minnst.layers.*``, ``minnst.losses``), named like them with
``_gpu`` appended and with the same signatures; this package imports nothing from those
modules. Importing it never imports CuPy (``launch.kernel`` does, on first use). See
docs/kernels.md.
"""
from .launch import KERNEL_DIR, SOURCES, name_expressions, read_source

__all__ = ["KERNEL_DIR", "SOURCES", "name_expressions", "read_source"]
