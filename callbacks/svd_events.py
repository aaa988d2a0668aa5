"""Mark SVD basis refreshes (paper Alg. 5) in the logs.

:class:`SVDRefreshLogger` watches the SVD units of a
:class:`~rotations.optimizer.RotatedOptimizer`'s plan. After an optimizer step whose rotation
step equals the units' ``refreshed_at`` (the bases were recomputed from that step's gradient)
it logs, at ``trainer.global_step``:

* ``rotation/svd_refresh`` = 1 (only at refresh steps: vertical marks in TensorBoard);
* ``rotation/svd_refresh_count`` = refreshes since the start of training, derived from the
  optimizer's rule (refreshes at rotation steps 1, 1 + F, 1 + 2F, …, ``F =
  svd_refresh_every``), so it stays right after a resume.

The steps seen are kept in :attr:`refresh_steps`. Rank zero only; nothing happens for
optimizers without SVD units.
"""
from __future__ import annotations

from typing import Optional

from lightning.pytorch.callbacks import Callback

from ._common import is_global_zero, log_scalars, optimizers


class SVDRefreshLogger(Callback):
    def __init__(self, tag: str = "rotation/svd_refresh"):
        self.tag = tag
        self.refresh_steps: list[int] = []
        self._seen: Optional[int] = None

    @staticmethod
    def _svd_optimizer(trainer):
        for opt in optimizers(trainer):
            plan = getattr(opt, "plan", None)
            if plan is not None and plan.svd_units:
                return opt
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not is_global_zero(trainer):
            return
        opt = self._svd_optimizer(trainer)
        if opt is None:
            return
        step = int(getattr(opt, "rotation_step", 0))
        if step == 0 or step == self._seen:
            return
        self._seen = step
        refreshed = max(u.refreshed_at for u in opt.plan.svd_units)
        if refreshed != step:
            return
        every = int(opt.config.svd_refresh_every)
        count = (refreshed - 1) // every + 1
        self.refresh_steps.append(int(trainer.global_step))
        log_scalars(trainer, {self.tag: 1.0, f"{self.tag}_count": float(count)},
                    int(trainer.global_step))
