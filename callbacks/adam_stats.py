"""Adam with β1 = β2 = β (Orvieto & Gower): its state is the online mean ``m`` and variance
``σ² = v − m²`` of the gradient, and the update is ``m / sqrt(m² + σ²)``. This callback logs,
per parameter type, statistics of ``σ²`` and of the ratio ``m̂ / sqrt(v̂)`` (docs/CONVENTIONS.md §5).
Rank 0 only.
"""
from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from rotations.probes import adam_moment_stats, view_states

from ._common import PeriodicCallback, optimizers, views_for

LOGGED = ("sigma2_mean", "sigma2_median", "sigma2_min", "ratio_mean", "ratio_median",
          "ratio_q05", "ratio_q95")


class AdamMomentStats(PeriodicCallback):
    """Every ``every_n_steps`` optimizer steps, log ``adam/<stat>/<ptype>`` for Adam-type
    optimizers with β1 = β2 (other betas: warns once and logs nothing)."""

    def __init__(self, every_n_steps: int = 100):
        super().__init__(every_n_steps)
        self._warned = False

    def log_now(self, trainer, pl_module, step: int) -> None:
        opt = optimizers(trainer)[0]
        metrics = self.compute(opt, views_for(opt, pl_module))
        if metrics:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)

    @torch.no_grad()
    def compute(self, optimizer, views) -> dict:
        by_type: dict[str, tuple[list, list, int, float]] = {}
        for vs in view_states(optimizer, views):
            m_v, v_v = vs.get("exp_avg"), vs.get("exp_avg_sq")
            if m_v is None or v_v is None:
                continue
            b1, b2 = vs.group.get("betas", (None, None))
            if b1 is None or abs(b1 - b2) > 1e-12:
                if not self._warned:
                    rank_zero_warn(f"AdamMomentStats needs beta1 == beta2, got {(b1, b2)}; "
                                   "nothing is logged")
                    self._warned = True
                return {}
            m, s, _, _ = by_type.setdefault(vs.view.ptype, ([], [], int(vs.step or 0), b1))
            m.append(m_v)
            s.append(v_v)
        out = {}
        for ptype, (m, s, step, beta) in by_type.items():
            stats = adam_moment_stats(m, s, step, beta, beta)
            for k in LOGGED:
                if k in stats:
                    out[f"adam/{k}/{ptype}"] = float(stats[k])
        return out
