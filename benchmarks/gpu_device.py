"""What bench_gpu.py needs on a device machine that reaches no network (gpu_device_check.sh).

One device call carries at most 64 MiB. `prepare(folder)`, run beforehand on a machine with the
venv, writes into `folder` what the benchmark would otherwise download:

- `home/models/litemedsam-0.1.1/`: the LiteMedSAM weights (sha256-checked by segmote as usual)
  in segmote's model cache layout, found through SEGMOTE_HOME;
- `lung2.nii.gz`: the first 16 slices of the real pyradiomics lung2 CT, which `make_volume`
  tiles in z (bench_predict.make_volume reads the whole .nrrd, through SimpleITK);
- `texts.pt`: the shipped adapter's class names embedded by the real MiniLM here, on the CPU:
  the MiniLM weights alone (87 MiB) exceed what a call carries. `use_saved_texts()` makes
  `segmote predict --auto` read them instead of running the text encoder, which it does once
  per class and run; the time that leaves out is a few milliseconds of the run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

CT_ENV, TEXTS_ENV = "SEGMOTE_BENCH_CT", "SEGMOTE_BENCH_TEXTS"


def make_volume(path: Path, slices: int) -> None:
    """bench_predict.make_volume, from $SEGMOTE_BENCH_CT (a lung2 crop) when it is set."""
    from bench_predict import make_volume as from_sample

    source = os.environ.get(CT_ENV)
    if not source:
        from_sample(path, slices)
        return
    import nibabel as nib

    src = nib.load(source)
    a = np.asarray(src.dataobj)
    reps = int(np.ceil(slices / a.shape[2]))
    vol = np.concatenate([a] * reps, axis=2)[:, :, :slices].astype(np.int16)
    nib.save(nib.Nifti1Image(vol, src.affine), str(path))


def use_saved_texts() -> None:
    """With $SEGMOTE_BENCH_TEXTS set, class names are looked up in that file (module doc)."""
    source = os.environ.get(TEXTS_ENV)
    if not source:
        return
    import segmote.predict.segmenter as segmenter
    from segmote.text.classes import ClassTexts

    saved = torch.load(source)

    def lookup(names, encoder_name="minilm", path=None, encoder=None, template=None):
        missing = [n for n in names if n not in saved["embeddings"]]
        if missing:
            raise SystemExit(f"{source}: no saved embedding for {missing}")
        return ClassTexts(list(names), torch.stack([saved["embeddings"][n] for n in names]),
                          encoder_name, saved["encoder_id"], template or saved["template"], path)

    segmenter.class_embeddings = lookup


def prepare(folder: Path) -> None:
    """Write the files of the module doc into `folder`."""
    import nibabel as nib

    from segmote.adapter.card import TextInfo
    from segmote.build import load_model
    from segmote.io import read_image
    from segmote.model_files import MODEL_FILES, SOURCE_FILE, model_dir
    from segmote.predict.segmenter import Segmenter
    from segmote.samples import fetch_sample

    spec = MODEL_FILES["litemedsam"]
    target = folder / "home" / "models" / f"{spec.name}-{spec.version}"
    target.mkdir(parents=True, exist_ok=True)
    for name in spec.files:
        shutil.copyfile(model_dir("litemedsam") / name, target / name)
    (target / SOURCE_FILE).write_text(json.dumps(
        {"source": f"copied from this machine's {spec.requirement}", "downloaded": "-",
         "sha256": spec.files}, indent=2) + "\n", encoding="utf-8")
    src = read_image(fetch_sample("pyradiomics") / "Dataset001_PyradiomicsCT"
                     / "imagesTr/lung2_0000.nrrd")
    crop = np.ascontiguousarray(src.array[:, :, :16]).astype(np.int16)
    nib.save(nib.Nifti1Image(crop, src.meta["affine"]), str(folder / "lung2.nii.gz"))
    seg = Segmenter(load_model())
    names = list(seg.vocabulary)
    emb = seg.embed_text(names).cpu()
    info = seg.card.text or TextInfo()
    torch.save({"embeddings": dict(zip(names, emb)), "template": info.template,
                "encoder_id": str(seg.text_encoder.id if seg.text_encoder else info.encoder)},
               folder / "texts.pt")
