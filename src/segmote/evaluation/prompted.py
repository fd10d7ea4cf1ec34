"""Fixed prompt protocols and prompted evaluation of a model on dataset slices.

Every prompt is a function of the ground-truth mask and a seed keyed by the sample (dataset, case,
slice, class), never of the evaluation order, so a protocol gives identical prompts in every run
and for every model compared:

- ``box``: tight box of the mask padded by `box_pad` pixels, clamped to the image;
- ``box_jitter``: the tight box with each side moved by up to `jitter` x the box extent, in or
  out (seeded; `segmote.simulated_prompts.jittered_box`, as in training);
- ``point``: one positive point at the mask pixel farthest from the mask boundary (the centre of
  the largest inscribed disc; ties go to the first pixel in row-major order);
- ``clicks``: ``point``, then `clicks` corrective clicks, each at the pixel deepest inside the
  larger error region (missed foreground -> positive, false positive -> negative), with the
  previous low-res logits as mask prompt (the interactive protocol of SAM-style papers);
- ``box_text``: ``box`` plus the class name as a text prompt;
- ``text``: the class name alone: prompt-free segmentation of that class (PPT) at the class's
  calibrated mask offset, with no confidence threshold;
- ``auto``: ``text`` with the mask dropped (empty) when its confidence is below the adapter's
  calibrated threshold or, with a presence head, its presence probability below that head's
  threshold, as `segmote predict --text` / `--auto` do. No prompt of these two comes
  from the ground truth. Their target is every instance of the class in the slice, so the
  samples of one slice and class (the nuclei of one image) are one query, scored once.

Text protocols need an adapter trained with text (and PPT for ``text``) and score only the
adapter's output: the base decoder has no text prompt to compare with.

A `SegMoTE` model gives two answers per decode: its own (``"adapter"``, the selected expert mask)
and the frozen base decoder's (``"base"``, bit-identical to the base model), so base vs adapter is
compared on the very same features and prompts. Dice is computed at the slice's original size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from segmote.adapter.card import Calibration
from segmote.data.datasets import class_mask
from segmote.data.files import RecentFiles
from segmote.errors import InputError
from segmote.evaluation import reference
from segmote.evaluation.reference import dice
from segmote.predict.auto import presence_threshold
from segmote.predict.segmenter import Segmenter
from segmote.slicing import volume_slice
from segmote.simulated_prompts import error_clicks, interior_distance, jittered_box

PROMPTS = ("box", "box_jitter", "point", "clicks", "box_text", "text", "auto", "box3d",
           "box3d_every_slice", "key_box", "key_point")  # the last four: volume_protocols.py
TEXT_PROMPTS = ("box_text", "text", "auto")


@dataclass(frozen=True)
class Protocol:
    """One prompt protocol (see the module doc); saved with every result."""

    prompt: str = "box"
    box_pad: int = 2
    jitter: float = 0.1
    clicks: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prompt not in PROMPTS:
            raise InputError(f"unknown prompt protocol {self.prompt!r}; expected one of "
                             f"{', '.join(PROMPTS)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.prompt not in ("box_jitter", "box3d", "box3d_every_slice", "key_box"):
            d.pop("jitter")
        if self.prompt != "clicks":
            d.pop("clicks")
        if self.prompt not in ("box", "box_text"):
            d.pop("box_pad")
        return d


def padded_box(mask: np.ndarray, pad: int) -> np.ndarray:
    """(x0, y0, x1, y1) float32: the reference protocol's padded, clamped tight box."""
    return np.array(reference.padded_box(mask, pad), np.float32)


def deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """(x, y) of the mask pixel farthest from its boundary (outside the image is boundary);
    ties go to the first pixel in row-major order."""
    dist = interior_distance(mask)
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return float(c), float(r)


def corrective_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator,
                     ) -> tuple[tuple[float, float], int] | None:
    """The next click: ((x, y), 1) in missed foreground or ((x, y), 0) in a false positive, at
    the deepest pixels of the largest error region (`simulated_prompts.error_clicks`, k = 1
    and only the deepest pixels allowed); None when the prediction is exact."""
    points, labels = error_clicks(pred, gt, 1, rng, central_frac=1.0)
    if not len(labels):
        return None
    return (float(points[0, 0]), float(points[0, 1])), int(labels[0])


