#!/usr/bin/env bash
# Train segmote's default adapter on the real sample data and report it on held-out data.
#   bash scripts/train_default_adapter.sh [RUN_DIR] [--install]
# Steps: set up, fetch the samples (pyradiomics, nuclei, colin27), write the training folders and
# the held-out split (segmote.training.default_adapter), `segmote train` with the shipped config
# (embedding cache built inside the timed part), then benchmarks/bench_default_adapter.py
# (held-out Dice, base vs adapter, box and point prompts; routing per modality).
# --install copies the final adapter into the package (src/segmote/assets/adapters/default.safetensors).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/default_adapter
INSTALL=0
for arg in "$@"; do
  case "$arg" in
    --install) INSTALL=1 ;;
    *) RUN=$arg ;;
  esac
done
if [ -e "$RUN/state.safetensors" ]; then
  echo "error: $RUN holds a run already; remove it or give another RUN_DIR" >&2
  exit 1
fi
bash scripts/setup.sh
PY=.venv/bin/python
.venv/bin/segmote samples fetch pyradiomics nuclei colin27
mapfile -t prepared < <($PY -m segmote.training.default_adapter prepare "$RUN/data")
read -r -a DATA <<< "${prepared[0]}"
CONFIG=$($PY -m segmote.training.default_adapter config)
start=$(date +%s)
/usr/bin/time -v -o "$RUN/train_time.txt" .venv/bin/segmote train --data "${DATA[@]}" \
  --split "${prepared[1]}" --config "$CONFIG" --out "$RUN" --device cpu
end=$(date +%s)
printf '{"train_seconds_incl_cache": %d, "threads": %d}\n' "$((end - start))" \
  "$($PY -c 'import torch; print(torch.get_num_threads())')" > "$RUN/train_time.json"
echo "trained in $((end - start)) s (embedding cache included)"
$PY benchmarks/bench_default_adapter.py --run "$RUN"
if [ "$INSTALL" = 1 ]; then
  mkdir -p src/segmote/assets/adapters
  cp "$RUN/adapter_latest.safetensors" src/segmote/assets/adapters/default.safetensors
  echo "installed src/segmote/assets/adapters/default.safetensors"
fi
