"""The learnable part of SegMoTE: `MoTEAdapter` (expert tokens, one MoTE per decoder block, the
expert mask head, the text and PPT prompt modules, the presence head) and its hyper-parameters,
`MoTEConfig`. `segmote.modeling.segmote.SegMoTE` wires them into a frozen SAM decoder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from segmote.errors import ConfigError
from segmote.modeling.expert_head import ExpertMaskHead
from segmote.modeling.mote import MoTE
from segmote.modeling.ppt import PromptTokenizer, TextPrompt
from segmote.modeling.presence import PresenceHead


@dataclass(frozen=True)
class MoTEConfig:
    """Adapter hyper-parameters (paper values by default). The width D comes from the backbone.

    Attributes:
        num_expert_tokens: T expert tokens.
        num_experts: E experts per decoder block.
        top_k: experts per token (k = 1: straight-through router gradient).
        expert_rank: r of each expert's D -> r projection and the shared r -> r -> D.
        noisy_gating: noisy router logits in training mode (never at eval).
        balance_loss_weight: weight of the load-balancing loss (applied by the trainer; read
            from older adapter headers as "balance_weight").
        head_dim: channels C of the fused mask-head map; None -> D // 8 (SAM's upscaled width).
        text_dim: width of the text embeddings the adapter takes (384: all-MiniLM-L6-v2); None ->
            no text prompt (adapters trained before text prompts existed).
        ppt_queries: Q queries of progressive prompt tokenization; 0 -> no PPT.
        presence: a class presence head (`segmote.modeling.presence`; needs text_dim), trained
            after the rest (`segmote.training.presence`) to drop absent classes in the
            automatic mode.
    """

    num_expert_tokens: int = 4
    num_experts: int = 4
    top_k: int = 1
    expert_rank: int = 64
    noisy_gating: bool = True
    balance_loss_weight: float = 0.01
    head_dim: int | None = None
    text_dim: int | None = None
    ppt_queries: int = 0
    presence: bool = False

    def __post_init__(self) -> None:
        for name in ("num_expert_tokens", "num_experts", "top_k", "expert_rank"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"MoTE config: {name} must be a positive integer, "
                                  f"got {getattr(self, name)!r}")
        if self.top_k > self.num_experts:
            raise ConfigError(f"MoTE config: top_k ({self.top_k}) exceeds num_experts "
                              f"({self.num_experts})")
        if self.balance_loss_weight < 0:
            raise ConfigError("MoTE config: balance_loss_weight must be >= 0")
        for name in ("text_dim",):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"MoTE config: {name} must be a positive integer or null, "
                                  f"got {v!r}")
        if isinstance(self.ppt_queries, bool) or not isinstance(self.ppt_queries, int) \
                or self.ppt_queries < 0:
            raise ConfigError(f"MoTE config: ppt_queries must be an integer >= 0, "
                              f"got {self.ppt_queries!r}")
        if not isinstance(self.presence, bool) or self.presence and self.text_dim is None:
            raise ConfigError(f"MoTE config: presence must be true or false and needs text_dim, "
                              f"got {self.presence!r}")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim < 1):
            raise ConfigError(f"MoTE config: head_dim must be a positive integer or null, "
                              f"got {self.head_dim!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MoTEConfig:
        if "balance_weight" in values:  # its name until the sampling balance got one too
            values = {("balance_loss_weight" if k == "balance_weight" else k): v
                      for k, v in values.items()}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"MoTE config: unknown field(s) {', '.join(unknown)}")
        return cls(**values)


class MoTEAdapter(nn.Module):
    """Every learnable part of SegMoTE: expert tokens, one MoTE per decoder block, the head,
    and (when configured) the text prompt projection and the PPT module."""

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
        head_dim = config.head_dim or embed_dim // 8
        self.text = TextPrompt(config.text_dim, embed_dim, head_dim) if config.text_dim else None
        self.ppt = PromptTokenizer(embed_dim, config.ppt_queries, config.text_dim) \
            if config.ppt_queries else None
        self.presence = PresenceHead(embed_dim, config.text_dim) \
            if config.presence and config.text_dim else None
