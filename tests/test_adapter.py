"""Adapter checkpoints: round trip, metadata, backbone checks, strictness, pickles never run;
`load_model(adapter=...)`, the parameter summary and `segmote info`."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from segmote.adapter import (
    adapter_state_dict,
    attach_adapter,
    read_adapter_metadata,
    save_adapter,
)
from segmote.cli.main import main
from segmote.errors import CheckpointError, InputError
from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.sam import Sam
from segmote.modeling.segmote import MoTEConfig, SegMoTE
from segmote.summary import adapter_size_mb, format_summary, parameter_summary
from tiny_models import one_thread, tiny_sam  # noqa: F401 (one_thread: autouse fixture)

SHA = "ab" * 32
IDENTITY = {"backbone": "tiny", "backbone_sha256": SHA}


def _trained_like(config: MoTEConfig | None = None) -> SegMoTE:
    """A tiny SegMoTE whose adapter weights are all non-trivial (as after training)."""
    model = attach_adapter(tiny_sam(), "new", config, **IDENTITY)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _outputs(model: SegMoTE) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(7)
    with torch.no_grad():
        feats = model.prepare_image(model.encode(torch.rand(1, 3, 64, 64)))
        out = model.decode(feats, boxes=torch.tensor([[4.0, 6.0, 40.0, 50.0],
                                                      [10.0, 10.0, 30.0, 20.0]]))
    return out.masks, out.expert_masks, out.router_logits, out.iou_pred


# --- round trip -------------------------------------------------------------------------------
def test_round_trip_identical_outputs_and_metadata(tmp_path: Path) -> None:
    cfg = MoTEConfig(num_expert_tokens=2, num_experts=3, top_k=2, expert_rank=8)
    model = _trained_like(cfg)
    vocab = ["liver", "left kidney"]
    data = {"Dataset005_Nuclei": ["nuclei"]}  # what the trainer writes: dataset -> classes
    path = save_adapter(model, tmp_path / "a.safetensors",
                        {"vocabulary": vocab, "training_data": data, "note": "42"})
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left
    stored = load_file(str(path))
    assert stored.keys() == adapter_state_dict(model).keys()
    assert not any(k.startswith("base.") for k in stored)  # only the adapter

    meta = read_adapter_metadata(path)
    assert meta["backbone"] == "tiny" and meta["backbone_sha256"] == SHA
    assert meta["vocabulary"] == vocab and meta["training_data"] == data
    assert meta["note"] == "42"  # a string stays a string
    assert MoTEConfig.from_dict(meta["mote_config"]) == cfg
    assert meta["embed_dim"] == 32 and meta["segmote_version"]

    loaded = attach_adapter(tiny_sam(), path, **IDENTITY)
    assert loaded.config == cfg and loaded.card.vocabulary == tuple(vocab)
    assert not loaded.training
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)


def test_plain_tensor_pickle_adapter_is_accepted_with_a_warning(tmp_path: Path) -> None:
    model = _trained_like()
    path = tmp_path / "adapter.pt"
    torch.save(adapter_state_dict(model), path)
    with pytest.warns(UserWarning, match="cannot be verified"):
        loaded = attach_adapter(tiny_sam(), path, **IDENTITY)
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)


# --- refusals ---------------------------------------------------------------------------------
def test_mismatched_backbone_is_refused(tmp_path: Path) -> None:
    path = save_adapter(_trained_like(), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="trained for backbone 'tiny', not 'sam_vit_b'"):
        attach_adapter(tiny_sam(), path, backbone="sam_vit_b", backbone_sha256=SHA)
    with pytest.raises(CheckpointError, match="sha256 abababababab"):
        attach_adapter(tiny_sam(), path, backbone="tiny", backbone_sha256="cd" * 32)
    with pytest.raises(CheckpointError, match="cannot check which backbone"):
        attach_adapter(tiny_sam(), path)
    with pytest.raises(CheckpointError, match="saved with"):
        attach_adapter(tiny_sam(), path, MoTEConfig(num_experts=8), **IDENTITY)


def test_wrong_width_and_missing_keys_name_the_problem(tmp_path: Path) -> None:
    path = save_adapter(_trained_like(), tmp_path / "a.safetensors")
    wide = tiny_sam(dim=64)
    with pytest.raises(CheckpointError, match=r"a\.safetensors: does not fit.*shape mismatch"):
        attach_adapter(wide, path, **IDENTITY)
    tensors, meta = load_file(str(path)), None
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors.pop("expert_tokens.weight")
    tensors["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(CheckpointError, match="missing keys: expert_tokens.weight.*unexpected"):
        attach_adapter(tiny_sam(), bad, **IDENTITY)


def test_files_that_are_not_adapters(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not a header")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        attach_adapter(tiny_sam(), junk, **IDENTITY)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a segmote adapter"):
        attach_adapter(tiny_sam(), plain, **IDENTITY)
    with pytest.raises(CheckpointError, match="adapter file not found"):
        attach_adapter(tiny_sam(), tmp_path / "missing.safetensors", **IDENTITY)
    with pytest.raises(CheckpointError, match="adapter file not found"):
        attach_adapter(tiny_sam(), tmp_path / "missing.pt", **IDENTITY)


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".safetensors"])
def test_malicious_pickle_is_never_executed(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    with open(path, "wb") as f:
        pickle.dump({"expert_tokens.weight": _Evil(marker)}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match=f"evil{suffix}"):
            attach_adapter(tiny_sam(), path, **IDENTITY)
    assert not marker.exists()
    # the same payload wrapped by torch.save (zip container)
    zipped = tmp_path / "evil_zip.pt"
    torch.save({"expert_tokens.weight": _Evil(marker)}, zipped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="refused to load"):
            attach_adapter(tiny_sam(), zipped, **IDENTITY)
    assert not marker.exists()


def test_save_refusals(tmp_path: Path) -> None:
    model = _trained_like()
    with pytest.raises(InputError, match=r"\.safetensors"):
        save_adapter(model, tmp_path / "a.pt")
    with pytest.raises(InputError, match="reserved"):
        save_adapter(model, tmp_path / "a.safetensors", {"backbone": "x"})
    with pytest.raises(InputError, match="JSON"):
        save_adapter(model, tmp_path / "a.safetensors", {"vocabulary": {1, 2}})
    anonymous = SegMoTE(tiny_sam())
    with pytest.raises(CheckpointError, match="backbone is unknown"):
        save_adapter(anonymous, tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []


# --- summary ----------------------------------------------------------------------------------
def test_parameter_summary_counts() -> None:
    model = _trained_like()
    rows = {r.module: r for r in parameter_summary(model)}
    n_adapter = sum(p.numel() for p in model.adapter.parameters())
    assert rows["total"].trainable == n_adapter
    assert rows["total"].total == n_adapter + sum(p.numel() for p in model.base.parameters())
    assert rows["base.mask_decoder"].trainable == 0 and rows["base.mask_decoder"].total > 0
    assert rows["adapter.mote"].trainable == rows["adapter.mote"].total > 0
    assert sum(r.total for m, r in rows.items() if m != "total") == rows["total"].total
    assert adapter_size_mb(model) == pytest.approx(n_adapter * 4 / 1e6)
    text = format_summary(parameter_summary(model))
    assert "adapter.head.hypernets" in text and "trainable (adapter)" in text


# --- the real backbone: load_model and `segmote info` -------------------------------------------
def test_load_model_adapter_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from segmote.build import DEFAULT_ADAPTER, LITEMEDSAM_SHA256, load_model

    base = load_model(adapter="none")
    assert isinstance(base, Sam) and not any(p.requires_grad for p in base.parameters())
    assert isinstance(load_model(adapter=None), Sam)
    # the default is the adapter shipped inside the package, trained on the real sample data
    default = load_model()
    assert isinstance(default, SegMoTE) and Path(DEFAULT_ADAPTER).is_file()
    assert Path(DEFAULT_ADAPTER).stat().st_size < 10_000_000  # a few MB
    card = default.card
    assert {"Dataset001_PyradiomicsCT", "Dataset005_NucleiQuadrants",
            "Dataset006_Colin27AALSlabs"} <= set(card.training_data)
    assert "nuclei" in card.vocabulary and "Hippocampus_L" in card.vocabulary
    fresh = load_model(adapter="new")
    assert isinstance(fresh, SegMoTE) and fresh.backbone_sha256 == LITEMEDSAM_SHA256
    n_adapter = sum(p.numel() for p in fresh.parameters() if p.requires_grad)
    assert n_adapter == sum(p.numel() for p in fresh.adapter.parameters()) < 5_000_000
    with torch.no_grad():
        for p in fresh.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_adapter(fresh, tmp_path / "lite.safetensors", {"vocabulary": ["tumour"]})
    loaded = load_model(adapter=path)
    for a, b in zip(fresh.adapter.state_dict().values(), loaded.adapter.state_dict().values()):
        assert torch.equal(a, b)
    emb = EncoderOutput(torch.randn(1, 256, 64, 64), torch.randn(1, 160, 64, 64))
    box = torch.tensor([[30.0, 40.0, 120.0, 150.0]])
    with torch.no_grad():
        ref = fresh.decode(fresh.prepare_image(emb), boxes=box)
        got = loaded.decode(loaded.prepare_image(emb), boxes=box)
    assert torch.equal(ref.masks, got.masks) and torch.equal(ref.iou_pred, got.iou_pred)
    # the same file claimed by another backbone's weights is refused
    fresh.backbone_sha256 = "0" * 64
    other = save_adapter(fresh, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="use the matching checkpoint$"):
        load_model(adapter=other)  # a library error names the parameter; the CLI its flag
    from segmote.samples import bundled_sample_path

    assert main(["predict", "-i", str(bundled_sample_path("nuclei")), "-o",
                 str(tmp_path / "m.png"), "--box", "416,350,446,374", "--adapter", str(other),
                 "-q"]) == 1
    assert capsys.readouterr().err.strip().endswith("use the matching --checkpoint")


def test_info_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--adapter", "new"]) == 0
    out = capsys.readouterr().out
    assert "adapter: new" in out and "base.image_encoder" in out and "adapter.mote" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    trainable = int(total.split()[1].replace(",", ""))
    assert 0 < trainable < 5_000_000
    assert main(["info", "--adapter", "none"]) == 0
    assert "base.image_encoder" not in capsys.readouterr().out  # plain Sam rows
    assert main(["info"]) == 0  # the shipped adapter: what --auto -m asks, per modality
    assert "--auto asks, per modality: CT 1 class, MR 118 classes, MICROSCOPY 1 class" in \
        capsys.readouterr().out
    assert main(["info", "--adapter", str(tmp_path / "nope.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("segmote info: error:") and "not found" in err
    assert len(err.splitlines()) == 1
