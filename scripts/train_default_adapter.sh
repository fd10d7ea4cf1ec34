#!/usr/bin/env bash
# Train segmote's default adapter on the real sample data and report it on held-out data.
#   bash scripts/train_default_adapter.sh [RUN_DIR] [--install]
# Steps: set up, fetch the samples (pyradiomics, nuclei, colin27), write the training folders and
# the held-out split (segmote.training.default_adapter), then two `segmote train` stages (the
# embedding cache is built inside the timed part and shared):
#   1. RUN       default_adapter.yaml: expert tokens, MoTE, expert head (box / point prompts)
#   2. RUN/text  default_adapter_text.yaml: text prompts + PPT on top of stage 1, whose parts stay
#                frozen (box / point decoding is bit-identical to stage 1's)
#   3. segmote.training.presence: the class presence head on the frozen stage-2 adapter, with
#                classes of other modalities as its negatives (these modalities image disjoint
#                anatomy); every mask stays bit-identical, only --auto's keep / drop changes
# then benchmarks/bench_default_adapter.py (held-out Dice, base vs adapter, box and point;
# routing per modality) and benchmarks/bench_auto.py (text, prompt-free, absent classes, cost).
# --install copies the stage-2 adapter into the package (src/segmote/assets/adapters/default.safetensors).
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
TEXT_CONFIG=$($PY -m segmote.training.default_adapter config --stage text)
start=$(date +%s)
/usr/bin/time -v -o "$RUN/train_time.txt" .venv/bin/segmote train --data "${DATA[@]}" \
  --split "${prepared[1]}" --config "$CONFIG" --out "$RUN" --cache-dir "$RUN/cache" --device cpu
middle=$(date +%s)
/usr/bin/time -v -o "$RUN/train_time_text.txt" .venv/bin/segmote train --data "${DATA[@]}" \
  --split "${prepared[1]}" --config "$TEXT_CONFIG" --out "$RUN/text" --cache-dir "$RUN/cache" \
  --init-adapter "$RUN/adapter_latest.safetensors" --device cpu
.venv/bin/segmote presence "$RUN/text" --negatives other-modalities
end=$(date +%s)
printf '{"train_seconds_incl_cache": %d, "stage1_seconds_incl_cache": %d, "stage2_seconds": %d, "threads": %d}\n' \
  "$((end - start))" "$((middle - start))" "$((end - middle))" \
  "$($PY -c 'import torch; print(torch.get_num_threads())')" > "$RUN/train_time.json"
echo "trained in $((end - start)) s (embedding cache included; stage 2: $((end - middle)) s)"
$PY benchmarks/bench_default_adapter.py --run "$RUN/text"
$PY benchmarks/bench_auto.py --run "$RUN/text"
if [ "$INSTALL" = 1 ]; then
  mkdir -p src/segmote/assets/adapters
  cp "$RUN/text/adapter_latest.safetensors" src/segmote/assets/adapters/default.safetensors
  chmod 644 src/segmote/assets/adapters/default.safetensors
  echo "installed src/segmote/assets/adapters/default.safetensors"
fi
