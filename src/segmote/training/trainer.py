"""`train()`: fit a SegMoTE adapter on cached image embeddings, resumable and data-parallel.

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

import contextlib
import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segmote.errors import InputError
from segmote.modeling.segmote import SegMoTE
from segmote.training import distributed as ddp
from segmote.training.config import TrainConfig, save_config
from segmote.training.stages import check_initial_adapter, load_initial_adapter
from segmote.training.loader import (CachedSlices, epoch_plan, make_loader,
                                     other_modality_classes, rank_slice,
                                     sample_weights)
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


CALIBRATION_PER_CLASS = 8  # training samples per class that calibrate_on "train" asks for


def build_model(cfg: TrainConfig, device: torch.device, text_dim: int | None = None) -> SegMoTE:
    """Frozen backbone + a fresh adapter, initialised from cfg.seed (same on every rank).
    text_dim: the text encoder's width (None: cfg without text prompts)."""
    from segmote.adapter import attach_adapter
    from segmote.build import build_base, resolve_weights
    from segmote.checkpoint import sha256_file

    base = build_base(cfg.backbone, cfg.checkpoint)
    path, expected = resolve_weights(cfg.backbone, cfg.checkpoint)
    torch.manual_seed(cfg.seed)
    model = attach_adapter(base, "new", cfg.mote_config(text_dim), backbone=cfg.backbone,
                           backbone_sha256=expected or sha256_file(path))
    if cfg.init_adapter is not None:
        check_initial_adapter(cfg, text_dim)
        load_initial_adapter(model, Path(cfg.init_adapter))
    if cfg.train_parts is not None:
        for name, part in model.adapter.named_children():
            part.requires_grad_(name in cfg.train_parts)
    return model.to(device)


def autocast_for(amp: str, device: torch.device) -> tuple[Callable[[], Any],
                                                          torch.amp.GradScaler | None]:
    """Autocast factory and grad scaler: bf16 (no scaler needed) or fp16 (+ scaler) on GPU;
    CPU trains in fp32 (CPU autocast is slower than fp32 for these small decoders)."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext, None
    bf16 = amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if bf16 else torch.float16
    scaler = None if bf16 else torch.amp.GradScaler("cuda")
    return functools.partial(torch.autocast, "cuda", dtype=dtype), scaler


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def _load_data(cfg: TrainConfig, data_dirs: list[Path], out_dir: Path, resume: bool,
               info: ddp.DistInfo) -> tuple[list[Any], dict[str, Any], Any, Any]:
    from segmote.data.datasets import discover, load_split, make_split, save_split, \
        slice_samples

    selection = None
    if cfg.manifest is not None:
        from segmote.curation.manifest import manifest_samples

        datasets, selection = manifest_samples(cfg.manifest)
        source = cfg.manifest
    else:
        datasets = discover(data_dirs)
        source = ", ".join(map(str, data_dirs))
    split_path = out_dir / "split.json"
    if resume and split_path.is_file():
        split = load_split(split_path)  # never re-split a run: val cases must stay val
    elif cfg.split is not None:
        split = load_split(Path(cfg.split))
    else:
        split = make_split(datasets, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if selection is not None:
        train_samples = _in_split(selection, split, "train")
        val_samples = _in_split(selection, split, "val")
    else:
        kw = dict(axis=cfg.axis, min_foreground=cfg.min_foreground)
        train_samples = slice_samples(datasets, split, part="train", **kw).samples
        val_samples = slice_samples(datasets, split, part="val", **kw).samples
    val_samples = cap_per_class(val_samples, cfg.val_per_class)
    if not train_samples:
        what = "selected sample" if selection is not None else \
            f"slice with >= {cfg.min_foreground} foreground pixels"
        raise InputError(f"{source}: no training {what} (check the split)")
    # written only once the data checks passed: a refused run leaves no folder behind
    out_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main and not (resume and split_path.is_file()):
        save_split(split, split_path)
    return datasets, split, train_samples, val_samples


def _in_split(samples: list[Any], split: dict[str, Any], part: str) -> list[Any]:
    """The samples whose case is in `part` ("train" / "val") of their dataset's split."""
    cases = {name: set(entry.get(part, [])) for name, entry in split.items()}
    return [s for s in samples if s.case_id in cases.get(s.dataset, ())]


def _class_texts(cfg: TrainConfig, names: list[str]) -> tuple[dict[str, torch.Tensor],
                                                               dict[str, Any]]:
    """Text embeddings of the class names ({} without a text encoder) and what to record
    about the encoder in the adapter ("text" metadata: name, id, template, dim)."""
    if not cfg.uses_text:
        return {}, {}
    from segmote.text.classes import class_embeddings

    found = class_embeddings(names, cfg.text_encoder, cfg.text_encoder_path)
    return dict(zip(names, found.embeddings)), found.metadata()


