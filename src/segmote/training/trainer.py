"""`fit()`: train a SegMoTE adapter on cached image embeddings, resumable and data-parallel.

Run layout (RUN_DIR):

    config.yaml                 resolved config          split.json        cases per dataset/part
    metrics.json                one entry per epoch      curves.png        loss and val Dice
    tensorboard/                TensorBoard events       cache/            embedding cache
    adapter_latest.safetensors  adapter_best.safetensors (best mean val Dice)
    state.safetensors           resume state (`segmote.training.state`, no pickle)

Randomness is keyed, not streamed: the epoch order is drawn from (seed, epoch), each sample's
prompts from (seed, epoch, its position in the epoch) and the router noise from (seed, step, rank),
so a resumed run — or the same global batch split over more ranks — repeats the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmote.errors import InputError, ParameterError
from segmote.modeling.segmote import SegMoTE
from segmote.training import distributed as ddp
from segmote.training.config import TrainConfig, save_config
from segmote.training.runlock import run_folder
from segmote.training.stages import check_initial_adapter, load_initial_adapter
from segmote.training.logs import RunLog, print_epoch, progress_bar
from segmote.training.loader import (CachedSlices, epoch_plan, make_loader, rank_slice,
                                     sample_weights)
from segmote.training.run_data import (cache_root, calibration_samples, class_texts,
                                       load_run_data, query_tables)
from segmote.training.state import load_state, rng_state, save_state, set_rng_state
from segmote.training.calibration import choose_calibration
from segmote.training.step import TrainStep, train_step
from segmote.training.validation import validate, validate_auto  # noqa: F401 (re-exported)

STATE_FILE = "state.safetensors"
PARTS = ("focal", "dice", "iou", "balance")


@dataclass
class TrainResult:
    """What a finished run did; every path is inside out_dir."""

    out_dir: Path
    epochs_done: int
    global_step: int
    skipped_steps: int
    best_dice: float | None
    best_epoch: int | None
    latest_adapter: Path
    best_adapter: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)




def build_model(cfg: TrainConfig, device: torch.device, text_dim: int | None = None) -> SegMoTE:
    """Frozen backbone + a fresh adapter, initialised from cfg.seed (same on every rank).
    text_dim: the text encoder's width (None: cfg without text prompts)."""
    from segmote.adapter import attach_adapter
    from segmote.build import build_base, resolve_weights
    from segmote.checkpoint import sha256_file

    base = build_base(cfg.model.backbone, cfg.model.checkpoint)
    path, expected = resolve_weights(cfg.model.backbone, cfg.model.checkpoint)
    torch.manual_seed(cfg.seed)
    model = attach_adapter(base, "new", cfg.mote_config(text_dim), backbone=cfg.model.backbone,
                           backbone_sha256=expected or sha256_file(path))
    if cfg.model.init_adapter is not None:
        check_initial_adapter(cfg, text_dim)
        load_initial_adapter(model, Path(cfg.model.init_adapter))
    if cfg.model.train_parts is not None:
        for name, part in model.adapter.named_children():
            part.requires_grad_(name in cfg.model.train_parts)
    return model.to(device)


def autocast_for(amp: str, device: torch.device) -> tuple[Callable[[], Any],
                                                          torch.amp.GradScaler | None]:
    """Autocast factory and grad scaler of the `amp` setting (`segmote.precision.amp_precision`:
    bf16 needs no scaler, fp16 gets one; "auto" stays fp32 on a CPU)."""
    from segmote.precision import amp_precision, autocast, grad_scaler

    precision = amp_precision(amp, device)
    return functools.partial(autocast, precision, device), grad_scaler(precision, device)


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


class _Run:
    """Mutable progress of a run: what the resume state holds besides tensors."""

    def __init__(self) -> None:
        self.epoch, self.step_in_epoch, self.global_step, self.skipped = 0, 0, 0, 0
        self.best_dice: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self.sums = dict.fromkeys(("loss", *PARTS, "count"), 0.0)  # this epoch, this rank

    def counters(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("epoch", "step_in_epoch", "global_step", "skipped",
                                              "best_dice", "best_epoch", "history")}


def _global_sums(run: _Run, info: ddp.DistInfo) -> dict[str, float]:
    t = torch.tensor([run.sums[k] for k in run.sums], dtype=torch.float64, device=info.device)
    return dict(zip(run.sums, ddp.all_reduce_sum(t, info).cpu().tolist()))


