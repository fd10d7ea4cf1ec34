"""Routing made visible: which expert token answered each prompt, which expert each token took,
router probabilities, and the expert tokens' attention maps as a PNG (the paper's Fig. 7 style).
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segmote.atomic import atomic_path
from segmote.errors import InputError
from segmote.modeling.segmote import SegMoTEOutput

if TYPE_CHECKING:
    from segmote.transforms import ResizeGeometry


Routing = SegMoTEOutput | Mapping[str, Any]


def _field(output: Routing, name: str) -> Tensor:
    value = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
    if value is None:
        raise InputError(f"no {name} in this output: routing needs a SegMoTE model")
    return torch.as_tensor(value)


def routing_table(output: Routing) -> list[dict[str, Any]]:
    """One dict per prompt, from the last decoder block's router.

    output: a `SegMoTEOutput`, or `Prediction.extras` of the predictor (same field names).

    Keys: prompt (index), selected_token (the token whose mask is returned), confidence (its top
    router probability), experts (chosen expert per token, length T), router_probs (T x E
    softmax of the routing logits; noisy only if the model was in training mode).
    """
    probs = _field(output, "router_logits")[-1].detach().float().softmax(-1).cpu()  # B, T, E
    experts = _field(output, "expert_index")[-1].cpu()
    selected = _field(output, "selected_token").cpu()
    rows = []
    for b in range(probs.shape[0]):
        t = int(selected[b])
        rows.append({"prompt": b, "selected_token": t,
                     "confidence": round(float(probs[b, t].max()), 4),
                     "experts": [int(e) for e in experts[b]],
                     "router_probs": [[round(float(p), 4) for p in row] for row in probs[b]]})
    return rows


def format_routing_table(rows: list[dict[str, Any]]) -> str:
    """Plain text for `segmote predict --routing`: one line per prompt.

    Rows may carry "label" (output label of the object) and "slice" (volume slice index) keys,
    as `predict_file` adds; they become the first columns.
    """
    has_label = any("label" in r for r in rows)
    has_slice = any(r.get("slice") is not None for r in rows)
    head = ("LABEL  " if has_label else "PROMPT  ") + ("SLICE  " if has_slice else "")
    lines = [head + "TOKEN  CONF    EXPERTS (per token)  ROUTER PROBS (selected token)"]
    for r in rows:
        probs = " ".join(f"{p:.2f}" for p in r["router_probs"][r["selected_token"]])
        first = f"{r['label']:>5}  " if has_label else f"{r['prompt']:>6}  "
        if has_slice:
            first += f"{r['slice']:>5}  "
        lines.append(f"{first}{r['selected_token']:>5}  {r['confidence']:.3f}  "
                     f"{str(r['experts']):<19}  {probs}")
    return "\n".join(lines)


def expert_usage(output: Routing, num_experts: int | None = None) -> Tensor:
    """Counts (num_blocks, T, E): how often token t was routed to expert e over the prompts.

    Summed over many images of one dataset, this shows the paper's specialisation claim (each
    modality mostly picks a different expert token / expert).
    """
    index = _field(output, "expert_index").detach().cpu()  # blocks, B, T
    e = num_experts or _field(output, "router_logits").shape[-1]
    return F.one_hot(index, e).sum(1)


def _display(image: np.ndarray) -> np.ndarray:
    """Any (H, W) / (H, W, 3|4) array -> float (H, W[, 3]) in [0, 1] (1..99 percentile stretch)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., :3]
    lo, hi = np.percentile(x, (1, 99))
    return np.clip((x - lo) / max(hi - lo, 1e-8), 0, 1)


def _attention_on_image(attention: Tensor, hw: tuple[int, int],
                        geometry: ResizeGeometry | None) -> np.ndarray:
    """(T, h, w) over the padded input -> (T, H, W), each map scaled to [0, 1]."""
    att = attention.detach().float().cpu()[None]
    if geometry is not None:  # crop the zero padding, resize to the original grid
        att = geometry.logits_to_original(att)
    if tuple(att.shape[-2:]) != hw:
        att = F.interpolate(att, size=hw, mode="bilinear", align_corners=False)
    att = att[0]
    lo = att.flatten(1).amin(1)[:, None, None]
    hi = att.flatten(1).amax(1)[:, None, None]
    return ((att - lo) / torch.clamp(hi - lo, min=1e-12)).numpy()


def save_attention_png(image: np.ndarray, attention: Tensor | np.ndarray, path: str | Path,
                       geometry: ResizeGeometry | None = None,
                       titles: list[str] | None = None) -> Path:
    """Render the image and each expert token's attention map side by side as a PNG.

    image: (H, W) or (H, W, 3) array (the original image).
    attention: (T, h, w), e.g. `SegMoTEOutput.attention[b]`, over the padded encoder input.
    geometry: the image's `ResizeGeometry`, to drop the padding before resizing to (H, W);
        without it the map is resized to (H, W) as is (right for square images).
    Written atomically (temp file + rename). Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    att = torch.as_tensor(np.asarray(attention) if not isinstance(attention, Tensor) else attention)
    if att.ndim != 3:
        raise InputError(f"attention must be (T, h, w), got shape {tuple(att.shape)}")
    shown = _display(image)
    maps = _attention_on_image(att, shown.shape[:2], geometry)
    t = maps.shape[0]
    titles = titles or [f"expert token {i}" for i in range(t)]
    fig = Figure(figsize=(2.6 * (t + 1), 2.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, t + 1)
    gray = None if shown.ndim == 3 else "gray"
    axes[0].imshow(shown, cmap=gray)
    axes[0].set_title("image", fontsize=9)
    for i in range(t):
        axes[i + 1].imshow(shown, cmap=gray)
        axes[i + 1].imshow(maps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes[i + 1].set_title(titles[i], fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
