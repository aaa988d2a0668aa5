"""The GPT LightningModule: next-token prediction (paper Fig. 1a; the model is
:class:`lightning_modules.gpt_model.GPT`, docs/CONVENTIONS.md §9)."""
from __future__ import annotations

from dataclasses import fields
from typing import Literal, Optional

import torch
from torchmetrics import MeanMetric

from .base import RotatableModule
from .gpt_model import GPT, GPTConfig


class GPTLightningModule(RotatableModule):
    """A GPT trained by next-token prediction.

    Model args mirror :class:`GPTConfig`; ``**kwargs`` are :class:`RotatableModule`'s
    (optimizer, rotation, schedule, ``compile``, ``peak_flops``).
    """

    def __init__(self, vocab_size: int = 50304, block_size: int = 1024, n_layer: int = 12,
                 n_head: int = 12, n_embd: int = 768, dropout: float = 0.0, bias: bool = False,
                 attention: Literal["math", "flash"] = "math",
                 variant: Literal["gpt2", "llama"] = "gpt2", tie_embeddings: bool = True,
                 gelu: Literal["exact", "tanh"] = "tanh", warmup_steps: int = 2000,
                 **kwargs):
        super().__init__(warmup_steps=warmup_steps, **kwargs)

    def configure_models(self) -> None:
        names = {f.name for f in fields(GPTConfig)}
        self.config = GPTConfig(**{k: v for k, v in self.hparams.items() if k in names})
        self.model = GPT(self.config)

    def configure_metrics(self) -> None:
        self.val_loss = MeanMetric()

    def flops_per_sample(self) -> Optional[float]:
        return self.model.flops_per_token() * self.config.block_size

    def data_limits(self) -> dict:
        return {"vocab_size": self.config.vocab_size, "block_size": self.config.block_size}

    def training_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self(x, y)
        self.count_samples(x.size(0), x.numel())
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        _, loss = self(x, y)
        self.val_loss.update(loss, weight=y.numel())

    test_step = validation_step

    def _log_eval(self, stage: str) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}/ppl", torch.exp(loss))

    def on_validation_epoch_end(self):
        self._log_eval("val")

    def on_test_epoch_end(self):
        self._log_eval("test")
