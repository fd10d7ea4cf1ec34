"""Modules traced into ONNX graphs, and the export call itself (no file I/O beyond the graph).

Prompt convention of the decoder graphs (that of SAM's own ONNX export, so onnxruntime-web code
written for SAM carries over): `point_coords` (B, N, 2) x, y in padded-input pixels and
`point_labels` (B, N): 1 foreground, 0 background, 2 / 3 the box's top-left / bottom-right
corner, -1 padding. A prompt without a box ends with one padding point (0, 0, label -1), which is
what the PyTorch prompt encoder appends itself. `mask_input` (B, 1, 4h, 4w) low-res logits of an
earlier prediction count where `has_mask_input` (B,) is 1.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import Tensor, nn

from segmote.modeling.encoder_output import EncoderOutput
from segmote.modeling.sam import Sam
from segmote.modeling.segmote import SegMoTE

OPSET = 18
EXPORT_FORMAT = 1  # bump when the graphs' inputs / outputs change: cached graphs are rebuilt

ENCODER_INPUTS = ("image",)
ENCODER_OUTPUTS = ("image_embedding", "early_features")


class EncoderGraph(nn.Module):
    """The frozen image encoder: image (B, 3, S, S) normalised -> image_embedding (B, D, h, w),
    early_features (B, C_early, h, w)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.encoder(image)
        return out.image_embedding, out.early_features


def sparse_from_points(model: Sam, coords: Tensor, labels: Tensor) -> Tensor:
    """(B, N, 2) pixel coords and (B, N) labels in {-1, 0, 1, 2, 3} -> sparse tokens (B, N, D),
    the tokens `PromptEncoder.forward` gives for the same points / box corners."""
    pe = model.prompt_encoder
    emb = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size)
    lab = labels.unsqueeze(-1)
    emb = torch.where(lab == -1, torch.zeros_like(emb), emb)
    emb = emb + (lab == -1) * pe.not_a_point_embed.weight
    for k in range(4):
        emb = emb + (lab == k) * pe.point_embeddings[k].weight
    return emb


def dense_from_mask(model: Sam, mask_input: Tensor, has_mask: Tensor) -> Tensor:
    """(B, 1, 4h, 4w) logits, (B,) flags -> dense embedding (B, D, h, w) as the prompt encoder
    gives with the mask (flag 1) or without one (flag 0)."""
    pe = model.prompt_encoder
    flag = has_mask.view(-1, 1, 1, 1)
    no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
    return flag * pe.mask_downscaling(mask_input) + (1 - flag) * no_mask


class BaseDecoderGraph(nn.Module):
    """Prompt encoder + SAM mask decoder of the base model, single-mask output.

    Inputs: image_embedding (B, D, h, w), point_coords, point_labels, mask_input,
    has_mask_input (module doc). Outputs: masks (B, 1, 4h, 4w) logits, iou_pred (B, 1).
    """

    inputs = ("image_embedding", "point_coords", "point_labels", "mask_input", "has_mask_input")
    outputs = ("masks", "iou_pred")

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_embedding: Tensor, point_coords: Tensor, point_labels: Tensor,
                mask_input: Tensor, has_mask_input: Tensor) -> tuple[Tensor, Tensor]:
        m = self.model
        sparse = sparse_from_points(m, point_coords, point_labels)
        dense = dense_from_mask(m, mask_input, has_mask_input)
        out = m.mask_decoder(image_embedding, m.prompt_encoder.get_dense_pe(), sparse, dense,
                             False)
        return out.masks, out.iou_pred


class SegMoTEDecoderGraph(nn.Module):
    """SegMoTE decode of B prompts on B images, the expert head's image features included.

    Inputs: image_embedding (B, D, h, w), early_features (B, C_early, h, w), the prompt inputs
    of `BaseDecoderGraph` (none of the point inputs with `auto`: PPT, prompt-free), and with
    `text` or `auto` a text_embedding (B, text_dim) (unit-norm MiniLM). Outputs: masks
    (B, 1, 4h, 4w) the selected expert mask, iou_pred (B, 1), base_masks (B, 1, 4h, 4w) SAM's
    mask, base_iou (B, 1).
    """

    outputs = ("masks", "iou_pred", "base_masks", "base_iou")

    def __init__(self, model: SegMoTE, text: bool = False, auto: bool = False) -> None:
        super().__init__()
        self.model, self.auto = model, auto
        names = ["image_embedding", "early_features"]
        names += [] if auto else ["point_coords", "point_labels"]
        names += ["mask_input", "has_mask_input"] + (["text_embedding"] if text or auto else [])
        self.inputs = tuple(names)

    def forward(self, image_embedding: Tensor, early_features: Tensor,
                mask_input: Tensor, has_mask_input: Tensor, point_coords: Tensor | None = None,
                point_labels: Tensor | None = None,
                text_embedding: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = {"image_embedding": image_embedding, "early_features": early_features,
             "point_coords": point_coords, "point_labels": point_labels,
             "mask_input": mask_input, "has_mask_input": has_mask_input,
             "text_embedding": text_embedding}
        m = self.model
        image = m.prepare_image(EncoderOutput(x["image_embedding"], x["early_features"]))
        dense = dense_from_mask(m.base, x["mask_input"], x["has_mask_input"])
        if self.auto:
            b = x["text_embedding"].shape[0]
            sparse = dense.new_zeros(b, 0, m.embed_dim)
            flag = x["has_mask_input"].view(-1, 1, 1, 1)
            # PPT adds the mask prompt's embedding to the image; flag 0 adds exactly zero
            prior = flag * m.base.prompt_encoder.mask_downscaling(x["mask_input"])
        else:
            sparse = sparse_from_points(m.base, x["point_coords"], x["point_labels"])
            prior = None
        out = m.decode_prompt_embeddings(image, sparse, dense, text=x.get("text_embedding"),
                                         auto=self.auto, prior=prior)
        return out.masks, out.iou_pred, out.base_masks, out.base_iou


def export_onnx(module: nn.Module, inputs: dict[str, Tensor], path: str,
                output_names: tuple[str, ...]) -> None:
    """Trace `module(**inputs)` with torch.export and write an ONNX graph (opset `OPSET`, weights
    inside the file) whose inputs are named as `inputs`, with a dynamic first dimension (batch)
    for every input and a dynamic number of points for `point_coords` / `point_labels`."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    points = torch.export.Dim("num_points", min=1, max=64)
    shapes = {name: {0: batch, 1: points} if name.startswith("point_") else {0: batch}
              for name in inputs}
    quiet = logging.getLogger("torch.onnx")  # it logs one line per missing torchvision op
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter
            torch.onnx.export(module.eval(), (), path, kwargs=inputs,
                              input_names=list(inputs), output_names=list(output_names),
                              dynamic_shapes=shapes, opset_version=OPSET, dynamo=True,
                              external_data=False, verbose=False)
    finally:
        quiet.setLevel(level)
