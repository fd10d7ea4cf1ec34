"""Training steps: one step on real weights and a real CT slice, the NaN guard, and a step with
text prompts and PPT. (Whole runs: test_train_runs.py.)

Real weights (LiteMedSAM) and real data (the bundled lung CT crop).
"""

from __future__ import annotations

import contextlib
import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch

from lung_case import CT, LABEL, PLAIN
from segmote.training.config import TrainConfig, load_config
from segmote.training.step import Batch, TrainStep, train_step
from segmote.intensity import intensity_range
from segmote.transforms import ResizeGeometry, to_input_tensor


@pytest.fixture(scope="module")
def real_batch() -> tuple[Batch, Batch]:
    """A real CT slice (k = 8) encoded by the real LiteMedSAM encoder, twice (two prompts), with
    its tumour label."""
    from segmote.build import load_model
    from segmote.modeling.encoder_output import EncoderOutput

    model = load_model(adapter=None)
    ct = np.asarray(nib.load(CT).dataobj)
    lab = np.asarray(nib.load(LABEL).dataobj)
    geo = ResizeGeometry.for_shape(ct.shape[:2], model.img_size)
    images = torch.stack([to_input_tensor(ct[..., k], geo, intensity_range(ct, "CT"))
                          for k in (8,)])
    with torch.no_grad():
        enc: EncoderOutput = model.encode(images)
    # 256 x 256 slice, 256 input: the mask-resolution frame is the slice itself
    target = torch.from_numpy(lab[..., 8] > 0).float()[None, None]
    two = Batch(enc.image_embedding.expand(2, -1, -1, -1), enc.early_features.expand(2, -1, -1, -1),
                target.expand(2, -1, -1, -1), [[0, 0, 0], [0, 0, 1]], ["lung/tumour"] * 2,
                ["tumour"] * 2)
    return two, Batch(enc.image_embedding, enc.early_features, target, [[0, 0, 0]],
                      ["lung/tumour"], ["tumour"])


def _model(cfg: TrainConfig):
    from segmote.training.trainer import build_model
    return build_model(cfg, torch.device("cpu")).train()


def _adapter(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.adapter.state_dict().items()}


def test_step_trains_adapter_only_and_loss_decreases(real_batch):
    two, one = real_batch
    cfg = load_config(overrides=dict(lr=1e-3, refine_rounds=1, prompt_mix={"box": 0.5,
                                                                            "point": 0.5},
                                     **PLAIN))
    model = _model(cfg)
    base_before = {k: v.clone() for k, v in model.base.state_dict().items()}
    # every adapter parameter gets a gradient, no frozen one does (2 prompts, 2 rounds)
    torch.manual_seed(0)
    TrainStep(model, cfg).forward(two).loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad == name.startswith("adapter."), name
    model.zero_grad(set_to_none=True)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr)
    step = TrainStep(model, cfg.replace(refine_rounds=0, prompt_mix={"box": 1.0}))
    losses = []
    for _ in range(8):
        torch.manual_seed(0)  # same router noise and prompts every step: a fixed objective
        res = train_step(step, one, opt, params, 1.0, contextlib.nullcontext, None,
                         torch.device("cpu"))
        assert not res.skipped
        losses.append(res.loss)
    # discrete routing (top-1 expert, most confident token) makes the curve jumpy, not monotone
    assert min(losses[-4:]) < 0.7 * losses[0], losses
    assert np.mean(losses[-4:]) < np.mean(losses[:3]), losses
    for k, v in model.base.state_dict().items():
        assert torch.equal(v, base_before[k]), k


