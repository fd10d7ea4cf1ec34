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
from segmote.training.settings import (CalibrationSettings, DataSettings, ModelSettings,
                                       OptimSettings, PromptSettings, RuntimeSettings)
from segmote.simulated_prompts import PROMPT_KINDS

BALANCE_CHOICES = ("none", "dataset", "dataset_class")
ADAPTER_PARTS = ("expert_tokens", "mote", "head", "text", "ppt")


GROUPS: dict[str, type] = {"model": ModelSettings, "data": DataSettings, "optim": OptimSettings,
                           "prompts": PromptSettings, "loss": LossWeights,
                           "calibration": CalibrationSettings, "runtime": RuntimeSettings}


@dataclass
class TrainConfig:
    """Training settings in small groups (docs/method.md, "Training recipe"; paper values where
    it has them). config.yaml holds one mapping per group (`model: {backbone: litemedsam}`);
    the flat keys of earlier versions (`backbone: litemedsam`, `loss_weights: {...}`) are still
    read (`FLAT`), so older YAML files and run folders load unchanged.

    Attributes:
        seed: fixes the adapter init, the data order, every prompt and the router noise.
        model, data, optim, prompts, calibration, runtime: see their classes.
        loss: the loss-term weights (`LossWeights`: focal / dice / iou / balance).
    """

    seed: int = 0
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    loss: LossWeights = field(default_factory=LossWeights)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **values: Any) -> "TrainConfig":
        """A copy with `values` (flat keys, `FLAT`, or group mappings) set, validated; unlike
        `merge`, a mapping value (prompt_mix, mote) replaces the old one whole."""
        return validate(merge(self, values, "arguments", merge_mappings=False))

    def mote_config(self, text_dim: int | None = None) -> Any:
        """The adapter's MoTEConfig: model.mote plus the PPT / text settings (text_dim: the text
        encoder's width; None while it is unknown, e.g. when only validating)."""
        from segmote.modeling.segmote import MoTEConfig
        extra = {"ppt_queries": self.model.ppt_queries}
        if self.uses_text:
            extra["text_dim"] = text_dim or 1
        return MoTEConfig.from_dict({**extra, **self.model.mote,
                                     "balance_loss_weight": self.loss.balance})

    @property
    def uses_text(self) -> bool:
        return self.model.text_encoder not in (None, "none")

    def text_share(self, epoch: int) -> float:
        """Share of prompt-free ("text") first prompts in `epoch` (0-based), before the text
        share is dropped for a model without text / PPT."""
        mix, progressive = self.prompts.mix, self.prompts.progressive
        final = float(mix.get("text", 0.0)) / sum(mix.values())
        if progressive is None or self.optim.epochs < 2:
            return final
        return progressive + (final - progressive) * epoch / (self.optim.epochs - 1)

    def prompt_mix_at(self, epoch: int) -> dict[str, float]:
        """prompts.mix of `epoch` under the progressive schedule (sums to 1)."""
        total = sum(v for k, v in self.prompts.mix.items() if k != "text")
        rest = 1.0 - self.text_share(epoch)
        mix = {k: rest * v / total for k, v in self.prompts.mix.items() if k != "text"}
        mix["text"] = self.text_share(epoch)
        return mix

    def lr_at(self, epoch: int) -> float:
        """The step schedule: lr x gamma^(number of milestones <= epoch)."""
        o = self.optim
        return o.lr * o.gamma ** sum(epoch >= m for m in o.milestones)


# flat key of earlier versions -> (group, field); "seed" stays at the top level
FLAT: dict[str, tuple[str, str]] = {
    **{f.name: (g, f.name) for g, cls in GROUPS.items() if g != "loss"
       for f in dataclasses.fields(cls)},
    "data": ("data", "folders"), "prompt_mix": ("prompts", "mix")}
del FLAT["folders"], FLAT["mix"]


TEXT_ENCODERS = ("minilm", "clip", "none", None)


def _positive_int(name: str, value: Any, zero_ok: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero_ok else 1):
        raise InputError(f"config {name}: expected an integer >= {0 if zero_ok else 1}, "
                         f"got {value!r}")


