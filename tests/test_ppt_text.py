"""PPT and text prompts in the SegMoTE decoder (tiny random backbone): the new parts leave box /
point decoding untouched, text adds a token and a mask bias, PPT replaces the manual prompts,
everything trains, saves and loads; misuse fails with one-line ConfigErrors."""

from __future__ import annotations

import pytest
import torch

from segmote.adapter import attach_adapter, save_adapter
from segmote.errors import ConfigError
from segmote.modeling.segmote import MoTEConfig
from tiny_models import one_thread, tiny_sam  # noqa: F401  (one_thread: autouse fixture)

TEXT_DIM = 12
CFG = MoTEConfig(text_dim=TEXT_DIM, ppt_queries=2)
BOX = torch.tensor([[8.0, 8.0, 40.0, 40.0]])


def _model(cfg: MoTEConfig = CFG):
    torch.manual_seed(1)
    return attach_adapter(tiny_sam(), "new", cfg, backbone="tiny", backbone_sha256="0" * 64)


def _image(model):
    torch.manual_seed(2)
    return model.prepare_image(model.encode(torch.rand(1, 3, 64, 64)))


def _text(n: int) -> torch.Tensor:
    t = torch.randn(n, TEXT_DIM)
    return t / t.norm(dim=1, keepdim=True)


def test_box_decoding_is_unchanged_by_the_new_parts():
    plain, full = _model(MoTEConfig()), _model()
    full.adapter.load_state_dict(plain.adapter.state_dict(), strict=False)
    a, b = plain.decode(_image(plain), boxes=BOX), full.decode(_image(full), boxes=BOX)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.base_masks, b.base_masks)
    base = tiny_sam().decode(tiny_sam().encode(torch.rand(1, 3, 64, 64)), boxes=BOX)
    assert base.masks.shape[-2:] == b.masks.shape[-2:]


def test_text_token_and_bias():
    model = _model()
    img, t = _image(model), _text(1)
    with torch.no_grad():
        box = model.decode(img, boxes=BOX)
        boxt = model.decode(img, boxes=BOX, text=t)
        assert boxt.masks.shape == box.masks.shape
        assert not torch.equal(boxt.base_masks, box.base_masks)  # the text token is a prompt
        auto = model.decode(img, auto=True, text=t)
        # the bias starts at zero; once set it adds (W e + b) . image features + the offset
        # (u . e + c) to every expert mask of prompt-free decoding, and only there
        model.adapter.text.to_bias.bias.fill_(0.5)
        biased = model.decode(img, auto=True, text=t)
        boxt_after = model.decode(img, boxes=BOX, text=t)
    assert torch.equal(boxt_after.expert_masks, boxt.expert_masks)  # beside a box: token only
    assert torch.equal(biased.base_masks, auto.base_masks)
    expected = 0.5 * img.head_features.sum(1, keepdim=True) + 0.5
    assert torch.allclose(biased.expert_masks - auto.expert_masks,
                          expected.expand_as(auto.expert_masks), atol=1e-5)
    two = model.decode(img, boxes=BOX.expand(2, -1), text=_text(2))
    assert two.masks.shape[0] == 2


def _perturb_zero_init(model) -> None:
    """Give the zero-initialised output layers weights, as training would."""
    torch.manual_seed(3)
    with torch.no_grad():
        for layer in (model.adapter.ppt.to_token, model.adapter.text.to_token.layers[-1]):
            layer.weight.normal_(0, 0.2)


def test_fresh_ppt_prompts_like_a_whole_frame_box():
    model = _model()
    img, t = _image(model), _text(2)
    frame = torch.tensor([[0.0, 0.0, 63.0, 63.0]])
    with torch.no_grad():
        assert torch.allclose(model.decode(img, auto=True).masks,
                              model.decode(img, boxes=frame).masks, atol=1e-5)
        # a fresh text token is SAM's padding token: text changes nothing yet, for any class
        auto_text = model.decode(img, auto=True, text=t).masks
        assert torch.allclose(auto_text, model.decode(img, boxes=frame.expand(2, -1),
                                                      text=t).masks, atol=1e-5)
        assert torch.allclose(auto_text[0], auto_text[1], atol=1e-6)
        pad = model.base.prompt_encoder.not_a_point_embed.weight
        token, bias = model.adapter.text(t, pad)
    assert torch.equal(token, pad.expand(2, 1, -1)) and not bias.any()


def test_auto_decoding_with_and_without_text_and_mask_prior():
    model = _model()
    _perturb_zero_init(model)
    img = _image(model)
    out = model.decode(img, auto=True)  # binary PPT: no prompt at all
    assert out.masks.shape == (1, 1, 16, 16)
    per_class = model.decode(img, auto=True, text=_text(3))
    assert per_class.masks.shape == (3, 1, 16, 16)
    assert not torch.allclose(per_class.masks[0], per_class.masks[1])  # class-conditioned
    prior = model.decode(img, auto=True, text=_text(1), masks=torch.randn(1, 1, 16, 16))
    assert prior.masks.shape == (1, 1, 16, 16)


def _grads(model) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    out = model.decode(_image(model), auto=True, text=_text(2))
    (out.masks.square().mean() + out.iou_pred.square().mean()).backward()
    return {k: p.grad for k, p in model.adapter.named_parameters()}


def test_ppt_and_text_parts_get_gradients():
    model = _model().train()
    # fresh: the zero-initialised output layers learn first (the rest is behind them)
    grads = _grads(model)
    for name in ("ppt.to_token.weight", "text.to_token.layers.1.weight", "text.to_bias.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    _perturb_zero_init(model)
    grads = _grads(model)
    for name in ("ppt.queries.weight", "ppt.attn.in_proj_weight", "ppt.text_to_query.weight",
                 "ppt.pos.weight", "text.to_token.layers.0.weight", "text.to_bias.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


def test_save_load_round_trip(tmp_path):
    model = _model()
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_adapter(model, tmp_path / "a.safetensors")
    loaded = attach_adapter(tiny_sam(), path, backbone="tiny", backbone_sha256="0" * 64)
    assert loaded.config.text_dim == TEXT_DIM and loaded.config.ppt_queries == 2
    img, text = _image(model), _text(2)
    assert torch.equal(model.decode(img, auto=True, text=text).masks,
                       loaded.decode(_image(loaded), auto=True, text=text).masks)


@pytest.mark.parametrize("cfg, kwargs, needle", [
    (MoTEConfig(), {"auto": True}, "PPT"),
    (MoTEConfig(), {"boxes": BOX, "text": torch.zeros(1, TEXT_DIM)}, "text prompts"),
    (CFG, {"auto": True, "boxes": BOX}, "no points or boxes"),
    (CFG, {"boxes": BOX.expand(2, -1), "text": torch.zeros(3, TEXT_DIM)}, "3 text prompts"),
])
def test_misuse_is_one_line_config_error(cfg, kwargs, needle):
    model = _model(cfg)
    with pytest.raises(ConfigError, match=needle):
        model.decode(_image(model), **kwargs)
    with pytest.raises(ConfigError, match="ppt_queries"):
        MoTEConfig(ppt_queries=-1)