def test_non_finite_step_is_skipped(real_batch):
    _, batch = real_batch
    cfg = load_config(overrides=dict(refine_rounds=0, **PLAIN))
    model = _model(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    before = _adapter(model)
    emb = batch.image_embedding.clone()
    emb[0, :, 3, 3] = float("nan")  # a corrupt cache entry
    bad = dataclasses.replace(batch, image_embedding=emb)
    res = train_step(TrainStep(model, cfg), bad, opt, params, 1.0, contextlib.nullcontext, None,
                     torch.device("cpu"))
    assert res.skipped and not np.isfinite(res.loss)
    for k, v in _adapter(model).items():
        assert torch.equal(v, before[k]), k
    assert not opt.state  # AdamW moments untouched
    res = train_step(TrainStep(model, cfg), batch, opt, params, 1.0, contextlib.nullcontext,
                     None, torch.device("cpu"))
    assert not res.skipped



def test_text_and_ppt_step_trains_every_adapter_part(real_batch):
    """With text prompts and PPT (the default config), a step whose rows are prompt-free (text
    alone) and box + text gives every adapter parameter a gradient; an absent class turns a
    prompt-free row's target empty."""
    from segmote.text.classes import class_embeddings

    _, one = real_batch
    cfg = load_config(overrides=dict(refine_rounds=1, text_with_prompt=1.0, absent_prob=1.0,
                                     prompt_mix={"box": 0.5, "point": 0.0, "text": 0.5}))
    cfg = cfg.replace(progressive=None)  # a constant mix
    texts = class_embeddings(["tumour", "lung"])
    model = _model_text(cfg, texts.dim)
    step = TrainStep(model, cfg, dict(zip(texts.names, texts.embeddings)))
    from segmote.simulated_prompts import sample_prompt
    gt = one.target[0, 0].numpy() > 0.5

    def kind(seed: list[int]) -> str:
        return sample_prompt(gt, np.random.default_rng(seed), step.mix, 0.1, True, "tumour",
                             1.0).kind

    # two prompt-free rows and two box + text rows
    seeds = [s for k in ("text", "box") for s in
             [[0, 0, p] for p in range(64) if kind([0, 0, p]) == k][:2]]
    with torch.no_grad():  # as after some training: the zero-initialised output layers
        for layer in (model.adapter.ppt.to_token, model.adapter.text.to_token.layers[-1]):
            layer.weight.normal_(0, 0.05)  # pass gradients on to the rest of their module
    four = Batch(one.image_embedding.expand(4, -1, -1, -1),
                 one.early_features.expand(4, -1, -1, -1), one.target.expand(4, -1, -1, -1),
                 seeds, ["lung/tumour"] * 4, ["tumour"] * 4, [["lung"]] * 4)
    torch.manual_seed(0)
    step.forward(four).loss.backward()
    for name, p in model.adapter.named_parameters():
        assert p.grad is not None, name
        if name.startswith(("ppt.", "text.")):  # the new parts really learn from this step
            assert p.grad.abs().sum() > 0, name
    assert cfg.prompt_mix_at(0)["text"] == pytest.approx(0.5)
    ramp = cfg.replace(progressive=0.1, epochs=3)
    assert [round(ramp.prompt_mix_at(e)["text"], 3) for e in range(3)] == [0.1, 0.3, 0.5]


def _model_text(cfg: TrainConfig, text_dim: int):
    from segmote.training.trainer import build_model
    return build_model(cfg, torch.device("cpu"), text_dim).train()


def test_recomputed_rounds_give_the_same_loss_and_gradients(real_batch):
    """Activation checkpointing (recompute_rounds, issue 21 case 15) only trades memory for
    time: the loss and every gradient are bit-identical (router noise on: its RNG state is
    restored for the recomputation), and so is trim_memory (heap pages given back between
    prompt groups)."""
    two, _ = real_batch
    grads = []
    for recompute, trim in ((False, False), (True, False), (True, True)):
        cfg = load_config(overrides=dict(refine_rounds=2, recompute_rounds=recompute,
                                         trim_memory=trim,
                                         prompt_mix={"box": 0.5, "point": 0.5}, **PLAIN))
        torch.manual_seed(0)
        model = _model(cfg)
        torch.manual_seed(1)
        out = TrainStep(model, cfg)(two)
        out.loss.backward()
        grads.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters()
                                          if p.grad is not None}))
    (loss_a, a), *others = grads
    for loss_b, b in others:
        assert torch.equal(loss_a, loss_b) and a.keys() == b.keys() and len(a) > 10
        for name in a:
            assert torch.equal(a[name], b[name]), name
