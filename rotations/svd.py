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

Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch


class OrthoBasis:
    """An orthogonal ``m x m`` matrix ``B``; ``apply(x) = B x``, ``apply_t(x) = Bᵀ x``."""

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
            s = torch.sign(torch.diagonal(rr))
            s[s == 0] = 1.0
            q[:, :r] = q[:, :r] * s
            return cls(m, dense=q.contiguous())
        a, tau = torch.geqrf(cols)
        s = torch.sign(torch.diagonal(a[:r]))
        s[s == 0] = 1.0
        return cls(m, a=a, tau=tau, signs=s)

    @property
    def implicit(self) -> bool:
        return self.dense is None

    def apply_t(self, x: torch.Tensor) -> torch.Tensor:
        """``Bᵀ x`` for ``x`` of shape ``(m, k)``."""
        if self.dense is not None:
            return self.dense.t() @ x
        y = torch.ormqr(self.a, self.tau, x.contiguous(), left=True, transpose=True)
        r = self.signs.numel()
        y[:r] = y[:r] * self.signs.unsqueeze(1)
        return y

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``B x`` for ``x`` of shape ``(m, k)``."""
        if self.dense is not None:
            return self.dense @ x
        x = x.clone()
        r = self.signs.numel()
        x[:r] = x[:r] * self.signs.unsqueeze(1)
        return torch.ormqr(self.a, self.tau, x, left=True, transpose=False)

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


def svd_bases(g: torch.Tensor, dense_max: int = 4096) -> tuple[OrthoBasis, OrthoBasis]:
    """Full-rank ``(U, V)`` of a gradient matrix ``g`` (``out x in``), computed in float64
    on the CPU for tiny matrices and in the input's (>= fp32) precision otherwise."""
    work = g.double() if g.numel() <= 1 << 16 else g.float() if g.dtype != torch.float64 else g
    u, _, vh = torch.linalg.svd(work, full_matrices=False)
    u, v = u.to(g.dtype), vh.t().to(g.dtype)
    return OrthoBasis.complete(u, dense_max), OrthoBasis.complete(v, dense_max)
