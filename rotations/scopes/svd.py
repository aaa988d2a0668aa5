"""``svd``: ``G -> Uᵀ G V`` with full-rank bases from the SVD of the gradient, refreshed
every ``svd_refresh_every`` steps (docs/CONVENTIONS.md §4; NeurIPS Alg. 5)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from ..stacks import BasisStack
from ..svd import OrthoBasis, svd_factors
from .base import Bucket, Unit


class SVDUnit(Unit):
    """``G -> Uᵀ G V`` with full-rank bases from the SVD of the gradient, refreshed every
    ``svd_refresh_every`` steps (Alg. 5)."""

    scope = "svd"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.dense_max = cfg.svd_dense_max
        self.U: Optional[OrthoBasis] = None
        self.V: Optional[OrthoBasis] = None
        self.refreshed_at = 0
        self.sigma: Optional[torch.Tensor] = None   # singular values of the last refresh

    def refresh_gradient(self) -> torch.Tensor:
        """``Uᵀ G V`` for the gradient ``G`` that defined the current bases: ``diag(S)``
        padded with zeros, exactly (computing it would leave rounding off the diagonal).
        Valid once, right after :meth:`refresh`."""
        if self.sigma is None:
            raise RuntimeError(f"{self.name!r}: no refresh since the last refresh_gradient()")
        S, self.sigma = self.sigma, None
        G = S.new_zeros(self.views[0].shape)
        r = S.numel()
        G[:r, :r].diagonal().copy_(S)
        return G

    def refresh(self, g: torch.Tensor, step: int) -> None:
        U, S, V = svd_factors(g, self.dense_max)
        self.sigma = S
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for b in (U, V):   # bases identical on every rank: rank 0's are authoritative
                for t in (b.dense, b.a, b.tau, b.signs):
                    if t is not None:
                        dist.broadcast(t, src=0)
        self.U, self.V, self.refreshed_at = U, V, step

    def _check(self):
        if self.U is None:
            raise RuntimeError(f"SVD basis of {self.name!r} used before the first refresh")

    def identity_bases(self, dtype, device) -> tuple[OrthoBasis, OrthoBasis]:
        """``(I, I)`` in the stacked form of real bases: the basis of a view that has not
        had a gradient yet (its first refresh waits for one; docs/CONVENTIONS.md §4)."""
        out, inp = self.views[0].shape
        r = min(out, inp)
        return (OrthoBasis.identity(out, r, self.dense_max, dtype, device),
                OrthoBasis.identity(inp, r, self.dense_max, dtype, device))

    def rotate(self, mats):
        if self.U is None:                                              # no gradient yet
            return [mats[0].clone()]
        return [self.U.apply_t(self.V.apply_right(mats[0]))]           # Uᵀ G V

    def unrotate(self, mats):
        if self.U is None:
            return [mats[0].clone()]
        return [self.U.apply(self.V.apply_right_t(mats[0]))]           # U X Vᵀ

    def state(self) -> dict:
        if self.U is None:
            return {"refreshed_at": 0}
        return {"refreshed_at": self.refreshed_at, "U": self.U.state(), "V": self.V.state()}

    def load_state(self, st: dict, device=None) -> None:
        self.refreshed_at = st.get("refreshed_at", 0)
        if "U" in st:
            self.U = OrthoBasis.from_state(st["U"], device)
            self.V = OrthoBasis.from_state(st["V"], device)


class SVDBucket(Bucket):
    """svd: ``U_lᵀ G_l V_l``. The bucket's stacks are the only copy of the bases: a unit's
    fresh bases are moved in by :meth:`adopt` (one layer at a time, right after its refresh)."""

    kind = "svd"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.U: Optional[BasisStack] = None
        self.V: Optional[BasisStack] = None
        self._held = [None] * len(units)

    def adopt(self, unit: SVDUnit) -> None:
        l = next(i for i, u in enumerate(self.units) if u is unit)
        self._adopt_bases(l, unit.U, unit.V)
        self._held[l] = (unit.U, unit.V)

    def _adopt_bases(self, l: int, U, V) -> None:
        if self.U is None:
            self.U = BasisStack.slots(len(self.units), U, self.device, self.dtype)
            self.V = BasisStack.slots(len(self.units), V, self.device, self.dtype)
        self.U.adopt(l, U)
        self.V.adopt(l, V)

    def prepare(self) -> None:
        """Adopt every unit's current bases; a unit with none yet (its view has had no
        gradient) rotates by the identity until its first refresh."""
        for l, u in enumerate(self.units):
            held = self._held[l]
            if held is not None and held[0] is u.U and held[1] is u.V:
                continue
            if u.U is None:
                self._adopt_bases(l, *u.identity_bases(self.dtype, self.device))
                self._held[l] = (None, None)
            else:
                self.adopt(u)

    def _rotate(self, X):
        return self.U.apply_t(self.V.apply_right(X))

    def _unrotate(self, Y):
        return self.U.apply(self.V.apply_right_t(Y))
