"""SegMoTE: a frozen SAM-style model plus expert tokens, MoTE routing and an expert mask head.

Written from the SegMoTE paper (docs/method.md). The base `Sam` is passed in and frozen; the
learnable parts live in one `MoTEAdapter` module, so `model.adapter.state_dict()` is the adapter checkpoint.

Decoder token sequence: SAM's `[iou | mask x4 | sparse prompts]` plus the T expert tokens. The
paper writes `[iou | mask | expert | sparse]`; attention has no notion of order (each token carries
its own positional term, its initial embedding), so keeping SAM's tokens as one group is the same
model.
The expert tokens are wired in read-only:

- self-attention: expert tokens attend to every token; SAM's tokens do not see expert tokens;
- token-to-image: every token reads the image;
- token MLP: SAM's tokens take the frozen MLP, expert tokens take MoTE (then the frozen post-norm);
- image-to-token: the image tokens attend to SAM's tokens only.

SAM's rows are computed with exactly the operations and shapes of the base decoder (the keys and
values of each token-to-image attention are projected once and shared with the expert queries), so
`base_masks` are bit-identical to `Sam.decode` and a fresh adapter reproduces the base model.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segmote.errors import ConfigError
from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.mask_decoder import expand_image
from segmote.modeling.mote import MoTE, RouterOutput, load_balance_loss
from segmote.modeling.mote_adapter import MoTEAdapter, MoTEConfig
from segmote.modeling.presence import image_summary
from segmote.modeling.sam import Sam
from segmote.modeling.transformer import Attention, TwoWayAttentionBlock

Output = Literal["expert", "base"]


class ImageFeatures(NamedTuple):
    """Per-image cache for SegMoTE (`prepare_image`), reused by every prompt.

    image_embedding: (B, D, h, w); head_features: (B, C, 4h, 4w) the prompt-independent part of
    the expert head's fused map (upsampled image embedding + upsampled early features).
    """

    image_embedding: Tensor
    head_features: Tensor


class SegMoTEOutput(NamedTuple):
    """What `SegMoTE.decode` returns (auxiliary losses here, never on the module).

    masks: (B, M, 4h, 4w) logits: the selected expert mask (M = 1), SAM's mask for
        output="base", or SAM's three multimask outputs with multimask_output=True (M = 3).
    iou_pred: (B, M). base_masks: (B, 1, 4h, 4w) SAM's single-mask logits.
    expert_masks: (B, T, 4h, 4w); expert_iou: (B, T).
    router_logits: (num_blocks, B, T, E) the logits routing used (noisy only in training).
    expert_index: (num_blocks, B, T) chosen (top-1) expert per token per block.
    selected_token: (B,) expert token with the highest last-block routing logit.
    balance_loss: scalar, summed over blocks (unweighted).
    attention: (B, T, h, w) expert tokens' token-to-image attention in the last two-way block
        (head-averaged), or None.
    base_iou: (B, 1) SAM's predicted IoU of base_masks.
    """

    masks: Tensor
    iou_pred: Tensor
    base_masks: Tensor
    expert_masks: Tensor
    expert_iou: Tensor
    router_logits: Tensor
    expert_index: Tensor
    selected_token: Tensor
    balance_loss: Tensor
    attention: Tensor | None = None
    base_iou: Tensor | None = None


class _Decoded(NamedTuple):
    sam_tokens: Tensor  # (B, N_sam, D) after the final attention
    expert_tokens: Tensor  # (B, T, D) after the final attention
    keys: Tensor  # (B, hw, D) image tokens
    router_logits: Tensor  # blocks, B, T, E
    expert_index: Tensor  # blocks, B, T
    balance_loss: Tensor
    attention: Tensor | None  # B, T, hw


def _heads(x: Tensor, num_heads: int) -> Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _project_kv(attn: Attention, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Keys and values of `attn` projected and split into heads once, for several query sets."""
    return _heads(attn.k_proj(k), attn.num_heads), _heads(attn.v_proj(v), attn.num_heads)


def _attend(attn: Attention, q: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
    """`Attention.forward` with keys / values from `_project_kv`: the same operations in the same
    order, so SAM's rows come out bit-identical to the base decoder's."""
    q = _heads(attn.q_proj(q), attn.num_heads)
    out = F.scaled_dot_product_attention(q, *kv)
    b, h, n, c = out.shape
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, h * c))


