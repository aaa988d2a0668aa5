"""What every adamrot LightningModule shares: hyper-parameters, the optimizer in its rotated
space (docs/CONVENTIONS.md §1, §5), the LR schedule (§7), ``torch.compile``, the data check
and throughput logging.

Subclasses (torchgeo ``BaseTask`` style) take their own arguments plus ``**kwargs`` for
:class:`RotatableModule`'s, and build their parts in :meth:`RotatableModule.configure_models`
and :meth:`RotatableModule.configure_metrics` from ``self.hparams``.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Iterable, Optional

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from rotations.config import RotationConfig
from rotations.layout import LayerView, model_layout
from rotations.optimizer import RotatedOptimizer
from rotations.zoo import traits

from .checks import positive_int
from .gpt_model import nanogpt_param_groups

OptimizerFactory = Callable[[Iterable], torch.optim.Optimizer]

#: dense bf16 peak FLOP/s of GPUs Lightning's table lacks or lists with sparsity
DENSE_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_bf16_flops(device: torch.device) -> Optional[float]:
    """Dense bf16 peak FLOP/s of a CUDA device (None elsewhere or when unknown), for MFU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    known = next((v for k, v in DENSE_BF16_FLOPS.items() if k in name), None)
    if known:
        return known
    from lightning.fabric.utilities.throughput import get_available_flops
    return get_available_flops(device, torch.bfloat16)


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    """nanoGPT's schedule as a multiplier of the peak LR: linear warm-up over ``warmup``
    steps, cosine from 1 to ``floor`` until ``total``, then ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / (warmup + 1)
    if step >= total:
        return floor
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - floor)


class RotatableModule(L.LightningModule):
    """Base class: hyper-parameters, optimizer + rotation, schedule, compile, throughput.

    Args:
        optimizer: optimizer callable from YAML (``class_path``/``init_args``).
        rotation: the rotated space the optimizer runs in (``None`` = standard basis).
        warmup_steps: linear warm-up length in optimizer steps.
        warmup_epochs: alternative to ``warmup_steps`` for epoch-based (vision) runs.
        decay_steps: end of the cosine (default: ``trainer.max_steps`` or the estimated total).
        min_lr_ratio: the cosine's floor as a fraction of the peak LR (6e-5 / 6e-4 = 0.1).
        peak_flops: device peak FLOP/s for MFU (default: :func:`peak_bf16_flops`).
        compile: compile ``self.model`` in place (``nn.Module.compile``) when the trainer
            sets the model up; the state dict keeps its keys.
    """

    def __init__(self, *, optimizer: Optional[OptimizerFactory] = None,
                 rotation: Optional[RotationConfig] = None, warmup_steps: int = 0,
                 warmup_epochs: Optional[float] = None, decay_steps: Optional[int] = None,
                 min_lr_ratio: float = 0.1, peak_flops: Optional[float] = None,
                 compile: bool = False):
        super().__init__()
        # the subclasses' arguments too (Lightning walks the __init__ frames)
        self.save_hyperparameters(ignore=["optimizer", "rotation"])
        self.optimizer_factory = optimizer or torch.optim.AdamW
        # rotation.seed null = the run's seed_everything (Lightning's PL_GLOBAL_SEED); the
        # resolved seed is what hparams and checkpoints record
        env_seed = os.environ.get("PL_GLOBAL_SEED")
        self.rotation = RotationConfig.coerce(rotation).with_run_seed(
            int(env_seed) if env_seed not in (None, "") else None)
        self.hparams["rotation"] = self.rotation.to_dict()   # plain types: weights_only loads
        positive_int("model.warmup_steps", warmup_steps, minimum=0)
        if warmup_epochs is not None and warmup_epochs < 0:
            raise ValueError(f"model.warmup_epochs must be >= 0, got {warmup_epochs}")
        positive_int("model.decay_steps", decay_steps, optional=True)
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"model.min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps, self.warmup_epochs = warmup_steps, warmup_epochs
        self.decay_steps, self.min_lr_ratio = decay_steps, min_lr_ratio
        self.peak_flops = peak_flops
        self._compiled = False
        self._t_last: Optional[float] = None
        self._tokens_since = self._samples_since = 0
        self.tokens_seen = 0
        self.configure_models()
        self.configure_metrics()

    # -- hooks for subclasses ----------------------------------------------------------------
    def configure_models(self) -> None:
        """Set ``self.model`` (an ``nn.Module``, ideally with ``rotation_layout()``)."""
        raise NotImplementedError

    def configure_metrics(self) -> None:
        """Create the torchmetrics objects the steps use."""

    def param_groups(self) -> list[dict]:
        return nanogpt_param_groups(self.model.named_parameters())

    def rotation_views(self) -> list[LayerView]:
        return model_layout(self.model)

    def flops_per_sample(self) -> Optional[float]:
        return None

    def expected_data(self) -> dict:
        """``{datamodule attribute: value}`` the data must match exactly."""
        return {}

    def data_limits(self) -> dict:
        """``{datamodule attribute: value}`` the data must not exceed."""
        return {}

    # -- model -------------------------------------------------------------------------------
    def configure_model(self):
        """Lightning's hook (called once the model is on its device): compile in place."""
        if self.hparams.get("compile") and not self._compiled:
            self.model.compile()
            self._compiled = True

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints written before the in-place compile held a second copy of the weights
        sd = checkpoint.get("state_dict") or {}
        for k in [k for k in sd if k.startswith("forward_model.")]:
            del sd[k]

    def check_data(self, datamodule) -> None:
        """Raise ``ValueError`` naming both fields when the datamodule does not fit the model
        (attributes it does not expose are not checked)."""
        for key, want in self.expected_data().items():
            have = getattr(datamodule, key, None)
            if have is not None and have != want:
                raise ValueError(f"data.{key}={have} does not match model.{key}={want}; "
                                 f"set model.init_args.{key}: {have} (or change the data)")
        for key, limit in self.data_limits().items():
            have = getattr(datamodule, key, None)
            if isinstance(have, int) and have > limit:
                raise ValueError(f"data.{key}={have} exceeds model.{key}={limit}; set "
                                 f"model.{key} >= {have}")

    def on_fit_start(self):
        dm = getattr(self.trainer, "datamodule", None)
        self.check_data(dm)
        describe = getattr(dm, "describe", None)
        if callable(describe) and self.logger is not None and self.global_rank == 0:
            exp = getattr(self.logger, "experiment", None)
            if hasattr(exp, "add_text"):
                exp.add_text("data", "\n".join(f"- {k}: {v}" for k, v in describe().items()))

    # -- optimizer ---------------------------------------------------------------------------
    def build_optimizer(self) -> torch.optim.Optimizer:
        groups = self.param_groups()
        factory = self.optimizer_factory
        probe = factory([dict(g) for g in groups])          # cheap: no state before step()
        t = traits(probe)                      # what this optimizer needs (rotations.zoo)
        if not (self.rotation.active or t.split_views):
            return probe
        return RotatedOptimizer(groups, factory, self.rotation_views(), self.rotation,
                                split_views=t.split_views, view_group_options=t.view_options)

    def _total_steps(self) -> int:
        if self.decay_steps:
            return self.decay_steps
        t = self.trainer
        if t.max_steps and t.max_steps > 0:
            return t.max_steps
        return int(t.estimated_stepping_batches)

    def _warmup(self) -> int:
        if self.warmup_epochs is not None:
            t = self.trainer
            epochs = max(1, t.max_epochs or 1)
            return int(round(self.warmup_epochs * t.estimated_stepping_batches / epochs))
        return self.warmup_steps

    def configure_optimizers(self):
        opt = self.build_optimizer()
        total, warmup, floor = self._total_steps(), self._warmup(), self.min_lr_ratio
        sched = LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total, floor))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer):
        lr = optimizer.param_groups[0]["lr"]
        self.log("train/lr", lr, on_step=True, on_epoch=False, rank_zero_only=True)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        """Lightning's step, through the non-finite guard when one is installed
        (``callbacks/nonfinite.py``: loss and gradients checked before the update)."""
        from callbacks.nonfinite import guarded_optimizer_step
        guarded_optimizer_step(self.trainer, optimizer, optimizer_closure)

    # -- throughput --------------------------------------------------------------------------
    def count_samples(self, n_samples: int, n_tokens: int) -> None:
        """Call from ``training_step`` with the micro-batch's sizes (per rank)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        self.tokens_seen += n_tokens * world
        self._tokens_since += n_tokens * world
        self._samples_since += n_samples * world

    def on_train_batch_end(self, outputs, batch, batch_idx):
        t = self.trainer
        if not t.is_last_batch and (batch_idx + 1) % t.accumulate_grad_batches:
            return
        now = time.perf_counter()
        if self._t_last is None:
            self._t_last, self._tokens_since, self._samples_since = now, 0, 0
            return
        every = max(1, self.trainer.log_every_n_steps)
        if self.trainer.global_step % every:
            return
        dt = now - self._t_last
        if dt <= 0:
            return
        metrics = {"train/tokens": float(self.tokens_seen),
                   "train/tokens_per_s": self._tokens_since / dt,
                   "train/samples_per_s": self._samples_since / dt}
        fps = self.flops_per_sample()
        peak = self.peak_flops
        if peak is None:
            peak = peak_bf16_flops(self.device)
            if peak:
                peak *= self.trainer.world_size
        if fps and peak:
            metrics["train/mfu"] = fps * self._samples_since / dt / peak
        self.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        self._t_last, self._tokens_since, self._samples_since = now, 0, 0
