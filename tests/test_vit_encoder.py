"""SAM ViT image encoder: official key layout, strict loading, shapes, attention equivalences."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segmote.errors import ConfigError
from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.image_encoder_vit import (
    VIT_VARIANTS,
    Attention,
    Block,
    ImageEncoderViT,
    build_vit_encoder,
    get_rel_pos,
)

# Facts about Meta's SAM / MedSAM checkpoints (keys under "image_encoder."), 1024 x 1024 input:
# 3 stem keys (patch_embed.proj.weight/bias, pos_embed) + 14 per block + 6 neck keys.
OFFICIAL_KEY_COUNT = {"vit_b": 177, "vit_l": 345, "vit_h": 457}
OFFICIAL_SHAPES = {
    "vit_b": {
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "pos_embed": (1, 64, 64, 768),
        "blocks.0.attn.rel_pos_h": (27, 64),
        "blocks.0.attn.rel_pos_w": (27, 64),
        "blocks.2.attn.rel_pos_h": (127, 64),
        "blocks.11.attn.rel_pos_w": (127, 64),
        "blocks.0.attn.qkv.weight": (2304, 768),
        "blocks.0.attn.qkv.bias": (2304,),
        "blocks.0.attn.proj.weight": (768, 768),
        "blocks.0.mlp.lin1.weight": (3072, 768),
        "blocks.0.mlp.lin2.weight": (768, 3072),
        "blocks.11.norm2.bias": (768,),
        "neck.0.weight": (256, 768, 1, 1),
        "neck.1.weight": (256,),
        "neck.2.weight": (256, 256, 3, 3),
        "neck.3.bias": (256,),
    },
    "vit_l": {
        "pos_embed": (1, 64, 64, 1024),
        "blocks.0.attn.rel_pos_h": (27, 64),
        "blocks.5.attn.rel_pos_h": (127, 64),
        "blocks.23.attn.rel_pos_w": (127, 64),
        "blocks.23.attn.qkv.weight": (3072, 1024),
        "blocks.23.mlp.lin1.weight": (4096, 1024),
        "neck.0.weight": (256, 1024, 1, 1),
    },
    "vit_h": {
        "patch_embed.proj.weight": (1280, 3, 16, 16),
        "pos_embed": (1, 64, 64, 1280),
        "blocks.0.attn.rel_pos_h": (27, 80),
        "blocks.7.attn.rel_pos_h": (127, 80),
        "blocks.31.attn.rel_pos_w": (127, 80),
        "blocks.30.attn.rel_pos_w": (27, 80),
        "blocks.31.attn.qkv.weight": (3840, 1280),
        "blocks.31.mlp.lin1.weight": (5120, 1280),
        "blocks.31.mlp.lin2.weight": (1280, 5120),
        "neck.0.weight": (256, 1280, 1, 1),
    },
}
OFFICIAL_GLOBAL = {"vit_b": (2, 5, 8, 11), "vit_l": (5, 11, 17, 23), "vit_h": (7, 15, 23, 31)}
OFFICIAL_DIMS = {"vit_b": (768, 12, 12), "vit_l": (1024, 24, 16), "vit_h": (1280, 32, 16)}


def official_layout(variant: str) -> dict[str, tuple[int, ...]]:
    """Every key and shape of an official checkpoint's image encoder, from the facts above."""
    c, depth, heads = OFFICIAL_DIMS[variant]
    hd = c // heads
    layout: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (c, 3, 16, 16),
        "patch_embed.proj.bias": (c,),
        "pos_embed": (1, 64, 64, c),
    }
    for i in range(depth):
        span = 2 * (64 if i in OFFICIAL_GLOBAL[variant] else 14) - 1
        p = f"blocks.{i}."
        layout |= {
            p + "norm1.weight": (c,), p + "norm1.bias": (c,),
            p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
            p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
            p + "attn.rel_pos_h": (span, hd), p + "attn.rel_pos_w": (span, hd),
            p + "norm2.weight": (c,), p + "norm2.bias": (c,),
            p + "mlp.lin1.weight": (4 * c, c), p + "mlp.lin1.bias": (4 * c,),
            p + "mlp.lin2.weight": (c, 4 * c), p + "mlp.lin2.bias": (c,),
        }  # fmt: skip
    layout |= {
        "neck.0.weight": (256, c, 1, 1),
        "neck.1.weight": (256,), "neck.1.bias": (256,),
        "neck.2.weight": (256, 256, 3, 3),
        "neck.3.weight": (256,), "neck.3.bias": (256,),
    }  # fmt: skip
    return layout


