"""Precision names -> autocast (`segmote.precision`), and `segmote train --amp bf16` on a CPU.

Real weights (LiteMedSAM) and real data (the bundled lung CT crop) for the training run.
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from lung_case import lung_dataset  # noqa: F401  (fixture)
from segmote.errors import InputError
from segmote.precision import amp_precision, autocast, check_precision, grad_scaler


def test_names_map_to_autocast_per_device() -> None:
    assert isinstance(autocast("fp32", "cpu"), contextlib.nullcontext)
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(name, torch.device("cpu")):
            assert torch.is_autocast_enabled("cpu")
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(InputError, match="precision 'fp8': expected one of fp32, bf16, fp16"):
        check_precision("fp8")
    assert grad_scaler("bf16", "cpu") is None and grad_scaler("fp32", "cpu") is None
    assert isinstance(grad_scaler("fp16", "cpu"), torch.amp.GradScaler)


def test_amp_auto_stays_fp32_on_cpu() -> None:
    from segmote.training.trainer import autocast_for

    assert amp_precision("auto", "cpu") == "fp32"
    assert amp_precision("none", "cpu") == "fp32"
    assert amp_precision("bf16", "cpu") == "bf16"
    factory, scaler = autocast_for("auto", torch.device("cpu"))
    assert isinstance(factory(), contextlib.nullcontext) and scaler is None
    with pytest.raises(InputError, match="amp 'bf17'"):
        amp_precision("bf17", "cpu")


def test_cli_train_amp_bf16_on_cpu(lung_dataset, tmp_path, monkeypatch, capsys):  # noqa: F811
    """`segmote train --amp bf16 --device cpu` trains in CPU bf16 autocast, end to end."""
    import segmote.precision
    from segmote.cli.main import main

    used: list[str] = []
    real = segmote.precision.autocast

    def spy(precision, device):  # records what the trainer asked for, changes nothing
        used.append(precision)
        return real(precision, device)

    monkeypatch.setattr(segmote.precision, "autocast", spy)
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    # text and PPT under autocast: test_autocast.py; here the real backbone, data and CLI
    cfg.write_text("refine_rounds: 1\nval_fraction: 0.34\nmin_foreground: 200\nbatch_size: 2\n"
                   "text_encoder: none\nppt_queries: 0\n")
    rc = main(["train", "--data", str(lung_dataset), "--out", str(out), "--config", str(cfg),
               "--epochs", "1", "--amp", "bf16", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert used and set(used) == {"bf16"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics[0]["train"]["loss"]) and metrics[0]["train"]["skipped_steps"] == 0
    assert 0 <= metrics[0]["val"]["mean_dice"] <= 1
    assert (out / "adapter_latest.safetensors").is_file()
