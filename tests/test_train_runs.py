"""Training runs on a tiny nnU-Net raw dataset: resume equivalence, DDP equivalence, the CLI end
to end, splits and balance, manifests, and the second stage (text + PPT on a frozen adapter).
(Single steps: test_train.py.)

Real weights (LiteMedSAM) and real data (the bundled lung CT crop); everything is kept tiny so the
file runs in a few minutes on a laptop CPU.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import segmote
from lung_case import PLAIN, TINY, lung_dataset  # noqa: F401  (fixture)
from segmote.training.config import TrainConfig, load_config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One embedding cache shared by the runs below (each slice is encoded once)."""
    return tmp_path_factory.mktemp("cache")


def _cfg(cache_dir: Path, **kw) -> TrainConfig:
    return load_config(overrides={**TINY, "val_fraction": 0.34, "cache_dir": str(cache_dir),
                                  **kw})


def test_resume_after_kill_matches_a_straight_run(lung_dataset, cache_dir, tmp_path):
    from segmote.training.trainer import fit

    cfg = _cfg(cache_dir, epochs=2, batch_size=1, refine_rounds=0)
    straight = fit(cfg, [lung_dataset], tmp_path / "straight", progress=False)
    steps = straight.global_step
    assert straight.epochs_done == 2 and steps == 4  # 2 training slices, batch 1

    class Killed(Exception):
        pass

    def kill(step: int) -> None:
        if step == 3:  # mid-way through epoch 2, right after the state was saved
            raise Killed

    with pytest.raises(Killed):
        fit(cfg, [lung_dataset], tmp_path / "resumed", progress=False, on_step=kill)
    with pytest.raises(segmote.errors.ParameterError, match="pass resume") as err:
        fit(cfg, [lung_dataset], tmp_path / "resumed", progress=False)
    assert "pass --resume" in err.value.render({"resume": "--resume"})  # as the CLI says it
    resumed = fit(cfg, [lung_dataset], tmp_path / "resumed", resume=True, progress=False)
    assert resumed.global_step == steps and resumed.epochs_done == 2
    a = load_file(straight.latest_adapter)
    b = load_file(resumed.latest_adapter)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history == straight.history  # metrics too (sums carried across the kill)
    # the state file is tensors + JSON: it loads with weights-only semantics (no pickle)
    from segmote.training.state import load_state
    state = load_state(tmp_path / "resumed" / "state.safetensors")
    assert state["run"]["global_step"] == steps and state["optimizer"]["state"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_one_process(lung_dataset, cache_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo), global batch 2 = 1 per rank, trains the same adapter
    as one process with batch 2. Router noise and the (per-rank) balance loss are switched off:
    they are the only batch-composition-dependent parts."""
    from segmote.training.trainer import fit

    extra = {"mote": {"noisy_gating": False},
             "loss_weights": {"balance": 0.0}, "epochs": 2, "batch_size": 2}
    cfg_file = tmp_path / "ddp.yaml"
    import yaml
    cfg_file.write_text(yaml.safe_dump({**TINY, "val_fraction": 0.34,
                                        "cache_dir": str(cache_dir), **extra}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
         "-m", "segmote.cli.main", "train", "--data", str(lung_dataset), "--out",
         str(tmp_path / "ddp"), "--config", str(cfg_file), "--device", "cpu", "--quiet"],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = fit(load_config(cfg_file), [lung_dataset], tmp_path / "single", progress=False)
    assert single.global_step == 2
    a = load_file(tmp_path / "ddp" / "adapter_latest.safetensors")
    b = load_file(single.latest_adapter)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), k
    ddp_metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp_metrics[-1]["val"]["mean_dice"] == pytest.approx(
        single.history[-1]["val"]["mean_dice"], abs=1e-4)


def test_cli_end_to_end_writes_every_output(lung_dataset, cache_dir, tmp_path, capsys):
    from segmote.cli.main import main

    out = tmp_path / "run"
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"refine_rounds: 1\nsave_every: 1\nval_fraction: 0.34\n"
                        f"min_foreground: 200\nbatch_size: 2\ncache_dir: {cache_dir}\n")
    rc = main(["train", "--data", str(lung_dataset), "--out", str(out), "--config",
               str(cfg_file), "--epochs", "1", "--device", "cpu", "--quiet"])
    assert rc == 0
    for name in ("config.yaml", "split.json", "metrics.json", "curves.png",
                 "adapter_latest.safetensors", "adapter_best.safetensors", "state.safetensors"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    import yaml
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    # flag and YAML applied; written in groups
    assert resolved["optim"]["epochs"] == 1 and resolved["prompts"]["refine_rounds"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    val = metrics[0]["val"]
    assert 0 <= val["mean_dice"] <= 1 and list(val["per_class"])[0].endswith("/tumour")
    # the best adapter loads as a SegMoTE adapter and segments
    from segmote.adapter import read_adapter_metadata
    from segmote.build import load_model
    meta = read_adapter_metadata(out / "adapter_best.safetensors")
    assert meta["training"]["epoch"] == 1 and meta["vocabulary"] == ["tumour"]
    assert list(meta["training_modalities"].values()) == ["CT"]
    load_model(adapter=str(out / "adapter_best.safetensors"))
    capsys.readouterr()

    # a second epoch by resuming with a larger --epochs
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert len(json.loads((out / "metrics.json").read_text())) == 2
    capsys.readouterr()

    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 1\nlearning_rate: 0.1\n")
    rc = main(["train", "--data", str(lung_dataset), "--out", str(tmp_path / "bad"),
               "--config", str(bad)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "learning_rate" in err and str(bad) in err
    assert not (tmp_path / "bad").exists()  # nothing written for a bad config


def test_given_split_balance_and_samples_per_epoch(lung_dataset, cache_dir, tmp_path, capsys):
    """--split fixes the held-out cases, --samples-per-epoch the number of steps, and the run
    records both; a split naming an unknown case fails with one line."""
    from segmote.cli.main import main

    split = tmp_path / "held_out.json"
    split.write_text(json.dumps({lung_dataset.name: {"train": ["lung_000", "lung_002"],
                                                      "val": ["lung_001"]}}))
    out = tmp_path / "run"
    rc = main(["train", "--data", str(lung_dataset), "--out", str(out), "--split", str(split),
               "--balance", "dataset_class", "--samples-per-epoch", "6", "--epochs", "1",
               "--batch-size", "2", "--cache-dir", str(cache_dir), "--device", "cpu",
               "--quiet"])
    assert rc == 0
    saved = json.loads((out / "split.json").read_text())
    assert saved[lung_dataset.name]["val"] == ["lung_001"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[0]["step"] == 3  # 6 samples / batch 2
    import yaml
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    # --balance is the older name of --sampling-balance; the run records the new key
    assert resolved["data"]["sampling_balance"] == "dataset_class"
    assert resolved["data"]["split"] == str(split)
    capsys.readouterr()

    split.write_text(json.dumps({lung_dataset.name: {"train": ["lung_009"], "val": []}}))
    rc = main(["train", "--data", str(lung_dataset), "--out", str(tmp_path / "bad"),
               "--split", str(split), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "lung_009" in err
    assert not (tmp_path / "bad").exists()  # a refused run leaves no folder behind


def _manifest(lung_dataset: Path, path: Path, picks: list[tuple[int, int]]) -> Path:
    """A curation manifest selecting (case n, slice k) tumour samples of the lung dataset."""
    entries = [{"dataset": lung_dataset.name, "case": f"lung_{n:03d}",
                "image": str(lung_dataset / "imagesTr" / f"lung_{n:03d}_0000.nii.gz"),
                "label": str(lung_dataset / "labelsTr" / f"lung_{n:03d}.nii.gz"),
                "class": "tumour", "value": 1, "modality": "CT", "slice": k, "axis": 2,
                "scores": {"pixels": 300}} for n, k in picks]
    path.write_text(json.dumps({
        "format": "segmote-curation-manifest", "version": 1,
        "datasets": {lung_dataset.name: {"root": str(lung_dataset), "modality": "CT",
                                         "labels": {"1": "tumour"}, "is_3d": True}},
        "selected": entries, "rejected": []}))
    return path


def test_manifest_trains_on_exactly_the_selection(lung_dataset, cache_dir, tmp_path, capsys):
    """--manifest replaces the folder scan by the curated selection (split by case as usual);
    a malformed manifest or --data with --manifest fails with one line and writes nothing."""
    from segmote.cli.main import main
    from segmote.training.distributed import DistInfo
    from segmote.training.run_data import load_run_data

    manifest = _manifest(lung_dataset, tmp_path / "m.json", [(0, 0), (2, 0)])
    cfg = _cfg(cache_dir, manifest=str(manifest), val_fraction=0.0)
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    _, split, train, val = load_run_data(cfg, [], tmp_path / "probe", False, info)
    assert [(s.case_id, s.slice_index) for s in train] == [("lung_000", 0), ("lung_002", 0)]
    assert val == [] and split[lung_dataset.name]["train"] == ["lung_000", "lung_002"]

    # three selected cases, default val_fraction 0.2: one case held out, two trained on
    manifest = _manifest(lung_dataset, tmp_path / "m3.json", [(0, 0), (1, 0), (2, 0)])
    out = tmp_path / "run"
    rc = main(["train", "--manifest", str(manifest), "--out", str(out), "--epochs", "1",
               "--batch-size", "2", "--cache-dir", str(cache_dir), "--device", "cpu",
               "--quiet"])
    assert rc == 0
    saved = json.loads((out / "split.json").read_text())[lung_dataset.name]
    assert len(saved["train"]) == 2 and len(saved["val"]) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[0]["step"] == 1  # 2 training samples / batch 2
    import yaml
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["manifest"] == str(manifest)
    capsys.readouterr()

    for argv, needle in [(["--manifest", str(manifest), "--data", str(lung_dataset)],
                          "not both"),
                         (["--manifest", str(tmp_path / "nope.json")], "nope.json")]:
        rc = main(["train", *argv, "--out", str(tmp_path / "bad"), "--device", "cpu", "-q"])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and needle in err
        assert not (tmp_path / "bad").exists()


def test_fit_on_a_hand_made_selection_without_validation(lung_dataset, cache_dir, tmp_path):
    """The curation benchmarks' path: `selection_manifest` of chosen samples (their order kept),
    then `fit()` with no validation split (val_fraction 0; its epoch log has no val Dice, which
    used to crash the TensorBoard log); a sample of a dataset not given is refused."""
    from segmote.curation.manifest import manifest_samples, selection_manifest
    from segmote.data.datasets import discover, slice_samples
    from segmote.errors import ParameterError
    from segmote.training.trainer import fit

    (d,) = discover([lung_dataset])
    every = slice_samples([d], {d.name: {"train": [c.case_id for c in d.cases], "val": []}},
                          axis=2, min_foreground=200).samples
    picks = [every[2], every[0]]
    path = selection_manifest([d], picks, tmp_path / "selection.json")
    key = [(s.case_id, s.slice_index, s.class_value, s.foreground) for s in picks]
    assert [(s.case_id, s.slice_index, s.class_value, s.foreground)
            for s in manifest_samples(path)[1]] == key
    res = fit(_cfg(cache_dir, manifest=str(path), val_fraction=0.0, **PLAIN), [],
              tmp_path / "run", device="cpu", progress=False)
    assert res.global_step == 1 and res.latest_adapter.is_file() and res.best_adapter is None
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics[0]["val"]["mean_dice"] is None and metrics[0]["train"]["loss"] > 0
    with pytest.raises(ParameterError, match="not in datasets"):
        selection_manifest([], picks, tmp_path / "refused.json")
    assert not (tmp_path / "refused.json").exists()


def test_second_stage_adds_text_and_ppt_and_leaves_box_decoding_bit_identical(
        lung_dataset, cache_dir, tmp_path, capsys):
    """Stage 1 trains a plain adapter; stage 2 (--init-adapter, train_parts [text, ppt]) adds
    text prompts and PPT: only the new parts change, so box decoding is bit-identical. An
    init adapter of another shape is refused with one line."""
    from segmote.build import load_model
    from segmote.cli.main import main
    from segmote.training.trainer import fit

    first = fit(_cfg(cache_dir, refine_rounds=0, **PLAIN), [lung_dataset], tmp_path / "s1",
                  progress=False)
    cfg_file = tmp_path / "stage2.yaml"
    cfg_file.write_text(f"train_parts: [text, ppt]\nprompt_mix: {{box: 0.5, text: 0.5}}\n"
                        f"progressive: null\ntext_with_prompt: 1.0\nrefine_rounds: 0\n"
                        f"lr: 0.01\nmin_foreground: 200\nval_fraction: 0.5\n"
                        f"batch_size: 2\nepochs: 2\ncache_dir: {cache_dir}\n")
    out = tmp_path / "s2"
    assert main(["train", "--data", str(lung_dataset), "--out", str(out), "--config",
                 str(cfg_file), "--init-adapter", str(first.latest_adapter), "--device", "cpu",
                 "--quiet"]) == 0
    capsys.readouterr()
    a, b = load_file(first.latest_adapter), load_file(out / "adapter_latest.safetensors")
    assert set(a) < set(b)
    for k in a:  # frozen parts: untouched
        assert torch.equal(a[k], b[k]), k
    new = [k for k in b if k.startswith(("text.", "ppt."))]
    assert new and len(new) == len(b) - len(a)
    assert not torch.equal(b["ppt.to_token.weight"], torch.zeros_like(b["ppt.to_token.weight"]))
    m1 = load_model(adapter=str(first.latest_adapter))
    m2 = load_model(adapter=str(out / "adapter_latest.safetensors"))
    image = torch.rand(1, 3, m1.img_size, m1.img_size)
    box = torch.tensor([[60.0, 70.0, 150.0, 160.0]])
    with torch.no_grad():
        o1 = m1.decode(m1.encode(image), boxes=box)
        o2 = m2.decode(m2.encode(image), boxes=box)
    assert torch.equal(o1.masks, o2.masks) and torch.equal(o1.iou_pred, o2.iou_pred)

    # the calibration travels with the adapter, and recalibrating the finished run reproduces
    # it exactly without touching a weight
    from segmote.adapter import read_adapter_metadata
    from segmote.training.recalibrate import recalibrate

    auto = read_adapter_metadata(out / "adapter_latest.safetensors")["auto"]
    assert {"threshold", "mask_offset_default", "mask_offsets"} <= set(auto)
    again = recalibrate(out, out=tmp_path / "recal.safetensors")
    assert again == auto
    c = load_file(tmp_path / "recal.safetensors")
    assert set(c) == set(b) and all(torch.equal(b[k], c[k]) for k in b)
    assert read_adapter_metadata(tmp_path / "recal.safetensors")["vocabulary"] == \
        read_adapter_metadata(out / "adapter_latest.safetensors")["vocabulary"]

    other = fit(_cfg(cache_dir, refine_rounds=0, epochs=1, mote={"num_experts": 2}, **PLAIN),
                  [lung_dataset], tmp_path / "other", progress=False)
    rc = main(["train", "--data", str(lung_dataset), "--out", str(tmp_path / "bad"), "--config",
               str(cfg_file), "--init-adapter", str(other.latest_adapter), "--device", "cpu",
               "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "num_experts" in err
