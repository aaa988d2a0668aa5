"""Mark SVD basis refreshes (paper Alg. 5; docs/CONVENTIONS.md §4) in the logs: after an
optimizer step that refreshed the bases, ``rotation/svd_refresh`` = 1 and
``rotation/svd_refresh_count`` (refreshes since the start, from the rule: rotation steps
1, 1 + F, 1 + 2F, … so it stays right after a resume). Rank zero only."""
from __future__ import annotations

from typing import Optional

from rotations.optimizer import RotatedOptimizer

from ._common import PeriodicCallback, log_scalars, optimizers


class SVDRefreshLogger(PeriodicCallback):
    """Log the SVD refreshes of a :class:`~rotations.optimizer.RotatedOptimizer`; the global
    steps seen are kept in :attr:`refresh_steps`. Nothing happens without SVD units."""

    def __init__(self, tag: str = "rotation/svd_refresh"):
        super().__init__(every_n_steps=1)
        self.tag = tag
        self.refresh_steps: list[int] = []

    @staticmethod
    def _svd_optimizer(trainer) -> Optional[RotatedOptimizer]:
        for opt in optimizers(trainer):
            if isinstance(opt, RotatedOptimizer) and opt.plan.svd_units:
                return opt
        return None

    def log_now(self, trainer, pl_module, step: int) -> None:
        opt = self._svd_optimizer(trainer)
        if opt is None or opt.rotation_step == 0 or opt.last_svd_refresh != opt.rotation_step:
            return
        count = opt.plan.config.svd_refreshes_until(opt.last_svd_refresh)
        self.refresh_steps.append(step)
        log_scalars(trainer, {self.tag: 1.0, f"{self.tag}_count": float(count)}, step)
