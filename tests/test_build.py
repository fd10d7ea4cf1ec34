"""Backbone registry and safe, strict checkpoint loading."""

from __future__ import annotations

import os

import pytest
import torch

from segmote.build import BACKBONES, build_base, litemedsam_weights_path, load_model
from segmote.checkpoint import read_state_dict, sha256_file
from segmote.errors import CheckpointError, InputError, ParameterError


def test_litemedsam_weights_are_the_published_file():
    assert sha256_file(litemedsam_weights_path()) == BACKBONES["litemedsam"].sha256


def test_litemedsam_loads_strictly_and_frozen():
    model = load_model(adapter=None)
    sd = torch.load(litemedsam_weights_path(), weights_only=True)
    own = model.state_dict()
    assert set(own) == set(sd)
    assert all(torch.equal(own[k], sd[k]) for k in sd)
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


@pytest.mark.parametrize("name", ["sam_vit_b", "medsam_vit_b"])
def test_sam_checkpoints_load_from_a_user_file(tmp_path, name):
    """Same-architecture random weights with the official key names, DDP-prefixed and wrapped
    as some training scripts save them, load strictly through the public entry point."""
    model = BACKBONES[name].build()
    sd = {f"module.{k}": torch.randn_like(v) if v.is_floating_point() else v
          for k, v in model.state_dict().items()}
    path = tmp_path / f"{name}.pth"
    torch.save({"model": sd}, path)
    loaded = load_model(name, checkpoint=path)
    key = "image_encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(loaded.state_dict()[key], sd[f"module.{key}"])
    assert loaded.img_size == 1024
    assert torch.allclose(loaded.pixel_std.flatten(),
                          torch.tensor([0.229, 0.224, 0.225] if name == "sam_vit_b" else [1.0] * 3))


def test_sam_vit_needs_a_checkpoint():
    with pytest.raises(ParameterError, match="pass checkpoint FILE") as err:
        build_base("sam_vit_h")
    assert err.value.render({"checkpoint": "--checkpoint"}).count("--checkpoint FILE") == 1


def test_unknown_backbone():
    with pytest.raises(InputError, match="unknown backbone"):
        build_base("sam_vit_x")


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    sd = torch.load(litemedsam_weights_path(), weights_only=True)
    sd.pop("mask_decoder.iou_token.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["prompt_encoder.no_mask_embed.weight"] = torch.zeros(1, 128)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        build_base("litemedsam", path)
    msg = str(err.value)
    assert "mask_decoder.iou_token.weight" in msg and "extra.weight" in msg
    assert "prompt_encoder.no_mask_embed.weight" in msg and "\n" not in msg


def test_corrupt_shipped_weights_are_detected(tmp_path, monkeypatch):
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(litemedsam_weights_path().read_bytes()[:-10] + b"0123456789")
    monkeypatch.setattr("segmote.build.litemedsam_weights_path", lambda: fake)
    from segmote import build
    monkeypatch.setitem(build.BACKBONES, "litemedsam",
                        build.Backbone("litemedsam", build.build_litemedsam, "", lambda: fake,
                                       build.LITEMEDSAM_SHA256))
    with pytest.raises(CheckpointError, match="sha256"):
        build_base("litemedsam")


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('SEGMOTE_EVIL_MARKER', '/tmp/x')}",))


def test_malicious_pickle_is_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SEGMOTE_EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    torch.save({"weight": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    with pytest.raises(CheckpointError):
        build_base("litemedsam", path)
    assert not marker.exists()


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "trunc.pth"
    path.write_bytes(litemedsam_weights_path().read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="trunc.pth"):
        read_state_dict(path)
