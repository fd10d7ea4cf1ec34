"""A second training stage on a trained adapter (`segmote.training.stages`): the stage-1 weights
load unchanged, the new text / PPT modules keep their initialisation, and a file of another
backbone or shape is refused with one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from segmote.adapter import attach_adapter, save_adapter
from segmote.errors import CheckpointError
from segmote.modeling.segmote import MoTEConfig, SegMoTE
from segmote.training.config import TrainConfig
from segmote.training.stages import check_initial_adapter, load_initial_adapter
from tiny_models import one_thread, tiny_sam  # noqa: F401 (one_thread: autouse fixture)

SHA = "ab" * 32
STAGE1 = MoTEConfig(num_expert_tokens=2, num_experts=3, expert_rank=8)
STAGE2 = MoTEConfig(num_expert_tokens=2, num_experts=3, expert_rank=8, text_dim=16,
                    ppt_queries=2)


def _model(config: MoTEConfig, sha: str = SHA, seed: int = 0) -> SegMoTE:
    torch.manual_seed(seed)
    model = attach_adapter(tiny_sam(), "new", config, backbone="tiny", backbone_sha256=sha)
    with torch.no_grad():  # non-trivial weights, as after training
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _stage1_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    model = _model(STAGE1)
    path = save_adapter(model, tmp_path / "stage1.safetensors")
    return path, {k: v.clone() for k, v in model.adapter.state_dict().items()}


def test_stage1_weights_load_and_new_parts_keep_their_init(tmp_path: Path) -> None:
    path, stage1 = _stage1_file(tmp_path)
    model = _model(STAGE2, seed=1)
    before = {k: v.clone() for k, v in model.adapter.state_dict().items()}
    load_initial_adapter(model, path)
    after = model.adapter.state_dict()
    new = [k for k in after if k not in stage1]
    assert new and all(k.split(".")[0] in ("text", "ppt") for k in new)
    for k, v in stage1.items():
        assert torch.equal(after[k], v), k  # every stage-1 tensor, bit for bit
    for k in new:
        assert torch.equal(after[k], before[k]), k  # untouched by the load


def test_other_backbone_weights_are_refused(tmp_path: Path) -> None:
    path, _ = _stage1_file(tmp_path)
    model = _model(STAGE2, sha="cd" * 32)
    with pytest.raises(CheckpointError, match="stage1.safetensors: adapter was trained on tiny "
                                              "weights with sha256 abababababab"):
        load_initial_adapter(model, path)


def test_a_file_lacking_a_stage1_tensor_is_refused(tmp_path: Path) -> None:
    path, _ = _stage1_file(tmp_path)
    state = load_file(str(path))
    dropped = sorted(state)[0]
    header = _header(path)
    del state[dropped]
    save_file(state, str(path), metadata=header)
    with pytest.raises(CheckpointError, match=f"init_adapter lacks {dropped}"):
        load_initial_adapter(_model(STAGE2), path)


def _header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def _cfg(path: Path, **mote) -> TrainConfig:
    return TrainConfig().replace(
        backbone="tiny", init_adapter=str(path), text_encoder=None,
        mote={"num_expert_tokens": 2, "num_experts": 3, "expert_rank": 8, **mote})


def test_header_check_accepts_added_ppt_and_refuses_other_settings(tmp_path: Path) -> None:
    path, _ = _stage1_file(tmp_path)
    check_initial_adapter(_cfg(path))  # same settings: fine
    with pytest.raises(CheckpointError, match=r"other MoTE settings: num_experts 3 \(config: 4\)"):
        check_initial_adapter(_cfg(path, num_experts=4))
    other = TrainConfig().replace(backbone="litemedsam", init_adapter=str(path))
    with pytest.raises(CheckpointError, match="trained for backbone 'tiny', not 'litemedsam'"):
        check_initial_adapter(other)
