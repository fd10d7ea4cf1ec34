#!/usr/bin/env bash
# Set up (if needed), segment the bundled real CT sample (pyradiomics lung2 tumour) with the
# default model from a 3-D box, and evaluate it against the sample's ground truth.
# The box spans slices 0-14, the tumour 2-12: its middle slice (7) is segmented from the box,
# then each next slice from the previous mask, outward (segmote.predict.propagation).
# Expected: Dice 0.736 (the box on every slice, --every-slice: 0.656).
# Writes out/pred/lung2_ct_crop.nii.gz (same geometry as the input), out/lung2_overlay.png and
# out/lung2_eval.csv (+ .summary.json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
S=src/segmote/assets/samples
mkdir -p out/pred out/gt
cp $S/lung2_ct_crop_label.nii.gz out/gt/lung2_ct_crop.nii.gz
.venv/bin/segmote predict -i $S/lung2_ct_crop.nii.gz -o out/pred/lung2_ct_crop.nii.gz \
  --box 83,93,0,173,162,14 --modality CT --overlay out/lung2_overlay.png
.venv/bin/segmote evaluate --pred out/pred --gt out/gt -o out/lung2_eval.csv
