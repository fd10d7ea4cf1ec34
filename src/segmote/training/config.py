"""`TrainConfig`: every training setting, from defaults, a YAML file and command-line flags.

Later sources win: defaults < the run's saved config (on --resume) < --config YAML < flags.
Unknown keys and bad values raise `InputError` naming the file and the keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segmote.atomic import atomic_write_text  # noqa: F401  (re-exported)
from segmote.errors import InputError
from segmote.precision import AMP_CHOICES
from segmote.training.losses import LossWeights
from segmote.simulated_prompts import PROMPT_KINDS

BALANCE_CHOICES = ("none", "dataset", "dataset_class")
ADAPTER_PARTS = ("expert_tokens", "mote", "head", "text", "ppt")


@dataclass
class TrainConfig:
    """Training hyper-parameters (docs/method.md, "Training recipe"; paper values where it has
    them).

    Attributes:
        backbone, checkpoint: base model (see `segmote.build.BACKBONES`).
        epochs, batch_size: batch_size is the global batch (split evenly over DDP ranks).
        lr, weight_decay: AdamW.
        milestones, gamma: step schedule — lr x gamma at each milestone epoch (0-based; paper:
            halved at epochs 7 and 12).
        grad_clip: max global gradient norm (0 = off).
        loss_weights: focal / dice / iou / balance (see `LossWeights`).
        prompt_mix: probability of each first-prompt kind: "box", "point" or "text" (text alone:
            PPT tokens conditioned on the class's text embedding, i.e. prompt-free segmentation
            of that class). Without a text encoder or PPT the text share goes to the others.
        progressive: the "text" (prompt-free) share starts at this value in the first epoch and
            rises linearly to prompt_mix["text"] in the last one (progressive prompt
            tokenization; logged per epoch as "ppt_share"); None: constant.
        text_with_prompt: probability that a box / point prompt also gets the class's text.
        absent_prob: share of prompt-free samples that ask for a class of the same dataset that
            is absent from the slice (target: an empty mask), so the model learns to answer
            "not here" and its confidence can be calibrated.
        absent_other_modalities: also count as absent, for a sample of modality M, every class
            that no dataset of modality M labels (an AAL structure asked on a microscopy image),
            in training and in calibration, so the automatic mode learns to stay empty on other
            domains' classes. Right only where the modalities image disjoint anatomy: a CT
            "kidney" is not absent from an MR abdomen slice. Datasets of unknown modality take
            no part. Off by default.
        text_encoder: "minilm" (all-MiniLM-L6-v2, offline), "clip" (with text_encoder_path), or
            "none" / null (no text prompts).
        text_encoder_path: a local CLIP text-model folder for text_encoder "clip".
        ppt_queries: Q queries of the PPT module (paper: 2); 0 = no PPT.
        calibrate_on: data on which the confidence threshold of the automatic mode is chosen:
            "val" (the validation cases) or "train" (up to 8 training samples per class: for
            runs whose validation cases are the test set; computed after the last epoch only,
            so earlier epochs' adapters carry no threshold).
        auto_fp_target: the threshold is the lowest whose false-positive rate on absent classes
            is at most this.
        box_jitter: max shift of each box side, as a fraction of the box extent.
        refine_rounds: refinement rounds after the first prompt (previous mask + new clicks).
        refine_clicks: number of new clicks per round, drawn uniformly from this list.
        recompute_rounds: keep no activations of a prompt round for the backward pass but
            recompute them there, one round at a time (activation checkpointing): the same
            gradients, the activations of one prompt group at a time instead of those of every
            group of every round (default recipe, batch 16, CPU: peak 5.5 -> 2.7-3.4 GB,
            docs/benchmarks.md), about a fifth more step time.
        trim_memory: on a CPU, with recompute_rounds, give the heap pages each prompt group
            freed back to the system before the backward pass recomputes the next one
            (`segmote.training.memory`; glibc keeps them resident otherwise): the same
            numbers, a lower peak (docs/benchmarks.md).
        seed: fixes the adapter init, the data order, every prompt and the router noise.
        axis, min_foreground, val_fraction: slicing of 3-D volumes and the case split.
        split: a split JSON (`segmote.data.datasets.save_split` format) to use instead of
            drawing one from val_fraction and seed (e.g. the same held-out patients across runs).
        manifest: a curation manifest (`segmote curate`): train on exactly its selected
            (slice, class) samples instead of every slice of the dataset folders; the selection
            is still split by patient into train / val (val_fraction: 0 trains on all of it).
        sampling_balance: how an epoch draws training samples: "none" (each sample once, shuffled),
            "dataset" (every dataset equally often) or "dataset_class" (every dataset equally,
            and within it every class equally) — the latter two draw with replacement, so a
            small dataset is not drowned by a large one.
        sampling_balance_power: dataset shares proportional to (samples of the dataset) **
            sampling_balance_power
            (0: equal shares; 0.5: square-root "temperature" sampling; see
            `segmote.training.loader.sample_weights`).
        samples_per_epoch: samples drawn per epoch (None: the number of training samples).
        val_per_class: at most this many validation samples per dataset/class, evenly spaced
            (None: all); keeps per-epoch validation cheap on atlases with many classes.
        window: CT window for the cached images (None: the modality default).
        amp: autocast dtype ("auto": bf16 on a GPU that supports it, else fp16 on a GPU, fp32
            on a CPU; "bf16" / "fp16" on any device, "none": fp32; `segmote.precision`).
        num_workers: DataLoader workers reading cached embeddings.
        cache_dir: embedding cache (None: the shared SEGMOTE_HOME/embedding-cache).
        engine: what encodes the cache's slices (the frozen encoder only): "torch", or a CPU
            engine of `segmote.engine` ("onnxruntime", "openvino", "auto").
        mote: MoTEConfig fields except balance_loss_weight (set by loss_weights.balance).
    Older names still read (`RENAMED`): balance -> sampling_balance, balance_power ->
    sampling_balance_power ("balance" alone also named the MoE load-balancing loss).
        init_adapter: an adapter file to start from (a second training stage): its weights are
            loaded into the new adapter; parts the file lacks (e.g. the text / PPT modules of an
            adapter trained without them) keep their fresh initialisation. Its MoTE settings
            must match this config's (text_dim and ppt_queries may be added).
        train_parts: the adapter parts that train, of "expert_tokens", "mote", "head", "text"
            and "ppt" (None: all). E.g. [text, ppt] on top of init_adapter adds text prompts
            and prompt-free segmentation while box / point decoding stays bit-identical.
        save_every: also write the resume state every N steps (0: at epoch ends only).
        log_every: TensorBoard scalars every N steps.
        data: the dataset folders (kept so `--resume` needs no --data).
    """

    backbone: str = "litemedsam"
    checkpoint: str | None = None
    epochs: int = 15
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.01
    milestones: list[int] = field(default_factory=lambda: [7, 12])
    gamma: float = 0.5
    grad_clip: float = 1.0
    loss_weights: dict[str, float] = field(default_factory=LossWeights().to_dict)
    prompt_mix: dict[str, float] = field(
        default_factory=lambda: {"box": 0.4, "point": 0.3, "text": 0.3})
    progressive: float | None = 0.05
    text_with_prompt: float = 0.5
    absent_prob: float = 0.15
    absent_other_modalities: bool = False
    text_encoder: str | None = "minilm"
    text_encoder_path: str | None = None
    ppt_queries: int = 2
    calibrate_on: str = "val"
    auto_fp_target: float = 0.05
    box_jitter: float = 0.1
    refine_rounds: int = 2
    refine_clicks: list[int] = field(default_factory=lambda: [1, 3, 4, 7])
    recompute_rounds: bool = True
    trim_memory: bool = True
    seed: int = 0
    axis: int = 2
    min_foreground: int = 10
    val_fraction: float = 0.2
    split: str | None = None
    manifest: str | None = None
    sampling_balance: str = "none"
    sampling_balance_power: float = 0.0
    samples_per_epoch: int | None = None
    val_per_class: int | None = None
    window: str | None = None
    amp: str = "auto"
    num_workers: int = 0
    cache_dir: str | None = None
    engine: str = "torch"
    mote: dict[str, Any] = field(default_factory=dict)
    init_adapter: str | None = None
    train_parts: list[str] | None = None
    save_every: int = 100
    log_every: int = 10
    data: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def weights(self) -> LossWeights:
        return LossWeights(**self.loss_weights)

    def mote_config(self, text_dim: int | None = None) -> Any:
        """The adapter's MoTEConfig: `mote` plus the PPT / text settings (text_dim: the text
        encoder's width; None while it is unknown, e.g. when only validating)."""
        from segmote.modeling.segmote import MoTEConfig
        extra = {"ppt_queries": self.ppt_queries}
        if self.uses_text:
            extra["text_dim"] = text_dim or 1
        return MoTEConfig.from_dict({**extra, **self.mote,
                                     "balance_loss_weight": self.weights.balance})

    @property
    def uses_text(self) -> bool:
        return self.text_encoder not in (None, "none")

    def text_share(self, epoch: int) -> float:
        """Share of prompt-free ("text") first prompts in `epoch` (0-based), before the text
        share is dropped for a model without text / PPT."""
        final = float(self.prompt_mix.get("text", 0.0)) / sum(self.prompt_mix.values())
        if self.progressive is None or self.epochs < 2:
            return final
        return self.progressive + (final - self.progressive) * epoch / (self.epochs - 1)

    def prompt_mix_at(self, epoch: int) -> dict[str, float]:
        """prompt_mix of `epoch` under the progressive schedule (sums to 1)."""
        total = sum(v for k, v in self.prompt_mix.items() if k != "text")
        rest = 1.0 - self.text_share(epoch)
        mix = {k: rest * v / total for k, v in self.prompt_mix.items() if k != "text"}
        mix["text"] = self.text_share(epoch)
        return mix

    def lr_at(self, epoch: int) -> float:
        """The step schedule: lr x gamma^(number of milestones <= epoch)."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)


TEXT_ENCODERS = ("minilm", "clip", "none", None)
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _positive_int(name: str, value: Any, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero_ok else 1):
        raise InputError(f"config {name}: expected an integer >= {0 if zero_ok else 1}, "
                         f"got {value!r}")


def _number(name: str, value: Any, lo: float = 0.0, hi: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or \
            (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InputError(f"config {name}: expected a number {bound}, got {value!r}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every value; raises InputError naming the key. Returns cfg."""
    for name in ("epochs", "batch_size", "log_every"):
        _positive_int(name, getattr(cfg, name))
    for name in ("refine_rounds", "num_workers", "save_every", "min_foreground", "seed"):
        _positive_int(name, getattr(cfg, name), zero_ok=True)
    for name in ("lr", "weight_decay", "grad_clip", "gamma"):
        _number(name, getattr(cfg, name))
    _number("box_jitter", cfg.box_jitter, 0.0, 1.0)
    _number("text_with_prompt", cfg.text_with_prompt, 0.0, 1.0)
    _number("absent_prob", cfg.absent_prob, 0.0, 1.0)
    for name in ("absent_other_modalities", "recompute_rounds", "trim_memory"):
        if not isinstance(getattr(cfg, name), bool):
            raise InputError(f"config {name}: expected true or false, got "
                             f"{getattr(cfg, name)!r}")
    if cfg.progressive is not None:
        _number("progressive", cfg.progressive, 0.0, 1.0)
    _positive_int("ppt_queries", cfg.ppt_queries, zero_ok=True)
    _number("auto_fp_target", cfg.auto_fp_target, 0.0, 1.0)
    if cfg.calibrate_on not in ("val", "train"):
        raise InputError(f"config calibrate_on: expected val or train, got {cfg.calibrate_on!r}")
    if cfg.text_encoder not in TEXT_ENCODERS:
        raise InputError(f"config text_encoder: expected one of minilm, clip or none, "
                         f"got {cfg.text_encoder!r}")
    if cfg.text_encoder == "clip" and not cfg.text_encoder_path:
        raise InputError("config text_encoder clip needs text_encoder_path (a local CLIP "
                         "text-model folder)")
    _number("sampling_balance_power", cfg.sampling_balance_power, 0.0, 1.0)
    _number("val_fraction", cfg.val_fraction, 0.0, 0.9)
    if not isinstance(cfg.milestones, list):
        raise InputError(f"config milestones: expected a list of epochs, got {cfg.milestones!r}")
    for m in cfg.milestones:
        _positive_int("milestones", m)
    if not isinstance(cfg.refine_clicks, list) or not cfg.refine_clicks:
        raise InputError(f"config refine_clicks: expected a non-empty list, "
                         f"got {cfg.refine_clicks!r}")
    for k in cfg.refine_clicks:
        _positive_int("refine_clicks", k)
    if cfg.axis not in (0, 1, 2):
        raise InputError(f"config axis: expected 0, 1 or 2, got {cfg.axis!r}")
    for name in ("samples_per_epoch", "val_per_class"):
        if getattr(cfg, name) is not None:
            _positive_int(name, getattr(cfg, name))
    if cfg.sampling_balance not in BALANCE_CHOICES:
        raise InputError(f"config sampling_balance: expected one of "
                         f"{', '.join(BALANCE_CHOICES)}, got {cfg.sampling_balance!r}")
    if cfg.train_parts is not None:
        if not isinstance(cfg.train_parts, list) or not cfg.train_parts or any(
                part not in ADAPTER_PARTS for part in cfg.train_parts):
            raise InputError(f"config train_parts: expected a non-empty list of "
                             f"{', '.join(ADAPTER_PARTS)}, got {cfg.train_parts!r}")
        missing = [part for part in ("text", "ppt") if part in cfg.train_parts and (
            (part == "text" and not cfg.uses_text) or (part == "ppt" and not cfg.ppt_queries))]
        if missing:
            raise InputError(f"config train_parts: {', '.join(missing)} is listed but this "
                             f"config has no {' / '.join(missing)} module (text_encoder, "
                             f"ppt_queries)")
    for name in ("split", "manifest", "init_adapter"):
        value = getattr(cfg, name)
        if value is not None and not isinstance(value, str):
            raise InputError(f"config {name}: expected a file path, got {value!r}")
    if cfg.amp not in AMP_CHOICES:
        raise InputError(f"config amp: expected one of {', '.join(AMP_CHOICES)}, got {cfg.amp!r}")
    _check_mapping("loss_weights", cfg.loss_weights, [f.name for f in
                                                       dataclasses.fields(LossWeights)])
    _check_mapping("prompt_mix", cfg.prompt_mix, list(PROMPT_KINDS))
    if sum(v for k, v in cfg.prompt_mix.items() if k != "text") <= 0:
        raise InputError("config prompt_mix: box or point needs a positive probability "
                         "(the progressive schedule starts from prompted training)")
    if not isinstance(cfg.mote, dict) or {"balance_weight", "balance_loss_weight"} & set(cfg.mote):
        raise InputError("config mote: expected a mapping of MoTEConfig fields "
                         "(set the balance loss weight with loss_weights.balance)")
    cfg.mote_config()  # MoTEConfig validates its own fields with one-line InputErrors
    return cfg


def _check_mapping(name: str, value: Any, keys: list[str]) -> None:
    if not isinstance(value, dict):
        raise InputError(f"config {name}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise InputError(f"config {name}: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(keys)})")
    for key, v in value.items():
        _number(f"{name}.{key}", v)


