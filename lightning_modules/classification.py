"""What the vision LightningModules share: image classification with cross-entropy.

:class:`ClassificationModule` (a :class:`~lightning_modules.base.RotatableModule`) expects
subclasses to set ``self.model`` (images -> logits) and to implement
:meth:`ClassificationModule.expected_data`. It provides:

* the loss: ``F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)``;
* metrics (torchmetrics ``MulticlassAccuracy(top_k=k, average="micro")``: the fraction of
  samples whose label is among the ``k`` largest logits; with fewer than 5 classes
  ``acc5`` is top-``num_classes``, i.e. 1):

  ======================  ===========================================================
  ``train/loss``          per optimizer step (the micro-batch's loss)
  ``train/acc1``          per step, the micro-batch's top-1
  ``val/loss``            per validation run, sample-weighted mean (DDP-synchronised)
  ``val/acc1``, ``val/acc5``  per validation run (DDP-synchronised by torchmetrics)
  ``test/...``            the same for ``trainer.test``
  ======================  ===========================================================

* throughput: ``count_samples(B, B)`` — for vision a "token" is an image, so
  ``train/tokens`` counts images seen (all ranks) and ``train/samples_per_s`` is images/s;
* ``on_fit_start``: the datamodule's ``num_classes`` / ``channels`` / ``image_size`` (when it
  exposes them) must match the model, with an error naming both fields otherwise.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from rotations.config import RotationConfig

from .base import OptimizerFactory, RotatableModule


class ClassificationModule(RotatableModule):
    """Base for image classifiers (see the module docstring).

    Args:
        num_classes: number of classes (the model's head width).
        label_smoothing: cross-entropy label smoothing in ``[0, 1)`` (training loss only;
            ``val/loss`` is the plain cross-entropy).
        compile: wrap ``self.model`` in ``torch.compile`` for the forward.
        others: :class:`~lightning_modules.base.RotatableModule`'s.
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0,
                 optimizer: Optional[OptimizerFactory] = None,
                 rotation: Optional[RotationConfig] = None, warmup_steps: int = 0,
                 warmup_epochs: Optional[float] = None, decay_steps: Optional[int] = None,
                 min_lr_ratio: float = 0.0, peak_flops: Optional[float] = None,
                 compile: bool = False):
        super().__init__(optimizer=optimizer, rotation=rotation, warmup_steps=warmup_steps,
                         warmup_epochs=warmup_epochs, decay_steps=decay_steps,
                         min_lr_ratio=min_lr_ratio, peak_flops=peak_flops)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"model.num_classes must be an int >= 2, got {num_classes!r}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.compile = compile
        self.top_k = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({
                "loss": MeanMetric(),
                "acc1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(num_classes, top_k=self.top_k, average="micro"),
            }) for stage in ("val", "test")})

    # -- to be provided by subclasses -----------------------------------------------------
    def expected_data(self) -> dict:
        """``{"num_classes": …, "channels": …, "image_size": …}`` the model needs (omit a key
        to accept any value)."""
        return {}

    # -- forward --------------------------------------------------------------------------
    def configure_model(self):
        if self.compile and not getattr(self, "_compiled", False):
            self.forward_model = torch.compile(self.model)
            self._compiled = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fwd = getattr(self, "forward_model", None) or self.model
        return fwd(images)

    def on_fit_start(self):
        dm = getattr(self.trainer, "datamodule", None)
        for key, want in self.expected_data().items():
            have = getattr(dm, key, None)
            if have is not None and have != want:
                raise ValueError(f"data.{key}={have} does not match model.{key}={want}; "
                                 f"set model.init_args.{key}: {have} (or change the data)")
        describe = getattr(dm, "describe", None)
        if callable(describe) and self.logger is not None and self.global_rank == 0:
            exp = getattr(self.logger, "experiment", None)
            if hasattr(exp, "add_text"):
                exp.add_text("data", "\n".join(f"- {k}: {v}" for k, v in describe().items()))

    # -- steps ----------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        self.count_samples(x.size(0), x.size(0))
        self.train_acc1(logits.detach().float(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/acc1", self.train_acc1, on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch, stage: str):
        x, y = batch
        logits = self(x).float()
        m = self.eval_metrics[stage]
        m["loss"].update(F.cross_entropy(logits, y), weight=y.numel())
        for name, metric in m.items():
            if name != "loss":
                metric.update(logits, y)
            # logging the metric objects: Lightning computes (DDP-synced) and resets them
            # at the end of the epoch
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True,
                     prog_bar=name in ("loss", "acc1"))

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")
