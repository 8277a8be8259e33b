"""Every kernel source compiles with nvcc to PTX for Hopper with warnings as errors, every
template instantiation that the launchers use included (CuPy compiles the same list
through NVRTC's name_expressions at run time).

A source is compiled through a small wrapper that includes it unmodified and takes the
address of each instantiation, which makes nvcc generate code for it. Successful results
are remembered in build/kernel_ptx/ under a hash of the inputs, so an unchanged source is
not recompiled on every run. Skipped where nvcc is not installed.
"""
import ctypes
import ctypes.util
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from minnst.kernels.launch import KERNEL_DIR, NVRTC_OPTIONS, SOURCES, name_expressions, read_source

NVCC = shutil.which("nvcc")
ARCH = os.environ.get("MINNST_NVCC_ARCH", "sm_90")
FLAGS = ["--ptx", f"-arch={ARCH}", "-std=c++17", "--Werror", "all-warnings", f"-I{KERNEL_DIR}"]
CACHE = Path(__file__).resolve().parents[1] / "build" / "kernel_ptx"

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")


def _wrapper(source):
    names = name_expressions(source)
    lines = [f'#include "{KERNEL_DIR / source}"', "", "void* minnst_instantiations[] = {"]
    lines += [f"    (void*)&{expr}," for expr in names]
    lines.append("};")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def nvcc_version():
    return subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout


@needs_nvcc
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_kernel_compiles_with_nvcc(source, nvcc_version, tmp_path):
    text = _wrapper(source)
    h = hashlib.sha256((text + nvcc_version + " ".join(FLAGS)).encode())
    for path in [KERNEL_DIR / source, *sorted(KERNEL_DIR.glob("*.h"))]:
        h.update(path.read_bytes())
    stamp = CACHE / f"{Path(source).stem}-{h.hexdigest()[:16]}.ptx"
    if stamp.exists():
        return  # these exact inputs compiled cleanly before
    cu = tmp_path / f"{Path(source).stem}_instantiate.cu"
    cu.write_text(text)
    ptx = tmp_path / "out.ptx"
    r = subprocess.run([NVCC, *FLAGS, str(cu), "-o", str(ptx)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"nvcc failed on {source}:\n{r.stderr[-6000:]}"
    entries = [line for line in ptx.read_text().splitlines() if ".entry" in line]
    assert len(entries) == len(name_expressions(source)), entries
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp")
    shutil.copy(ptx, tmp)
    os.replace(tmp, stamp)


def test_every_source_is_listed():
    """A new .cu file must be registered in launch.SOURCES (or it is never compiled,
    emulated or launched)."""
    on_disk = {p.name for p in KERNEL_DIR.glob("*.cu")}
    assert on_disk == set(SOURCES)


def test_every_source_starts_with_its_contract():
    """The header comment names what it computes, the launch shape, its NumPy twin and
    its launcher."""
    for source in SOURCES:
        head = (KERNEL_DIR / source).read_text().split("#include")[0]
        assert head.startswith(f"// {source} —"), source
        assert "Launch shape" in head or "launch shape" in head, source
        assert "NumPy reference" in head, source
        assert "Launcher" in head, source
        assert "Index decomposition" in head or "index decomposition" in head, source


# ---------------------------------------------------------------- NVRTC, as CuPy compiles

def _load_nvrtc():
    """libnvrtc if this machine has one (MINNST_NVRTC names a file; the CUDA toolkit here
    ships nvcc without it, pip's nvidia-cuda-nvrtc provides it)."""
    for name in (os.environ.get("MINNST_NVRTC"), ctypes.util.find_library("nvrtc"),
                 "libnvrtc.so.13", "libnvrtc.so.12"):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                pass
    return None


NVRTC = _load_nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (set MINNST_NVRTC to its path)")
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_kernel_compiles_with_nvrtc(source):
    """The exact text (headers inlined), options and name expressions that
    ``launch.kernel`` gives CuPy's RawModule, through NVRTC's C API."""
    prog = ctypes.c_void_p()
    code = read_source(source).encode()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), code, source.encode(), 0, None, None) == 0
    try:
        names = name_expressions(source)
        for expr in names:
            assert NVRTC.nvrtcAddNameExpression(prog, expr.encode()) == 0
        opts = [b"--gpu-architecture=compute_90", *(o.encode() for o in NVRTC_OPTIONS)]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = NVRTC.nvrtcCompileProgram(prog, len(opts), arr)
        size = ctypes.c_size_t()
        NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        NVRTC.nvrtcGetProgramLog(prog, log)
        assert rc == 0, f"NVRTC failed on {source}:\n{log.value.decode(errors='replace')}"
        assert "warning" not in log.value.decode(errors="replace"), log.value.decode()
        for expr in names:
            lowered = ctypes.c_char_p()
            assert NVRTC.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(lowered)) == 0, expr
            assert lowered.value, expr
    finally:
        NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))
