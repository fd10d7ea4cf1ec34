"""SegMoTE model: gradients, routing modes, batching, and the zero-shot property on real data.

Tiny random backbones (D = 32) for the mechanics; the real LiteMedSAM on the bundled nuclei and
lung-CT samples for the init-equivalence property.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segmote.errors import ConfigError, InputError
from segmote.modeling.sam import Sam
from segmote.modeling.segmote import ImageFeatures, MoTEConfig, SegMoTE
from segmote.routing import expert_usage, format_routing_table, routing_table, save_attention_png
from segmote.summary import parameter_summary
from tiny_models import one_thread, tiny_sam  # noqa: F401 (one_thread: autouse fixture)


def tiny_segmote(config: MoTEConfig | None = None, **kw) -> SegMoTE:
    base = tiny_sam(**kw)
    torch.manual_seed(1)
    return SegMoTE(base, config or MoTEConfig()).eval()


def _prompts(b: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, 2, generator=g) * 40
    boxes = torch.cat([xy, xy + 8 + torch.rand(b, 2, generator=g) * 16], 1)
    points = (torch.rand(b, 2, 2, generator=g) * 64, torch.tensor([[1, 0]] * b))
    return {"boxes": boxes, "points": points}


def _perturb(model: SegMoTE, scale: float = 0.05) -> None:
    """Random values in every adapter tensor (incl. the zero-initialised layers)."""
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(torch.randn_like(p) * scale)


# --- interface and shapes ---------------------------------------------------------------------
def test_outputs_and_shapes() -> None:
    model = tiny_segmote(MoTEConfig(num_expert_tokens=3, num_experts=5))
    enc = model.encode(torch.rand(1, 3, 64, 64))
    feats = model.prepare_image(enc)
    assert isinstance(feats, ImageFeatures) and feats.head_features.shape == (1, 4, 16, 16)
    out = model.decode(feats, **_prompts(2))
    assert out.masks.shape == (2, 1, 16, 16) and out.iou_pred.shape == (2, 1)
    assert out.base_masks.shape == (2, 1, 16, 16)
    assert out.expert_masks.shape == (2, 3, 16, 16) and out.expert_iou.shape == (2, 3)
    assert out.router_logits.shape == (2, 2, 3, 5)  # blocks, B, T, E
    assert out.expert_index.shape == (2, 2, 3) and out.selected_token.shape == (2,)
    assert out.balance_loss.ndim == 0 and out.attention is None
    assert model.embed_dim == 32 and model.img_size == 64  # width from the backbone
    # the selected token is the one with the top last-block routing logit
    assert torch.equal(out.selected_token, out.router_logits[-1].amax(-1).argmax(-1))
    rows = torch.arange(2)
    assert torch.equal(out.masks[:, 0], out.expert_masks[rows, out.selected_token])
    # an EncoderOutput is prepared on the fly
    assert torch.equal(model.decode(enc, **_prompts(2)).masks, out.masks)


def test_multimask_and_base_outputs_are_sams() -> None:
    model = tiny_segmote()
    _perturb(model)  # experts now differ from the base
    enc = model.encode(torch.rand(1, 3, 64, 64))
    feats = model.prepare_image(enc)
    p = _prompts(3)
    for multimask in (False, True):
        ref = model.base.decode(enc, multimask_output=multimask, **p)
        out = model.decode(feats, multimask_output=multimask, output="base", **p)
        # SAM's rows run the base decoder's exact operations: bit-identical, not just close
        assert torch.equal(out.masks, ref.masks) and torch.equal(out.iou_pred, ref.iou_pred)
    multi = model.decode(feats, multimask_output=True, **p)
    assert multi.masks.shape == (3, 3, 16, 16)
    with pytest.raises(ConfigError, match="output"):
        model.decode(feats, output="hq", **p)


def test_attention_maps() -> None:
    model = tiny_segmote()
    feats = model.prepare_image(model.encode(torch.rand(1, 3, 64, 64)))
    p = _prompts(2)
    out = model.decode(feats, return_attention=True, **p)
    assert out.attention.shape == (2, 4, 4, 4)
    assert torch.allclose(out.attention.sum((-1, -2)), torch.ones(2, 4), atol=1e-5)
    assert torch.equal(out.masks, model.decode(feats, **p).masks)  # the flag changes nothing


def test_head_equals_residual_over_the_explicit_fused_map() -> None:
    """The folded closing 1x1 conv gives the same masks as h . fused_map, per token."""
    model = tiny_segmote()
    _perturb(model, 0.2)
    head = model.adapter.head
    torch.manual_seed(3)
    tokens, upscaled = torch.randn(2, 4, 32), torch.randn(2, 4, 16, 16)
    cached, base = torch.randn(1, 4, 16, 16), torch.randn(2, 1, 16, 16)
    masks, iou = head(tokens, upscaled, cached, base, torch.zeros(2, 1))
    fused = head.fused_map(upscaled, cached)  # B, C, 16, 16
    hyper = head.hypernets(tokens)
    for t in range(4):
        w1, w2, w3 = (w[t] for w in head.hypernets.weights)
        b1, b2, b3 = (b[t] for b in head.hypernets.biases)
        h_t = torch.relu(torch.relu(tokens[:, t] @ w1 + b1) @ w2 + b2) @ w3 + b3  # MLP t
        assert torch.allclose(hyper[:, t], h_t, atol=1e-5)
        ref = base[:, 0] + torch.einsum("bc,bchw->bhw", h_t, fused)
        assert torch.allclose(masks[:, t], ref, atol=1e-4)
    assert iou.shape == (2, 4)


# --- frozen backbone, trainable adapter, gradients -------------------------------------------
def test_only_adapter_is_trainable_and_base_stays_in_eval() -> None:
    model = tiny_segmote()
    adapter = {id(p) for p in model.adapter.parameters()}
    for name, p in model.named_parameters():
        assert p.requires_grad == (id(p) in adapter), name
    total = parameter_summary(model)[-1]
    assert total.trainable == sum(p.numel() for p in model.adapter.parameters())
    model.train()
    assert model.adapter.training and not model.base.training
    assert not model.base.image_encoder.bn.training


def _train_loss(model: SegMoTE, feats: ImageFeatures, prompts: dict) -> torch.Tensor:
    out = model.decode(feats, **prompts)
    target = (torch.rand_like(out.expert_masks) > 0.5).float()
    mask_loss = nn.functional.binary_cross_entropy_with_logits(out.expert_masks, target)
    iou_loss = (out.expert_iou - 0.5).pow(2).mean()
    return mask_loss + iou_loss + model.config.balance_loss_weight * out.balance_loss


def test_every_adapter_parameter_learns_and_no_backbone_parameter_does() -> None:
    """The zero-initialised last layers pass no gradient to the layers before them at step 0, so
    one optimiser step is taken first; from then on every adapter parameter gets a gradient."""
    torch.manual_seed(0)
    model = tiny_segmote().train()
    with torch.no_grad():
        enc = model.encode(torch.rand(1, 3, 64, 64))
    feats = model.prepare_image(enc)
    prompts = _prompts(8)
    opt = torch.optim.Adam(model.adapter.parameters(), lr=1e-2)
    _train_loss(model, feats, prompts).backward()
    zero_layer = model.adapter.head.hypernets.weights[-1]
    assert zero_layer.grad.abs().sum() > 0  # the zero layer itself learns at once
    assert model.adapter.head.hypernets.weights[0].grad.abs().sum() == 0  # ... the rest next step
    opt.step()
    opt.zero_grad()

    before = {n: p.detach().clone() for n, p in model.adapter.named_parameters()
              if "router" in n}
    for _ in range(3):  # accumulate: every expert must have been routed at least once
        feats = model.prepare_image(enc)
        _train_loss(model, feats, prompts).backward()
    for name, p in model.adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for name, p in model.base.named_parameters():
        assert p.grad is None, name
    opt.step()
    for name, p in model.adapter.named_parameters():
        if "router" in name:
            assert not torch.equal(p, before[name]), f"{name} did not change"


def test_eval_routing_deterministic_train_routing_noisy() -> None:
    model = tiny_segmote()
    feats = model.prepare_image(model.encode(torch.rand(1, 3, 64, 64)))
    p = _prompts(4)
    a, b = model.decode(feats, **p), model.decode(feats, **p)
    assert torch.equal(a.router_logits, b.router_logits)
    assert torch.equal(a.expert_index, b.expert_index) and torch.equal(a.masks, b.masks)
    model.train()
    c, d = model.decode(feats, **p), model.decode(feats, **p)
    assert not torch.allclose(c.router_logits, d.router_logits)
    model.eval()
    assert torch.equal(model.decode(feats, **p).router_logits, a.router_logits)


# --- batching ---------------------------------------------------------------------------------
def test_one_image_broadcast_over_prompts_equals_separate_calls() -> None:
    model = tiny_segmote()
    _perturb(model)
    feats = model.prepare_image(model.encode(torch.rand(1, 3, 64, 64)))
    p = _prompts(4)
    out = model.decode(feats, **p)
    for i in range(4):
        one = model.decode(feats, boxes=p["boxes"][i:i + 1],
                           points=(p["points"][0][i:i + 1], p["points"][1][i:i + 1]))
        assert torch.allclose(out.masks[i], one.masks[0], atol=1e-5)
        assert torch.allclose(out.expert_masks[i], one.expert_masks[0], atol=1e-5)
        assert torch.allclose(out.router_logits[:, i], one.router_logits[:, 0], atol=1e-5)
        assert out.selected_token[i] == one.selected_token[0]


def test_per_sample_images_batch() -> None:
    model = tiny_segmote()
    _perturb(model)
    images = torch.rand(3, 3, 64, 64)
    feats = model.prepare_image(model.encode(images))
    assert feats.head_features.shape[0] == 3
    p = _prompts(3, seed=1)
    out = model.decode(feats, **p)
    for i in range(3):
        single = model.prepare_image(model.encode(images[i:i + 1]))
        one = model.decode(single, boxes=p["boxes"][i:i + 1],
                           points=(p["points"][0][i:i + 1], p["points"][1][i:i + 1]))
        assert torch.allclose(out.masks[i], one.masks[0], atol=1e-4)
        assert torch.allclose(out.expert_masks[i], one.expert_masks[0], atol=1e-4)


def test_early_features_on_another_grid_and_other_width() -> None:
    model = tiny_segmote(MoTEConfig(head_dim=12), dim=48, early_grid=8)
    feats = model.prepare_image(model.encode(torch.rand(2, 3, 64, 64)))
    assert feats.head_features.shape == (2, 12, 16, 16)  # head width != SAM's 48 / 8
    out = model.decode(feats, **_prompts(2))
    assert out.expert_masks.shape == (2, 4, 16, 16)
    assert torch.equal(out.masks, out.base_masks)  # fresh adapter: the base mask
    _perturb(model)
    assert not torch.equal(model.decode(feats, **_prompts(2)).masks, out.masks)


# --- routing visibility -----------------------------------------------------------------------
def test_routing_table_usage_and_attention_png(tmp_path) -> None:
    model = tiny_segmote()
    feats = model.prepare_image(model.encode(torch.rand(1, 3, 64, 64)))
    out = model.decode(feats, return_attention=True, **_prompts(2))
    rows = routing_table(out)
    assert len(rows) == 2 and rows[0]["selected_token"] == int(out.selected_token[0])
    assert len(rows[0]["experts"]) == 4 and len(rows[0]["router_probs"][0]) == 4
    assert sum(rows[1]["router_probs"][2]) == pytest.approx(1.0, abs=1e-3)
    assert "PROMPT" in format_routing_table(rows)
    usage = expert_usage(out)
    assert usage.shape == (2, 4, 4) and int(usage.sum()) == 2 * 2 * 4
    image = np.random.default_rng(0).uniform(0, 255, (50, 70)).astype(np.float32)
    path = save_attention_png(image, out.attention[0], tmp_path / "att" / "maps.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    assert [p.name for p in path.parent.iterdir()] == ["maps.png"]  # no temp file left


# --- zero-shot preserved: real LiteMedSAM, real images, real prompts ---------------------------
def _real_cases() -> list[tuple[str, np.ndarray, object, np.ndarray]]:
    import nibabel as nib

    from segmote.samples import bundled_sample_path, bundled_samples
    from segmote.intensity import IntensityRange

    info = bundled_samples()
    nuclei = np.asarray(Image.open(bundled_sample_path("nuclei")))
    vol = np.asarray(nib.load(bundled_sample_path("lung2_ct_crop")).dataobj)
    x0, y0, z0, x1, y1, z1 = info["lung2_ct_crop"]["box"]
    ct = vol[:, :, (z0 + z1) // 2].T
    return [("nuclei", nuclei, IntensityRange(), np.array([info["nuclei"]["box"]])),
            ("lung2_ct_crop", ct, IntensityRange(-1000, 400), np.array([[x0, y0, x1, y1]]))]


@pytest.fixture(scope="module")
def real_encoded(base_model: Sam) -> dict:
    """name -> (image, geometry, box (1, 4) in image pixels, EncoderOutput), encoded once."""
    from segmote.transforms import ResizeGeometry, to_input_tensor

    out = {}
    for name, image, clip, box in _real_cases():
        geo = ResizeGeometry.for_shape(image.shape[:2], base_model.img_size)
        with torch.inference_mode():
            enc = base_model.encode(to_input_tensor(image, geo, clip)[None])
        out[name] = (image, geo, box, enc)
    return out


def test_fresh_adapter_reproduces_litemedsam_on_real_data(base_model: Sam,
                                                          real_encoded: dict) -> None:
    litemedsam = base_model  # conftest: the real, sha256-checked LiteMedSAM
    torch.manual_seed(0)
    model = SegMoTE(litemedsam).eval()
    n_adapter = sum(p.numel() for p in model.adapter.parameters())
    assert n_adapter < 5_000_000
    for name, (image, geo, box, enc) in real_encoded.items():
        boxes = torch.as_tensor(geo.boxes_to_input(box))
        boxes = torch.cat([boxes, boxes + torch.tensor([[-4.0, -4.0, 4.0, 4.0]])])  # 2 prompts
        centre = geo.coords_to_input((box[:, :2] + box[:, 2:]) / 2)[:, None]
        points = (torch.as_tensor(centre).repeat(2, 1, 1), torch.ones(2, 1))
        with torch.inference_mode():
            feats = model.prepare_image(enc)
            prior = litemedsam.decode(enc, boxes=boxes[:1]).masks
            prompt_sets = {"box": {"boxes": boxes}, "point": {"points": points},
                           "box+point": {"boxes": boxes, "points": points},
                           "box+mask": {"boxes": boxes[:1], "masks": prior}}
            for kind, prompts in prompt_sets.items():
                ref = litemedsam.decode(enc, **prompts)
                out = model.decode(feats, **prompts)
                diff = (out.masks - ref.masks).abs().max().item()
                assert diff < 1e-4, f"{name} {kind}: max |diff| {diff:.2e}"
                assert (out.iou_pred - ref.iou_pred).abs().max().item() < 1e-4, (name, kind)
                # stronger than the contract: SAM's rows are computed bit-identically
                assert torch.equal(out.base_masks, ref.masks), (name, kind)
                assert torch.equal(out.expert_masks, out.base_masks.expand_as(out.expert_masks))
            assert (ref.masks > 0).any(), f"{name}: the base model found nothing"


def test_segmenter_with_a_fresh_adapter_matches_the_base(base_model: Sam,
                                                         real_encoded: dict) -> None:
    """The predictor drives SegMoTE like Sam: same mask and score, routing in the extras."""
    from segmote.predict.segmenter import Segmenter

    image, _, box, enc = real_encoded["nuclei"]
    base_seg = Segmenter(base_model)
    base_seg.set_features(base_model.prepare_image(enc), image.shape[:2])
    torch.manual_seed(0)
    model = SegMoTE(base_model)
    seg = Segmenter(model)
    with torch.inference_mode():
        seg.set_features(model.prepare_image(enc), image.shape[:2])
    ref, got = base_seg.predict(box=box[0]), seg.predict(box=box[0])
    assert np.array_equal(ref.mask, got.mask) and ref.score == got.score and ref.mask.any()
    assert np.array_equal(ref.logits, got.logits)
    assert got.extras["router_logits"].shape == (2, 1, 4, 4)
    assert got.extras["selected_token"].shape == (1,)
    rows = routing_table(got.extras)  # routing straight from the predictor's extras
    assert rows[0]["selected_token"] == int(got.extras["selected_token"][0])
    with pytest.raises(InputError, match="router_logits"):
        routing_table({"router_logits": None})
    refined = seg.predict(box=box[0], mask_input=got.lowres_logits)  # a refinement round
    assert refined.mask.shape == image.shape[:2]
