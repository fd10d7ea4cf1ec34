"""Parameter summary: trainable vs total parameters per module (`segmote info`, Python API).

    >>> rows = parameter_summary(model)        # SegMoTE: base.* and adapter.* parts
    >>> print(format_summary(rows))
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from segmote.modeling.expert_head import ExpertMaskHead
from segmote.modeling.sam import Sam
from segmote.modeling.segmote import MoTEAdapter, SegMoTE

MB = 1e6


@dataclass(frozen=True)
class ParamRow:
    """One line of the summary: a module's dotted name, trainable and total parameter counts,
    and the bytes its trainable parameters take."""

    module: str
    trainable: int
    total: int
    trainable_bytes: int


def _row(name: str, params: list[nn.Parameter]) -> ParamRow:
    trainable = [p for p in params if p.requires_grad]
    return ParamRow(name, sum(p.numel() for p in trainable), sum(p.numel() for p in params),
                    sum(p.numel() * p.element_size() for p in trainable))


def _expand(module: nn.Module) -> bool:
    """Containers whose parts are shown instead of the container itself."""
    return isinstance(module, (SegMoTE, Sam, MoTEAdapter, ExpertMaskHead))


def parameter_summary(model: nn.Module) -> list[ParamRow]:
    """Rows for the model's parts (SegMoTE: image encoder, prompt encoder, mask decoder, expert
    tokens, MoTE blocks, the expert head's parts), each parameter counted once, then "total"."""
    rows: list[ParamRow] = []

    def visit(prefix: str, module: nn.Module) -> None:
        own = list(module.parameters(recurse=False))
        if own:
            rows.append(_row(prefix or "(root)", own))
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if _expand(child):
                visit(full, child)
            else:
                rows.append(_row(full, list(child.parameters())))

    visit("", model)
    rows.append(_row("total", list(model.parameters())))
    return rows


def adapter_size_mb(model: nn.Module) -> float:
    """Memory of the trainable (adapter) parameters in MB (10^6 bytes)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / MB


def format_summary(rows: list[ParamRow]) -> str:
    """A plain-text table: MODULE, TRAINABLE, TOTAL; the total row last, then the adapter size."""
    header = ("MODULE", "TRAINABLE", "TOTAL")
    cells = [(r.module, f"{r.trainable:,}", f"{r.total:,}") for r in rows]
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(3)]

    def line(c: tuple[str, str, str]) -> str:
        return f"{c[0]:<{widths[0]}}  {c[1]:>{widths[1]}}  {c[2]:>{widths[2]}}"

    out = [line(header)] + [line(c) for c in cells[:-1]]
    out += ["-" * len(out[0]), line(cells[-1])]
    total = rows[-1]
    out.append(f"trainable (adapter): {total.trainable:,} parameters, "
               f"{total.trainable_bytes / MB:.2f} MB")
    return "\n".join(out)
