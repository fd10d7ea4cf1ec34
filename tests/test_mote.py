"""MoTE building blocks: the balance loss by hand, router determinism / noise, gates, experts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segmote.errors import ConfigError
from segmote.modeling.mote import MoTE, TokenRouter, cv_squared, load_balance_loss
from segmote.modeling.segmote import MoTEConfig

D, E, T = 16, 4, 4


def _one_hot_routing(choices: list[int], num_experts: int = E) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (1, N, E) one-hot and expert_index (1, N, 1) for tokens routed to `choices`."""
    index = torch.tensor(choices).view(1, -1, 1)
    return F.one_hot(index[..., 0], num_experts).float(), index


# --- load-balance loss, hand-computed --------------------------------------------------------
def test_cv_squared_uses_population_variance() -> None:
    # [4, 0, 0, 0]: mean 1, population variance (9 + 1 + 1 + 1) / 4 = 3 (unbiased would be 4)
    assert cv_squared(torch.tensor([4.0, 0, 0, 0])).item() == pytest.approx(3.0)
    # [2, 2, 0, 0]: mean 1, variance 1
    assert cv_squared(torch.tensor([2.0, 2, 0, 0])).item() == pytest.approx(1.0)
    # [3, 1]: mean 2, variance 1 -> 1/4
    assert cv_squared(torch.tensor([3.0, 1.0])).item() == pytest.approx(0.25)
    assert cv_squared(torch.tensor([5.0])).item() == 0.0  # one value: 0, not NaN
    assert cv_squared(torch.zeros(4)).item() == 0.0  # the 1e-10 keeps 0/0 finite


def test_balance_loss_zero_when_perfectly_balanced() -> None:
    gates, index = _one_hot_routing([0, 1, 2, 3, 3, 2, 1, 0])
    assert load_balance_loss(gates, index, E).item() == 0.0


def test_balance_loss_grows_with_imbalance_hand_computed() -> None:
    cases = {  # choices of 4 tokens -> CV^2(importance) + CV^2(load), both equal with one-hot gates
        (0, 1, 2, 3): 0.0,
        (0, 0, 1, 1): 2 * 1.0,  # counts [2, 2, 0, 0]
        (0, 0, 0, 1): 2 * 1.5,  # counts [3, 1, 0, 0]: mean 1, var (4 + 0 + 1 + 1) / 4 = 1.5
        (0, 0, 0, 0): 2 * 3.0,  # counts [4, 0, 0, 0]
    }
    losses = []
    for choices, expected in cases.items():
        gates, index = _one_hot_routing(list(choices))
        loss = load_balance_loss(gates, index, E).item()
        assert loss == pytest.approx(expected, rel=1e-6)
        losses.append(loss)
    assert losses == sorted(losses)


def test_balance_loss_importance_uses_gate_values() -> None:
    # two tokens, soft gates: importance [1.5, 0.5, 0, 0] (mean 0.5, var (1 + 0 + .25 + .25)/4)
    gates = torch.tensor([[0.75, 0.25, 0, 0], [0.75, 0.25, 0, 0]])
    index = torch.tensor([[0], [0]])  # load [2, 0, 0, 0]: mean 0.5, var (2.25 + 3 * .25) / 4
    expected = (1.5 / 4) / 0.25 + (3.0 / 4) / 0.25
    assert load_balance_loss(gates, index, E).item() == pytest.approx(expected, rel=1e-6)


def test_balance_loss_sums_over_groups() -> None:
    g1, i1 = _one_hot_routing([0, 0, 0, 0])
    g2, i2 = _one_hot_routing([0, 0, 1, 1])
    grouped = load_balance_loss(torch.cat([g1, g2]), torch.cat([i1, i2]), E)
    assert grouped.item() == pytest.approx(6.0 + 2.0, rel=1e-6)
    flat = load_balance_loss(g1[0], i1[0], E)  # (N, E) without a group dimension
    assert flat.item() == pytest.approx(6.0, rel=1e-6)


# --- router ----------------------------------------------------------------------------------
def test_router_eval_deterministic_and_train_noisy() -> None:
    torch.manual_seed(0)
    router = TokenRouter(D, E, top_k=1)
    x = torch.randn(3, T, D)
    router.eval()
    a, b = router(x), router(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.expert_index, b.expert_index)
    assert torch.equal(a.logits, router.w_gate(x))  # eval: clean logits
    router.train()
    c, d = router(x), router(x)
    assert not torch.allclose(c.logits, d.logits)
    assert not torch.allclose(c.logits, a.logits)
    # over many noisy draws, some token changes its expert
    picks = {tuple(router(x).expert_index.flatten().tolist()) for _ in range(20)}
    assert len(picks) > 1


