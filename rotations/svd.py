"""Full-rank orthogonal bases from the SVD of a gradient (paper Sec. 3.2, Alg. 5).

For a layer's gradient ``G = U S Vᵀ`` (``out x in``) the SVD rotation is
``G -> Uᵀ G V`` with *full* square ``U`` (``out x out``) and ``V`` (``in x in``): a rotation,
not a projection. The reduced SVD gives only ``r = min(out, in)`` columns; the remaining
columns are an orthonormal complement.

:class:`OrthoBasis` stores such a basis either

* densely (``m x m`` matrix), when ``m <= dense_max``; or
* implicitly, for tall factors such as the ``50257 x 768`` embedding where ``U`` would be
  50257² floats: the Householder QR of the reduced ``U_r`` (``torch.geqrf``) defines a full
  orthogonal ``Q`` whose first ``r`` columns are ``U_r`` up to sign; we keep those signs so
  the first ``r`` columns are exactly ``U_r``, and apply ``Q``/``Qᵀ`` with ``torch.ormqr``
  without ever forming it. The complement is then the one spanned by the remaining
  Householder columns (any orthonormal complement is a valid choice; this one is
  deterministic given ``U_r``).

Bases act from the left (``B x``, ``Bᵀ x``) and from the right (``x B``, ``x Bᵀ``; ``ormqr``
with ``left=False``), so ``Uᵀ G V`` needs no transposed copies. :class:`BasisStack` stacks
the bases of several same-shape layers and applies them with one batched ``bmm``/``ormqr``.

Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch


def _sign_fix(d: torch.Tensor) -> torch.Tensor:
    """``sign(d)`` with zeros mapped to ``+1`` (no masked assignment: no host sync)."""
    s = torch.sign(d)
    return torch.where(s == 0, torch.ones_like(s), s)


class OrthoBasis:
    """An orthogonal ``m x m`` matrix ``B``; ``apply(x) = B x``, ``apply_t(x) = Bᵀ x``,
    ``apply_right(x) = x B``, ``apply_right_t(x) = x Bᵀ``."""

    def __init__(self, m: int, dense: Optional[torch.Tensor] = None,
                 a: Optional[torch.Tensor] = None, tau: Optional[torch.Tensor] = None,
                 signs: Optional[torch.Tensor] = None):
        self.m = m
        self.dense, self.a, self.tau, self.signs = dense, a, tau, signs
        if dense is None and a is None:
            raise ValueError("OrthoBasis needs a dense matrix or Householder factors")

    @classmethod
    def complete(cls, cols: torch.Tensor, dense_max: int = 4096) -> "OrthoBasis":
        """Extend orthonormal columns ``cols`` (``m x r``) to a full basis of R^m."""
        m, r = cols.shape
        if r == m:
            return cls(m, dense=cols.contiguous())
        if m <= dense_max:
            q, rr = torch.linalg.qr(cols, mode="complete")
            s = _sign_fix(torch.diagonal(rr))
            q[:, :r] = q[:, :r] * s
            return cls(m, dense=q.contiguous())
        a, tau = torch.geqrf(cols)
        s = _sign_fix(torch.diagonal(a[:r]))
        return cls(m, a=a, tau=tau, signs=s)

    @property
    def implicit(self) -> bool:
        return self.dense is None

    @property
    def dtype(self) -> torch.dtype:
        return (self.dense if self.dense is not None else self.a).dtype

    @property
    def device(self) -> torch.device:
        return (self.dense if self.dense is not None else self.a).device

    # Householder form: B = Q S with S = diag(signs, 1, …, 1); Q applied by ormqr
    def apply_t(self, x: torch.Tensor) -> torch.Tensor:
        """``Bᵀ x`` for ``x`` of shape ``(m, k)``."""
        if self.dense is not None:
            return self.dense.t() @ x
        y = torch.ormqr(self.a, self.tau, x, left=True, transpose=True)
        r = self.signs.numel()
        y[:r] *= self.signs.unsqueeze(1)
        return y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``B x`` for ``x`` of shape ``(m, k)``."""
        if self.dense is not None:
            return self.dense @ x
        x = x.clone()
        r = self.signs.numel()
        x[:r] *= self.signs.unsqueeze(1)
        return torch.ormqr(self.a, self.tau, x, left=True, transpose=False)

    def apply_right(self, x: torch.Tensor) -> torch.Tensor:
        """``x B`` for ``x`` of shape ``(k, m)``."""
        if self.dense is not None:
            return x @ self.dense
        y = torch.ormqr(self.a, self.tau, x, left=False, transpose=False)
        r = self.signs.numel()
        y[:, :r] *= self.signs
        return y

    def apply_right_t(self, x: torch.Tensor) -> torch.Tensor:
        """``x Bᵀ`` for ``x`` of shape ``(k, m)``."""
        if self.dense is not None:
            return x @ self.dense.t()
        x = x.clone()
        r = self.signs.numel()
        x[:, :r] *= self.signs
        return torch.ormqr(self.a, self.tau, x, left=False, transpose=True)

    def to_dense(self) -> torch.Tensor:
        """The full matrix (tests only for implicit bases)."""
        if self.dense is not None:
            return self.dense
        eye = torch.eye(self.m, dtype=self.a.dtype, device=self.a.device)
        return self.apply(eye)

    # -- serialisation (plain tensors, loads with weights_only=True) ------------------------
    def state(self) -> dict:
        if self.dense is not None:
            return {"m": self.m, "dense": self.dense}
        return {"m": self.m, "a": self.a, "tau": self.tau, "signs": self.signs}

    @classmethod
    def from_state(cls, st: dict, device=None) -> "OrthoBasis":
        mv = lambda t: None if t is None else t.to(device) if device is not None else t  # noqa: E731
        return cls(st["m"], dense=mv(st.get("dense")), a=mv(st.get("a")),
                   tau=mv(st.get("tau")), signs=mv(st.get("signs")))


