"""Training-curve plots: written next to each run's metrics, and shown inline in notebooks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def history_figure(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch, train against validation. A bare Figure, not pyplot's: it needs no
    GUI backend (headless servers, containers) and a notebook displays it as it is."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [row["train_loss"] for row in history], label="train")
    loss_ax.plot(epochs, [row["val_loss"] for row in history], label="validation")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    acc_ax.plot(epochs, [row["train_accuracy"] for row in history], label="train")
    acc_ax.plot(epochs, [row["val_accuracy"] for row in history], label="validation")
    acc_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.01))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def plot_history(history: list[dict], path: Path) -> None:
    history_figure(history).savefig(path, dpi=100)