def _save_state(path: Path, run: _Run, model: SegMoTE, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None, cfg: TrainConfig,
                info: ddp.DistInfo) -> None:
    """All ranks call this (the epoch sums are reduced); rank 0 writes. Rank 0 keeps the global
    sums after a resume and the other ranks restart theirs at zero, so nothing counts twice."""
    sums = _global_sums(run, info)
    if info.is_main:
        save_state(path, {"run": run.counters(), "sums": sums, "config": cfg.to_dict(),
                          "adapter": model.adapter.state_dict(),
                          "optimizer": optimizer.state_dict(),
                          "scaler": scaler.state_dict() if scaler is not None else None,
                          "rng": rng_state(info.device)})


def _restore(path: Path, run: _Run, model: SegMoTE, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler | None, info: ddp.DistInfo) -> None:
    state = load_state(path)
    for key, value in state["run"].items():
        setattr(run, key, value)
    if info.is_main:
        run.sums = state["sums"]
    model.adapter.load_state_dict(state["adapter"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], info.device)


def _save_adapters(run: _Run, model: SegMoTE, out_dir: Path, improved: bool,
                   meta: dict[str, Any]) -> None:
    from segmote.adapter import save_adapter

    last = run.history[-1]
    meta = {**meta, "training": {"epoch": last["epoch"] + 1, "global_step": run.global_step,
                                 "val_mean_dice": last["val"]["mean_dice"]}}
    save_adapter(model, out_dir / "adapter_latest.safetensors", meta)
    if improved:
        save_adapter(model, out_dir / "adapter_best.safetensors", meta)


def _epoch_summary(run: _Run, info: ddp.DistInfo, lr: float, val: dict[str, Any]) -> None:
    sums = _global_sums(run, info)
    n = sums.pop("count")
    train = {k: (v / n if n else None) for k, v in sums.items()}
    train["skipped_steps"] = run.skipped
    run.history.append({"epoch": run.epoch, "step": run.global_step, "lr": lr, "train": train,
                        "val": val})


