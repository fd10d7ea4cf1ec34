"""The bundled lung CT crop and the tiny training settings shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import segmote

ASSETS = Path(segmote.__file__).parent / "assets" / "samples"
CT, LABEL = ASSETS / "lung2_ct_crop.nii.gz", ASSETS / "lung2_ct_crop_label.nii.gz"
PLAIN = dict(text_encoder="none", ppt_queries=0)  # an adapter without text prompts and PPT
TINY = dict(epochs=1, batch_size=2, refine_rounds=1, refine_clicks=[1, 3], log_every=1,
            save_every=1, min_foreground=200, val_fraction=0.5)