def tiny_encoder(**overrides) -> ImageEncoderViT:
    """A small ViT with the same structure; grid 7 with window 3 forces padded windows."""
    cfg = dict(img_size=112, embed_dim=32, depth=4, num_heads=2, window_size=3,
               global_attn_indexes=(1, 3))  # fmt: skip
    cfg.update(overrides)
    torch.manual_seed(0)
    enc = ImageEncoderViT(**cfg).eval()
    with torch.no_grad():  # zero-initialised tables would make the rel-pos paths trivial
        for name, p in enc.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                p.normal_(0.0, 0.5)
    return enc


# ---------------------------------------------------------------- (a) official key layout


def test_variant_table_matches_official_configs() -> None:
    for v, (c, depth, heads) in OFFICIAL_DIMS.items():
        cfg = VIT_VARIANTS[v]
        assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (c, depth, heads)
        assert tuple(cfg["global_attn_indexes"]) == OFFICIAL_GLOBAL[v]


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_state_dict_matches_official_layout(variant: str) -> None:
    with torch.device("meta"):  # full 1024 size, no memory, no forward
        enc = build_vit_encoder(variant)
    got = {k: tuple(t.shape) for k, t in enc.state_dict().items()}
    assert len(got) == OFFICIAL_KEY_COUNT[variant]
    for key, shape in OFFICIAL_SHAPES[variant].items():
        assert got[key] == shape, key
    assert got == official_layout(variant)
    # Everything in the checkpoint is a parameter (no buffers to go stale or be missing).
    assert set(got) == {name for name, _ in enc.named_parameters()}
    assert enc.img_size == 1024 and enc.out_chans == 256
    assert enc.embed_dim == enc.early_dim == OFFICIAL_DIMS[variant][0]


def test_unknown_variant_is_a_user_error() -> None:
    with pytest.raises(ConfigError, match="vit_x"):
        build_vit_encoder("vit_x")


