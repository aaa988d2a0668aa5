"""The GPT LightningModule (language modelling; paper Fig. 1a).

The model itself is :class:`lightning_modules.gpt_model.GPT` (one nanoGPT-style file).
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torchmetrics import MeanMetric

from rotations.config import RotationConfig

from .base import OptimizerFactory, RotatableModule
from .gpt_model import GPT, GPTConfig


class GPTLightningModule(RotatableModule):
    """A GPT trained by next-token prediction.

    Model args mirror :class:`GPTConfig`; the rest are :class:`RotatableModule`'s.
    ``compile=True`` wraps the model in ``torch.compile``.
    """

    def __init__(self, vocab_size: int = 50304, block_size: int = 1024, n_layer: int = 12,
                 n_head: int = 12, n_embd: int = 768, dropout: float = 0.0, bias: bool = False,
                 attention: Literal["math", "flash"] = "math",
                 variant: Literal["gpt2", "llama"] = "gpt2", tie_embeddings: bool = True,
                 optimizer: Optional[OptimizerFactory] = None,
                 rotation: Optional[RotationConfig] = None, warmup_steps: int = 2000,
                 warmup_epochs: Optional[float] = None, decay_steps: Optional[int] = None,
                 min_lr_ratio: float = 0.1, peak_flops: Optional[float] = None,
                 compile: bool = False):
        super().__init__(optimizer=optimizer, rotation=rotation, warmup_steps=warmup_steps,
                         warmup_epochs=warmup_epochs, decay_steps=decay_steps,
                         min_lr_ratio=min_lr_ratio, peak_flops=peak_flops)
        self.save_hyperparameters(ignore=["optimizer", "rotation"])
        self.hparams["rotation"] = self.rotation.to_dict()   # plain types: weights_only loads
        self.config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer,
                                n_head=n_head, n_embd=n_embd, dropout=dropout, bias=bias,
                                attention=attention, variant=variant,
                                tie_embeddings=tie_embeddings)
        self.model = GPT(self.config)
        self.compile = compile
        self.val_loss = MeanMetric()

    def configure_model(self):
        if self.compile and not getattr(self, "_compiled", False):
            self.forward_model = torch.compile(self.model)
            self._compiled = True

    def forward(self, idx, targets=None):
        fwd = getattr(self, "forward_model", None) or self.model
        return fwd(idx, targets)

    def flops_per_sample(self) -> Optional[float]:
        return self.model.flops_per_token() * self.config.block_size

    def on_fit_start(self):
        dm = getattr(self.trainer, "datamodule", None)
        vs = getattr(dm, "vocab_size", None)
        if vs is not None and vs > self.config.vocab_size:
            raise ValueError(f"model.vocab_size={self.config.vocab_size} is smaller than the "
                             f"tokenizer's vocabulary ({vs}); set model.vocab_size >= {vs}")
        bs = getattr(dm, "block_size", None)
        if bs is not None and bs > self.config.block_size:
            raise ValueError(f"data.block_size={bs} exceeds model.block_size="
                             f"{self.config.block_size}")
        describe = getattr(dm, "describe", None)
        if callable(describe) and self.logger is not None and self.global_rank == 0:
            info = describe()
            exp = getattr(self.logger, "experiment", None)
            if hasattr(exp, "add_text"):
                exp.add_text("data", "\n".join(f"- {k}: {v}" for k, v in info.items()))

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

    def on_validation_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss), sync_dist=False)

    test_step = validation_step

    def on_test_epoch_end(self):
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("test/loss", loss)
        self.log("test/ppl", torch.exp(loss))

