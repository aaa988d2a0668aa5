"""Image classification with cross-entropy, shared by the ViT and the ResNet
(docs/CONVENTIONS.md §6 for the metrics).

Metrics are torchmetrics ``MulticlassAccuracy(top_k=k, average="micro")``: ``train/loss``,
``train/acc1`` per step (the micro-batch); ``val/loss`` (sample-weighted), ``val/acc1``,
``val/acc5`` per validation run (DDP-synchronised), ``test/...`` likewise; with fewer than 5
classes ``acc5`` is top-``num_classes``. A "token" is an image: ``train/tokens`` counts
images seen and ``train/samples_per_s`` is images/s.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from .base import RotatableModule
from .checks import positive_int


class ClassificationModule(RotatableModule):
    """Base for image classifiers: subclasses set ``self.model`` (images -> logits) in
    ``configure_models`` and name the data they need in ``expected_data``.

    Args:
        num_classes: number of classes (the model's head width).
        label_smoothing: cross-entropy label smoothing in ``[0, 1)`` (training loss only;
            ``val/loss`` is the plain cross-entropy).
        kwargs: :class:`~lightning_modules.base.RotatableModule`'s.
    """

    def __init__(self, num_classes: int, label_smoothing: float = 0.0,
                 min_lr_ratio: float = 0.0, **kwargs):
        positive_int("model.num_classes", num_classes, minimum=2)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"model.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        super().__init__(min_lr_ratio=min_lr_ratio, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def configure_metrics(self) -> None:
        n = self.hparams.num_classes
        self.top_k = min(5, n)
        self.train_acc1 = MulticlassAccuracy(n, top_k=1, average="micro")
        self.eval_metrics = nn.ModuleDict({
            stage: nn.ModuleDict({
                "loss": MeanMetric(),
                "acc1": MulticlassAccuracy(n, top_k=1, average="micro"),
                "acc5": MulticlassAccuracy(n, top_k=self.top_k, average="micro"),
            }) for stage in ("val", "test")})

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
