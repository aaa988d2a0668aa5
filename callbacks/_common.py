"""Shared pieces of the measurement callbacks: :class:`PeriodicCallback` (rank zero, once per
optimizer step every ``every_n_steps``), the module's layer views, the trainer's loggers."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from lightning.pytorch.callbacks import Callback

from rotations.layout import LayerView, model_layout
from rotations.optimizer import RotatedOptimizer


def is_global_zero(trainer) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


class PeriodicCallback(Callback):
    """Call :meth:`log_now` on rank zero after every optimizer step ``trainer.global_step``
    that is a positive multiple of ``every_n_steps``, once per step (gradient accumulation
    calls the batch hook several times per step); with ``at_end`` also at the end of training
    for a last step not logged yet. Other ranks do nothing."""

    def __init__(self, every_n_steps: int = 1, at_end: bool = False):
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        self.every_n_steps, self.at_end = every_n_steps, at_end
        self._last_step: Optional[int] = None

    def log_now(self, trainer, pl_module, step: int):
        raise NotImplementedError

    def _maybe_log(self, trainer, pl_module, due) -> None:
        step = int(trainer.global_step)
        if step > 0 and step != self._last_step and due(step):
            self._last_step = step
            self.log_now(trainer, pl_module, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if is_global_zero(trainer):
            self._maybe_log(trainer, pl_module, lambda s: s % self.every_n_steps == 0)

    def on_train_end(self, trainer, pl_module):
        if self.at_end and is_global_zero(trainer):
            self._maybe_log(trainer, pl_module, lambda s: True)


def module_views(pl_module) -> list[LayerView]:
    """The LightningModule's rotation layout (``rotation_views()``), else the layout of
    ``pl_module.model`` (or of the module itself)."""
    fn = getattr(pl_module, "rotation_views", None)
    if callable(fn):
        return fn()
    return model_layout(getattr(pl_module, "model", pl_module))


def views_for(optimizer, pl_module) -> Optional[list[LayerView]]:
    """The views a plain optimizer's state is read through (``None`` for a
    :class:`~rotations.optimizer.RotatedOptimizer`, which has its own)."""
    return None if isinstance(optimizer, RotatedOptimizer) else module_views(pl_module)


def optimizers(trainer) -> list:
    return list(getattr(trainer, "optimizers", None) or [])


def tb_writers(trainer) -> list:
    """``SummaryWriter``-like experiments of the trainer's loggers (those that can take raw
    histograms)."""
    out = []
    for lg in getattr(trainer, "loggers", None) or []:
        try:
            exp = lg.experiment
        except Exception:  # noqa: BLE001 - a logger without an experiment
            continue
        if hasattr(exp, "add_histogram_raw"):
            out.append(exp)
    return out


def log_scalars(trainer, metrics: dict, step: int) -> None:
    """Write scalars to every logger of the trainer directly (rank zero only: callers check)."""
    if not metrics:
        return
    for lg in getattr(trainer, "loggers", None) or []:
        lg.log_metrics(metrics, step=step)


def output_dir(trainer) -> Optional[Path]:
    for attr in ("log_dir", "default_root_dir"):
        d = getattr(trainer, attr, None)
        if d:
            return Path(d)
    return None