def sample_seed(seed: int, sample: Any) -> np.random.Generator:
    """A generator keyed by the sample, not by the evaluation order."""
    key = f"{sample.dataset}/{sample.case_id}/{sample.slice_index}/{sample.class_value}"
    digest = hashlib.sha256(key.encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


@dataclass
class PromptResult:
    """One sample under one protocol: Dice of each output, and the adapter's routing."""

    dataset: str
    case_id: str
    slice_index: int | None
    class_name: str
    class_value: int
    modality: str | None
    prompt: str
    dice: dict[str, float]  # output ("base", "adapter") -> Dice
    selected_token: int | None = None  # adapter only: expert token whose mask was returned
    experts: list[int] | None = None  # adapter only: the selected token's expert per block
    nsd: dict[str, float] | None = None  # 3-D protocols: output -> NSD, and HD95 in mm
    hd95: dict[str, float] | None = None


def _outputs(seg: Segmenter, pred: Any) -> dict[str, tuple[np.ndarray, torch.Tensor]]:
    """output name -> (mask at original size, low-res logits (1, 1, h, w))."""
    if "base_masks" not in pred.extras:  # a plain SAM-style model
        return {"base": (pred.mask, pred.lowres_logits)}
    base = pred.extras["base_masks"][:1].float()
    base_mask = seg.geometry.logits_to_original(base)[0, 0].cpu().numpy() > 0
    return {"adapter": (pred.mask, pred.lowres_logits), "base": (base_mask, base)}


def check_text_protocol(seg: Segmenter, prompt: str) -> None:
    """InputError unless the model can run the text protocol `prompt`."""
    if prompt in TEXT_PROMPTS and (not seg.takes_text or
                                   (prompt != "box_text" and not seg.prompt_free)):
        raise InputError(f"prompt protocol {prompt!r} needs an adapter trained with text "
                         "prompts" + ("" if prompt == "box_text" else " and PPT"))


def auto_threshold(seg: Segmenter) -> float:
    """The adapter's calibrated confidence threshold for prompt-free masks (0 if none)."""
    return (seg.card.calibration or Calibration()).threshold


def evaluate_slice(seg: Segmenter, gt: np.ndarray, protocol: Protocol,
                   rng: np.random.Generator, class_name: str | None = None,
                   ) -> tuple[dict[str, float], Any]:
    """Run one protocol on the image set in `seg`; returns ({output: Dice}, last prediction).

    gt: (H, W) bool, the target at the image's original size. class_name: the text of the text
    protocols.
    """
    if protocol.prompt in TEXT_PROMPTS:
        check_text_protocol(seg, protocol.prompt)
        if protocol.prompt == "box_text":
            pred = seg.predict(box=padded_box(gt, protocol.box_pad), text=class_name)
            return {"adapter": dice(pred.mask, gt)}, pred
        pred = seg.predict(text=class_name)
        mask = pred.mask
        presence = pred.extras.get("presence", 1.0)  # 1 without a presence head
        if protocol.prompt == "auto" and (pred.score < auto_threshold(seg)
                                          or presence < presence_threshold(seg.card)):
            mask = np.zeros_like(mask)
        return {"adapter": dice(mask, gt)}, pred
    if protocol.prompt in ("box", "box_jitter"):
        box = padded_box(gt, protocol.box_pad) if protocol.prompt == "box" else \
            jittered_box(gt, rng, protocol.jitter)
        pred = seg.predict(box=box)
        return {k: dice(m, gt) for k, (m, _) in _outputs(seg, pred).items()}, pred
    point = deepest_point(gt)
    pred = seg.predict(points=[point], labels=[1])
    outs = _outputs(seg, pred)
    if protocol.prompt == "point":
        return {k: dice(m, gt) for k, (m, _) in outs.items()}, pred
    # clicks: each output refines its own answer (the base model gets its own clicks), each
    # from the same generator state so equal answers get equal clicks
    scores = {}
    start = rng.bit_generator.state
    for name, (mask, lowres) in outs.items():
        rng.bit_generator.state = start
        points, labels = [point], [1]
        for _ in range(protocol.clicks):
            click = corrective_click(mask, gt, rng)
            if click is None:
                break
            points.append(click[0])
            labels.append(click[1])
            kw = {"output": "base"} if name == "base" and "base_masks" in pred.extras else {}
            p = seg.predict(points=points, labels=labels, mask_input=lowres, **kw)
            mask, lowres = p.mask, p.lowres_logits
        scores[name] = dice(mask, gt)
    return scores, pred


def _label_plane(files: RecentFiles, sample: Any) -> np.ndarray:
    """The label plane of a sample at original size."""
    label = files.label(sample.label)
    if sample.slice_index is None:
        return label
    return volume_slice(label, sample.slice_index, sample.axis)


def evaluate_samples(model: torch.nn.Module, samples: Iterable[Any], protocols: list[Protocol],
                     cache: Any = None, window: str | None = None,
                     on_result: Callable[[PromptResult], None] | None = None,
                     ) -> Iterator[PromptResult]:
    """Evaluate `model` on slice samples (`segmote.data.datasets.SliceSample`) under protocols.

    cache: an `EmbeddingCache` built with the same backbone (its features are used, and missing
        entries are encoded into it); None encodes every slice here.
    Samples of one slice share one encoder pass (keep them together, as `slice_samples` does).
    """
    from segmote.data.cache import _pair, _read_plane
    from segmote.modeling.encoder_output import EncoderOutput

    seg = Segmenter(model)
    files = RecentFiles()
    current = None
    asked: set[tuple[Any, ...]] = set()  # (slice, class) already asked by text alone
    samples = list(samples)
    for sample in samples:
        key = (str(sample.image), sample.slice_index, sample.axis)
        if key != current:
            if cache is not None:
                cached = cache.get(sample)
                enc = EncoderOutput(cached.image_embedding[None].to(seg.device),
                                    cached.early_features[None].to(seg.device))
                with torch.inference_mode():
                    seg.set_features(model.prepare_image(enc), cached.geometry.orig_hw)
            else:
                pair = _pair(sample)
                image, _ = _read_plane(pair, files.image(pair.image), files.label(pair.label))
                seg.set_image(image, pair.modality, window if pair.modality == "CT" else None)
            current = key
        plane = _label_plane(files, sample)
        gt = plane == sample.class_value
        # a text prompt names the whole class: every instance of it (`class_mask`)
        whole = class_mask(plane, sample)
        for protocol in protocols:
            target = whole if protocol.prompt in ("text", "auto") else gt
            if protocol.prompt in ("text", "auto"):
                # the query names the class, not the instance: the instances of one slice
                # (nuclei) are one query, counted once
                query = (protocol.prompt, protocol.seed, *key, sample.class_name)
                if query in asked:
                    continue
                asked.add(query)
            scores, pred = evaluate_slice(seg, target, protocol,
                                          sample_seed(protocol.seed, sample), sample.class_name)
            token = experts = None
            if "selected_token" in pred.extras:
                token = int(pred.extras["selected_token"][0])
                experts = [int(e) for e in pred.extras["expert_index"][:, 0, token]]
            result = PromptResult(sample.dataset, sample.case_id, sample.slice_index,
                                  sample.class_name, int(sample.class_value), sample.modality,
                                  protocol.prompt, scores, token, experts)
            if on_result is not None:
                on_result(result)
            yield result


def summarize_results(results: list[PromptResult]) -> dict[str, Any]:
    """Mean Dice (and, for 3-D protocols, NSD and HD95) per prompt, output, dataset and class,
    with n.

    Returns {prompt: {output: {"mean": mean over datasets of the class-mean Dice,
    "datasets": {dataset: {"dice": class-mean, "n": samples,
    "classes": {class: {"dice", "n"}}}}}}}; 3-D protocols add "nsd" and "hd95" (and "mean_nsd", "mean_hd95") beside every "dice".
    """
    acc: dict[tuple[str, str, str, str], dict[str, list[float]]] = {}
    for r in results:
        for output, d in r.dice.items():
            entry = acc.setdefault((r.prompt, output, r.dataset, r.class_name), {})
            entry.setdefault("dice", []).append(d)
            for metric, values in (("nsd", r.nsd), ("hd95", r.hd95)):
                if values is not None:
                    entry.setdefault(metric, []).append(values[output])
    out: dict[str, Any] = {}
    for (prompt, output, dataset, cls), metrics in sorted(acc.items()):
        ds = out.setdefault(prompt, {}).setdefault(output, {"datasets": {}})["datasets"]
        entry = ds.setdefault(dataset, {"classes": {}})
        entry["classes"][cls] = {m: float(np.mean(v)) for m, v in metrics.items()}
        entry["classes"][cls]["n"] = len(metrics["dice"])
    for prompt in out.values():
        for output in prompt.values():
            for entry in output["datasets"].values():
                classes = list(entry["classes"].values())
                for metric in ("dice", "nsd", "hd95"):
                    if metric in classes[0]:
                        entry[metric] = float(np.mean([c[metric] for c in classes]))
                entry["n"] = int(sum(c["n"] for c in classes))
            datasets = list(output["datasets"].values())
            output["mean"] = float(np.mean([e["dice"] for e in datasets]))
            for metric in ("nsd", "hd95"):
                if metric in datasets[0]:
                    output[f"mean_{metric}"] = float(np.mean([e[metric] for e in datasets]))
    return out
