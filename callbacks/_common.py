"""Helpers shared by the measurement callbacks (rank-zero checks, views, loggers)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from rotations.layout import LayerView, model_layout


def is_global_zero(trainer) -> bool:
    return bool(getattr(trainer, "is_global_zero", True))


def module_views(pl_module) -> list[LayerView]:
    """The LightningModule's rotation layout (``rotation_views()``), else the layout of
    ``pl_module.model`` (or of the module itself)."""
    fn = getattr(pl_module, "rotation_views", None)
    if callable(fn):
        return fn()
    return model_layout(getattr(pl_module, "model", pl_module))


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
