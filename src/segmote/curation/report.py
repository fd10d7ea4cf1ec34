"""Self-contained HTML report of a curation: score distributions (accepted vs rejected), what
was rejected and why with thumbnails, and the modality x class balance before and after.

Figures are PNGs inlined as base64, so the report is one file that opens anywhere offline.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from segmote.curation.candidates import Candidate
from segmote.curation.pipeline import CurationResult
from segmote.curation.scores import REASONS, normalized_plane
from segmote.atomic import atomic_write_text
from segmote.data.files import RecentFiles
from segmote.slicing import volume_slice

HIST_SCORES = ("quality", "sharpness", "contrast", "entropy", "foreground_ratio", "components",
               "isolated_fraction", "pixels")
THUMBS_PER_REASON = 6
_CSS = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
        "figure{display:inline-block;margin:4px;font-size:11px;width:140px;vertical-align:top}"
        "img{max-width:100%}")


def _png(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _histograms(cands: list[Candidate]) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(14, 6))
    for ax, key in zip(axes.ravel(), HIST_SCORES):
        for label, keep in (("accepted", True), ("rejected", False)):
            vals = np.array([c.scores[key] for c in cands
                             if key in c.scores and (c.reason is None) == keep], float)
            if key == "pixels":
                vals = np.log10(np.maximum(vals, 1))
            if len(vals):
                ax.hist(vals, bins=30, alpha=0.6, label=f"{label} ({len(vals)})")
        ax.set_title("log10(pixels)" if key == "pixels" else key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return f'<img src="{_png(fig)}" alt="score histograms">'


def _planes(files: RecentFiles, c: Candidate) -> tuple[np.ndarray, np.ndarray]:
    """The image and label planes of a candidate for its thumbnail."""
    s = c.sample
    image, label = files.image(s.image), files.label(s.label)
    if s.slice_index is None and label.ndim == 3:  # a whole-case entry: middle slice
        k = label.shape[s.axis] // 2
        return volume_slice(image, k, s.axis), volume_slice(label, k, s.axis)
    if s.slice_index is not None:
        return volume_slice(image, s.slice_index, s.axis), volume_slice(label, s.slice_index,
                                                                        s.axis)
    return image, label


def _thumbnail(image: np.ndarray, mask: np.ndarray, modality: str | None) -> str:
    import matplotlib.pyplot as plt

    x, _ = normalized_plane(image, modality)
    fig, ax = plt.subplots(figsize=(1.8, 1.8))
    ax.imshow(x, cmap="gray", vmin=0, vmax=1)
    if mask.any():
        ax.imshow(np.ma.masked_where(~mask, mask), cmap="autumn", alpha=0.5)
    ax.axis("off")
    return _png(fig)


def _rejections(result: CurationResult) -> str:
    cands = result.candidates
    by_reason: dict[str, list[int]] = {}
    for i in result.rejected():
        by_reason.setdefault(cands[i].reason or "", []).append(i)
    files = RecentFiles()
    parts = ["<h2>Rejected, by reason</h2>"]
    for reason in [r for r in REASONS if r in by_reason]:
        idx = by_reason[reason]
        parts.append(f"<h3>{html.escape(reason)}: {len(idx)}</h3><div>")
        for i in sorted(idx, key=lambda j: (str(cands[j].sample.label),
                                             cands[j].sample.slice_index or 0))[
                :THUMBS_PER_REASON]:
            s = cands[i].sample
            image, label = _planes(files, cands[i])
            mask = label == s.class_value if s.class_value > 0 else np.zeros(label.shape, bool)
            src = _thumbnail(image, mask, s.modality)
            where = f"{s.case_id}" + ("" if s.slice_index is None else f" slice {s.slice_index}")
            extra = ""
            if cands[i].duplicate_of is not None:
                kept = cands[cands[i].duplicate_of].sample
                extra = f"<br>repeats {html.escape(kept.case_id)} {kept.slice_index or ''}"
            parts.append(f'<figure><img src="{src}"><figcaption>{html.escape(s.dataset)}/'
                         f"{html.escape(where)}<br>{html.escape(s.class_name)}"
                         f"{extra}</figcaption></figure>")
        parts.append("</div>")
    return "\n".join(parts)


def _balance_table(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> str:
    rows = ["<table><tr><th>modality</th><th>class</th><th>before</th><th>after</th></tr>"]
    for m in sorted(before):
        for cls in sorted(before[m]):
            rows.append(f"<tr><td>{html.escape(m)}</td><td style='text-align:left'>"
                        f"{html.escape(cls)}</td><td>{before[m][cls]}</td>"
                        f"<td>{after.get(m, {}).get(cls, 0)}</td></tr>")
    return "\n".join(rows) + "</table>"


def render_report(result: CurationResult) -> str:
    """The report as one HTML string."""
    s = result.summary()
    reasons = "".join(f"<tr><td style='text-align:left'>{html.escape(r)}</td><td>{n}</td></tr>"
                      for r, n in s["rejected_by_reason"].items())
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in s["timings_s"].items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>segmote curation</title>"
            f"<style>{_CSS}</style></head><body><h1>segmote curation report</h1>"
            f"<p>{s['candidates']} masks scored; {s['rejected']} rejected; "
            f"{s['accepted_not_selected']} accepted but over the budget; "
            f"<b>{s['selected']} selected</b> (budget {s['budget']}, balanced by "
            f"{html.escape(result.config.balance)}, seed {result.config.seed})."
            f"<br>Timings: {html.escape(timing)}</p>"
            f"<table><tr><th>reason</th><th>rejected</th></tr>{reasons}</table>"
            f"<h2>Score distributions</h2>{_histograms(result.candidates)}"
            f"{_rejections(result)}"
            f"<h2>Modality x class balance (non-empty masks before; selection after)</h2>"
            f"{_balance_table(s['balance_before'], s['balance_after'])}</body></html>\n")


def write_report(result: CurationResult, path: str | Path) -> None:
    """Write the HTML report atomically."""
    atomic_write_text(Path(path), render_report(result))
