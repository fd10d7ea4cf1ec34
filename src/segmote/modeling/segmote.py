"""SegMoTE: a frozen SAM-style model plus expert tokens, MoTE routing and an expert mask head.

Written from the SegMoTE paper (method.md). The base `Sam` is passed in and frozen; the learnable
parts live in one `MoTEAdapter` module, so `model.adapter.state_dict()` is the adapter checkpoint.

Decoder token sequence: SAM's `[iou | mask x4 | sparse prompts]` followed by the T expert tokens.
The paper writes `[iou | mask | expert | sparse]`; attention has no notion of order (each token
carries its own positional term, its initial embedding), so the two layouts are the same model —
keeping SAM's tokens as one contiguous prefix makes the read-only wiring below a plain slice:

- self-attention: expert tokens attend to every token; SAM's tokens do not see expert tokens;
- token-to-image: every token reads the image;
- token MLP: SAM's tokens take the frozen MLP, expert tokens take MoTE (then the frozen post-norm);
- image-to-token: the image tokens attend to SAM's tokens only.

So nothing SAM computes depends on the adapter, and `base_masks` are SAM's own logits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from segmote.errors import InputError
from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.expert_head import ExpertMaskHead
from segmote.modeling.mask_decoder import expand_image
from segmote.modeling.mote import MoTE, load_balance_loss
from segmote.modeling.sam import Sam

Output = Literal["expert", "base"]


@dataclass(frozen=True)
class MoTEConfig:
    """Adapter hyper-parameters (paper values by default). The width D comes from the backbone.

    Attributes:
        num_expert_tokens: T expert tokens.
        num_experts: E experts per decoder block.
        top_k: experts per token (k = 1: straight-through router gradient).
        expert_rank: r of each expert's D -> r projection and the shared r -> r -> D.
        noisy_gating: noisy router logits in training mode (never at eval).
        balance_weight: weight of the load-balance loss (applied by the trainer).
        head_dim: channels C of the fused mask-head map; None -> D // 8 (SAM's upscaled width).
    """

    num_expert_tokens: int = 4
    num_experts: int = 4
    top_k: int = 1
    expert_rank: int = 64
    noisy_gating: bool = True
    balance_weight: float = 0.01
    head_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_expert_tokens", "num_experts", "top_k", "expert_rank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InputError(f"MoTE config: {name} must be a positive integer, "
                                 f"got {getattr(self, name)!r}")
        if self.top_k > self.num_experts:
            raise InputError(f"MoTE config: top_k ({self.top_k}) exceeds num_experts "
                             f"({self.num_experts})")
        if self.balance_weight < 0:
            raise InputError("MoTE config: balance_weight must be >= 0")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise InputError(f"MoTE config: head_dim must be a positive integer or null, "
                             f"got {self.head_dim!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoTEConfig:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise InputError(f"MoTE config: unknown field(s) {', '.join(unknown)}")
        return cls(**values)


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
    attention: (B, T, h, w) expert tokens' final token-to-image attention, or None.
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


class MoTEAdapter(nn.Module):
    """Every learnable part of SegMoTE: expert tokens, one MoTE per decoder block, the head."""

    def __init__(self, embed_dim: int, early_dim: int, num_blocks: int,
                 config: MoTEConfig) -> None:
        super().__init__()
        self.config = config
        # N(0, 1) like SAM's own token embeddings; distinct tokens can take different experts
        self.expert_tokens = nn.Embedding(config.num_expert_tokens, embed_dim)
        self.mote = nn.ModuleList(
            MoTE(embed_dim, config.num_experts, config.expert_rank, config.top_k,
                 config.noisy_gating) for _ in range(num_blocks))
        self.head = ExpertMaskHead(embed_dim, early_dim, config.num_expert_tokens,
                                   config.head_dim)


class _Decoded(NamedTuple):
    tokens: Tensor  # (B, N, D) after the final attention
    keys: Tensor  # (B, hw, D) image tokens
    router_logits: Tensor  # blocks, B, T, E
    expert_index: Tensor  # blocks, B, T
    balance_loss: Tensor
    attention: Tensor | None


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
        self.adapter_metadata: dict[str, Any] = {}  # header of a loaded adapter file
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

    def decode(self, image: ImageFeatures | EncoderOutput, points: tuple[Tensor, Tensor] | None = None,
               boxes: Tensor | None = None, masks: Tensor | None = None,
               multimask_output: bool = False, output: Output = "expert",
               return_attention: bool = False) -> SegMoTEOutput:
        """Decode B prompts against one image (batch 1, broadcast) or B images (batch B).

        image: `prepare_image` output (an EncoderOutput is prepared on the fly).
        points, boxes, masks: as `Sam.decode` (padded-input pixels; masks (B, 1, 4h, 4w)).
        multimask_output: return SAM's three multimask outputs in `masks` (the expert head is
            single-mask; the expert masks stay in `expert_masks`).
        output: "expert" (paper: the most confident expert token) or "base" (SAM's mask).
        return_attention: also return the expert tokens' attention maps.
        """
        if output not in ("expert", "base"):
            raise InputError(f"output must be 'expert' or 'base', got {output!r}")
        if isinstance(image, EncoderOutput):
            image = self.prepare_image(image)
        elif not isinstance(image, ImageFeatures):
            raise TypeError("decode() needs prepare_image(...) output or an EncoderOutput")
        dec = self.base.mask_decoder
        sparse, dense = self.base.prompt_encoder(points, boxes, masks)
        b = sparse.shape[0]
        sam_tokens = torch.cat([dec.output_tokens().unsqueeze(0).expand(b, -1, -1), sparse], 1)
        tokens = torch.cat([sam_tokens,
                            self.adapter.expert_tokens.weight.unsqueeze(0).expand(b, -1, -1)], 1)
        src = expand_image(image.image_embedding, b) + dense
        pe = expand_image(self.base.prompt_encoder.get_dense_pe(), b)
        run = self._transformer(src, pe, tokens, sam_tokens.shape[1], return_attention)

        n_sam = sam_tokens.shape[1]
        all_masks, upscaled = dec.masks_from_tokens(run.tokens[:, 1:1 + dec.num_mask_tokens],
                                                    run.keys, tuple(src.shape[-2:]))
        base_iou = dec.iou_prediction_head(run.tokens[:, 0])
        expert_masks, expert_iou = self.adapter.head(
            run.tokens[:, n_sam:], upscaled, image.head_features, all_masks[:, :1],
            base_iou[:, :1])
        router_logits = run.router_logits
        # paper: output the expert token with the highest routing confidence (top logit)
        selected = router_logits[-1].amax(-1).argmax(-1)
        if multimask_output:
            out_masks, out_iou = all_masks[:, 1:], base_iou[:, 1:]
        elif output == "base":
            out_masks, out_iou = all_masks[:, :1], base_iou[:, :1]
        else:
            rows = torch.arange(b, device=selected.device)
            out_masks = expert_masks[rows, selected].unsqueeze(1)
            out_iou = expert_iou[rows, selected].unsqueeze(1)
        return SegMoTEOutput(out_masks, out_iou, all_masks[:, :1], expert_masks, expert_iou,
                             router_logits, run.expert_index, selected,
                             run.balance_loss, run.attention)

    def _transformer(self, src: Tensor, pe: Tensor, tokens: Tensor, n_sam: int,
                     return_attention: bool) -> _Decoded:
        """SAM's two-way transformer with the expert tokens wired in read-only (module doc).

        src, pe: (B, D, h, w); tokens: (B, N, D), SAM's first n_sam, then the T expert tokens.
        """
        transformer = self.base.mask_decoder.transformer
        keys, key_pe = src.flatten(2).transpose(1, 2), pe.flatten(2).transpose(1, 2)
        n = tokens.shape[1]
        token_mask = torch.ones(n, n, dtype=torch.bool, device=tokens.device)
        token_mask[:n_sam, n_sam:] = False  # SAM's tokens never read the expert tokens
        queries, logits, gates, index = tokens, [], [], []
        for layer, mote in zip(transformer.layers, self.adapter.mote):
            queries = layer.attend(queries, keys, tokens, key_pe, token_mask)
            sam_q, expert_q = queries[:, :n_sam], queries[:, n_sam:]
            routed = mote(expert_q)
            sam_q = layer.token_mlp(sam_q)
            queries = torch.cat([sam_q, layer.norm3(expert_q + routed.tokens)], 1)
            keys = layer.update_image(sam_q, keys, tokens[:, :n_sam], key_pe)
            logits.append(routed.router.logits)
            gates.append(routed.router.gates.flatten(0, 1))
            index.append(routed.router.expert_index)
        attention = None
        if return_attention:  # a separate call so the outputs never depend on this flag
            h, w = src.shape[-2:]
            _, weights = transformer.final_attn_token_to_image(
                queries[:, n_sam:] + tokens[:, n_sam:], keys + key_pe, keys, return_weights=True)
            attention = weights.view(weights.shape[0], -1, h, w)
        queries = transformer.final_attend(queries, keys, tokens, key_pe)
        index = torch.stack(index)  # blocks, B, T, k
        balance = load_balance_loss(torch.stack(gates), index.flatten(1, 2),
                                    self.config.num_experts)  # summed over blocks
        return _Decoded(queries, keys, torch.stack(logits), index[..., 0], balance, attention)
