"""Orthogonality of Adam's layer updates (NeurIPS Sec. 4.2, App. C.4; Fig. 10).

:class:`UpdateOrthogonality` computes, every ``every_n_steps`` optimizer steps and for every
weight-matrix view (both dimensions ≥ ``min_dim``), the Adam update brought back to the
standard basis and seen as the layer's matrix,

    A = Rᵀ( m̂ / (sqrt(v̂) + ε) ),   m̂ = m / (1 − β1^t),  v̂ = v / (1 − β2^t)

(``t`` the state's step; learning rate and weight decay excluded), and logs the statistics of
:func:`rotations.probes.update_orthogonality` (definitions there):

* per layer: ``orth_layer/cv/<view>``, ``orth_layer/cv_eig/<view>``,
  ``orth_layer/svd_entropy/<view>`` (``per_layer=True``);
* averaged per parameter type: ``orth/cv/<ptype>``, ``orth/cv_eig/<ptype>``,
  ``orth/svd_entropy/<ptype>``, ``orth/svd_entropy_sq/<ptype>``, and over all matrices
  ``orth/<metric>/all``.

``Rᵀ`` is applied per rotation unit (a ``global`` unit unrotates all its views together).
Views without Adam moments (e.g. Muon's hidden matrices, SGD) are skipped. Rank zero only;
the singular values are computed on the device and one small tensor crosses to the host per
logging step. The Fig. 10 protocol ("500 steps resumed from a checkpoint") is this callback
with ``every_n_steps=1`` on a run resumed with ``ckpt_path``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from lightning.pytorch.callbacks import Callback

from rotations.probes import RotatedSpace, adam_update_views, update_orthogonality_tensor

from ._common import is_global_zero, log_scalars, module_views, optimizers

METRICS = ("cv", "cv_eig", "svd_entropy", "svd_entropy_sq")


class UpdateOrthogonality(Callback):
    """Log the orthogonality of Adam's per-layer update direction.

    Args:
        every_n_steps: period in optimizer steps.
        per_layer: also log every layer's values (``orth_layer/...``).
        types: restrict to these parameter types (default: every matrix view).
        min_dim: a view counts as a weight matrix when ``min(out, in) >= min_dim``.
        prefix: tag prefix.
    """

    def __init__(self, every_n_steps: int = 100, per_layer: bool = True,
                 types: Optional[Sequence[str]] = None, min_dim: int = 2, prefix: str = "orth"):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be positive")
        self.every_n_steps, self.per_layer, self.min_dim = every_n_steps, per_layer, min_dim
        self.types = set(types) if types else None
        self.prefix = prefix
        self._last_step: Optional[int] = None
        self._space: dict = {}
        self.last: dict = {}

    def _space_for(self, opt, pl_module) -> RotatedSpace:
        key = id(opt)
        if key not in self._space:
            views = None if getattr(opt, "plan", None) is not None else module_views(pl_module)
            self._space = {key: (RotatedSpace.from_optimizer(opt, views), views)}
        return self._space[key]

    def compute(self, optimizer, space: RotatedSpace, views=None) -> dict:
        """``{metric/tag: float}`` for one optimizer (``{}`` without Adam moments)."""
        mats, has = adam_update_views(optimizer, views, space)
        if not any(has):
            return {}
        A = space.unrotate_views(mats)
        names, types, vals = [], [], []
        for k, v in enumerate(space.views):
            shape = space.shapes[k]
            if not has[k] or min(shape) < self.min_dim:
                continue
            if self.types is not None and v.ptype not in self.types:
                continue
            names.append(v.name)
            types.append(v.ptype)
            vals.append(update_orthogonality_tensor(A[k]).float())
        if not vals:
            return {}
        host = torch.stack(vals).cpu().tolist()
        out: dict[str, float] = {}
        by_type: dict[str, list] = {}
        for name, ptype, row in zip(names, types, host):
            by_type.setdefault(ptype, []).append(row)
            by_type.setdefault("all", []).append(row)
            if self.per_layer:
                for m, x in zip(METRICS, row):
                    out[f"{self.prefix}_layer/{m}/{name}"] = x
        for t, rows in by_type.items():
            for j, m in enumerate(METRICS):
                xs = [r[j] for r in rows if not math.isnan(r[j])]
                out[f"{self.prefix}/{m}/{t}"] = sum(xs) / len(xs) if xs else float("nan")
        return out

    def log_now(self, trainer, pl_module, step: int) -> dict:
        metrics: dict = {}
        for opt in optimizers(trainer):
            space, views = self._space_for(opt, pl_module)
            metrics = self.compute(opt, space, views)
            if metrics:
                break
        self.last = metrics
        log_scalars(trainer, metrics, step)
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not is_global_zero(trainer):
            return
        step = int(trainer.global_step)
        if step <= 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        self.log_now(trainer, pl_module, step)
