"""Re-run the automatic-mode calibration of a finished run's adapter without training.

    segmote recalibrate RUN_DIR [--adapter FILE] [-o OUT]

The trainer calibrates text and prompt-free segmentation at the end of a run (per-class mask
offsets, the confidence threshold, and per class whether its text is used beside a box:
`segmote.training.calibration`). This does the same with this
version's code on the same calibration data (the run's config, split and embedding cache;
calibrate_on "train": `CALIBRATION_PER_CLASS` training samples per class, "val": the
validation samples), and writes the adapter again with only its "auto" metadata replaced: the
weights are copied unchanged, so every prompted answer stays bit-identical.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any



def recalibrate(run_dir: str | Path, adapter: str | Path | None = None,
                out: str | Path | None = None, device: str | None = None) -> dict[str, Any]:
    """Calibrate `adapter` (default RUN_DIR/adapter_latest.safetensors) on RUN_DIR's data and
    write it to `out` (default: over `adapter`, atomically). Returns the new "auto" metadata."""
    import torch

    from segmote.adapter import resave_adapter
    from segmote.build import load_model
    from segmote.data.cache import EmbeddingCache
    from segmote.errors import InputError
    from segmote.training import distributed as ddp
    from segmote.training import calibration as _cal
    from segmote.training.config import load_config
    from segmote.training.loader import CachedSlices
    from segmote.training.run_data import (cache_root, calibration_samples, class_texts,
                                           load_run_data, query_tables)
    from segmote.training.validation import validate_auto

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file() or not (run_dir / "split.json").is_file():
        raise InputError(f"{run_dir}: not a training run (no config.yaml / split.json)")
    adapter = Path(adapter) if adapter else run_dir / "adapter_latest.safetensors"
    out = Path(out) if out else adapter
    cfg = load_config(config)
    info = ddp.DistInfo(0, 1, 0, torch.device(device or "cpu"))
    _, _, train, val = load_run_data(cfg, [Path(d) for d in cfg.data.folders], run_dir, True,
                                     info)
    model = load_model(cfg.model.backbone, adapter=adapter, device=info.device)
    seg_model: Any = model
    if getattr(seg_model.adapter, "ppt", None) is None or seg_model.adapter.text is None:
        raise InputError(f"{adapter}: not trained with PPT and text prompts: nothing to "
                         "calibrate")
    names = sorted({s.class_name for s in train + val})
    texts, _ = class_texts(cfg, names)
    tables = query_tables(cfg, train + val)
    samples = calibration_samples(cfg, train, val)
    cache = EmbeddingCache(cache_root(cfg), model,
                           f"{cfg.model.backbone}-{model.backbone_sha256[:16]}", cfg.data.window)
    cache.build(samples, progress=False)
    data = CachedSlices(cache, samples, cfg.seed, **tables)
    _, counts = validate_auto(model, data, cfg.optim.batch_size, info, contextlib.nullcontext,
                              texts)
    auto = {**_cal.choose_calibration(counts, cfg.calibration.auto_fp_target).to_dict(),
            "calibrated_on": cfg.calibration.calibrate_on}
    resave_adapter(model, adapter, out, {"auto": auto})
    return auto