def _number(name: str, value: Any, lo: float = 0.0, hi: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or \
            (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InputError(f"config {name}: expected a number {bound}, got {value!r}")


def _get(cfg: TrainConfig, name: str) -> Any:
    """The value of flat key `name` (`FLAT`) in the nested config."""
    if name == "seed":
        return cfg.seed
    group, key = FLAT[name]
    return getattr(getattr(cfg, group), key)


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every value; raises InputError naming the key. Returns cfg."""
    for name in ("epochs", "batch_size", "log_every"):
        _positive_int(name, _get(cfg, name))
    for name in ("refine_rounds", "num_workers", "save_every", "min_foreground", "seed"):
        _positive_int(name, _get(cfg, name), zero_ok=True)
    for name in ("lr", "weight_decay", "grad_clip", "gamma"):
        _number(name, _get(cfg, name))
    _number("box_jitter", cfg.prompts.box_jitter, 0.0, 1.0)
    _number("text_with_prompt", cfg.prompts.text_with_prompt, 0.0, 1.0)
    _number("absent_prob", cfg.prompts.absent_prob, 0.0, 1.0)
    for name in ("absent_other_modalities", "recompute_rounds", "trim_memory"):
        if not isinstance(_get(cfg, name), bool):
            raise InputError(f"config {name}: expected true or false, got "
                             f"{_get(cfg, name)!r}")
    if cfg.prompts.progressive is not None:
        _number("progressive", cfg.prompts.progressive, 0.0, 1.0)
    _positive_int("ppt_queries", cfg.model.ppt_queries, zero_ok=True)
    _number("auto_fp_target", cfg.calibration.auto_fp_target, 0.0, 1.0)
    if cfg.calibration.calibrate_on not in ("val", "train"):
        raise InputError(f"config calibrate_on: expected val or train, got "
                         f"{cfg.calibration.calibrate_on!r}")
    if cfg.model.text_encoder not in TEXT_ENCODERS:
        raise InputError(f"config text_encoder: expected one of minilm, clip or none, "
                         f"got {cfg.model.text_encoder!r}")
    if cfg.model.text_encoder == "clip" and not cfg.model.text_encoder_path:
        raise InputError("config text_encoder clip needs text_encoder_path (a local CLIP "
                         "text-model folder)")
    _number("sampling_balance_power", cfg.data.sampling_balance_power, 0.0, 1.0)
    _number("val_fraction", cfg.data.val_fraction, 0.0, 0.9)
    if not isinstance(cfg.optim.milestones, list):
        raise InputError(f"config milestones: expected a list of epochs, got "
                         f"{cfg.optim.milestones!r}")
    for m in cfg.optim.milestones:
        _positive_int("milestones", m)
    if not isinstance(cfg.prompts.refine_clicks, list) or not cfg.prompts.refine_clicks:
        raise InputError(f"config refine_clicks: expected a non-empty list, "
                         f"got {cfg.prompts.refine_clicks!r}")
    for k in cfg.prompts.refine_clicks:
        _positive_int("refine_clicks", k)
    if cfg.data.axis not in (0, 1, 2):
        raise InputError(f"config axis: expected 0, 1 or 2, got {cfg.data.axis!r}")
    for name in ("samples_per_epoch", "val_per_class"):
        if _get(cfg, name) is not None:
            _positive_int(name, _get(cfg, name))
    if cfg.data.sampling_balance not in BALANCE_CHOICES:
        raise InputError(f"config sampling_balance: expected one of "
                         f"{', '.join(BALANCE_CHOICES)}, got {cfg.data.sampling_balance!r}")
    if cfg.model.train_parts is not None:
        if not isinstance(cfg.model.train_parts, list) or not cfg.model.train_parts or any(
                part not in ADAPTER_PARTS for part in cfg.model.train_parts):
            raise InputError(f"config train_parts: expected a non-empty list of "
                             f"{', '.join(ADAPTER_PARTS)}, got {cfg.model.train_parts!r}")
        missing = [part for part in ("text", "ppt") if part in cfg.model.train_parts and (
            (part == "text" and not cfg.uses_text)
            or (part == "ppt" and not cfg.model.ppt_queries))]
        if missing:
            raise InputError(f"config train_parts: {', '.join(missing)} is listed but this "
                             f"config has no {' / '.join(missing)} module (text_encoder, "
                             f"ppt_queries)")
    for name in ("split", "manifest", "init_adapter"):
        value = _get(cfg, name)
        if value is not None and not isinstance(value, str):
            raise InputError(f"config {name}: expected a file path, got {value!r}")
    if cfg.runtime.amp not in AMP_CHOICES:
        raise InputError(f"config amp: expected one of {', '.join(AMP_CHOICES)}, got "
                         f"{cfg.runtime.amp!r}")
    for f in dataclasses.fields(LossWeights):
        _number(f"loss.{f.name}", getattr(cfg.loss, f.name))
    _check_mapping("prompt_mix", cfg.prompts.mix, list(PROMPT_KINDS))
    if sum(v for k, v in cfg.prompts.mix.items() if k != "text") <= 0:
        raise InputError("config prompt_mix: box or point needs a positive probability "
                         "(the progressive schedule starts from prompted training)")
    mote = cfg.model.mote
    if not isinstance(mote, dict) or {"balance_weight", "balance_loss_weight"} & set(mote):
        raise InputError("config mote: expected a mapping of MoTEConfig fields "
                         "(set the balance loss weight with loss.balance)")
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


def _paths(values: dict[str, Any], source: str) -> dict[tuple[str, str], Any]:
    """(group, field) -> value of a config mapping: group mappings (`optim: {lr: 0.001}`),
    flat keys of earlier versions (`lr: 0.001`, `loss_weights: {...}`, `RENAMED`) or both;
    ("", "seed") for the seed. InputError naming `source` for an unknown key or a setting given
    twice."""
    out: dict[tuple[str, str], Any] = {}
    named: dict[tuple[str, str], str] = {}

    def put(path: tuple[str, str], value: Any, key: str) -> None:
        if path in out:
            old = next((k.rsplit(".", 1)[-1] for k in (key, named[path])
                        if k.rsplit(".", 1)[-1] in RENAMED), None)
            raise InputError(f"{source}: {old} is the old name of {RENAMED[old]}; give one"
                             if old else f"{source}: {named[path]} and {key} set the same "
                             "value; give one")
        out[path], named[path] = value, key

    for key, value in values.items():
        if key == "seed":
            put(("", "seed"), value, key)
        elif key == "loss_weights" or (key in GROUPS and isinstance(value, dict)):
            group = "loss" if key == "loss_weights" else key
            if not isinstance(value, dict):
                raise InputError(f"{source}: {key}: expected a mapping, got {value!r}")
            names = {f.name for f in dataclasses.fields(GROUPS[group])}
            for sub, v in value.items():
                name = RENAMED.get(sub, sub) if group == "data" else sub
                if name not in names:
                    raise InputError(f"{source}: unknown config key {key}.{sub} (known: "
                                     f"{', '.join(sorted(names))})")
                put((group, name), v, f"{key}.{sub}")
        elif RENAMED.get(key, key) in FLAT:
            put(FLAT[RENAMED.get(key, key)], value, key)
        else:
            raise InputError(f"{source}: unknown config key(s) {key}")
    return out


def merge(cfg: TrainConfig, values: dict[str, Any], source: str,
          merge_mappings: bool = True) -> TrainConfig:
    """cfg with `values` applied (mapping values such as prompt_mix merged key by key unless
    merge_mappings is False); unknown keys -> InputError naming `source`. Group mappings and
    the flat keys of earlier versions (`FLAT`, `RENAMED`) are both read."""
    out = cfg.to_dict()
    for (group, key), value in _paths(values, source).items():
        where = out[group] if group else out
        if merge_mappings and isinstance(where[key], dict) and isinstance(value, dict):
            where[key] = {**where[key], **value}
        else:
            where[key] = value
    return TrainConfig(seed=out.pop("seed"),
                       **{g: GROUPS[g](**fields) for g, fields in out.items()})


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