def _attention_map(attn: Attention, q: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
    """Head-averaged attention weights (B, Nq, Nk) of queries q over the projected keys."""
    q = _heads(attn.q_proj(q), attn.num_heads)
    return (q @ kv[0].transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1).mean(1)


class SegMoTE(nn.Module):
    """Frozen `Sam` + trainable `MoTEAdapter`; the same interface as `Sam`.

    Args:
        base: the base model; its parameters are frozen here and it always stays in eval mode
            (TinyViT has BatchNorm: batch statistics of a training batch must not leak in).
        config: MoTE hyper-parameters.
        backbone, backbone_sha256: identity of the base weights, written into saved adapters and
            checked when loading one (set by `segmote.adapter.attach_adapter`).
    """

    def __init__(self, base: Sam, config: MoTEConfig | None = None, *,
                 backbone: str | None = None, backbone_sha256: str | None = None) -> None:
        super().__init__()
        self.base = base.requires_grad_(False).eval()
        self.config = config or MoTEConfig()
        self.backbone, self.backbone_sha256 = backbone, backbone_sha256
        # the typed header of a loaded adapter file (`segmote.adapter.card.AdapterCard`)
        self.card: Any = None
        self.adapter = MoTEAdapter(base.embed_dim, base.image_encoder.early_dim,
                                   len(base.mask_decoder.transformer.layers), self.config)

    # --- the Sam interface ------------------------------------------------------------------
    @property
    def img_size(self) -> int:
        return self.base.img_size

    @property
    def embed_dim(self) -> int:
        return self.base.embed_dim

    @property
    def mask_input_size(self) -> int:
        return self.base.mask_input_size

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def image_encoder(self) -> nn.Module:
        return self.base.image_encoder

    @property
    def prompt_encoder(self) -> nn.Module:
        return self.base.prompt_encoder

    @property
    def mask_decoder(self) -> nn.Module:
        return self.base.mask_decoder

    def train(self, mode: bool = True) -> SegMoTE:
        super().train(mode)
        self.base.eval()
        return self

    def encode(self, images: Tensor) -> EncoderOutput:
        """images: (B, 3, S, S) in [0, 1], zero-padded -> EncoderOutput (the frozen encoder)."""
        return self.base.encode(images)

    def prepare_image(self, encoded: EncoderOutput) -> ImageFeatures:
        """Per-image work shared by all prompts: the embedding and the head's image features."""
        feats = self.adapter.head.image_features(encoded.image_embedding, encoded.early_features)
        return ImageFeatures(encoded.image_embedding, feats)

    def decode(self, image: ImageFeatures | EncoderOutput,
               points: tuple[Tensor, Tensor] | None = None, boxes: Tensor | None = None,
               masks: Tensor | None = None, multimask_output: bool = False,
               output: Output = "expert", return_attention: bool = False,
               text: Tensor | None = None, auto: bool = False) -> SegMoTEOutput:
        """Decode B prompts against one image (batch 1, broadcast) or B images (batch B).

        image: `prepare_image` output (an EncoderOutput is prepared on the fly).
        points, boxes, masks: as `Sam.decode` (padded-input pixels; masks (B, 1, 4h, 4w)).
        multimask_output: return SAM's three multimask outputs in `masks` (the expert head is
            single-mask; the expert masks stay in `expert_masks`).
        output: "expert" (paper: the most confident expert token) or "base" (SAM's mask).
        return_attention: also return the expert tokens' attention maps.
        text: (B or 1, text_dim) unit-norm text embeddings: one extra sparse token, and with
            `auto` a bias on the expert masks (needs an adapter with text_dim).
        auto: PPT tokens replace the manual sparse prompts (points / boxes must be None; a mask
            prompt and `text` act as foreground hints): prompt-free segmentation, of the class
            named by `text` when given. Needs an adapter with ppt_queries.
        """
        image = self._check_request(image, output, text, auto, points is not None or
                                    boxes is not None)
        dec = self.base.mask_decoder
        n = text.shape[0] if text is not None else None
        if masks is not None:
            n = max(n or 1, masks.shape[0])
        sparse, dense = self.base.prompt_encoder(points, boxes, masks,
                                                 batch_size=n if auto else None)
        b = sparse.shape[0]
        if text is not None and text.shape[0] not in (1, b):
            raise ConfigError(f"{text.shape[0]} text prompts for {b} prompts")
        text = None if text is None else text.to(sparse.dtype).expand(b, -1)
        text_bias = None
        pe_module = self.base.prompt_encoder
        if auto:
            prior = dense if masks is not None else None
            sparse = self.adapter.ppt(image.image_embedding, pe_module.get_dense_pe(),
                                      self._ppt_anchor(sparse), b, text, prior)
        if text is not None:
            token, text_bias = self.adapter.text(text, pe_module.not_a_point_embed.weight)
            sparse = torch.cat([sparse, token], 1)
        sam_tokens = torch.cat([dec.output_tokens().unsqueeze(0).expand(b, -1, -1), sparse], 1)
        expert_tokens = self.adapter.expert_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        src = expand_image(image.image_embedding, b) + dense
        pe = expand_image(self.base.prompt_encoder.get_dense_pe(), b)
        run = self._transformer(src, pe, sam_tokens, expert_tokens, return_attention)

        all_masks, upscaled = dec.masks_from_tokens(run.sam_tokens[:, 1:1 + dec.num_mask_tokens],
                                                    run.keys, tuple(src.shape[-2:]))
        base_iou = dec.iou_prediction_head(run.sam_tokens[:, 0])
        expert_masks, expert_iou = self.adapter.head(
            run.expert_tokens, upscaled, image.head_features, all_masks[:, :1], base_iou[:, :1])
        if text_bias is not None and auto:
            # the mask bias serves prompt-free decoding only: beside a box or points it pulled
            # the masks toward what text alone learns (small / empty for the many classes PPT
            # has not learned yet) and cost box + text 0.01-0.04 Dice on held-out data
            offset = text_bias[:, -1].view(b, 1, 1, 1)
            expert_masks = expert_masks + offset + self.adapter.head.text_bias(
                text_bias[:, :-1], image.head_features)
        # paper: output the expert token with the highest routing confidence (top logit)
        selected = run.router_logits[-1].amax(-1).argmax(-1)
        if multimask_output:
            out_masks, out_iou = all_masks[:, 1:], base_iou[:, 1:]
        elif output == "base":
            out_masks, out_iou = all_masks[:, :1], base_iou[:, :1]
        else:
            rows = torch.arange(b, device=selected.device)
            out_masks, out_iou = (expert_masks[rows, selected].unsqueeze(1),
                                  expert_iou[rows, selected].unsqueeze(1))
        attention = None
        if run.attention is not None:
            attention = run.attention.view(b, -1, *src.shape[-2:])
        return SegMoTEOutput(out_masks, out_iou, all_masks[:, :1], expert_masks, expert_iou,
                             run.router_logits, run.expert_index, selected, run.balance_loss,
                             attention, base_iou[:, :1])

    def _check_request(self, image: ImageFeatures | EncoderOutput, output: Output,
                       text: Tensor | None, auto: bool, spatial: bool) -> ImageFeatures:
        """The image features of a `decode` call whose options this adapter can serve."""
        if output not in ("expert", "base"):
            raise ConfigError(f"output must be 'expert' or 'base', got {output!r}")
        if text is not None and self.adapter.text is None:
            raise ConfigError("this adapter was not trained with text prompts")
        if auto and self.adapter.ppt is None:
            raise ConfigError("this adapter has no PPT module: prompt-free segmentation "
                              "needs an adapter trained with ppt_queries > 0")
        if auto and spatial:
            raise ConfigError("auto (prompt-free) decoding takes no points or boxes")
        if isinstance(image, EncoderOutput):
            return self.prepare_image(image)
        if not isinstance(image, ImageFeatures):
            raise TypeError("decode() needs prepare_image(...) output or an EncoderOutput")
        return image

    def presence_logits(self, image: ImageFeatures | EncoderOutput, text: Tensor) -> Tensor:
        """(B,) logits that each class named by `text` (B, text_dim) is in the image (batch 1);
        needs an adapter with a presence head."""
        if self.adapter.presence is None:
            raise ConfigError("this adapter has no presence head")
        return self.adapter.presence(image_summary(image.image_embedding), text)

    def _ppt_anchor(self, like: Tensor) -> Tensor:
        """(1, Q, D) the PPT anchor: the prompt encoder's tokens of a box around the whole
        padded frame, then padding tokens (Q > 2); `like` gives dtype and device."""
        q = self.adapter.ppt.num_queries
        frame = torch.tensor([[0.0, 0.0, self.img_size - 1.0, self.img_size - 1.0]],
                             device=like.device)
        box = self.base.prompt_encoder(None, frame, None)[0].to(like.dtype)  # (1, 2, D)
        pad = self.base.prompt_encoder.not_a_point_embed.weight.to(like.dtype)
        return torch.cat([box, pad.unsqueeze(0).expand(1, max(q - 2, 0), -1)], 1)[:, :q]

    def _transformer(self, src: Tensor, pe: Tensor, sam: Tensor, experts: Tensor,
                     return_attention: bool) -> _Decoded:
        """SAM's two-way transformer (`TwoWayTransformer.forward`) on SAM's tokens, with the
        expert tokens beside them, read-only (module doc).

        src, pe: (B, D, h, w); sam: (B, N_sam, D) SAM's tokens; experts: (B, T, D).
        """
        transformer = self.base.mask_decoder.transformer
        keys, key_pe = src.flatten(2).transpose(1, 2), pe.flatten(2).transpose(1, 2)
        sam_pe, expert_pe = sam, experts  # each token's positional term: its initial value
        logits, gates, index, attention = [], [], [], None
        for i, (layer, mote) in enumerate(zip(transformer.layers, self.adapter.mote)):
            want = return_attention and i == len(transformer.layers) - 1
            sam, experts, keys, route, attention = self._block(
                layer, mote, sam, experts, sam_pe, expert_pe, keys, key_pe, want)
            logits.append(route.logits)
            gates.append(route.gates.flatten(0, 1))
            index.append(route.expert_index)
        final = transformer.final_attn_token_to_image
        kv = _project_kv(final, keys + key_pe, keys)
        sam = transformer.norm_final_attn(sam + _attend(final, sam + sam_pe, kv))
        experts = transformer.norm_final_attn(experts + _attend(final, experts + expert_pe, kv))
        index = torch.stack(index)  # blocks, B, T, k
        balance = load_balance_loss(torch.stack(gates), index.flatten(1, 2),
                                    self.config.num_experts)  # summed over blocks
        return _Decoded(sam, experts, keys, torch.stack(logits), index[..., 0], balance,
                        attention)

    @staticmethod
    def _block(layer: TwoWayAttentionBlock, mote: MoTE, sam: Tensor, experts: Tensor,
               sam_pe: Tensor, expert_pe: Tensor, keys: Tensor, key_pe: Tensor,
               want_attention: bool) -> tuple[Tensor, Tensor, Tensor, RouterOutput,
                                              Tensor | None]:
        """One two-way block: SAM's rows exactly as `TwoWayAttentionBlock.forward` computes
        them; the expert rows read SAM's tokens and the image, and nothing reads them."""
        both, both_pe = torch.cat([sam, experts], 1), torch.cat([sam_pe, expert_pe], 1)
        if layer.skip_first_layer_pe:  # first block: the tokens are their positional term
            sam = layer.self_attn(sam, sam, sam)
            experts = layer.self_attn(experts, both, both)
        else:
            q = sam + sam_pe
            sam = sam + layer.self_attn(q, q, sam)
            experts = experts + layer.self_attn(experts + expert_pe, both + both_pe, both)
        sam, experts = layer.norm1(sam), layer.norm1(experts)
        cross = layer.cross_attn_token_to_image
        kv = _project_kv(cross, keys + key_pe, keys)  # shared by SAM's and the expert queries
        sam = layer.norm2(sam + _attend(cross, sam + sam_pe, kv))
        expert_q = experts + expert_pe
        attention = _attention_map(cross, expert_q, kv) if want_attention else None
        experts = layer.norm2(experts + _attend(cross, expert_q, kv))
        sam = layer.token_mlp(sam)
        routed = mote(experts)  # instead of SAM's token MLP; SAM's post-norm kept
        experts = layer.norm3(experts + routed.tokens)
        keys = layer.update_image(sam, keys, sam_pe, key_pe)
        return sam, experts, keys, routed.router, attention
