"""Where a Train-tab run is, read from its job's events: the phase (plain training, an HPO trial, the
final run), epoch and step, the fraction of the planned work done, the best validation score so far
and one validation/loss curve per run (trial). The UI draws these; nothing here knows about it."""
from __future__ import annotations

import math
import time
from typing import Any, Callable

HPO_TRIAL_EPOCHS = 2  # quick HPO: epochs per trial


def pct(x: Any) -> str:
    """0.734 -> ``73.4%``; ``n/a`` for anything that is not a number."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(x) else f"{100 * x:.1f}%"


def elapsed(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def metric_label(metric: str, short: bool = False) -> str:
    if metric == "f1_macro":
        return "F1" if short else "macro-F1"
    return {"auroc": "AUROC"}.get(metric, metric)


class TrainProgress:
    """Fed every job event by :meth:`update`; read ``phase``, ``detail()``, ``fraction()``, ``series``
    (label -> [{"epoch", "val", "loss"}]), ``metric`` and ``epochs`` (planned for the current run)."""

    def __init__(self, epochs: int, trials: int = 0, trial_epochs: int = HPO_TRIAL_EPOCHS,
                 clock: Callable[[], float] = time.monotonic):
        self.total_epochs, self.trials = int(epochs), int(trials)
        self.trial_epochs = min(self.total_epochs, int(trial_epochs))
        self.units = self.trials * self.trial_epochs + self.total_epochs  # epochs of work, for the bar
        self.clock, self.t0 = clock, clock()
        self.series: dict[str, list[dict]] = {}
        self.metric = "f1_macro"
        self.label, self.offset, self.epochs = "training", 0, self.total_epochs
        self.epoch = self.step = self.steps = 0
        self.loss: float | None = None
        self.best: str | None = None
        self.phase = "Training"
        if self.trials:
            self.label, self.phase = "trial 1", f"Quick HPO: trial 1 of {self.trials}"

    def update(self, ev: dict) -> None:
        kind = ev["kind"]
        if kind == "step":
            self.epoch, self.step, self.steps, self.loss = ev["epoch"], ev["step"], ev["steps"], ev["loss"]
        elif kind == "trial":
            n = ev["trial"]
            self._restart(f"trial {n}", (n - 1) * self.trial_epochs, ev["epochs"],
                          f"Quick HPO: trial {n} of {self.trials} (lr {ev['lr']:.2g})")
        elif kind == "final":
            self._restart("final run", self.trials * self.trial_epochs, self.total_epochs,
                          f"Final training with the best HPO configuration (lr {ev['lr']:.2g})")
        elif kind == "epoch":
            val = ev["val"]
            self.metric = val.get("headline", "f1_macro")
            score = float(val.get(self.metric, float("nan")))
            points = self.series.setdefault(self.label, [])
            points.append({"epoch": ev["epoch"], "val": score, "loss": ev["train_loss"]})
            best = max(points, key=lambda p: p["val"])
            self.best = f"{metric_label(self.metric, short=True)} {pct(best['val'])} (epoch {best['epoch']})"
            self.epoch, self.step = ev["epoch"], self.steps

    def _restart(self, label: str, offset: int, epochs: int, phase: str) -> None:
        self.label, self.offset, self.epochs, self.phase = label, offset, epochs, phase
        self.epoch = self.step = self.steps = 0
        self.loss = None

    def fraction(self) -> float:
        if not self.steps:
            return self.offset / self.units
        return (self.offset + self.epoch - 1 + self.step / max(1, self.steps)) / self.units

    def seconds(self) -> float:
        return self.clock() - self.t0

    def detail(self) -> str:
        parts = [f"epoch {self.epoch}/{self.epochs}, step {self.step}/{self.steps}" if self.steps
                 else "preparing: decoding images and loading the backbone"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.3f}")
        if self.best is not None:
            parts.append(f"best val {self.best}")
        parts.append(f"{elapsed(self.seconds())} elapsed")
        return " · ".join(parts)
