"""`Segmenter`: SAM-like predictor. Encode an image once, then decode many prompts against it.

Coordinates are pixels of the image given to `set_image`: x = column, y = row (SAM's
convention). The predictor owns preprocessing (per modality), the per-image cache (image
embedding plus whatever else the model's `prepare_image` precomputes) and the mapping of
low-resolution logits back to the original grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from segmote.errors import InputError
from segmote.modeling.text_ensemble import text_ensemble
from segmote.transforms import ResizeGeometry, preprocess

# A binary mask given as a prompt becomes logits of this magnitude (SAM expects logits).
MASK_PROMPT_LOGIT = 8.0


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


@dataclass
class AutoPrediction:
    """Result of `Segmenter.predict_auto`: one prompt-free pass per class.

    label_map: (H, W) uint8/uint16, value i = classes[i - 1] (0: background).
    classes: the classes asked for, in label order.
    confidence: class -> the selected expert token's predicted IoU.
    kept: class -> its mask was kept (non-empty, confidence >= threshold and, with a presence
        head, presence >= its threshold).
    threshold: the confidence threshold used.
    presence: class -> the presence head's probability that the class is in the image (empty
        for an adapter without one, `segmote.modeling.presence`).
    """

    label_map: np.ndarray
    classes: list[str]
    confidence: dict[str, float]
    kept: dict[str, bool]
    threshold: float
    presence: dict[str, float] = field(default_factory=dict)


class Segmenter:
    """SAM-style predictor over any model with `encode`, `prepare_image` and `decode`.

    Example::

        seg = Segmenter(segmote.load_model())
        seg.set_image(ct_slice, modality="CT")
        mask, score = seg.predict(box=(40, 60, 120, 150))
        mask, score = seg.predict(box=(40, 60, 120, 150), text="tumour")  # box + text
        mask, score = seg.predict(text="tumour")     # prompt-free, that class (PPT + text)
        auto = seg.predict_auto()                    # every class the adapter knows

    text_encoder: a `segmote.text` encoder to use for text prompts (default: the one the
        adapter was trained with, loaded on first use).
    """

    def __init__(self, model: nn.Module, text_encoder: Any = None) -> None:
        self.model = model.eval()
        self.features: Any = None
        self.geometry: ResizeGeometry | None = None
        self.text_encoder = text_encoder
        self._texts: dict[str, Tensor] = {}

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
    def vocabulary(self) -> list[str]:
        """The classes the adapter was trained on (its metadata)."""
        return list(getattr(self.model, "adapter_metadata", {}).get("vocabulary", []))

    def classes_for_modality(self, modality: str | None) -> list[str] | None:
        """The vocabulary classes that the adapter's training datasets of `modality` label, plus
        those of datasets of unknown modality (vocabulary order); None when that cannot be told:
        no modality, an adapter without "training_modalities" metadata (older adapters), or no
        training dataset of that modality. `--auto` asks only these, since a class of another
        domain is absent by construction yet may still get a mask (docs/text_and_ppt.md)."""
        meta = getattr(self.model, "adapter_metadata", {})
        modalities, data = meta.get("training_modalities"), meta.get("training_data")
        if modality is None or not modalities or not data or modality not in modalities.values():
            return None
        names = {n for d, m in modalities.items() if m in (modality, None)
                 for n in data.get(d, [])}
        return [c for c in self.vocabulary if c in names]

    def _per_class(self, names: Sequence[str], key: str, default_key: str,
                   default: Any) -> list[Any]:
        """The adapter's calibrated per-class value for each name (its "auto" metadata: `key`
        maps classes to values, `default_key` covers the rest, `default` without calibration).
        A name is matched as written, then by its normalised form ("Kidney_L" = "left
        kidney")."""
        from segmote.text.names import normalize_class_name

        calib = getattr(self.model, "adapter_metadata", {}).get("auto") or {}
        per = calib.get(key) or {}
        default = calib.get(default_key, default)
        normal = {normalize_class_name(k): v for k, v in per.items()}
        return [per.get(n, normal.get(normalize_class_name(n), default)) for n in names]

    def mask_offsets(self, names: Sequence[str]) -> np.ndarray:
        """(N,) float32 logit offsets of prompt-free masks of these classes, calibrated on the
        adapter's training data (`segmote.training.calibration`): a mask is logits + offset > 0
        (0 for an adapter without this calibration)."""
        offsets = self._per_class(names, "mask_offsets", "mask_offset_default", 0.0)
        return np.array(offsets, np.float32)

    def text_beside_prompt(self, names: Sequence[str]) -> np.ndarray:
        """(N,) bool: is each class's text used beside a box / points? Calibrated on the
        adapter's training data (`segmote.training.calibration`: one decision for all classes;
        older calibrations stored one per class, still honoured); where not used, a class is
        segmented from the box alone (True without calibration)."""
        used = self._per_class(names, "text_beside_prompt", "text_beside_prompt_default", True)
        return np.array(used, bool)

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
            from segmote.text.classes import class_embeddings

            info = getattr(self.model, "adapter_metadata", {}).get("text", {})
            found = class_embeddings(missing, info.get("encoder", "minilm"), info.get("path"),
                                     encoder=self.text_encoder,
                                     template=info.get("template"))
            if found.dim != self._adapter.text.to_token.layers[0].in_features:
                raise InputError(f"text encoder width {found.dim} differs from the adapter's")
            self._texts.update(zip(missing, found.embeddings))
        return torch.stack([self._texts[t] for t in texts]).to(self.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def set_image(self, image: np.ndarray, modality: str | None = None,
                  window: str | tuple[float, float] | None = None) -> None:
        """Preprocess and encode one 2-D image (H, W) or (H, W, C); caches the features.

        modality: "CT" (HU window, see `window`), "MR" (percentile clip) or None (min-max only).
        """
        x, self.geometry = preprocess(image, self.model.img_size, modality, window)
        x = x[None].to(self.device)
        self.features = self.model.prepare_image(self.model.encode(x))

    def set_features(self, features: Any, hw: tuple[int, int]) -> None:
        """Reuse features computed earlier (e.g. a cached embedding) for an (H, W) image."""
        self.features = features
        self.geometry = ResizeGeometry.for_shape(hw, self.model.img_size)

    def reset_image(self) -> None:
        self.features, self.geometry = None, None

    # -- prompts -------------------------------------------------------------------------
    def _check_xy(self, xy: np.ndarray, what: str) -> None:
        h, w = self.geometry.orig_hw
        bad = (xy[..., 0] < 0) | (xy[..., 0] > w) | (xy[..., 1] < 0) | (xy[..., 1] > h)
        if bad.any():
            first = xy[np.argwhere(bad)[0][0]] if xy.ndim > 1 else xy
            raise InputError(f"{what} {np.round(first, 1).tolist()} lies outside the image "
                             f"(width {w}, height {h}; x is the column, y the row)")

    def _boxes(self, box: Sequence[float] | None, boxes: np.ndarray | None) -> np.ndarray | None:
        if box is None and boxes is None:
            return None
        b = np.asarray(boxes if boxes is not None else [box], dtype=np.float32)
        if b.ndim != 2 or b.shape[1] != 4:
            raise InputError(f"a box needs 4 numbers x0, y0, x1, y1; got shape {b.shape}")
        if ((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])).any():
            raise InputError(f"box {b[0].tolist()}: needs x0 <= x1 and y0 <= y1")
        self._check_xy(b.reshape(-1, 2, 2), "box corner")
        return b

    def _points(self, points: Any, labels: Any) -> tuple[np.ndarray, np.ndarray] | None:
        if points is None:
            return None
        p = np.asarray(points, dtype=np.float32)
        if p.ndim == 2:
            p = p[None]  # one prompt with K points
        if p.ndim != 3 or p.shape[-1] != 2:
            raise InputError(f"points need (x, y) pairs; got shape {np.asarray(points).shape}")
        lab = np.ones(p.shape[:2], np.int64) if labels is None else np.asarray(labels, np.int64)
        lab = lab.reshape(p.shape[:2]) if lab.size == p.shape[0] * p.shape[1] else lab
        if lab.shape != p.shape[:2]:
            raise InputError(f"{lab.size} point labels for {p.shape[0] * p.shape[1]} points")
        if not np.isin(lab, (0, 1)).all():
            raise InputError("point labels must be 1 (foreground) or 0 (background)")
        self._check_xy(p, "point")
        return p, lab

    def _mask_input(self, mask_input: Any, n: int) -> Tensor | None:
        if mask_input is None:
            return None
        if isinstance(mask_input, Tensor) and mask_input.ndim == 4:
            t = mask_input  # low-res logits from an earlier Prediction
        else:
            m = np.asarray(mask_input)
            if m.shape != self.geometry.orig_hw:
                raise InputError(f"mask_input shape {m.shape} differs from the image "
                                 f"{self.geometry.orig_hw}")
            if m.dtype == bool or set(np.unique(m)) <= {0, 1}:
                m = (m.astype(np.float32) * 2 - 1) * MASK_PROMPT_LOGIT
            t = self.geometry.mask_to_lowres(m, self.model.mask_input_size)
        t = t.to(self.device, torch.float32)
        return t.expand(n, -1, -1, -1) if t.shape[0] == 1 and n > 1 else t

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
            averaged (`text_ensemble`); alone, the model segments that class with no spatial prompt
            (PPT). With no prompt at all, a model with PPT segments the foreground (binary).
        decode_kwargs: passed to the model's decode (e.g. output="base" for SegMoTE).
        """
        if self.features is None:
            raise InputError("call set_image() before predict()")
        b = self._boxes(box, boxes)
        p = self._points(points, labels)
        texts = None if text is None else [text] if isinstance(text, str) else list(text)
        t = self.embed_text(texts) if texts is not None else None
        use_text = None  # per text: used beside the box / points (calibrated per class)
        if t is not None and (b is not None or p is not None):
            use_text = self.text_beside_prompt(texts)
            if not use_text.any():
                t = None
        if t is not None:
            decode_kwargs["text"] = t
        if b is None and p is None and mask_input is None and self.prompt_free:
            decode_kwargs.setdefault("auto", True)
        n = max(len(b) if b is not None else 1, p[0].shape[0] if p is not None else 1)
        if texts is not None and len(texts) not in (1, n) and (b is not None or p is not None):
            raise InputError(f"{len(texts)} text prompts for {n} box / point prompts")
        if t is not None and b is None and p is None:
            n = len(t)
        if b is not None and p is not None and p[0].shape[0] not in (1, n) or \
                b is not None and len(b) not in (1, n):
            raise InputError("boxes and points describe different numbers of prompts")
        g, dev = self.geometry, self.device
        tb = torch.from_numpy(g.boxes_to_input(b)).to(dev) if b is not None else None
        if tb is not None and len(tb) != n:
            tb = tb.expand(n, -1)
        tp = None
        if p is not None:
            coords = torch.from_numpy(g.coords_to_input(p[0])).to(dev)
            lab = torch.from_numpy(p[1]).to(dev)
            tp = (coords.expand(n, -1, -1), lab.expand(n, -1))
        if tb is None and tp is None and mask_input is None and t is None \
                and not decode_kwargs.get("auto"):
            raise InputError("give a box, points, a mask or text (this model has no PPT "
                             "module, so it cannot segment without a prompt)")
        out = self.model.decode(self.features, points=tp, boxes=tb,
                                masks=self._mask_input(mask_input, n), **decode_kwargs)
        if use_text is not None and t is not None:
            # beside a box / points the text is a second opinion: the mean of the decodes with
            # and without it (`text_ensemble`), for the classes whose calibration uses it
            plain = {k: v for k, v in decode_kwargs.items() if k != "text"}
            out = text_ensemble(out, self.model.decode(
                self.features, points=tp, boxes=tb, masks=self._mask_input(mask_input, n),
                **plain), torch.from_numpy(use_text).to(out.masks.device))
        presence = None
        if texts is not None and decode_kwargs.get("auto"):
            # a prompt-free mask of a named class: its calibrated mask threshold
            off = torch.from_numpy(self.mask_offsets(texts)).to(out.masks.device)
            out = out._replace(masks=out.masks + off.view(-1, 1, 1, 1).to(out.masks.dtype))
            presence = self.presence(t)
        single = boxes is None and (points is None or np.asarray(points).ndim == 2) and \
            (texts is None or isinstance(text, str))
        pred = self._finish(out, single)
        if use_text is not None:
            pred.extras["text_used"] = use_text
        if presence is not None:
            # the mask is returned as decoded; predict_auto / --text drop it below threshold
            pred.extras["presence"] = presence[0] if single else presence
        return pred

    @torch.inference_mode()
    def predict_auto(self, classes: Sequence[str] | None = None, threshold: float | None = None,
                     chunk: int = 32) -> AutoPrediction:
        """Prompt-free multi-class segmentation of the current image: one PPT pass per class
        (batched: the image is encoded once), assembled into one label map.

        classes: class names (default: the adapter's vocabulary).
        threshold: keep a class's mask only if its confidence (predicted IoU) reaches it
            (default: the adapter's calibrated threshold, else 0).
        A pixel goes to the kept class with the highest positive logit (each class's logits
        shifted by its calibrated offset, `mask_offsets`).
        """
        if self.features is None:
            raise InputError("call set_image() before predict_auto()")
        if not self.prompt_free or not self.takes_text:
            raise InputError("automatic multi-class segmentation needs an adapter trained with "
                             "PPT and text prompts")
        names = list(classes) if classes else self.vocabulary
        if not names:
            raise InputError("give the classes to segment (the adapter lists none)")
        if threshold is None:
            calib = getattr(self.model, "adapter_metadata", {}).get("auto") or {}
            threshold = float(calib.get("threshold", 0.0))
        logits, conf, present = [], [], []
        for start in range(0, len(names), chunk):
            part = names[start:start + chunk]
            text = self.embed_text(part)
            out = self.model.decode(self.features, text=text, auto=True)
            off = torch.from_numpy(self.mask_offsets(part)).to(out.masks.device)
            logits.append(self.geometry.logits_to_original(
                out.masks[:, :1].float() + off.view(-1, 1, 1, 1))[:, 0].cpu().numpy())
            conf.append(out.iou_pred[:, 0].float().cpu().numpy())
            present.append(self.presence(text))
        stack, score = np.concatenate(logits), np.concatenate(conf)
        kept = (stack > 0).any(axis=(1, 2)) & (score >= threshold)
        presence = np.concatenate(present) if self.has_presence else None
        if presence is not None:
            kept &= presence >= self.presence_threshold
        dtype = np.uint8 if len(names) < 256 else np.uint16
        label = np.zeros(stack.shape[1:], dtype)
        if kept.any():
            masked = np.where(kept[:, None, None], stack, -np.inf)
            best = masked.argmax(0)
            label = np.where(masked.max(0) > 0, best + 1, 0).astype(dtype)
        return AutoPrediction(label, names, {n: float(c) for n, c in zip(names, score)},
                              {n: bool(k) for n, k in zip(names, kept)}, threshold,
                              {} if presence is None else
                              {n: float(p) for n, p in zip(names, presence)})

    @property
    def has_presence(self) -> bool:
        """The adapter has a class presence head (`segmote.modeling.presence`)."""
        return getattr(self._adapter, "presence", None) is not None

    @property
    def presence_threshold(self) -> float:
        """Keep a prompt-free mask only where the presence probability reaches this."""
        entry = getattr(self.model, "adapter_metadata", {}).get("presence") or {}
        return float(entry.get("threshold", 0.5))

    def presence(self, text: Tensor) -> np.ndarray | None:
        """(N,) probabilities that the classes of text embeddings (N, text_dim) are in the
        current image (None without a presence head)."""
        if not self.has_presence:
            return None
        logits = self.model.presence_logits(self.features, text)
        return torch.sigmoid(logits.float()).cpu().numpy()

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