# config keys renamed since, still read: YAML files and the config.yaml of older runs use them
RENAMED = {"balance": "sampling_balance", "balance_power": "sampling_balance_power"}


def merge(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """cfg with `values` applied (mapping sections merged key by key); unknown keys -> InputError
    naming `source`. Old key names (`RENAMED`) are read as the new ones."""
    both = sorted(k for k in values if k in RENAMED and RENAMED[k] in values)
    if both:
        raise InputError(f"{source}: {both[0]} is the old name of {RENAMED[both[0]]}; give one")
    values = {RENAMED.get(k, k): v for k, v in values.items()}
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise InputError(f"{source}: unknown config key(s) {', '.join(unknown)}")
    out = cfg.to_dict()
    for key, value in values.items():
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return TrainConfig(**out)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path`; InputError when missing, malformed or not a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else "malformed"
        raise InputError(f"{path}: not valid YAML ({first})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping of config keys at the top level")
    return values


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: TrainConfig | None = None) -> TrainConfig:
    """base (default: defaults) < YAML at `path` < overrides (None values are ignored)."""
    cfg = base or TrainConfig()
    if path is not None:
        cfg = merge(cfg, read_yaml(path), str(path))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    cfg = merge(cfg, flags, "command line")
    return validate(cfg)


def save_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    import yaml

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


