"""`Segmenter`: SAM-like predictor. Encode an image once, then decode many prompts against it.

Coordinates are pixels of the image given to `set_image`: x = column, y = row (SAM's
convention). The predictor owns preprocessing (per modality), the per-image cache (image
embedding plus whatever else the model's `prepare_image` precomputes), the text-embedding cache
and the mapping of low-resolution logits back to the original grid. Prompt-free multi-class
segmentation is `segmote.predict.auto.AutoSegmenter`, built on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segmote.adapter.card import AdapterCard, TextInfo
from segmote.errors import InputError
from segmote.modeling.text_ensemble import text_ensemble
from segmote.predict import auto
from segmote.predict.prompts import check_boxes, check_points
from segmote.text.classes import class_embeddings
from segmote.transforms import ResizeGeometry, mask_prompt, preprocess


@dataclass
class Prediction:
    """Result of one `predict` call; unpacks as ``mask, score = prediction``.

    mask: (H, W) bool for a single prompt, (N, H, W) for N batched prompts.
    score: predicted IoU, float or (N,) array.
    logits: mask logits on the original grid, same leading shape as mask (float32).
    lowres_logits: (N, 1, s, s) tensor; pass back as `mask_input` to refine.
    extras: model-specific outputs per prompt (e.g. SegMoTE routing), as tensors.
    """

    mask: np.ndarray
    score: float | np.ndarray
    logits: np.ndarray
    lowres_logits: Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        yield self.mask
        yield self.score


class Segmenter:
    """SAM-style predictor over any model with `encode`, `prepare_image` and `decode`.

    Example::

        seg = Segmenter(segmote.load_model())
        seg.set_image(ct_slice, modality="CT")
        mask, score = seg.predict(box=(40, 60, 120, 150))
        mask, score = seg.predict(box=(40, 60, 120, 150), text="tumour")  # box + text
        mask, score = seg.predict(text="tumour")     # prompt-free, that class (PPT + text)
        labels = seg.predict_auto()                  # every class the adapter knows

    text_encoder: a `segmote.text` encoder to use for text prompts (default: the one the
        adapter was trained with, loaded on first use).
    """

    def __init__(self, model: nn.Module, text_encoder: Any = None) -> None:
        self.model = model.eval()
        self.features: Any = None
        self.geometry: ResizeGeometry | None = None
        self.text_encoder = text_encoder
        self._texts: dict[str, Tensor] = {}

    # -- what the model can do -------------------------------------------------------------
    @property
    def card(self) -> AdapterCard:
        """The adapter's typed header (empty for a base model or a fresh adapter)."""
        return auto.card_of(self.model)

    @property
    def _adapter(self) -> Any:
        return getattr(self.model, "adapter", None)

    @property
    def takes_text(self) -> bool:
        return getattr(self._adapter, "text", None) is not None

    @property
    def prompt_free(self) -> bool:
        """The model has a PPT module (it can segment without a prompt)."""
        return getattr(self._adapter, "ppt", None) is not None

    @property
    def has_presence(self) -> bool:
        """The adapter has a class presence head (`segmote.modeling.presence`)."""
        return getattr(self._adapter, "presence", None) is not None

    @property
    def vocabulary(self) -> list[str]:
        """The classes the adapter was trained on."""
        return list(self.card.vocabulary)

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- the image -------------------------------------------------------------------------
    @torch.inference_mode()
    def set_image(self, image: np.ndarray, modality: str | None = None,
                  window: str | tuple[float, float] | None = None,
                  valid: np.ndarray | None = None) -> None:
        """Preprocess and encode one 2-D image (H, W) or (H, W, C); caches the features.

        modality: "CT" (HU window, see `window`), "MR" (percentile clip) or None (min-max only).
        valid: (H, W) bool, False where NaN / Inf were replaced (`segmote.io.finite`): kept
            out of the intensity statistics (`segmote.transforms.preprocess`). NaN / Inf
            still in `image` are handled the same way, with a warning.
        """
        image = np.asarray(image)
        # a caller that passes `valid` has cleaned the image already: no second scan
        n_bad = int((~np.isfinite(image)).sum()) \
            if valid is None and image.dtype.kind in "fc" else 0
        x, self.geometry = preprocess(image, self.model.img_size, modality, window, valid)
        if n_bad:  # stacklevel 3: past torch's inference_mode wrapper
            warnings.warn(f"set_image: {n_bad} of {image.size} values are NaN or Inf; read as "
                          "the image's darkest value, left out of its statistics", stacklevel=3)
        x = x[None].to(self.device)
        self.features = self.model.prepare_image(self.model.encode(x))

    def set_features(self, features: Any, hw: tuple[int, int]) -> None:
        """Reuse features computed earlier (e.g. a cached embedding) for an (H, W) image."""
        self.features = features
        self.geometry = ResizeGeometry.for_shape(hw, self.model.img_size)

    def reset_image(self) -> None:
        self.features, self.geometry = None, None

    # -- text ------------------------------------------------------------------------------
    def embed_text(self, texts: Sequence[str]) -> Tensor:
        """(N, text_dim) embeddings of class names (normalised and put in the template the
        adapter was trained with), cached per Segmenter."""
        if not self.takes_text:
            raise InputError("this model takes no text prompts (its adapter was trained "
                             "without a text encoder)")
        texts = [str(t) for t in texts]
        if any(not t.strip() for t in texts):
            raise InputError("a text prompt is empty")
        missing = sorted({t for t in texts if t not in self._texts})
        if missing:
            info = self.card.text or TextInfo()
            found = class_embeddings(missing, info.encoder, info.path, encoder=self.text_encoder,
                                     template=info.template)
            if found.dim != self._adapter.text.to_token.layers[0].in_features:
                raise InputError(f"text encoder width {found.dim} differs from the adapter's")
            self._texts.update(zip(missing, found.embeddings))
        return torch.stack([self._texts[t] for t in texts]).to(self.device)

    # -- decoding --------------------------------------------------------------------------
    @torch.inference_mode()
    def predict(self, box: Sequence[float] | None = None, points: Any = None, labels: Any = None,
                mask_input: Any = None, boxes: np.ndarray | None = None,
                text: str | Sequence[str] | None = None, **decode_kwargs: Any) -> Prediction:
        """Segment with a box, points (+ labels), a mask, text, or a combination.

        box: (x0, y0, x1, y1). boxes: (N, 4) for N prompts in one call.
        points: [(x, y), ...] for one prompt, or (N, K, 2) with labels (N, K) for N prompts.
        labels: 1 = foreground, 0 = background (default all 1).
        mask_input: an earlier `Prediction.lowres_logits`, or an (H, W) mask / logit map.
        text: a class name ("left kidney") or one per prompt; beside a box / points the prompt
            is decoded with the text as one more prompt token and without it, and the two are
            averaged (`text_ensemble`); alone, the model segments that class with no spatial
            prompt (PPT), shifted by its calibrated mask offset. With no prompt at all, a model
            with PPT segments the foreground (binary).
        decode_kwargs: passed to the model's decode (e.g. output="base" for SegMoTE).
        """
        if self.features is None:
            raise InputError("call set_image() before predict()")
        g = self.geometry
        b = check_boxes(box, boxes, g.orig_hw)
        p = check_points(points, labels, g.orig_hw)
        spatial = b is not None or p is not None
        texts = None if text is None else [text] if isinstance(text, str) else list(text)
        t = self.embed_text(texts) if texts is not None else None
        use_text = None  # per text: used beside the box / points (calibrated per class)
        if t is not None and spatial:
            use_text = auto.text_beside_prompt(self.card, texts)
            if not use_text.any():
                t = None
        # SegMoTE's PPT decodes without a spatial prompt (a caller may set auto itself)
        prompt_free = bool(decode_kwargs.get("auto", not spatial and mask_input is None
                                             and self.prompt_free))
        decode_kwargs = {k: v for k, v in decode_kwargs.items() if k != "auto"}
        n = max(len(b) if b is not None else 1, p[0].shape[0] if p is not None else 1)
        if texts is not None and len(texts) not in (1, n) and spatial:
            raise InputError(f"{len(texts)} text prompts for {n} box / point prompts")
        if t is not None and not spatial:
            n = len(t)
        if b is not None and p is not None and p[0].shape[0] not in (1, n) or \
                b is not None and len(b) not in (1, n):
            raise InputError("boxes and points describe different numbers of prompts")
        dev = self.device
        tb = torch.from_numpy(g.boxes_to_input(b)).to(dev) if b is not None else None
        if tb is not None and len(tb) != n:
            tb = tb.expand(n, -1)
        tp = None
        if p is not None:
            coords = torch.from_numpy(g.coords_to_input(p[0])).to(dev)
            tp = (coords.expand(n, -1, -1), torch.from_numpy(p[1]).to(dev).expand(n, -1))
        if tb is None and tp is None and mask_input is None and t is None and not prompt_free:
            raise InputError("give a box, points, a mask or text (this model has no PPT "
                             "module, so it cannot segment without a prompt)")
        masks = mask_prompt(mask_input, n, g, self.model.mask_input_size, dev)
        steer = {"auto": True} if prompt_free else {}
        out = self.model.decode(self.features, points=tp, boxes=tb, masks=masks,
                                **steer, **({"text": t} if t is not None else {}),
                                **decode_kwargs)
        if use_text is not None and t is not None:
            # beside a box / points the text is a second opinion: the mean of the decodes with
            # and without it (`text_ensemble`), for the classes whose calibration uses it
            plain = self.model.decode(self.features, points=tp, boxes=tb, masks=masks, **steer,
                                      **decode_kwargs)
            out = text_ensemble(out, plain, torch.from_numpy(use_text).to(out.masks.device))
        presence = None
        if texts is not None and prompt_free:
            # a prompt-free mask of a named class: its calibrated mask threshold
            off = torch.from_numpy(auto.mask_offsets(self.card, texts)).to(out.masks.device)
            out = out._replace(masks=out.masks + off.view(-1, 1, 1, 1).to(out.masks.dtype))
            presence = auto.presence_probability(self.model, self.features, t)
        single = boxes is None and (points is None or np.asarray(points).ndim == 2) and \
            (texts is None or isinstance(text, str))
        pred = self._finish(out, single)
        if use_text is not None:
            pred.extras["text_used"] = use_text
        if presence is not None:
            # the mask is returned as decoded; predict_auto / --text drop it below threshold
            pred.extras["presence"] = presence[0] if single else presence
        return pred

    def predict_auto(self, classes: Sequence[str] | None = None,
                     threshold: float | None = None) -> auto.AutoPrediction:
        """Prompt-free multi-class segmentation of the current image (`AutoSegmenter`)."""
        return auto.AutoSegmenter(self).predict(classes, threshold)

    def _finish(self, out: Any, single: bool) -> Prediction:
        # with several candidate masks per prompt (multimask_output=True) keep the best-scored
        best = out.iou_pred.float().argmax(dim=1)
        rows = torch.arange(len(best), device=best.device)
        lowres = out.masks[rows, best][:, None].float()
        logits = self.geometry.logits_to_original(lowres)[:, 0].cpu().numpy()
        score = out.iou_pred[rows, best].float().cpu().numpy()
        extras = {k: v for k, v in out._asdict().items() if k not in ("masks", "iou_pred")}
        mask = logits > 0
        if single:
            return Prediction(mask[0], float(score[0]), logits[0], lowres, extras)
        return Prediction(mask, score, logits, lowres, extras)