def cap_per_class(samples: list[Any], cap: int | None) -> list[Any]:
    """At most `cap` samples per dataset/class, evenly spaced in their order (None: all)."""
    if cap is None:
        return samples
    groups: dict[tuple[str, str], list[Any]] = {}
    for s in samples:
        groups.setdefault((s.dataset, s.class_name), []).append(s)
    keep = set()
    for group in groups.values():
        picks = np.linspace(0, len(group) - 1, min(cap, len(group))).round().astype(int)
        keep.update(id(group[i]) for i in picks)
    return [s for s in samples if id(s) in keep]


def class_table(samples: list[Any]) -> dict[str, dict[int, str]]:
    """dataset -> {label value: class name} of the samples (what `CachedSlices` may ask for)."""
    classes: dict[str, dict[int, str]] = {}
    for s in samples:
        classes.setdefault(s.dataset, {})[int(s.class_value)] = s.class_name
    return classes


def query_tables(cfg: TrainConfig, samples: list[Any]) -> dict[str, Any]:
    """The keyword arguments of `CachedSlices` that say which classes a text query may name:
    `classes` (`class_table`) and, with `absent_other_modalities`, `other`
    (`other_modality_classes`)."""
    other = other_modality_classes(samples) if cfg.absent_other_modalities else None
    return {"classes": class_table(samples), "other": other}


def calibration_samples(cfg: TrainConfig, train_samples: list[Any],
                        val_samples: list[Any]) -> list[Any]:
    """What the automatic mode is calibrated on (`calibrate_on`): the validation samples, or
    CALIBRATION_PER_CLASS training samples per class."""
    if cfg.calibrate_on == "val":
        return val_samples
    return cap_per_class(train_samples, CALIBRATION_PER_CLASS)


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