class BasisStack:
    """``L`` bases of one size and kind (all dense, or all Householder with the same number
    of reflectors), stacked once and applied to ``(L, ·, ·)`` tensors in one batched call."""

    def __init__(self, bases: list, device=None, dtype: Optional[torch.dtype] = None):
        if not bases:
            raise ValueError("BasisStack needs at least one basis")
        b0 = bases[0]
        self.L, self.m = len(bases), b0.m
        dtype = dtype or b0.dtype
        device = device if device is not None else b0.device
        mv = dict(device=device, dtype=dtype)
        if any(b.m != self.m or b.implicit != b0.implicit for b in bases):
            raise ValueError("BasisStack: bases of different sizes or kinds")
        if not b0.implicit:
            self.dense = torch.stack([b.dense for b in bases]).to(**mv).contiguous()
            self.denseT = self.dense.transpose(1, 2)
            self.a = self.tau = self.signs = None
        else:
            if any(b.signs.numel() != b0.signs.numel() for b in bases):
                raise ValueError("BasisStack: Householder bases of different ranks")
            self.dense = None
            self.a = torch.stack([b.a for b in bases]).to(**mv)
            self.tau = torch.stack([b.tau for b in bases]).to(**mv)
            self.signs = torch.stack([b.signs for b in bases]).to(**mv)
            self.r = b0.signs.numel()

    def apply_t(self, x: torch.Tensor) -> torch.Tensor:
        """``B_lᵀ x_l`` for ``x (L, m, k)``."""
        if self.dense is not None:
            return torch.bmm(self.denseT, x)
        y = torch.ormqr(self.a, self.tau, x, left=True, transpose=True)
        y[:, :self.r] *= self.signs.unsqueeze(2)
        return y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``B_l x_l`` for ``x (L, m, k)``."""
        if self.dense is not None:
            return torch.bmm(self.dense, x)
        x = x.clone()
        x[:, :self.r] *= self.signs.unsqueeze(2)
        return torch.ormqr(self.a, self.tau, x, left=True, transpose=False)

    def apply_right(self, x: torch.Tensor) -> torch.Tensor:
        """``x_l B_l`` for ``x (L, k, m)``."""
        if self.dense is not None:
            return torch.bmm(x, self.dense)
        y = torch.ormqr(self.a, self.tau, x, left=False, transpose=False)
        y[:, :, :self.r] *= self.signs.unsqueeze(1)
        return y

    def apply_right_t(self, x: torch.Tensor) -> torch.Tensor:
        """``x_l B_lᵀ`` for ``x (L, k, m)``."""
        if self.dense is not None:
            return torch.bmm(x, self.denseT)
        x = x.clone()
        x[:, :, :self.r] *= self.signs.unsqueeze(1)
        return torch.ormqr(self.a, self.tau, x, left=False, transpose=True)


def svd_bases(g: torch.Tensor, dense_max: int = 4096) -> tuple[OrthoBasis, OrthoBasis]:
    """Full-rank ``(U, V)`` of a gradient matrix ``g`` (``out x in``), computed in float64
    on the CPU for tiny matrices and in the input's (>= fp32) precision otherwise."""
    work = g.double() if g.numel() <= 1 << 16 else g.float() if g.dtype != torch.float64 else g
    u, _, vh = torch.linalg.svd(work, full_matrices=False)
    u, v = u.to(g.dtype), vh.t().to(g.dtype)
    return OrthoBasis.complete(u, dense_max), OrthoBasis.complete(v, dense_max)
