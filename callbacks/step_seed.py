"""Per-batch reseeding of every RNG, so a resumed run draws what a straight run draws
(docs/RUNS.md)."""
from __future__ import annotations

import os
import random
from typing import Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["StepSeed"]


class StepSeed(Callback):
    """Reseed torch (CPU and CUDA), numpy and ``random`` before every training batch from
    ``(seed, batch index, global rank)``.

    The RNG state of a training batch is then a function of where it is in the run, not of how
    the process got there (a resume, validation runs, DataLoader iterators drawing seeds), so a
    resumed run draws the same dropout masks as a straight one, and ranks draw different ones.
    ``seed`` defaults to the run's ``seed_everything`` value (``PL_GLOBAL_SEED``); without one,
    nothing is reseeded.
    """

    def __init__(self, enabled: bool = True, seed: Optional[int] = None):
        self.enabled = enabled
        self.seed = seed

    def _base(self) -> Optional[int]:
        if self.seed is not None:
            return int(self.seed)
        env = os.environ.get("PL_GLOBAL_SEED")
        return int(env) if env not in (None, "") else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.enabled:
            return
        base = self._base()
        if base is None:
            return
        index = trainer.fit_loop.epoch_loop.total_batch_idx
        state = np.random.SeedSequence([base & (2 ** 63 - 1), index, trainer.global_rank])
        s64, s32 = state.generate_state(2, np.uint64)
        torch.manual_seed(int(s64) & (2 ** 63 - 1))
        np.random.seed(int(s32) & (2 ** 32 - 1))
        random.seed(int(s64))