def train(config: TrainConfig, data_dirs: list[str | Path], out_dir: str | Path,
          resume: bool = False, device: str | None = None, progress: bool = True,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train a SegMoTE adapter (see the module doc for what RUN_DIR holds).

    config: a validated `TrainConfig` (see `segmote.training.config.load_config`).
    data_dirs: nnU-Net / MSD / 2-D dataset folders (`segmote.data.datasets.discover`); ignored
        (may be empty) when config.manifest names a curation manifest.
    resume: continue from RUN_DIR/state.safetensors: same step, optimiser, schedule and RNG.
    device: "cpu", "cuda", "cuda:N" or None (GPU when available); under torchrun every rank
        uses the GPU of its LOCAL_RANK.
    on_step: called with the global step after every optimiser step (and state save).
    """
    out_dir = Path(out_dir)
    cfg = dataclasses.replace(config, data=[str(Path(d).resolve()) for d in data_dirs])
    if cfg.manifest is not None:  # absolute, so the saved config resumes from anywhere
        cfg = dataclasses.replace(cfg, manifest=str(Path(cfg.manifest).resolve()))
    info = ddp.setup(device)
    try:
        return _train(cfg, [Path(d) for d in data_dirs], out_dir, resume, info, progress,
                      on_step)
    finally:
        ddp.cleanup(info)


def _train(cfg: TrainConfig, data_dirs: list[Path], out_dir: Path, resume: bool,
           info: ddp.DistInfo, progress: bool,
           on_step: Callable[[int], None] | None) -> TrainResult:
    from segmote.data.cache import EmbeddingCache
    from segmote.training.logs import RunLog

    if cfg.batch_size % info.world_size:
        raise InputError(f"batch_size {cfg.batch_size} must be a multiple of the number of "
                         f"processes ({info.world_size})")
    state_path = out_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise InputError(f"{out_dir}: nothing to resume (no {STATE_FILE}); drop --resume")
    if not resume and state_path.is_file():
        raise InputError(f"{out_dir}: holds a run already; pass --resume or choose a new --out")
    if cfg.init_adapter is not None and not resume:
        check_initial_adapter(cfg)  # before anything is written
    datasets, _, train_samples, val_samples = _load_data(cfg, data_dirs, out_dir, resume, info)
    if info.is_main:
        save_config(cfg, out_dir / "config.yaml")
    names = sorted({s.class_name for s in train_samples + val_samples})
    texts, text_meta = _class_texts(cfg, names)
    model = build_model(cfg, info.device, text_meta.get("dim"))
    if cfg.engine != "torch":  # the encoder is only ever run by the cache
        from segmote.engine import use_engine
        use_engine(model, cfg.engine, cfg.backbone, model.backbone_sha256)
    cache = EmbeddingCache(Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "cache", model,
                           f"{cfg.backbone}-{model.backbone_sha256[:16]}", cfg.window)
    cache.build(train_samples + val_samples, rank=info.rank, world_size=info.world_size,
                progress=progress and info.is_main)
    ddp.barrier(info)  # every shard of the cache is on disk before anyone reads it

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    autocast, scaler = autocast_for(cfg.amp, info.device)
    run = _Run()
    if resume:
        _restore(state_path, run, model, optimizer, scaler, info)
    model.train()
    step = TrainStep(model, cfg, texts)
    step_module: torch.nn.Module = _wrap_ddp(step, info) if info.enabled else step
    tables = query_tables(cfg, train_samples + val_samples)
    train_data = CachedSlices(cache, train_samples, cfg.seed, **tables)
    val_data = CachedSlices(cache, val_samples, cfg.seed, **tables)
    calib_data = val_data if cfg.calibrate_on == "val" else CachedSlices(
        cache, calibration_samples(cfg, train_samples, val_samples), cfg.seed, **tables)
    meta = {"vocabulary": sorted({s.class_name for s in train_samples}),
            "training_data": {d.name: sorted(d.labels.values()) for d in datasets},
            # lets --auto ask an image only for classes trained on its modality
            "training_modalities": {d.name: d.modality for d in datasets}}
    if text_meta:
        meta["text"] = text_meta
    log = RunLog(out_dir, purge_step=run.global_step if resume else None) \
        if info.is_main else None
    local_batch = cfg.batch_size // info.world_size
    weights = sample_weights([(s.dataset, s.class_name) for s in train_samples], cfg.balance,
                             cfg.balance_power)
    try:
        while run.epoch < cfg.epochs:
            lr = cfg.lr_at(run.epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            plan = epoch_plan(len(train_samples), cfg.batch_size, cfg.seed, run.epoch,
                              weights, cfg.samples_per_epoch)
            train_data.epoch = run.epoch
            step.set_epoch(run.epoch)  # the progressive prompt-free share
            mine = [rank_slice(b, info.rank, info.world_size)
                    for b in plan[run.step_in_epoch:]]
            loader = make_loader(train_data, mine, cfg.num_workers,
                                 info.device.type == "cuda")
            bar = _progress(len(plan), run.step_in_epoch, run.epoch, progress and info.is_main)
            for batch in loader:
                torch.manual_seed(_step_seed(cfg.seed, run.global_step, info.rank))
                res = train_step(step_module, batch.to(info.device), optimizer, params,
                                 cfg.grad_clip, autocast, scaler, info.device)
                run.global_step += 1
                run.step_in_epoch += 1
                if res.skipped:
                    run.skipped += 1
                else:
                    for k, v in (("loss", res.loss), *res.parts.items(), ("count", 1.0)):
                        run.sums[k] += v
                if log is not None and run.global_step % cfg.log_every == 0 and not res.skipped:
                    log.step(run.global_step, res.loss, res.parts, lr, res.grad_norm)
                if cfg.save_every and run.global_step % cfg.save_every == 0:
                    _save_state(state_path, run, model, optimizer, scaler, cfg, info)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{res.loss:.4f}", skipped=run.skipped)
                if on_step is not None:
                    on_step(run.global_step)
            if bar is not None:
                bar.close()
            val = validate(model, val_data, local_batch, info, autocast)
            if model.adapter.ppt is not None:
                val["auto"], counts = validate_auto(model, val_data, local_batch, info, autocast,
                                                    texts, calibrate=calib_data is val_data)
                last = run.epoch == cfg.epochs - 1
                if calib_data is not val_data:
                    # a pass over training slices costs as much as many steps: only the final
                    # adapter needs a threshold, so earlier epochs' adapters carry none
                    counts = validate_auto(model, calib_data, local_batch, info, autocast,
                                           texts)[1] if last else None
                if counts is not None:
                    calibration = choose_calibration(counts, cfg.auto_fp_target).to_dict()
                    val["auto"]["calibration"] = calibration
                    meta["auto"] = {**calibration, "calibrated_on": cfg.calibrate_on}
            val["ppt_share"] = step.mix.get("text", 0.0) if step.has_text or step.has_ppt \
                else 0.0
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
            if log is not None:
                log.epoch(run.history)
                if progress:
                    _report(run)
    finally:
        if log is not None:
            log.close()
    ddp.barrier(info)
    best = out_dir / "adapter_best.safetensors"
    return TrainResult(out_dir, run.epoch, run.global_step, run.skipped, run.best_dice,
                       run.best_epoch, out_dir / "adapter_latest.safetensors",
                       best if best.is_file() else None, run.history)


def _wrap_ddp(module: torch.nn.Module, info: ddp.DistInfo) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    # the frozen base's buffers never change: no per-step buffer sync (the keyword was renamed)
    params = inspect.signature(DDP).parameters
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params \
        else {"broadcast_buffers": False}
    return DDP(module, device_ids=[info.device] if info.device.type == "cuda" else None,
               find_unused_parameters=True,  # e.g. the router-noise weights with noise off
               **no_sync)


def _progress(total: int, done: int, epoch: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}", unit="step",
                file=sys.stderr, leave=False)


def _report(run: _Run) -> None:
    last = run.history[-1]
    dice = last["val"]["mean_dice"]
    loss = last["train"]["loss"]
    print(f"epoch {last['epoch'] + 1}: loss {loss if loss is None else f'{loss:.4f}'}, "
          f"val Dice {dice if dice is None else f'{dice:.4f}'}, "
          f"skipped steps {run.skipped}", file=sys.stderr)
