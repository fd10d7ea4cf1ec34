"""`TrainConfig` in groups (model, data, optim, prompts, loss, calibration, runtime): the flat
keys of earlier versions still load (YAML files, the config.yaml of older run folders, command
line overrides), grouped YAML loads the same, and both round-trip through config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segmote.errors import InputError
from segmote.training.config import FLAT, TrainConfig, load_config, save_config

OLD_RUN = Path(__file__).parent / "data" / "run_config_e2b33b6.yaml"


def test_an_older_run_folders_flat_config_loads_unchanged_in_meaning(tmp_path: Path) -> None:
    """Every one of the 45 flat keys of the e2b33b6 config.yaml lands in its group with its
    value; saving writes groups, which load back to the same config."""
    flat = yaml.safe_load(OLD_RUN.read_text())
    assert len(flat) == 45  # "43 flat fields" in issue 20; two more came since
    cfg = load_config(OLD_RUN)
    assert cfg.optim.epochs == 3 and cfg.optim.lr == 2e-4 and cfg.seed == 7
    assert cfg.data.folders == ["/data/Dataset001_Lung"] and cfg.model.mote == {"num_experts": 6}
    assert cfg.loss.focal == 10.0 and cfg.prompts.mix == {"box": 0.6, "point": 0.4, "text": 0.0}
    assert cfg.data.sampling_balance == "dataset_class" and cfg.runtime.amp == "none"
    nested = cfg.to_dict()
    for key, value in flat.items():
        if key == "seed":
            assert nested["seed"] == value
        elif key == "loss_weights":
            assert nested["loss"] == value
        else:
            group, name = FLAT[key]
            assert nested[group][name] == value, key
    save_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert set(written) == {"seed", "model", "data", "optim", "prompts", "loss", "calibration",
                            "runtime"}
    assert load_config(tmp_path / "config.yaml") == cfg
    # a resumed older run: its saved config is the base the flags go on top of
    assert load_config(None, {"epochs": 5}, cfg).optim.epochs == 5


def test_grouped_and_flat_yaml_give_the_same_config(tmp_path: Path) -> None:
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("optim: {lr: 0.001, milestones: []}\nprompts: {mix: {text: 0.0}}\n"
                       "data: {balance: dataset, folders: [a]}\nloss: {focal: 5}\nseed: 3\n")
    flat = tmp_path / "flat.yaml"
    flat.write_text("lr: 0.001\nmilestones: []\nprompt_mix: {text: 0.0}\nbalance: dataset\n"
                    "data: [a]\nloss_weights: {focal: 5}\nseed: 3\n")
    a, b = load_config(grouped), load_config(flat)
    assert a == b and a.prompts.mix == {"box": 0.4, "point": 0.3, "text": 0.0}  # merged
    assert a.data.sampling_balance == "dataset" and a != TrainConfig()
    # replace() sets a mapping whole; a flat key or a group mapping, checked
    assert a.replace(prompt_mix={"box": 1.0}).prompts.mix == {"box": 1.0}
    assert a.replace(optim={"epochs": 2}).optim == a.replace(epochs=2).optim


@pytest.mark.parametrize("text, needle", [
    ("lr: 0.1\noptim: {lr: 0.2}\n", "lr and optim.lr set the same value"),
    ("optim: {learning_rate: 0.1}\n", "unknown config key optim.learning_rate"),
    ("data: {balance: dataset, sampling_balance: none}\n", "balance is the old name"),
    ("optimiser: {lr: 0.1}\n", "unknown config key(s) optimiser"),
    ("loss_weights: 3\n", "loss_weights: expected a mapping"),
    ("optim: {epochs: 0}\n", "config epochs: expected an integer >= 1"),
])
def test_bad_grouped_configs_are_refused_with_one_line(tmp_path: Path, text: str,
                                                       needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_config(path)
    assert needle in str(err.value) and "\n" not in str(err.value)