def test_router_without_noisy_gating_is_deterministic_in_training() -> None:
    router = TokenRouter(D, E, noisy_gating=False).train()
    x = torch.randn(2, T, D)
    assert torch.equal(router(x).logits, router(x).logits)


def test_top1_gates_are_exactly_one_hot_but_router_gets_gradient() -> None:
    torch.manual_seed(1)
    router = TokenRouter(D, E, top_k=1).eval()
    x = torch.randn(2, T, D)
    out = router(x)
    expected = F.one_hot(out.expert_index[..., 0], E).float()
    assert torch.equal(out.gates, expected)  # forward: exactly 1 and 0
    (out.gates * torch.randn_like(out.gates)).sum().backward()
    assert router.w_gate.weight.grad is not None
    assert router.w_gate.weight.grad.abs().sum() > 0  # straight-through


def test_top2_gates_softmax_over_chosen_logits() -> None:
    torch.manual_seed(2)
    router = TokenRouter(D, E, top_k=2).eval()
    x = torch.randn(2, T, D)
    out = router(x)
    assert out.expert_index.shape == (2, T, 2)
    assert torch.allclose(out.gates.sum(-1), torch.ones(2, T))
    assert ((out.gates > 0).sum(-1) == 2).all()
    top = out.logits.topk(2, -1).values.softmax(-1)
    assert torch.allclose(out.gates.gather(-1, out.expert_index), top)


def test_router_rejects_bad_top_k() -> None:
    with pytest.raises(ValueError, match="top_k"):
        TokenRouter(D, E, top_k=5)


# --- experts ---------------------------------------------------------------------------------
def test_mote_top1_equals_the_chosen_expert() -> None:
    torch.manual_seed(3)
    mote = MoTE(D, num_experts=E, rank=8, top_k=1).eval()
    x = torch.randn(2, T, D)
    out = mote(x)
    assert out.tokens.shape == (2, T, D)
    idx = out.router.expert_index[..., 0]
    for b in range(2):
        for t in range(T):
            e = idx[b, t]
            manual = mote.shared(F.gelu(x[b, t] @ mote.down[e] + mote.down_bias[e]))
            assert torch.allclose(out.tokens[b, t], manual, atol=1e-6)


def test_mote_balance_loss_reaches_the_router() -> None:
    torch.manual_seed(4)
    mote = MoTE(D, num_experts=E, rank=8).train()
    x = torch.randn(4, T, D)
    route = mote(x).router
    loss = load_balance_loss(route.gates, route.expert_index, E)
    assert loss.item() > 0
    loss.backward()
    assert mote.router.w_gate.weight.grad.abs().sum() > 0
    assert mote.router.w_noise.weight.grad.abs().sum() > 0


def test_mote_unrouted_experts_get_no_gradient() -> None:
    """Sparse: an expert nobody chose contributes nothing and learns nothing this step."""
    torch.manual_seed(5)
    mote = MoTE(D, num_experts=E, rank=8).eval()
    x = torch.randn(1, 1, D)  # one token -> one expert
    out = mote(x)
    out.tokens.sum().backward()
    chosen = int(out.router.expert_index[0, 0, 0])
    per_expert = mote.down.grad.abs().sum((1, 2))
    assert per_expert[chosen] > 0
    assert all(per_expert[e] == 0 for e in range(E) if e != chosen)


def test_config_validation_and_round_trip() -> None:
    cfg = MoTEConfig(num_expert_tokens=2, num_experts=3, top_k=2, expert_rank=8, head_dim=4)
    assert MoTEConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="top_k"):
        MoTEConfig(num_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="num_experts"):
        MoTEConfig(num_experts=0)
    with pytest.raises(ConfigError, match="unknown field"):
        MoTEConfig.from_dict({"num_experts": 4, "width": 256})
    assert MoTEConfig().balance_loss_weight == 0.01
    assert math.isclose(MoTEConfig().to_dict()["balance_loss_weight"], 0.01)
    # adapters written before the rename store "balance_weight"
    assert MoTEConfig.from_dict({"balance_weight": 0.5}).balance_loss_weight == 0.5
