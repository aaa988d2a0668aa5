"""Full-rank orthogonal bases from the SVD of a gradient (docs/CONVENTIONS.md §4), reference
maths: :class:`OrthoBasis` holds ``U`` or ``V`` densely, or, for tall factors such as the
embedding's ``U``, as Householder reflectors of the reduced factor (``torch.geqrf``, applied
with ``torch.ormqr``, never formed). The optimizer stacks them in
:class:`rotations.stacks.BasisStack`. Pure PyTorch.
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

    @classmethod
    def identity(cls, m: int, r: int, dense_max: int = 4096, dtype=torch.float32,
                 device=None) -> "OrthoBasis":
        """``I_m`` in the form :meth:`complete` gives ``r`` columns of ``R^m`` (dense, or
        ``r`` Householder reflectors with ``τ = 0``), so it stacks with the real bases."""
        if r == m or m <= dense_max:
            return cls(m, dense=torch.eye(m, dtype=dtype, device=device))
        return cls(m, a=torch.zeros(m, r, dtype=dtype, device=device),
                   tau=torch.zeros(r, dtype=dtype, device=device),
                   signs=torch.ones(r, dtype=dtype, device=device))

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


def sign_convention(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fix the sign of every singular pair (docs/CONVENTIONS.md §4): column ``i`` of ``u``
    is flipped so that its entry of largest magnitude (the first one on a tie) is positive,
    and column ``i`` of ``v`` with it (``u_i σ_i v_iᵀ`` is unchanged). Two SVDs of one matrix
    (float32 or float64 input, CPU or GPU, another LAPACK) then agree column by column
    wherever the singular values are distinct."""
    idx = u.abs().argmax(dim=0, keepdim=True)
    s = _sign_fix(torch.gather(u, 0, idx)).squeeze(0)
    return u * s, v * s


def svd_factors(g: torch.Tensor, dense_max: int = 4096):
    """``(U, S, V)`` of a gradient matrix ``g`` (``out x in``): full-rank bases and the
    singular values, returned in ``g``'s dtype. The factorisation always runs in float64
    on ``g``'s device, whatever ``g``'s size: a float32 SVD leaves spurious singular values
    near 1e-7·σ_max, and each would become an Adam update of almost full size (ε = 1e-8;
    docs/CONVENTIONS.md §4). Signs follow :func:`sign_convention`."""
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    u, v = sign_convention(u, vh.t())
    del vh
    u, v = u.to(g.dtype), v.to(g.dtype)
    return OrthoBasis.complete(u, dense_max), s.to(g.dtype), OrthoBasis.complete(v, dense_max)


def svd_bases(g: torch.Tensor, dense_max: int = 4096) -> tuple[OrthoBasis, OrthoBasis]:
    """Full-rank ``(U, V)`` of a gradient matrix (see :func:`svd_factors`)."""
    U, _, V = svd_factors(g, dense_max)
    return U, V
