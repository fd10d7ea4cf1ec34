"""The recipe of the default adapter: its training folders, its held-out split, its config.

    python -m segmote.training.default_adapter prepare OUT_DIR    # folders + split.json
    python -m segmote.training.default_adapter record-modalities OUT_DIR   # see below
    (scripts/train_default_adapter.sh runs the whole recipe: fetch, prepare, train, report)

The real sample data (docs/data.md) has few patients: five tumour patients (pyradiomics: two CT,
three MR), one fluorescence-microscopy image (DSB 2018 nuclei) and one brain (Colin27 with its AAL
atlas and brain mask). What is held out, and how honest each hold-out is:

- pyradiomics CT / MR: whole patients, drawn by `make_split` (seed 0, 20 %): truly unseen patients.
- nuclei: the image is cut into four 256 x 256 quadrants; the bottom-right quadrant is held out.
  Same image, disjoint nuclei: NOT an unseen patient (there is none to be had).
- Colin27 (AAL structures, brain mask): the volume is cut into 16-slice axial slabs; slabs 1, 5
  and 9 are held out. Same subject, disjoint slices: NOT an unseen subject, and neighbouring
  slices look alike, so these numbers overstate generalisation to a new brain.

The nuclei are written with ``"instance_labels": true`` (one training sample per nucleus): a box
around all the nuclei of a quadrant would be the whole image, not a prompt anyone would give.
Slab and quadrant files are written uncompressed and byte-deterministic, so the AAL and brain-mask
datasets share one image file content and the embedding cache encodes each slice once.

`record-modalities` writes each training dataset's modality into the shipped adapter's header
("training_modalities", read from the folders `prepare` writes): the trainer records it now,
but the shipped adapter's header was written before it did, and without it `--auto -m CT`
asked all 119 classes instead of the one class of the CT dataset. Tensors stay byte-identical;
the old file's sha256 goes into "earlier_versions", so results recorded against it still name
this adapter.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from segmote.errors import CheckpointError, InputError

CONFIG_NAME = "default_adapter.yaml"
STAGE_CONFIGS = {"box": CONFIG_NAME, "text": "default_adapter_text.yaml"}
SLAB = 16  # axial slices per Colin27 slab
HELD_OUT_SLABS = (1, 5, 9)
HELD_OUT_QUADRANT = 3  # bottom-right
NEEDED_SAMPLES = ("pyradiomics", "nuclei", "colin27")
NOTES = {
    "Dataset001_PyradiomicsCT": "held-out patient (make_split, seed 0)",
    "Dataset002_PyradiomicsMR": "held-out patient (make_split, seed 0)",
    "Dataset005_NucleiQuadrants": "same image, held-out quadrant (no second image exists)",
    "Dataset006_Colin27AALSlabs": "same subject, held-out axial slabs (no second subject)",
    "Dataset007_Colin27BrainSlabs": "same subject, held-out axial slabs (no second subject)",
}


@dataclass
class PreparedData:
    """Dataset folders for `segmote train --data` and the split file for `--split`."""

    data_dirs: list[Path]
    split: Path


def config_path(stage: str = "box") -> Path:
    """The shipped YAML config of a stage of the default adapter: "box" (stage 1: expert tokens,
    MoTE, expert head) or "text" (stage 2: text prompts and PPT on the frozen stage 1)."""
    return Path(str(resources.files("segmote.training") / STAGE_CONFIGS[stage]))


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    _atomic_bytes(path, img.to_bytes())  # uncompressed: identical arrays -> identical bytes


def _nnunet_json(root: Path, name: str, labels: dict[str, int], cases: list[str],
                 source: str) -> None:
    meta = {"name": name, "channel_names": {"0": "MR"}, "labels": labels,
            "numTraining": len(cases), "file_ending": ".nii",
            "patient_of_case": {c: "colin27" for c in cases},
            "source": source, "licence": "see LICENSE.txt of the colin27 sample"}
    _atomic_bytes(root / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode())


def _colin27_slabs(colin: Path, out: Path) -> list[Path]:
    """AAL and brain-mask datasets of Colin27, one case per 16-slice axial slab."""
    import nibabel as nib

    aal_src = colin / "Dataset003_Colin27AAL"
    brain_src = colin / "Dataset004_Colin27Brain"
    image = nib.load(aal_src / "imagesTr" / "colin27_0000.nii.gz")
    vol = np.asarray(image.dataobj)
    labels = {"aal": np.asarray(nib.load(aal_src / "labelsTr" / "colin27.nii.gz").dataobj),
              "brain": np.asarray(nib.load(brain_src / "labelsTr" / "colin27.nii.gz").dataobj)}
    meta = {"aal": json.loads((aal_src / "dataset.json").read_text())["labels"],
            "brain": json.loads((brain_src / "dataset.json").read_text())["labels"]}
    names = {"aal": "Dataset006_Colin27AALSlabs", "brain": "Dataset007_Colin27BrainSlabs"}
    roots = []
    for kind, name in names.items():
        root = out / name
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
        cases = []
        for s, z0 in enumerate(range(0, vol.shape[2], SLAB)):
            case = f"colin27_s{s:02d}"
            affine = image.affine.copy()
            affine[:3, 3] += affine[:3, 2] * z0  # the slab keeps its place in scanner space
            _write_nifti(root / "imagesTr" / f"{case}_0000.nii", vol[:, :, z0:z0 + SLAB], affine)
            lab = labels[kind][:, :, z0:z0 + SLAB].astype(np.uint8)
            _write_nifti(root / "labelsTr" / f"{case}.nii", lab, affine)
            cases.append(case)
        _nnunet_json(root, name, meta[kind], cases, f"{SLAB}-slice axial slabs of the colin27 "
                     f"sample ({'AAL atlas' if kind == 'aal' else 'ch2bet brain mask'})")
        roots.append(root)
    return roots


def _nuclei_quadrants(nuclei: Path, out: Path) -> Path:
    """The nuclei image as four 256 x 256 quadrant cases with instance labels."""
    from PIL import Image

    root = out / "Dataset005_NucleiQuadrants"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    img = np.asarray(Image.open(nuclei / "images" / "nuclei_000.png"))
    inst = np.asarray(Image.open(nuclei / "instances" / "nuclei_000.png")).astype(np.uint16)
    h, w = img.shape[:2]
    cases = []
    for q, (r, c) in enumerate([(0, 0), (0, w // 2), (h // 2, 0), (h // 2, w // 2)]):
        tile = (slice(r, r + h // 2), slice(c, c + w // 2))
        case = f"nuclei_q{q}"
        Image.fromarray(img[tile]).save(root / "images" / f"{case}.png")
        Image.fromarray(inst[tile]).save(root / "labels" / f"{case}.png")
        cases.append(case)
    meta = {"name": root.name, "channel_names": {"0": "fluorescence microscopy"},
            "labels": {"background": 0, "nuclei": 1}, "instance_labels": True,
            "patient_of_case": {c: "dsb2018-img2d" for c in cases},
            "source": "quadrants of the nuclei sample (instances/ as labels)"}
    _atomic_bytes(root / "dataset.json", (json.dumps(meta, indent=2) + "\n").encode())
    return root


def prepare(out_dir: str | Path, home: Path | None = None) -> PreparedData:
    """Write the training folders and the held-out split (see the module doc) into out_dir.

    Needs `segmote samples fetch pyradiomics nuclei colin27` first (InputError otherwise).
    """
    from segmote.data.datasets import discover, make_split, save_split
    from segmote.samples import is_fetched, sample_path

    missing = [n for n in NEEDED_SAMPLES if not is_fetched(n, home)]
    if missing:
        raise InputError(f"sample data not fetched: {', '.join(missing)}; run "
                         f"`segmote samples fetch {' '.join(NEEDED_SAMPLES)}`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pyr = sample_path("pyradiomics", home)
    tumour = [pyr / "Dataset001_PyradiomicsCT", pyr / "Dataset002_PyradiomicsMR"]
    nuclei = _nuclei_quadrants(sample_path("nuclei", home), out)
    colin = _colin27_slabs(sample_path("colin27", home), out)
    split = make_split(discover(tumour), val_fraction=0.2, seed=0)
    split[nuclei.name] = {"train": [f"nuclei_q{q}" for q in range(4) if q != HELD_OUT_QUADRANT],
                          "val": [f"nuclei_q{HELD_OUT_QUADRANT}"]}
    n_slabs = len(list((colin[0] / "labelsTr").glob("*.nii")))
    for root in colin:
        split[root.name] = {
            "train": [f"colin27_s{s:02d}" for s in range(n_slabs) if s not in HELD_OUT_SLABS],
            "val": [f"colin27_s{s:02d}" for s in HELD_OUT_SLABS]}
    for name, entry in split.items():
        entry["note"] = NOTES[name]
    path = out / "split.json"
    save_split(split, path)
    return PreparedData([*tumour, nuclei, *colin], path)


def record_modalities(adapter: str | Path, data_dirs: list[Path]) -> dict[str, str | None]:
    """Write "training_modalities" (dataset -> modality of `data_dirs`' datasets, by name) into
    the header of the adapter file, in place, every tensor unchanged; the file's previous sha256
    is added to "earlier_versions". InputError when a training dataset is not among them.
    Returns the modalities written."""
    from segmote.adapter import read_adapter_card, rewrite_adapter_header
    from segmote.checkpoint import sha256_file
    from segmote.data.datasets import discover

    adapter = Path(adapter)
    card = read_adapter_card(adapter)
    found = {d.name: d.modality for d in discover(data_dirs)}
    missing = sorted(set(card.training_data) - set(found))
    if missing:
        raise InputError(f"{adapter}: training datasets not found in the folders given: "
                         f"{', '.join(missing)}")
    modalities = {name: found[name] for name in card.training_data}
    if card.training_modalities == modalities:
        return modalities  # already recorded: the file (and its sha256) stays as it is
    earlier = {**card.earlier_versions,
               sha256_file(adapter): "training_modalities recorded in the header; every tensor "
                                     "and every other entry unchanged"}
    rewrite_adapter_header(adapter, adapter, {"training_modalities": modalities,
                                              "earlier_versions": earlier})
    return modalities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m segmote.training.default_adapter",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="write the training folders and split.json")
    p.add_argument("out_dir")
    r = sub.add_parser("record-modalities", help="prepare OUT_DIR, then write each training "
                       "dataset's modality into the adapter's header")
    r.add_argument("out_dir")
    r.add_argument("--adapter", default=None, help="default: the shipped adapter")
    c = sub.add_parser("config", help="print the path of a stage's shipped config")
    c.add_argument("--stage", choices=sorted(STAGE_CONFIGS), default="box")
    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            print(config_path(args.stage))
            return 0
        prepared = prepare(args.out_dir)
        if args.command == "record-modalities":
            from segmote.build import DEFAULT_ADAPTER
            adapter = args.adapter or DEFAULT_ADAPTER
            print(json.dumps(record_modalities(adapter, prepared.data_dirs), sort_keys=True))
            return 0
    except (InputError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(" ".join(str(d) for d in prepared.data_dirs))
    print(prepared.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
