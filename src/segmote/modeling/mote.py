"""Token-level mixture of experts (MoTE): a noisy top-k router and small low-rank experts.

Written from the SegMoTE paper (docs/method.md, "Architecture"). Inside every two-way decoder
block the expert tokens skip SAM's frozen token MLP and go through `MoTE` instead:

    L  = X W_g                                   clean router logits, X: (B, T, D)
    L~ = L + softplus(X W_n) * N(0, 1)           training only (noisy gating); eval: L~ = L
    top-k of L~ per token, gates = softmax over the chosen logits, scattered into E slots
    y  = shared(sum_e gate_e * GELU(X A_e + a_e))     A_e: D x r per expert, shared: r -> r -> D

With k = 1 the forward gate is exactly 1, so the router would get no gradient from the masks;
a straight-through term `soft - stopgrad(soft)` (soft = softmax of L~ over all E) is added: it is
exactly 0 in the forward pass and carries the softmax gradient backwards.

Dimension names: B batch (prompts), T expert tokens, E experts, D width, r expert rank.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CV_EPS = 1e-10


class RouterOutput(NamedTuple):
    """logits: (B, T, E) the logits routing used (noisy in training, clean at eval);
    gates: (B, T, E) gate weights, zero outside the top-k; expert_index: (B, T, k), best first."""

    logits: Tensor
    gates: Tensor
    expert_index: Tensor


class MoTEOutput(NamedTuple):
    """tokens: (B, T, D) expert update; router: the routing (for the balance loss and logs)."""

    tokens: Tensor
    router: RouterOutput


def cv_squared(x: Tensor) -> Tensor:
    """Squared coefficient of variation Var(x) / (mean(x)^2 + 1e-10) over the last dimension.

    Uses the *population* variance (divide by n, `unbiased=False`), as the original noisy top-k
    MoE formulation does; a single value therefore gives 0, not NaN. (..., n) -> (...).
    """
    x = x.float()
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1)
    return var / (mean.squeeze(-1).pow(2) + CV_EPS)


def load_balance_loss(gates: Tensor, expert_index: Tensor, num_experts: int) -> Tensor:
    """CV^2(importance) + CV^2(load) over the routed tokens (a pure function).

    gates: (N, E) or (G, N, E) gate weights; importance_e = sum of the gates of expert e
        (differentiable: with straight-through gates its gradient is the router softmax's).
    expert_index: (N, k) or (G, N, k) chosen experts; load_e = number of (token, slot) pairs
        routed to e (a count, no gradient).
    A leading group dimension G (e.g. decoder blocks: one routing decision each) is summed over.
    Returns a scalar; 0 when every expert gets the same importance and the same load.
    """
    grouped = gates.ndim == 3
    gates = gates if grouped else gates.unsqueeze(0)
    expert_index = expert_index if grouped else expert_index.unsqueeze(0)
    importance = gates.sum(1)  # G, E
    load = F.one_hot(expert_index.flatten(1), num_experts).sum(1)  # G, E
    return cv_squared(torch.cat([importance, load.to(importance.dtype)])).sum()


class TokenRouter(nn.Module):
    """Noisy top-k gating over E experts, one decision per expert token.

    Args:
        embed_dim: token width D.
        num_experts: E.
        top_k: experts per token (paper: 1).
        noisy_gating: add learned-scale Gaussian noise to the logits in training mode.
    """

    def __init__(self, embed_dim: int, num_experts: int, top_k: int = 1,
                 noisy_gating: bool = True) -> None:
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..{num_experts}, got {top_k}")
        self.num_experts, self.top_k, self.noisy_gating = num_experts, top_k, noisy_gating
        self.w_gate = nn.Linear(embed_dim, num_experts, bias=False)
        self.w_noise = nn.Linear(embed_dim, num_experts, bias=False)
        # zero noise weights: the noise scale starts at softplus(0) = ln 2 for every expert,
        # so early training explores all experts evenly (as in the noisy top-k MoE recipe)
        nn.init.zeros_(self.w_noise.weight)

    def forward(self, x: Tensor) -> RouterOutput:
        """x: (B, T, D) -> RouterOutput with (B, T, E) logits and gates, (B, T, k) indices."""
        logits = self.w_gate(x)
        if self.training and self.noisy_gating:
            logits = logits + F.softplus(self.w_noise(x)) * torch.randn_like(logits)
        top_logits, top_index = logits.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, top_index, top_logits.softmax(-1))
        if self.top_k == 1 and logits.requires_grad:  # straight-through (adds exactly 0)
            soft = logits.softmax(-1)
            gates = gates + (soft - soft.detach())
        return RouterOutput(logits, gates, top_index)


class MoTE(nn.Module):
    """Router + E per-expert D -> r projections + a shared r -> r -> D projection.

    All E experts are evaluated densely and mixed by the (sparse) gates: with T = 4 tokens and
    E = 4 experts of rank 64 this is cheaper than gathering, and exact (unchosen gates are 0).

    Args:
        embed_dim: D (taken from the backbone's decoder).
        num_experts: E (paper 4).
        rank: r (paper 64).
        top_k: experts per token (paper 1).
        noisy_gating: see `TokenRouter`.
    """

    def __init__(self, embed_dim: int, num_experts: int = 4, rank: int = 64, top_k: int = 1,
                 noisy_gating: bool = True) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.router = TokenRouter(embed_dim, num_experts, top_k, noisy_gating)
        bound = 1.0 / math.sqrt(embed_dim)  # nn.Linear's default init, per expert
        self.down = nn.Parameter(torch.empty(num_experts, embed_dim, rank).uniform_(-bound, bound))
        self.down_bias = nn.Parameter(torch.empty(num_experts, rank).uniform_(-bound, bound))
        self.shared = nn.Sequential(nn.Linear(rank, rank), nn.GELU(), nn.Linear(rank, embed_dim))

    def forward(self, x: Tensor) -> MoTEOutput:
        """x: (B, T, D) expert tokens -> MoTEOutput with the (B, T, D) update.

        The balance loss is left to the caller (`load_balance_loss` on `router.gates` /
        `router.expert_index`), so several blocks' routings are scored in one go."""
        route = self.router(x)
        hidden = F.gelu(torch.einsum("btd,edr->bter", x, self.down) + self.down_bias)  # B,T,E,r
        mixed = (route.gates.unsqueeze(-1) * hidden).sum(2)  # B, T, r
        return MoTEOutput(self.shared(mixed), route)
