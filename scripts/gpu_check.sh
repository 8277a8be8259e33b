#!/usr/bin/env bash
# gpu_check.sh — one prepared command for a machine with a CUDA GPU (under 5 minutes):
#   1. finds a Python with NumPy, SciPy and CuPy (installs cupy-cuda<major>x if none has it);
#   2. runs the GPU tests (tests/test_gpu.py) and the kernel compile checks;
#   3. runs the GPU benchmark (scripts/gpu_bench.py, VGG16 and the Gatys objective at 512²).
# Results go to $OUT (the device tool's output folder) or minnst_out/gpu_check/:
# gpu.txt, gpu_tests.txt, gpu_bench.txt, gpu_bench.json. Exit status: 0 when the tests
# passed and the benchmark ran, else the first failure's.
#   usage: bash scripts/gpu_check.sh [--size N]      (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
SIZE=512
[ "${1:-}" = "--size" ] && SIZE=${2:?--size needs a number}
OUTDIR=${OUT:-minnst_out/gpu_check}
mkdir -p "$OUTDIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# MINNST_FAKE_GPU=1: a dry run of this script on the CPU stand-in for CuPy (tests/kernel_emu)
MODS="numpy, scipy, pytest"
[ -z "${MINNST_FAKE_GPU:-}" ] && MODS="$MODS, cupy"
pick_python() {
    for py in "${PYTHON:-python}" python3; do
        [ -n "$py" ] && command -v "$py" >/dev/null 2>&1 || continue
        "$py" -c "import $MODS" >/dev/null 2>&1 && { echo "$py"; return 0; }
    done
    return 1
}

# Offline machines: wheels carried in $MINNST_WHEELS (default build/wheels) are used first.
WHEELS=${MINNST_WHEELS:-build/wheels}
pip_install() {
    if [ -d "$WHEELS" ]; then
        "$PY" -m pip install -q --no-index --find-links "$WHEELS" "$@" && return 0
    fi
    "$PY" -m pip install -q "$@"
}

if ! PY=$(pick_python); then
    PY=${PYTHON:-python}
    major=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$major" ] && [ "$major" -ge 13 ] && pkg=cupy-cuda13x || pkg=cupy-cuda12x
    echo "gpu_check: no Python with $MODS; installing $pkg scipy pytest into $PY"
    pip_install "$pkg" scipy pytest || {
        echo "gpu_check: CuPy, SciPy or pytest is missing and could not be installed" >&2; exit 2; }
fi
"$PY" -c "import PIL" >/dev/null 2>&1 || pip_install pillow >/dev/null 2>&1 \
    || echo "gpu_check: warning: Pillow is missing (minnst.images needs it)" >&2

{
    echo "python: $PY ($("$PY" -c 'import sys, numpy; print(sys.version.split()[0], "numpy", numpy.__version__)'))"
    "$PY" -c 'import cupy; print("cupy", cupy.__version__)' 2>/dev/null
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
    nvcc --version 2>/dev/null | tail -n1
} | tee "$OUTDIR/gpu.txt"

start=$(date +%s)
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_gpu.py tests/test_kernels_compile.py \
    2>&1 | tee "$OUTDIR/gpu_tests.txt"
rc_tests=${PIPESTATUS[0]}
echo "gpu_check: tests exit $rc_tests after $(( $(date +%s) - start )) s"

start=$(date +%s)
timeout 150 "$PY" scripts/gpu_bench.py --size "$SIZE" --json "$OUTDIR/gpu_bench.json" \
    2>&1 | tee "$OUTDIR/gpu_bench.txt"
rc_bench=${PIPESTATUS[0]}
echo "gpu_check: benchmark exit $rc_bench after $(( $(date +%s) - start )) s"

[ "$rc_tests" -ne 0 ] && exit "$rc_tests"
exit "$rc_bench"
