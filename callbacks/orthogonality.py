"""Orthogonality of Adam's layer updates (NeurIPS Sec. 4.2, App. C.4; Fig. 10): every
``every_n_steps`` optimizer steps, for every weight-matrix view, the statistics of
:func:`rotations.probes.update_orthogonality` (docs/CONVENTIONS.md §6) of Adam's direction
brought back to the standard basis, ``A = Rᵀ(m̂ / (sqrt(v̂) + ε))``: per layer
(``orth_layer/<metric>/<view>``), averaged per parameter type (``orth/<metric>/<ptype>``) and
over all matrices (``orth/<metric>/all``). Views without Adam moments are skipped. Fig. 10's
protocol is this callback with ``every_n_steps=1`` on a run resumed from a checkpoint.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from rotations.probes import RotatedSpace, adam_update_views, update_orthogonality_tensor

from ._common import PeriodicCallback, log_scalars, optimizers, views_for

METRICS = ("cv", "cv_eig", "svd_entropy", "svd_entropy_sq")


class UpdateOrthogonality(PeriodicCallback):
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
        super().__init__(every_n_steps)
        self.per_layer, self.min_dim = per_layer, min_dim
        self.types = set(types) if types else None
        self.prefix = prefix
        self._space: dict = {}
        self.last: dict = {}

    def _space_for(self, opt, pl_module) -> tuple[RotatedSpace, Optional[list]]:
        key = id(opt)
        if key not in self._space:
            views = views_for(opt, pl_module)
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