# ---------------------------------------------------------------- (b) strict loading


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole-SAM-style checkpoint (prefixed keys) with random vit_b encoder weights."""
    gen = torch.Generator().manual_seed(0)
    sd = {
        "image_encoder." + k: torch.randn(s, generator=gen) * 0.02
        for k, s in official_layout("vit_b").items()
    }
    sd["mask_decoder.iou_token.weight"] = torch.zeros(1, 256)  # other parts share the file
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    torch.save(sd, path)
    return path


def _encoder_part(path: Path) -> dict[str, torch.Tensor]:
    full = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "image_encoder."
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def vit_b_loaded(vit_b_checkpoint: Path) -> ImageEncoderViT:
    enc = build_vit_encoder("vit_b").eval()
    enc.load_state_dict(_encoder_part(vit_b_checkpoint), strict=True)
    return enc


def test_random_official_checkpoint_loads_strictly(
    vit_b_checkpoint: Path, vit_b_loaded: ImageEncoderViT
) -> None:
    sd = _encoder_part(vit_b_checkpoint)
    loaded = vit_b_loaded.state_dict()
    assert torch.equal(loaded["blocks.2.attn.rel_pos_h"], sd["blocks.2.attn.rel_pos_h"])
    assert torch.equal(loaded["neck.3.bias"], sd["neck.3.bias"])


def test_missing_extra_or_misshaped_key_fails(vit_b_checkpoint: Path) -> None:
    # Meta device: no memory or init cost; keys and shapes are checked before assigning.
    with torch.device("meta"):
        enc = build_vit_encoder("vit_b", img_size=1024)
    sd = _encoder_part(vit_b_checkpoint)
    enc.load_state_dict(sd, strict=True, assign=True)  # the complete dict is accepted
    missing = {k: v for k, v in sd.items() if k != "blocks.3.attn.rel_pos_w"}
    with pytest.raises(RuntimeError, match="Missing key"):
        enc.load_state_dict(missing, strict=True, assign=True)
    extra = dict(sd, **{"blocks.12.norm1.weight": torch.ones(768)})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        enc.load_state_dict(extra, strict=True, assign=True)
    # A global-size table on a windowed block (weights of another global-block layout) must fail.
    wrong = dict(sd, **{"blocks.0.attn.rel_pos_h": torch.zeros(127, 64)})
    with pytest.raises(RuntimeError, match="size mismatch"):
        enc.load_state_dict(wrong, strict=True, assign=True)


# ---------------------------------------------------------------- (c) forward shapes


def test_forward_shapes_and_early_features() -> None:
    enc = tiny_encoder()
    seen: dict[int, torch.Tensor] = {}
    for i, blk in enumerate(enc.blocks):
        blk.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
    out = enc(torch.randn(2, 3, 112, 112))
    assert isinstance(out, EncoderOutput)
    assert out.image_embedding.shape == (2, 256, 7, 7)
    assert out.early_features.shape == (2, enc.early_dim, 7, 7) == (2, 32, 7, 7)
    # Default: the first global block (index 1 here), channels-last -> channels-first.
    assert enc.early_block == 1
    assert torch.equal(out.early_features, seen[1].permute(0, 3, 1, 2))

    enc0 = tiny_encoder(early_block=0)
    first: list[torch.Tensor] = []
    enc0.blocks[0].register_forward_hook(lambda m, a, out: first.append(out))
    early = enc0(torch.randn(1, 3, 112, 112)).early_features
    assert torch.equal(early, first[0].permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="early_block"):
        tiny_encoder(early_block=4)


def test_vit_b_runs_below_its_trained_size(vit_b_loaded: ImageEncoderViT) -> None:
    # 1024-sized tables, 128 input: pos_embed and the 127-row global tables are interpolated.
    with torch.no_grad():
        out = vit_b_loaded(torch.randn(1, 3, 128, 128))
    assert out.image_embedding.shape == (1, 256, 8, 8)
    assert out.early_features.shape == (1, 768, 8, 8)
    assert torch.isfinite(out.image_embedding).all()


def test_vit_b_at_reduced_img_size() -> None:
    enc = build_vit_encoder("vit_b", img_size=128)
    assert enc.pos_embed.shape == (1, 8, 8, 768)
    assert enc.blocks[2].attn.rel_pos_h.shape == (15, 64)  # global: 2 * 8 - 1
    assert enc.blocks[0].attn.rel_pos_h.shape == (27, 64)  # window stays 14 (8 pads to 14)
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 128, 128))
    assert out.image_embedding.shape == (1, 256, 8, 8)
    with pytest.raises(ValueError, match="patch_size"):
        enc(torch.randn(1, 3, 120, 128))


# ---------------------------------------------------------------- (d) SDPA == explicit


@pytest.mark.parametrize(
    ("table_hw", "input_hw"), [((5, 6), (5, 6)), ((4, 4), (7, 5)), ((8, 8), (3, 3))]
)
def test_sdpa_matches_explicit_attention(
    table_hw: tuple[int, int], input_hw: tuple[int, int]
) -> None:
    torch.manual_seed(1)
    attn = Attention(48, num_heads=3, use_rel_pos=True, input_size=table_hw)
    with torch.no_grad():
        attn.rel_pos_h.normal_(0.0, 0.5)
        attn.rel_pos_w.normal_(0.0, 0.5)
    x = torch.randn(2, *input_hw, 48)
    attn.use_sdpa = True
    fast = attn(x)
    attn.use_sdpa = False
    slow = attn(x)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_whole_encoder_sdpa_matches_explicit() -> None:
    enc = tiny_encoder()
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        fast = enc(x)
        for blk in enc.blocks:
            blk.attn.use_sdpa = False
        slow = enc(x)
    torch.testing.assert_close(fast.image_embedding, slow.image_embedding, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.early_features, slow.early_features, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- (e) padded windows


def test_get_rel_pos_offsets_by_hand() -> None:
    table = torch.arange(7.0)[:, None]  # row r holds value r
    # Equal sizes: row index = i - j + (size - 1).
    assert get_rel_pos(4, 4, table)[..., 0].tolist() == [
        [3, 2, 1, 0], [4, 3, 2, 1], [5, 4, 3, 2], [6, 5, 4, 3]]  # fmt: skip
    # 2 queries vs 4 keys: queries sit at 0 and 2 on the key grid.
    assert get_rel_pos(2, 4, table)[..., 0].tolist() == [[3, 2, 1, 0], [5, 4, 3, 2]]


def reference_windowed_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """SAM's windowed block written with loops: pad with zeros after norm1, attend inside each
    window with bias q.R_h[dy] + q.R_w[dx], crop, residual, MLP. x: (B, H, W, C)."""
    ws, attn = block.window_size, block.attn
    b, h, w, c = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    normed = torch.zeros(b, hp, wp, c)
    normed[:, :h, :w] = F.layer_norm(x, (c,), block.norm1.weight, block.norm1.bias, 1e-6)
    mixed = torch.zeros(b, hp, wp, c)
    cells = [(y, xx) for y in range(ws) for xx in range(ws)]
    for n in range(b):
        for wy in range(0, hp, ws):
            for wx in range(0, wp, ws):
                tokens = normed[n, wy:wy + ws, wx:wx + ws].reshape(ws * ws, c)
                q, k, v = (tokens @ attn.qkv.weight.T + attn.qkv.bias).split(c, dim=-1)
                outs = []
                for hh in range(heads):
                    qh, kh, vh = (t[:, hh * hd:(hh + 1) * hd] for t in (q, k, v))
                    logits = torch.empty(ws * ws, ws * ws)
                    for i, (qy, qx) in enumerate(cells):
                        for j, (ky, kx) in enumerate(cells):
                            logits[i, j] = (
                                qh[i] @ kh[j] * hd**-0.5
                                + qh[i] @ attn.rel_pos_h[qy - ky + ws - 1]
                                + qh[i] @ attn.rel_pos_w[qx - kx + ws - 1]
                            )
                    outs.append(logits.softmax(-1) @ vh)
                merged = torch.cat(outs, dim=-1) @ attn.proj.weight.T + attn.proj.bias
                mixed[n, wy:wy + ws, wx:wx + ws] = merged.reshape(ws, ws, c)
    y = x + mixed[:, :h, :w]
    y2 = F.layer_norm(y, (c,), block.norm2.weight, block.norm2.bias, 1e-6)
    return y + block.mlp.lin2(F.gelu(block.mlp.lin1(y2)))


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_windowed_block_with_padding_matches_loops(use_sdpa: bool) -> None:
    torch.manual_seed(2)
    block = Block(16, num_heads=2, use_rel_pos=True, window_size=3, input_size=(7, 5)).eval()
    with torch.no_grad():
        block.attn.rel_pos_h.normal_(0.0, 0.5)
        block.attn.rel_pos_w.normal_(0.0, 0.5)
        block.attn.qkv.bias.normal_(0.0, 0.5)  # padded tokens then carry non-zero keys/values
    block.attn.use_sdpa = use_sdpa
    x = torch.randn(2, 7, 5, 16)  # 7 x 5 pads to 9 x 6: three and two windows per axis
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference_windowed_block(block, x), atol=1e-5, rtol=0)
