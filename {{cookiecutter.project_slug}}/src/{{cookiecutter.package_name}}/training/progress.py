"""Reporting a run as it trains, and the stop requests that may end it early."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from tqdm import tqdm


class Progress:
    """A live bar on a terminal, one line per epoch in logs (CI, containers), where a bar is noise.
    SIGINT and SIGTERM only record a stop request while it is open; the loop ends at the next batch.
    `agree` turns this process's request into the group's decision, so every rank stops together;
    it is a collective, so it is asked every `AGREE_EVERY` batches (on every rank alike), not every batch.
    Alone, a process stops at the next batch. Once training is done, `finishing()` lets a first
    signal wait for the run to be finished (seconds); a second one stops it at once."""

    AGREE_EVERY = 16

    def __init__(
        self, total: int, initial: int, show: bool = True, agree: Callable[[bool], bool] | None = None
    ) -> None:
        self.show, self.live = show, show and sys.stderr.isatty()
        self.agree, self.stopping, self.steps = agree, False, 0
        self.every = 1 if agree is None else self.AGREE_EVERY
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="batch",
            desc="train",
            disable=not self.live,
            dynamic_ncols=True,
        )
        self.signals: list[int] = []
        self.previous: dict = {}
        self.finishing_run = False

    def __enter__(self) -> Progress:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.request_stop)
        return self

    def request_stop(self, signum: int, frame) -> None:
        self.signals.append(signum)
        if self.finishing_run and len(self.signals) > 1:
            raise KeyboardInterrupt
        if self.finishing_run:
            self.finishing()

    def finishing(self) -> None:
        """From here on, stopping would leave more undone than finishing: a signal waits."""
        self.finishing_run = True
        del self.signals[1:]  # requests made while the last batches ran count as one
        if self.signals:
            print("finishing the run first (test score, model); signal again to stop now", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.bar.close()

    @property
    def stop_signal(self) -> int:
        """The signal that stopped the run: this process's own, or SIGTERM when a peer's stopped it."""
        return self.signals[0] if self.signals else signal.SIGTERM

    def step(self) -> bool:
        """After each batch: True asks the loop to stop."""
        self.bar.update(1)
        self.steps += 1
        if self.steps % self.every == 0:
            self.stopping = self.agree(bool(self.signals)) if self.agree else bool(self.signals)
        return self.stopping

    def epoch_done(self, epoch: int, epochs: int, row: dict[str, float]) -> None:
        columns = {"loss": "train_loss", "acc": "train_accuracy", "val_acc": "val_accuracy"}
        status = {name: f"{row[key]:.3f}" for name, key in columns.items()}
        if self.live:
            self.bar.set_postfix(epoch=epoch, **status)
        elif self.show:
            fields = " ".join(f"{name} {value}" for name, value in status.items())
            print(f"epoch {epoch}/{epochs} {fields}", file=sys.stderr)
