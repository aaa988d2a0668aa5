"""The optimizer's state per layer view, in the coordinates the optimizer runs in, and Adam's
update direction ``m̂ / (sqrt(v̂) + ε)`` read from it (docs/CONVENTIONS.md §5, §6).

A :class:`~rotations.optimizer.RotatedOptimizer` is read through its public surface only
(``plan``, ``shadows``, ``base_state``, ``base_group``); a plain torch optimizer's
per-parameter state is cut into the model's views."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..layout import LayerView
from ..optimizer import RotatedOptimizer
from .space import RotatedSpace


@dataclass
class ViewState:
    """The optimizer state of one view, in the coordinates the optimizer runs in."""

    view: LayerView
    state: dict
    group: dict
    rotated: bool   # state keyed by a RotatedOptimizer shadow (rotated coordinates)

    def get(self, key: str) -> Optional[Tensor]:
        """``state[key]`` as the view's ``(out, in)`` matrix (``None`` if absent)."""
        t = self.state.get(key)
        if not isinstance(t, Tensor) or t.dim() == 0:
            return None
        return t if self.rotated else self.view.matrix(t)

    @property
    def step(self) -> Optional[float]:
        s = self.state.get("step")
        return None if s is None else float(s)


def view_states(optimizer, views: Optional[Sequence[LayerView]] = None) -> list[ViewState]:
    """Per-view optimizer state: a :class:`~rotations.optimizer.RotatedOptimizer`'s views
    (shadowed ones in rotated coordinates, the others per parameter), or a plain torch
    optimizer's per-parameter state seen through ``views``. Views without state are included
    with an empty ``state``."""
    if isinstance(optimizer, RotatedOptimizer):
        shadows = optimizer.shadows
        return [ViewState(v, optimizer.base_state(v.name), optimizer.base_group(v.name),
                          v.name in shadows) for v in optimizer.plan.views]
    if views is None:
        raise ValueError("view_states: a plain optimizer needs the model's views")
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    return [ViewState(v, optimizer.state.get(v.param, {}), groups.get(id(v.param), {}), False)
            for v in views]


def adam_direction(vs: ViewState) -> Optional[Tensor]:
    """``m̂ / (sqrt(v̂) + ε)`` of an Adam-like state (``exp_avg``, ``exp_avg_sq``, ``step``)
    in the optimizer's coordinates, or ``None`` when the state has no Adam moments."""
    m, v = vs.get("exp_avg"), vs.get("exp_avg_sq")
    t = vs.step
    if m is None or v is None or not t:
        return None
    b1, b2 = vs.group.get("betas", (0.9, 0.999))
    eps = vs.group.get("eps", 1e-8)
    bc1 = 1.0 - float(b1) ** t
    bc2 = 1.0 - float(b2) ** t
    mh = m / bc1 if bc1 > 0 else m
    vh = v / bc2 if bc2 > 0 else v
    return mh / (vh.sqrt() + eps)


def adam_update_views(optimizer, views: Optional[Sequence[LayerView]] = None,
                      space: Optional[RotatedSpace] = None) -> tuple[list[Tensor], list[bool]]:
    """Adam's direction per view of ``space`` in rotated coordinates (zeros for views
    without Adam state) and a flag per view saying whether it had state."""
    space = space or RotatedSpace.from_optimizer(optimizer, views)
    by_name = {s.view.name: s for s in view_states(optimizer, views)}
    mats, has = [], []
    for v, shape in zip(space.views, space.shapes):
        s = by_name.get(v.name)
        u = adam_direction(s) if s is not None else None
        if u is None:
            dt = torch.promote_types(v.param.dtype, torch.float32)
            mats.append(torch.zeros(shape, dtype=dt, device=v.param.device))
            has.append(False)
        else:
            mats.append(u)
            has.append(True)
    return mats, has