def fit(config: TrainConfig, data_dirs: list[str | Path], out_dir: str | Path,
          resume: bool = False, device: str | None = None, progress: bool = True,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train a SegMoTE adapter (see the module doc for what RUN_DIR holds).

    config: a validated `TrainConfig` (see `segmote.training.config.load_config`).
    data_dirs: nnU-Net / MSD / 2-D dataset folders (`segmote.data.datasets.discover`); ignored
        (may be empty) when config.data.manifest names a curation manifest.
    resume: continue from RUN_DIR/state.safetensors: same step, optimiser, schedule and RNG.
    device: "cpu", "cuda", "cuda:N" or None (GPU when available); under torchrun every rank
        uses the GPU of its LOCAL_RANK.
    on_step: called with the global step after every optimiser step (and state save).
    """
    out_dir = Path(out_dir)
    manifest = config.data.manifest  # absolute, so the saved config resumes from anywhere
    cfg = dataclasses.replace(config, data=dataclasses.replace(
        config.data, folders=[str(Path(d).resolve()) for d in data_dirs],
        manifest=str(Path(manifest).resolve()) if manifest is not None else None))
    info = ddp.setup(device)
    try:
        with run_folder(out_dir, resume, STATE_FILE, info.is_main, [Path(d) for d in data_dirs]):
            return _train(cfg, [Path(d) for d in data_dirs], out_dir, resume, info, progress,
                          on_step)
    finally:
        ddp.cleanup(info)


def _train(cfg: TrainConfig, data_dirs: list[Path], out_dir: Path, resume: bool,
           info: ddp.DistInfo, progress: bool,
           on_step: Callable[[int], None] | None) -> TrainResult:
    from segmote.data.cache import EmbeddingCache

    if cfg.optim.batch_size % info.world_size:
        raise InputError(f"batch_size {cfg.optim.batch_size} must be a multiple of the number of "
                         f"processes ({info.world_size})")
    state_path = out_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise ParameterError("resume", f"{out_dir}: nothing to resume (no {STATE_FILE}); drop "
                             "{resume}")
    if not resume and state_path.is_file():
        raise ParameterError("resume", f"{out_dir}: holds a run already; pass {{resume}} or "
                             "choose a new {out_dir}")
    if cfg.model.init_adapter is not None and not resume:
        check_initial_adapter(cfg)  # before anything is written
    datasets, _, train_samples, val_samples = load_run_data(cfg, data_dirs, out_dir, resume, info)
    if info.is_main:
        save_config(cfg, out_dir / "config.yaml")
    names = sorted({s.class_name for s in train_samples + val_samples})
    texts, text_meta = class_texts(cfg, names)
    model = build_model(cfg, info.device, text_meta.get("dim"))
    if cfg.runtime.engine != "torch":  # the encoder is only ever run by the cache
        from segmote.engine import use_engine
        use_engine(model, cfg.runtime.engine, cfg.model.backbone, model.backbone_sha256)
    cache = EmbeddingCache(cache_root(cfg), model,
                           f"{cfg.model.backbone}-{model.backbone_sha256[:16]}", cfg.data.window)
    cache.build(train_samples + val_samples, rank=info.rank, world_size=info.world_size,
                progress=progress and info.is_main)
    ddp.barrier(info)  # every shard of the cache is on disk before anyone reads it

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    autocast, scaler = autocast_for(cfg.runtime.amp, info.device)
    run = _Run()
    if resume:
        _restore(state_path, run, model, optimizer, scaler, info)
    model.train()
    step = TrainStep(model, cfg, texts)
    tables = query_tables(cfg, train_samples + val_samples)
    val_data = CachedSlices(cache, val_samples, cfg.seed, **tables)
    loop = _Loop(
        cfg, info, model, step, _wrap_ddp(step, info) if info.enabled else step, optimizer,
        params, autocast, scaler, CachedSlices(cache, train_samples, cfg.seed, **tables),
        val_data, val_data if cfg.calibration.calibrate_on == "val" else CachedSlices(
            cache, calibration_samples(cfg, train_samples, val_samples), cfg.seed, **tables),
        sample_weights([(s.dataset, s.class_name) for s in train_samples],
                       cfg.data.sampling_balance, cfg.data.sampling_balance_power),
        texts, state_path, progress, on_step,
        RunLog(out_dir, purge_step=run.global_step if resume else None) if info.is_main
        else None)
    meta = _adapter_metadata(datasets, train_samples, text_meta)
    try:
        while run.epoch < cfg.optim.epochs:
            lr = _train_epoch(loop, run)
            val = _validate_epoch(loop, run, meta)
            _epoch_summary(run, info, lr, val)
            improved = val["mean_dice"] is not None and (
                run.best_dice is None or val["mean_dice"] > run.best_dice)
            if improved:
                run.best_dice, run.best_epoch = val["mean_dice"], run.epoch
            if info.is_main:
                _save_adapters(run, model, out_dir, improved, meta)
            run.epoch, run.step_in_epoch = run.epoch + 1, 0
            run.sums = dict.fromkeys(run.sums, 0.0)
            _save_state(state_path, run, model, optimizer, scaler, cfg, info)
            if loop.log is not None:
                loop.log.epoch(run.history)
                if progress:
                    print_epoch(run.history[-1], run.skipped)
    finally:
        if loop.log is not None:
            loop.log.close()
    ddp.barrier(info)
    best = out_dir / "adapter_best.safetensors"
    return TrainResult(out_dir, run.epoch, run.global_step, run.skipped, run.best_dice,
                       run.best_epoch, out_dir / "adapter_latest.safetensors",
                       best if best.is_file() else None, run.history)


def _adapter_metadata(datasets: list[Any], train_samples: list[Any],
                      text_meta: dict[str, Any]) -> dict[str, Any]:
    """The header entries of the adapters a run writes (`segmote.adapter.card`)."""
    meta: dict[str, Any] = {
        "vocabulary": sorted({s.class_name for s in train_samples}),
        "training_data": {d.name: sorted(d.labels.values()) for d in datasets},
        # lets --auto ask an image only for classes trained on its modality
        "training_modalities": {d.name: d.modality for d in datasets}}
    if text_meta:
        meta["text"] = text_meta
    return meta


@dataclass
class _Loop:
    """What every epoch of `_train` works with."""

    cfg: TrainConfig
    info: ddp.DistInfo
    model: SegMoTE
    step: TrainStep
    step_module: torch.nn.Module  # `step`, wrapped for DDP when distributed
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]
    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    train_data: CachedSlices
    val_data: CachedSlices
    calib_data: CachedSlices  # val_data itself when calibrate_on is "val"
    weights: Any  # per-sample sampling weights (`sample_weights`)
    texts: dict[str, torch.Tensor]
    state_path: Path
    progress: bool
    on_step: Callable[[int], None] | None
    log: Any  # RunLog on the main process, else None


def _train_epoch(loop: _Loop, run: _Run) -> float:
    """The optimiser steps of epoch `run.epoch` (from `run.step_in_epoch` on a resume);
    returns the epoch's learning rate."""
    cfg, info = loop.cfg, loop.info
    lr = cfg.lr_at(run.epoch)
    for group in loop.optimizer.param_groups:
        group["lr"] = lr
    plan = epoch_plan(len(loop.train_data.samples), cfg.optim.batch_size, cfg.seed, run.epoch,
                      loop.weights, cfg.data.samples_per_epoch)
    loop.train_data.epoch = run.epoch
    loop.step.set_epoch(run.epoch)  # the progressive prompt-free share
    mine = [rank_slice(b, info.rank, info.world_size) for b in plan[run.step_in_epoch:]]
    loader = make_loader(loop.train_data, mine, cfg.runtime.num_workers,
                         info.device.type == "cuda")
    bar = progress_bar(len(plan), run.step_in_epoch, run.epoch, loop.progress and info.is_main)
    for batch in loader:
        torch.manual_seed(_step_seed(cfg.seed, run.global_step, info.rank))
        res = train_step(loop.step_module, batch.to(info.device), loop.optimizer, loop.params,
                         cfg.optim.grad_clip, loop.autocast, loop.scaler, info.device)
        run.global_step += 1
        run.step_in_epoch += 1
        if res.skipped:
            run.skipped += 1
        else:
            for k, v in (("loss", res.loss), *res.parts.items(), ("count", 1.0)):
                run.sums[k] += v
        if loop.log is not None and run.global_step % cfg.runtime.log_every == 0 \
                and not res.skipped:
            loop.log.step(run.global_step, res.loss, res.parts, lr, res.grad_norm)
        if cfg.runtime.save_every and run.global_step % cfg.runtime.save_every == 0:
            _save_state(loop.state_path, run, loop.model, loop.optimizer, loop.scaler, cfg, info)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{res.loss:.4f}", skipped=run.skipped)
        if loop.on_step is not None:
            loop.on_step(run.global_step)
    if bar is not None:
        bar.close()
    return lr


def _validate_epoch(loop: _Loop, run: _Run, meta: dict[str, Any]) -> dict[str, Any]:
    """Validation after an epoch; with PPT also the prompt-free scores and, on the last epoch
    (every epoch when calibrating on the validation slices), the calibration, stored in
    `meta["auto"]` for the adapter file."""
    cfg, info, model = loop.cfg, loop.info, loop.model
    local_batch = cfg.optim.batch_size // info.world_size
    val = validate(model, loop.val_data, local_batch, info, loop.autocast)
    if model.adapter.ppt is not None:
        val["auto"], counts = validate_auto(model, loop.val_data, local_batch, info,
                                            loop.autocast, loop.texts,
                                            calibrate=loop.calib_data is loop.val_data)
        last = run.epoch == cfg.optim.epochs - 1
        if loop.calib_data is not loop.val_data:
            # a pass over training slices costs as much as many steps: only the final
            # adapter needs a threshold, so earlier epochs' adapters carry none
            counts = validate_auto(model, loop.calib_data, local_batch, info, loop.autocast,
                                   loop.texts)[1] if last else None
        if counts is not None:
            calibration = choose_calibration(counts, cfg.calibration.auto_fp_target).to_dict()
            val["auto"]["calibration"] = calibration
            meta["auto"] = {**calibration, "calibrated_on": cfg.calibration.calibrate_on}
    step = loop.step
    val["ppt_share"] = step.mix.get("text", 0.0) if step.has_text or step.has_ppt else 0.0
    return val


def _wrap_ddp(module: torch.nn.Module, info: ddp.DistInfo) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    # the frozen base's buffers never change: no per-step buffer sync (the keyword was renamed)
    params = inspect.signature(DDP).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
        else {"broadcast_buffers": False}
    return DDP(module, device_ids=[info.device] if info.device.type == "cuda" else None,
               find_unused_parameters=True,  # e.g. the router-noise weights with noise off
               **no_sync)
