"""What a training run writes besides checkpoints: per-epoch metrics (JSON), TensorBoard scalars
and a loss / Dice plot (PNG). Only rank 0 creates a `RunLog`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from segmote.atomic import atomic_path, atomic_write_text


class RunLog:
    """Files of one run under `out_dir`: metrics.json, curves.png and tensorboard/.

    purge_step: on resume, the global step to continue from; TensorBoard drops events a killed
    run wrote after its last saved state, so curves do not double back.
    """

    def __init__(self, out_dir: Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir = out_dir
        self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=purge_step)

    def step(self, global_step: int, loss: float, parts: dict[str, float], lr: float,
             grad_norm: float) -> None:
        self.writer.add_scalar("train/loss", loss, global_step)
        for name, value in parts.items():
            self.writer.add_scalar(f"train/{name}", value, global_step)
        self.writer.add_scalar("train/lr", lr, global_step)
        self.writer.add_scalar("train/grad_norm", grad_norm, global_step)

    def epoch(self, history: list[dict[str, Any]]) -> None:
        """Log the last epoch of `history` and rewrite metrics.json and curves.png."""
        last = history[-1]
        step = last["step"]
        scalars = {"epoch/train_loss": last["train"]["loss"],
                   "epoch/skipped_steps": last["train"]["skipped_steps"],
                   "val/mean_dice": last["val"]["mean_dice"]}
        for tag, value in scalars.items():
            if value is not None:  # no validation slices (val_fraction 0), every step skipped
                self.writer.add_scalar(tag, value, step)
        for key, dice in last["val"]["per_class"].items():
            self.writer.add_scalar(f"val_dice/{key}", dice, step)
        self.writer.flush()
        atomic_write_text(self.out_dir / "metrics.json", json.dumps(history, indent=1) + "\n")
        plot_curves(history, self.out_dir / "curves.png")

    def close(self) -> None:
        self.writer.close()


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and mean validation Dice per epoch, side by side (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h["train"]["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_dice.plot(epochs, [h["val"]["mean_dice"] for h in history], marker="o", color="C1")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation Dice (box prompt)", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)


def progress_bar(total: int, done: int, epoch: int, enabled: bool) -> Any:
    """A tqdm bar over an epoch's steps on stderr (None when not enabled)."""
    if not enabled:
        return None
    from tqdm import tqdm  # only when a bar is shown
    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}", unit="step",
                file=sys.stderr, leave=False)


def print_epoch(last: dict[str, Any], skipped: int) -> None:
    """One line on stderr for a finished epoch (`last`: its history entry)."""
    dice = last["val"]["mean_dice"]
    loss = last["train"]["loss"]
    print(f"epoch {last['epoch'] + 1}: loss {loss if loss is None else f'{loss:.4f}'}, "
          f"val Dice {dice if dice is None else f'{dice:.4f}'}, "
          f"skipped steps {skipped}", file=sys.stderr)
