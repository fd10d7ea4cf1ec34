#!/usr/bin/env bash
# The GPU measurements of issue 22 in one device call (benchmarks/bench_gpu.py, the `cuda` tests).
#
# 1. Here, in the repository root, on a machine with the venv and network (a minute):
#        bash benchmarks/gpu_device_check.sh prepare
#    writes .gpu/ (ignored by git, < 50 MiB): nibabel as a Python 3.12 wheel (the device image
#    lacks it), the LiteMedSAM weights, a 16-slice crop of the real lung2 CT and the shipped
#    adapter's class names embedded by MiniLM (benchmarks/gpu_device.py says why each).
# 2. The device tool, with carry [".gpu"] and timeout_s 600 (the run takes ~5 minutes):
#        bash benchmarks/gpu_device_check.sh run
#    $OUT/gpu.json: benchmarks/results/gpu.json with the "cuda" run added; $OUT/bench.log,
#    $OUT/pytest.log: the outputs.
# 3. Here: cp <files_at>/gpu.json benchmarks/results/gpu.json
#          python benchmarks/run.py --report-only      # docs/benchmarks.md, GPU rows filled
#    and choose the CUDA default precision from it and bench_faithfulness (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

prepare() {
    rm -rf .gpu && mkdir -p .gpu/whl
    grep -qx '/.gpu/' .gitignore 2>/dev/null || echo '/.gpu/' >> .gitignore
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 -d .gpu/whl 'nibabel==5.4.2'
    PYTHONPATH=src "$PY" benchmarks/bench_gpu.py --prepare-device .gpu
    du -sh .gpu
}

run() {
    [ -d .gpu/whl ] || { echo "no .gpu/: run '$0 prepare' here first, carry .gpu" >&2; exit 2; }
    out=${OUT:-/tmp/gpu-out} && mkdir -p "$out"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 SEGMOTE_HOME="$PWD/.gpu/home"
    export SEGMOTE_BENCH_CT="$PWD/.gpu/lung2.nii.gz" SEGMOTE_BENCH_TEXTS="$PWD/.gpu/texts.pt"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/bench.log"
    python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())' \
        | tee -a "$out/bench.log"
    # the benchmark first (~4 min on an H200): it is what the issue asks for
    timeout 420 python3 benchmarks/bench_gpu.py --device cuda 2>&1 | tee -a "$out/bench.log"
    cp benchmarks/results/gpu.json "$out/gpu.json"
    # then the tests marked cuda, in what time is left (no sample data needed)
    timeout 120 python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_autocast.py \
        2>&1 | tee "$out/pytest.log" || true
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
