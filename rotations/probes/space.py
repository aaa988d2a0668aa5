"""The flat rotated parameter space of a model: slot layout, ``R``/``Rᵀ`` on flat vectors and
the I_N / I_L / I_¬L partition of a Hessian row (docs/CONVENTIONS.md §1, §6)."""
from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..layout import LayerView
from ..optimizer import RotatedOptimizer, fp32_matmul
from ..scopes import IdentityUnit, RotationPlan, SVDUnit, Unit
from ..svd import OrthoBasis


@dataclass
class Coordinate:
    """Where rotated coordinate ``index`` sits in the slot layout."""

    index: int
    view: str
    view_index: int
    ptype: str
    layer_id: str
    row: int
    col: int
    scope: str
    block: Optional[int]


def _cast_basis(b: OrthoBasis, dtype, device) -> OrthoBasis:
    mv = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    signs = None if b.signs is None else b.signs.to(device=device, dtype=dtype)
    return OrthoBasis(b.m, dense=mv(b.dense), a=mv(b.a), tau=mv(b.tau), signs=signs)


def _basis_dtype(b: OrthoBasis):
    return (b.dense if b.dense is not None else b.a).dtype


class RotatedSpace:
    """Flat-vector view of a model's (rotated) parameter space (docs/CONVENTIONS.md §6).

    ``d`` coordinates: the views in order, each view's ``(out, in)`` matrix row-major (its
    "slot"). Rotation units map matrices to rotated matrices of the same shapes, so rotated
    coordinate ``i`` also sits in a slot ``(view, row, col)``; ``R`` maps the standard slot
    vector to the rotated one. Row ``i``'s blocks: I_N = its slot row, I_L = the rest of the
    slots of its layer (``layer_id``), I_¬L = everything else.

    Args:
        views: the layout (order = slot order). With ``plan``, normally ``plan.views``.
        plan: the rotation; ``None`` (or views outside every unit) = identity. SVD units
            must hold their bases (``unit.U``/``unit.V``, e.g. from ``load_state``).
    """

    def __init__(self, views: Sequence[LayerView], plan: Optional[RotationPlan] = None):
        self.views = list(views)
        self.plan = plan
        self.params: list[nn.Parameter] = []
        self._pidx: dict[int, int] = {}
        for v in self.views:
            if id(v.param) not in self._pidx:
                self._pidx[id(v.param)] = len(self.params)
                self.params.append(v.param)
        self.view_param = [self._pidx[id(v.param)] for v in self.views]
        self.shapes = [tuple(v.shape) for v in self.views]
        self.numels = [a * b for a, b in self.shapes]
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        self.d = self.offsets[-1]
        vindex = {v.name: k for k, v in enumerate(self.views)}
        # units covering every view exactly once (missing views -> one identity unit)
        self.units: list[tuple[Unit, list[int]]] = []
        covered: set[int] = set()
        for u in (plan.units if plan is not None else []):
            idx = [vindex[v.name] for v in u.views if v.name in vindex]
            if not idx:
                continue
            if len(idx) != len(u.views):
                raise ValueError(f"rotation unit {u.name!r} spans views missing from the space")
            self.units.append((u, idx))
            covered.update(idx)
        rest = [k for k in range(len(self.views)) if k not in covered]
        if rest:
            self.units.append((IdentityUnit([self.views[k] for k in rest]), rest))
        self.view_scope = [""] * len(self.views)
        for u, idx in self.units:
            for k in idx:
                self.view_scope[k] = u.scope
        # layers
        layer_ids: dict[str, int] = {}
        self.view_layer = []
        for v in self.views:
            self.view_layer.append(layer_ids.setdefault(v.layer_id, len(layer_ids)))
        self.layer_views: dict[int, list[int]] = {}
        for k, lid in enumerate(self.view_layer):
            self.layer_views.setdefault(lid, []).append(k)
        self._cast_cache: dict = {}

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def from_plan(cls, plan: RotationPlan) -> "RotatedSpace":
        return cls(plan.views, plan)

    @classmethod
    def identity(cls, views: Sequence[LayerView]) -> "RotatedSpace":
        return cls(views, None)

    @classmethod
    def from_optimizer(cls, optimizer, views: Optional[Sequence[LayerView]] = None
                       ) -> "RotatedSpace":
        """The space a (possibly :class:`~rotations.optimizer.RotatedOptimizer`) optimizer
        runs in; a plain torch optimizer needs the model's ``views``."""
        if isinstance(optimizer, RotatedOptimizer):
            plan = optimizer.plan
            if views is not None:
                names = {v.name for v in plan.views}
                extra = [v for v in views if v.name not in names]
                return cls(list(plan.views) + extra, plan)
            return cls.from_plan(plan)
        if views is None:
            raise ValueError("RotatedSpace.from_optimizer: a plain optimizer needs the views")
        return cls.identity(views)

    @property
    def rotated(self) -> bool:
        return any(not isinstance(u, IdentityUnit) for u, _ in self.units)

    # -- unit application --------------------------------------------------------------------
    def _unit(self, u: Unit, dtype, device) -> Unit:
        """``u`` with SVD bases in ``dtype``/``device`` (block rotations cast themselves)."""
        if not isinstance(u, SVDUnit):
            return u
        if u.U is None:
            raise RuntimeError(f"SVD unit {u.name!r} has no basis: load the optimizer's "
                               "rotation state (plan.load_state_dict) first")
        if _basis_dtype(u.U) == dtype and (u.U.dense if u.U.dense is not None
                                            else u.U.a).device == device:
            return u
        key = (id(u), id(u.U), id(u.V), dtype, str(device))
        if key not in self._cast_cache:
            if len(self._cast_cache) > 4 * len(self.units) + 8:
                self._cast_cache.clear()
            c = copy.copy(u)
            c.U, c.V = _cast_basis(u.U, dtype, device), _cast_basis(u.V, dtype, device)
            self._cast_cache[key] = c
        return self._cast_cache[key]

    def _apply(self, mats: Sequence[Tensor], inverse: bool) -> list[Tensor]:
        out: list[Optional[Tensor]] = [None] * len(self.views)
        with fp32_matmul():
            for u, idx in self.units:
                ins = [mats[k] for k in idx]
                uu = self._unit(u, ins[0].dtype, ins[0].device)
                res = uu.unrotate(ins) if inverse else uu.rotate(ins)
                for k, r in zip(idx, res):
                    out[k] = r
        return out  # type: ignore[return-value]

    def rotate_views(self, mats: Sequence[Tensor]) -> list[Tensor]:
        """Per-view ``(out, in)`` matrices in the standard basis -> rotated (same shapes)."""
        return self._apply(mats, inverse=False)

    def unrotate_views(self, mats: Sequence[Tensor]) -> list[Tensor]:
        """Per-view rotated matrices -> standard basis (``Rᵀ``)."""
        return self._apply(mats, inverse=True)

    # -- flat vectors --------------------------------------------------------------------------
    def flatten_views(self, mats: Sequence[Tensor]) -> Tensor:
        return torch.cat([m.reshape(-1) for m in mats])

    def split_flat(self, flat: Tensor) -> list[Tensor]:
        if flat.numel() != self.d:
            raise ValueError(f"expected a vector of {self.d} entries, got {flat.numel()}")
        return [c.view(s) for c, s in zip(flat.split(self.numels), self.shapes)]

    def from_params(self, tensors: Sequence[Optional[Tensor]]) -> Tensor:
        """Param-shaped tensors (aligned with :attr:`params`; ``None`` = zeros) -> the
        standard slot vector."""
        mats = []
        for v, pi in zip(self.views, self.view_param):
            t = tensors[pi]
            if t is None:
                t = torch.zeros_like(v.param)
            mats.append(v.matrix(t))
        return self.flatten_views(mats)

    def to_params(self, flat: Tensor) -> list[Tensor]:
        """Standard slot vector -> param-shaped tensors (differentiable: usable inside a
        ``functional_call`` for exact Hessians)."""
        parts: dict[int, list] = {}
        for k, (v, m) in enumerate(zip(self.views, self.split_flat(flat))):
            mm = m.t() if v.transpose else m
            start = v.rows[0] if v.rows is not None else 0
            parts.setdefault(self.view_param[k], []).append((start, mm))
        out = []
        for pi, p in enumerate(self.params):
            blocks = [m for _, m in sorted(parts[pi], key=lambda t: t[0])]
            full = blocks[0] if len(blocks) == 1 else torch.cat(blocks, 0)
            out.append(full.reshape(p.shape))
        return out

    def rotate_std(self, flat: Tensor) -> Tensor:
        """``R x`` for a standard slot vector ``x``."""
        return self.flatten_views(self.rotate_views(self.split_flat(flat)))

    def unrotate_std(self, flat: Tensor) -> Tensor:
        """``Rᵀ y`` -> standard slot vector."""
        return self.flatten_views(self.unrotate_views(self.split_flat(flat)))

    def rotate_vec(self, tensors: Sequence[Optional[Tensor]]) -> Tensor:
        """Param-shaped tensors (e.g. gradients, aligned with :attr:`params`) -> flat ``R g``."""
        return self.rotate_std(self.from_params(tensors))

    def unrotate_vec(self, flat: Tensor) -> list[Tensor]:
        """Flat rotated vector -> param-shaped tensors of ``Rᵀ y``."""
        return self.to_params(self.unrotate_std(flat))

    def dense_rotation(self, dtype=torch.float64, device=None) -> Tensor:
        """``R`` as a dense ``d x d`` matrix (small models / tests only)."""
        eye = torch.eye(self.d, dtype=dtype, device=device)
        return torch.stack([self.rotate_std(eye[j]) for j in range(self.d)], dim=1)

    # -- index bookkeeping ---------------------------------------------------------------------
    def view_of(self, i: int) -> int:
        if not 0 <= i < self.d:
            raise IndexError(f"rotated index {i} out of range [0, {self.d})")
        return bisect.bisect_right(self.offsets, i) - 1

    def locate(self, i: int) -> Coordinate:
        k = self.view_of(i)
        v = self.views[k]
        r, c = divmod(i - self.offsets[k], self.shapes[k][1])
        return Coordinate(index=int(i), view=v.name, view_index=k, ptype=v.ptype,
                          layer_id=v.layer_id, row=r, col=c, scope=self.view_scope[k],
                          block=v.meta.get("block") if isinstance(v.meta, dict) else None)

    def view_range(self, k: int) -> tuple[int, int]:
        return self.offsets[k], self.offsets[k + 1]

    def partition(self, i: int) -> dict:
        """Index ranges ``[a, b)`` of the blocks of row ``i``: ``neuron`` (one range),
        ``layer_slots`` (the ranges of the layer's slots, *including* the neuron range —
        I_L is those minus the neuron), everything else is ``other``."""
        k = self.view_of(i)
        inn = self.shapes[k][1]
        r = (i - self.offsets[k]) // inn
        a = self.offsets[k] + r * inn
        layer = [self.view_range(j) for j in self.layer_views[self.view_layer[k]]]
        return {"neuron": (a, a + inn), "layer_slots": layer}

    def block_sizes(self, i: int) -> dict:
        p = self.partition(i)
        n = p["neuron"][1] - p["neuron"][0]
        lay = sum(b - a for a, b in p["layer_slots"]) - n
        return {"neuron": n, "layer": lay, "other": self.d - n - lay}

    def block_masks(self, i: int, device=None) -> dict:
        """Boolean masks (length ``d``) of I_N, I_L, I_¬L for row ``i``."""
        p = self.partition(i)
        layer = torch.zeros(self.d, dtype=torch.bool, device=device)
        for a, b in p["layer_slots"]:
            layer[a:b] = True
        neuron = torch.zeros(self.d, dtype=torch.bool, device=device)
        a, b = p["neuron"]
        neuron[a:b] = True
        layer[a:b] = False
        return {"neuron": neuron, "layer": layer, "other": ~(neuron | layer)}

    def indices_of(self, predicate: Callable[[LayerView], bool]) -> list[tuple[int, int]]:
        """Slot ranges ``[a, b)`` of the views satisfying ``predicate``."""
        return [self.view_range(k) for k, v in enumerate(self.views) if predicate(v)]

