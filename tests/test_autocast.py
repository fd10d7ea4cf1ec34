"""Mixed precision, part 1 (issue 22): the CUDA autocast emulation itself, the router's fp32
routing, and one training step of every adapter part under each mode (`autocast_modes.MODES`).

Part 2 (real weights, the bundled samples): test_autocast_masks.py.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autocast_modes import MODES, mode_autocast, mode_device, mode_dtype, mode_step
from cuda_autocast import POLICY, cuda_autocast_on_cpu
from tiny_models import one_thread, tiny_sam  # noqa: F401 (one_thread: a module fixture)
from segmote.modeling.mote import TokenRouter, load_balance_loss
from segmote.modeling.segmote import MoTEConfig, SegMoTE
from segmote.training.config import load_config
from segmote.training.step import Batch, TrainStep, train_step


# --- the emulation ---------------------------------------------------------------------------
def test_policy_is_the_installed_torchs_cuda_table() -> None:
    registered = set(torch._C._dispatch_get_registrations_for_dispatch_key("AutocastCUDA"))
    assert set(POLICY) == registered


def test_emulation_casts_like_cuda_and_restores_cpu_autocast() -> None:
    a = torch.randn(4, 4)
    with cuda_autocast_on_cpu(torch.bfloat16):
        b = a @ a
        assert b.dtype == torch.bfloat16  # matmul: the low dtype
        assert b.softmax(-1).dtype == torch.float32  # CUDA: fp32 (CPU autocast: bf16)
        assert F.layer_norm(b, (4,)).dtype == torch.float32
        assert b.sum().dtype == torch.float32
        assert torch.cat([a, b]).dtype == torch.float32  # CUDA leaves cat alone: promotion
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU's own rules are back
        b = a @ a
        assert b.softmax(-1).dtype == torch.bfloat16
        assert F.layer_norm(b, (4,)).dtype == torch.bfloat16
    assert (a @ a).dtype == torch.float32


def _reported_router(router: TokenRouter, x: torch.Tensor) -> torch.Tensor:
    """`TokenRouter.forward` as issue 22 reported it crashing on an H200 (eval mode)."""
    logits = router.w_gate(x)
    top_logits, top_index = logits.topk(router.top_k, dim=-1)
    return torch.zeros_like(logits).scatter(-1, top_index, top_logits.softmax(-1))


def test_emulation_reproduces_the_gpu_crash_and_the_router_is_fixed() -> None:
    torch.manual_seed(0)
    router = TokenRouter(16, 4).eval()
    x = torch.randn(2, 4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast hides the bug
        _reported_router(router, x)
    with cuda_autocast_on_cpu(torch.bfloat16), pytest.raises(RuntimeError, match="scatter"):
        _reported_router(router, x)
    fp32 = router(x)
    for train in (False, True):
        router.train(train)
        with cuda_autocast_on_cpu(torch.bfloat16):
            out = router(x.bfloat16())
            loss = load_balance_loss(out.gates, out.expert_index, 4)
        assert out.logits.dtype == out.gates.dtype == loss.dtype == torch.float32
    # routing decisions in fp32: the same experts as without autocast (eval: no noise)
    assert torch.equal(router.eval()(x).expert_index, fp32.expert_index)


# --- one training step of every adapter part -------------------------------------------------
def _blob_batch(n: int, dim: int, seed: int) -> Batch:
    """n random embeddings (D = dim, 4 x 4) with a 16 x 16 square target each."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, 1, 16, 16)
    for i in range(n):
        y, x = (int(v) for v in torch.randint(1, 8, (2,), generator=g))
        target[i, 0, y:y + 6, x:x + 6] = 1
    return Batch(torch.randn(n, dim, 4, 4, generator=g), torch.randn(n, 8, 4, 4, generator=g),
                 target, [[0, 0, p] for p in range(n)], ["blobs/blob"] * n, ["blob"] * n,
                 [["other"]] * n)


def _tiny_adapter_model(device: torch.device) -> SegMoTE:
    torch.manual_seed(0)
    config = MoTEConfig(text_dim=16, ppt_queries=2, presence=True)
    model = SegMoTE(tiny_sam(), config).to(device).train()
    head, text = model.adapter.head, model.adapter.text
    with torch.no_grad():  # as after some training: zero-initialised output layers pass
        for w in (model.adapter.ppt.to_token.weight, text.to_token.layers[-1].weight,
                  text.to_bias.weight, head.hypernets.weights[-1], head.iou_delta.layers[-1].weight):
            w.normal_(0, 0.05)  # gradients on to the rest of their part
    return model


@pytest.mark.parametrize("mode", MODES)
def test_training_step_of_every_adapter_part(mode: str) -> None:
    """Forward + backward + optimiser under the mode: every trainable parameter of MoTE, the
    expert tokens and head, text and PPT moves (the presence head: its own step below)."""
    dev = mode_device(mode)
    model = _tiny_adapter_model(dev)
    cfg = load_config(overrides=dict(
        refine_rounds=1, text_with_prompt=0.5, absent_prob=0.5,
        prompt_mix={"box": 0.4, "point": 0.3, "text": 0.3})).replace(progressive=None)
    texts = {n: F.normalize(torch.randn(16), dim=0) for n in ("blob", "other")}
    step = TrainStep(model, cfg, texts)
    params = [p for n, p in model.named_parameters()
              if p.requires_grad and not n.startswith("adapter.presence.")]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-3)  # no weight decay: a moved weight had a gradient
    scaler = torch.amp.GradScaler(dev.type, init_scale=2.0 ** 8) \
        if mode_dtype(mode) == torch.float16 else None
    torch.manual_seed(0)
    rules, autocast = mode_step(mode)
    with rules:
        res = train_step(step, _blob_batch(12, 32, 0).to(dev), opt, params, 1.0, autocast,
                         scaler, dev)
    assert not res.skipped and np.isfinite(res.loss) and np.isfinite(res.grad_norm)
    names = [n for n, p in model.named_parameters() if p.requires_grad
             and not n.startswith("adapter.presence.")]
    frozen = [n for n, p, b in zip(names, params, before) if torch.equal(p.detach(), b)]
    assert not frozen, f"no update under {mode}: {frozen}"


@pytest.mark.parametrize("mode", MODES)
def test_presence_head_training_step(mode: str) -> None:
    from segmote.modeling.presence import image_summary
    from segmote.training.presence import PresenceSettings, fit_presence

    dev = mode_device(mode)
    model = _tiny_adapter_model(dev)
    head = model.adapter.presence
    batch = _blob_batch(4, 32, 1)
    with mode_autocast(mode)():
        summaries = list(image_summary(batch.image_embedding.to(dev)))
    items = [(None, {"blob": i % 2, "other": 1 - i % 2}) for i in range(4)]
    texts = {n: F.normalize(torch.randn(16), dim=0).to(dev) for n in ("blob", "other")}
    before = [p.detach().clone() for p in head.parameters()]
    with mode_autocast(mode)():
        losses = fit_presence(head, items, summaries, texts,
                              PresenceSettings(epochs=2, batch=8, weight_decay=0.0))
    assert np.isfinite(losses).all()
    assert all(not torch.equal(p.detach(), b) for p, b in zip(head.parameters(), before))


@pytest.mark.parametrize("mode", MODES)
def test_validation_predictions(mode: str) -> None:
    """The trainer's eval-mode decodes (validation with box, box + text, prompt-free): where
    the reported router crashed on a GPU (eval mode: no router noise to promote the logits)."""
    from segmote.training.step import predict_auto, predict_boxes

    dev = mode_device(mode)
    model = _tiny_adapter_model(dev).eval()
    batch = _blob_batch(4, 32, 2).to(dev)
    texts = {n: F.normalize(torch.randn(16), dim=0).to(dev) for n in ("blob", "other")}
    ref_box, ref_text = predict_boxes(model, batch, contextlib.nullcontext, texts)
    box, with_text = predict_boxes(model, batch, mode_autocast(mode), texts)
    logits, conf = predict_auto(model, batch, texts, mode_autocast(mode))
    ref_logits, _ = predict_auto(model, batch, texts, contextlib.nullcontext)
    assert np.isfinite(logits).all() and np.isfinite(conf).all()
    for a, b in ((box, ref_box), (with_text, ref_text), (logits > 0, ref_logits > 0)):
        assert (a == b).mean() > 0.95  # a random tiny model: agreement, not a Dice target


@pytest.mark.parametrize("mode", MODES)
def test_features_and_decode_in_different_precisions(mode: str) -> None:
    """Image features cached under autocast, prompts decoded without it (and the reverse): as
    when `set_image` and `predict` run in different contexts."""
    dev = mode_device(mode)
    model = _tiny_adapter_model(dev).eval()
    x = torch.rand(1, 3, 64, 64, device=dev)
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]], device=dev)
    text = F.normalize(torch.randn(2, 16), dim=-1).to(dev)
    with torch.inference_mode():
        for encode_in, decode_in in ((mode_autocast(mode), contextlib.nullcontext),
                                     (contextlib.nullcontext, mode_autocast(mode))):
            with encode_in():
                feats = model.prepare_image(model.encode(x))
            with decode_in():
                prompted = model.decode(feats, boxes=box)
                free = model.decode(feats, text=text, auto=True)
                base = model.base.decode(feats.image_embedding, boxes=box)  # no adapter
            assert torch.isfinite(base.masks.float()).all()
            for out in (prompted, free):
                assert torch.isfinite(out.masks.float()).all()
                assert out.router_logits.dtype == torch.float32
