"""Stacked rotation primitives of the fast path: :class:`BlockStack` (``L`` block rotations)
and :class:`BasisStack` (``L`` SVD bases), each applied with one batched matmul / ``ormqr``
(docs/ROTATIONS.md). Tested against the reference maths in :mod:`rotations.sampling` and
:mod:`rotations.svd`. Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch

from .sampling import index_dtype as _index_dtype
from .svd import OrthoBasis

#: int64 conversion of int32 scatter indices runs in chunks of this many entries (the
#: index is stored once as int32; index_copy_ needs int64)
SCATTER_CHUNK = 1 << 22


def scatter_(out: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``out[index[i]] = src[i]`` along dim 0 for an int32 ``index`` (chunked int64)."""
    for a in range(0, index.numel(), SCATTER_CHUNK):
        out.index_copy_(0, index[a:a + SCATTER_CHUNK].long(), src[a:a + SCATTER_CHUNK])
    return out



class BlockStack:
    """``L`` block rotations of one structure (same ``d, n, k, p``, permuted or not; each
    with its own ``R_n``, ``R_p`` and permutation) applied at once to stacked tensors.

    * :meth:`rotate_last` / :meth:`unrotate_last` act on the last axis of ``X (L, m, d)``:
      outputwise rows, and with ``m = 1`` the layerwise / global vectors. The head blocks
      of all rows of a slice are one ``(m·k, n) @ (n, n)`` product, so a stack is one ``bmm``.
    * :meth:`rotate_first` / :meth:`unrotate_first` act on axis 1 of ``X (L, d, m)``:
      inputwise columns, gathered straight into the ``(L, n, k·m)`` layout.

    Vectors (``m = 1``) are permuted with the rotations' own int32 permutations (shared, not
    copied, on the CPU): a gather on the way in, a scatter on the way out, so no inverse
    permutation is stored (docs/CONVENTIONS.md §2: at most 4 bytes per rotated coordinate).
    Row and column indices (one row / column long) are built once on first use. No
    operation reads tensor values on the host (safe for CUDA graphs / ``torch.compile``).
    """

    def __init__(self, rotations: list, device=None, dtype: torch.dtype = torch.float32):
        if not rotations:
            raise ValueError("BlockStack needs at least one rotation")
        sig = rotations[0].signature
        for r in rotations:
            if r.signature != sig:
                raise ValueError(f"BlockStack: rotations of different structure "
                                 f"({r.signature} vs {sig})")
        r0 = rotations[0]
        self.L, self.d, self.n, self.k, self.p = len(rotations), r0.d, r0.n, r0.k, r0.p
        self.kn = self.k * self.n
        self.permuted = r0.permuted
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        mv = dict(device=self.device, dtype=dtype)
        self.Rn = torch.stack([r.R_n for r in rotations]).to(**mv).contiguous()
        self.RnT = self.Rn.transpose(1, 2)          # views: bmm takes transposed operands
        self.Rp = self.RpT = None
        if self.p:
            self.Rp = torch.stack([r.R_p for r in rotations]).to(**mv).contiguous()
            self.RpT = self.Rp.transpose(1, 2)
        self._rotations = rotations
        self._vec_perms: Optional[list] = None
        self._idx: dict = {}

    # -- indices ------------------------------------------------------------------------------
    def _perm(self) -> torch.Tensor:
        """``(L, d)`` int64 (CPU): the source coordinate of every rotated one (rows/columns)."""
        if not self.permuted:
            return torch.arange(self.d).expand(self.L, self.d)
        return torch.stack([r.perm.long() for r in self._rotations])

    def vec_perms(self) -> list:
        """The rotations' int32 permutations on this device (the same tensors on the CPU)."""
        if self._vec_perms is None:
            self._vec_perms = [r.perm.to(self.device) for r in self._rotations]
        return self._vec_perms

    def _flat_indices(self, col: bool = True):
        """Column gather indices into the flattened ``L·d`` rows: heads in ``(l, j, b)``
        order, then the residual blocks ``(l, q)``; and the inverse permutation."""
        if "col" not in self._idx:
            L, d, n, k, kn = self.L, self.d, self.n, self.k, self.kn
            src = self._perm() + (torch.arange(L) * d).unsqueeze(1)            # (L, d)
            head = src[:, :kn].reshape(L, k, n).transpose(1, 2)
            fwd = torch.cat([head.reshape(-1), src[:, kn:].reshape(-1)])
            inv = torch.empty_like(fwd)
            inv[fwd] = torch.arange(fwd.numel())
            it = _index_dtype(fwd.numel())
            self._idx["col"] = (fwd.to(device=self.device, dtype=it),
                                inv.to(device=self.device, dtype=it))
        return self._idx["col"]

    def _last_indices(self):
        """Per-slice int64 gather indices along the last axis: head, tail, inverse."""
        if "last" not in self._idx:
            perm = self._perm()
            inv = torch.argsort(perm, dim=1)
            kn = self.kn
            to = dict(device=self.device)
            if self.L == 1:   # index_select takes 1-D int32 indices
                it = _index_dtype(self.d)
                self._idx["last"] = (perm[0, :kn].to(dtype=it, **to),
                                     perm[0, kn:].to(dtype=it, **to),
                                     inv[0].to(dtype=it, **to))
            else:             # torch.gather: (L, 1, ·) int64, expanded over rows per call
                self._idx["last"] = (perm[:, :kn].unsqueeze(1).contiguous().to(**to),
                                     perm[:, kn:].unsqueeze(1).contiguous().to(**to),
                                     inv.unsqueeze(1).contiguous().to(**to))
        return self._idx["last"]

    def precompute(self, axis: str, m: int) -> None:
        """Build now the indices that ``*_last`` (``axis="last"``) or ``*_first``
        (``axis="first"``) will use on ``m`` rows/columns (otherwise built on first use)."""
        if axis == "last" and self.permuted:
            self.vec_perms() if m == 1 else self._last_indices()
        elif axis == "first" and (self.permuted or self.k > 1):
            self._flat_indices()

    @staticmethod
    def _permute(x: torch.Tensor, idx: tuple, inverse: bool) -> torch.Tensor:
        fwd, inv = idx
        return x.index_select(0, inv if inverse else fwd)

    def _check(self, X: torch.Tensor, axis: int):
        if X.dim() != 3 or X.shape[0] != self.L or X.shape[axis] != self.d:
            raise ValueError(f"BlockStack(L={self.L}, d={self.d}): got a tensor of shape "
                             f"{tuple(X.shape)} (rotating axis {axis})")

    # -- vectors: m = 1 -----------------------------------------------------------------------
    def _rotate_vec(self, X: torch.Tensor) -> torch.Tensor:
        """``X (L, 1, d)``: gather every slice straight into the head-first layout
        ``[heads of all slices | tails of all slices]``, then one ``bmm`` per block size."""
        L, d, k, n, p, kn = self.L, self.d, self.k, self.n, self.p, self.kn
        W = X.new_empty(L * d)
        for l, perm in enumerate(self.vec_perms()):
            x = X[l, 0]
            torch.index_select(x, 0, perm[:kn], out=W[l * kn:(l + 1) * kn])
            if p:
                torch.index_select(x, 0, perm[kn:], out=W[L * kn + l * p:L * kn + (l + 1) * p])
        if L == 1:                           # one output, written by both products
            Y = X.new_empty(1, 1, d)
            torch.bmm(W[:kn].view(1, k, n), self.RnT, out=Y[0, 0, :kn].view(1, k, n))
            if p:
                torch.bmm(W[kn:].view(1, 1, p), self.RpT, out=Y[0, 0, kn:].view(1, 1, p))
            return Y
        Yh = torch.bmm(W[:L * kn].view(L, k, n), self.RnT).view(L, 1, kn)
        if not p:
            return Yh
        return torch.cat([Yh, torch.bmm(W[L * kn:].view(L, 1, p), self.RpT)], dim=2)

    def _unrotate_vec(self, Y: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
        """``Y (L, 1, d)`` -> ``Rᵀ Y``; the result is scattered into ``out`` (may be ``Y``'s
        own storage: ``Y`` is fully read first)."""
        L, d, k, n, p, kn = self.L, self.d, self.k, self.n, self.p, self.kn
        Z = torch.bmm(Y[..., :kn].reshape(L, k, n), self.Rn)
        Zt = torch.bmm(Y[..., kn:], self.Rp) if p else None
        out = Y.new_empty(L, 1, d) if out is None else out.view(L, 1, d)
        for l, perm in enumerate(self.vec_perms()):
            o = out[l, 0]
            scatter_(o, perm[:kn], Z[l].view(-1))
            if p:
                scatter_(o, perm[kn:], Zt[l].view(-1))
        return out

    def rotate_last(self, X: torch.Tensor) -> torch.Tensor:
        """``X (L, m, d)`` -> ``Y`` with ``Y[l, i] = R_l X[l, i]``."""
        self._check(X, 2)
        L, m, d = X.shape
        n, k, p, kn = self.n, self.k, self.p, self.kn
        if self.permuted and m == 1:
            return self._rotate_vec(X)
        if not self.permuted:
            Xh, Xt = X[..., :kn], X[..., kn:]
        else:
            ih, it, _ = self._last_indices()
            if L == 1:
                X0 = X[0]
                Xh = X0.index_select(1, ih).unsqueeze(0)
                Xt = X0.index_select(1, it).unsqueeze(0) if p else None
            else:
                Xh = torch.gather(X, 2, ih.expand(L, m, kn))
                Xt = torch.gather(X, 2, it.expand(L, m, p)) if p else None
        # row-vector form of y_b = R_n x_b: x_b @ R_nᵀ, all blocks of all rows at once
        Yh = torch.bmm(Xh.reshape(L, m * k, n), self.RnT).view(L, m, kn)
        if not p:
            return Yh
        return torch.cat([Yh, torch.bmm(Xt, self.RpT)], dim=2)

    def unrotate_last(self, Y: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``Y (L, m, d)`` -> ``X`` with ``X[l, i] = R_lᵀ Y[l, i]``. With ``out`` (which may
        alias ``Y``) the result is written there and ``out`` is returned, on every path."""
        self._check(Y, 2)
        L, m, d = Y.shape
        if self.permuted and m == 1:
            return self._unrotate_vec(Y, out)
        n, k, p, kn = self.n, self.k, self.p, self.kn
        Z = torch.bmm(Y[..., :kn].reshape(L, m * k, n), self.Rn).view(L, m, kn)
        if p:
            Z = torch.cat([Z, torch.bmm(Y[..., kn:], self.Rp)], dim=2)
        if self.permuted:
            _, _, inv = self._last_indices()
            Z = (Z[0].index_select(1, inv).unsqueeze(0) if L == 1
                 else torch.gather(Z, 2, inv.expand(L, m, d)))
        if out is None:
            return Z
        return out.view(L, m, d).copy_(Z)      # Z is a fresh tensor: Y was fully read

    # -- columns: axis 1 --------------------------------------------------------------------
    def rotate_first(self, X: torch.Tensor) -> torch.Tensor:
        """``X (L, d, m)`` -> ``Y`` with ``Y[l, :, c] = R_l X[l, :, c]``."""
        self._check(X, 1)
        L, d, m = X.shape
        n, k, p, kn = self.n, self.k, self.p, self.kn
        if not self.permuted and k == 1:
            Yh = torch.bmm(self.Rn, X[:, :n])
            return Yh if not p else torch.cat([Yh, torch.bmm(self.Rp, X[:, n:])], dim=1)
        W = self._permute(X.reshape(L * d, m), self._flat_indices(), inverse=False)
        # W's head is (L, n, k·m): row j of slice l holds rows b·n + j of all k blocks
        Yh = torch.bmm(self.Rn, W[:L * kn].view(L, n, k * m))
        out = X.new_empty(L, d, m)
        out[:, :kn].view(L, k, n, m).copy_(Yh.view(L, n, k, m).transpose(1, 2))
        if p:
            out[:, kn:].copy_(torch.bmm(self.Rp, W[L * kn:].view(L, p, m)))
        return out

    def unrotate_first(self, Y: torch.Tensor) -> torch.Tensor:
        """``Y (L, d, m)`` -> ``X`` with ``X[l, :, c] = R_lᵀ Y[l, :, c]``."""
        self._check(Y, 1)
        L, d, m = Y.shape
        n, k, p, kn = self.n, self.k, self.p, self.kn
        if not self.permuted and k == 1:
            Zh = torch.bmm(self.RnT, Y[:, :n])
            return Zh if not p else torch.cat([Zh, torch.bmm(self.RpT, Y[:, n:])], dim=1)
        buf = Y.new_empty(L * d, m)
        Yh = Y[:, :kn].reshape(L, k, n, m).transpose(1, 2).reshape(L, n, k * m)
        torch.bmm(self.RnT, Yh, out=buf[:L * kn].view(L, n, k * m))
        if p:
            torch.bmm(self.RpT, Y[:, kn:], out=buf[L * kn:].view(L, p, m))
        return self._permute(buf, self._flat_indices(), inverse=True).view(L, d, m)


class BasisStack:
    """``L`` bases of one size and kind (all dense, or all Householder with the same number
    of reflectors), stacked once and applied to ``(L, ·, ·)`` tensors in one batched call.
    :meth:`adopt` moves a basis into slot ``l`` and points the basis at it (stored once)."""

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

    def adopt(self, l: int, b: OrthoBasis) -> None:
        """Copy basis ``b`` into slot ``l``; ``b``'s tensors become views of the slot."""
        if b.m != self.m or b.implicit != (self.dense is None):
            raise ValueError("BasisStack.adopt: basis of another size or kind")
        if self.dense is not None:
            self.dense[l].copy_(b.dense)
            b.dense = self.dense[l]
        else:
            for name in ("a", "tau", "signs"):
                slot = getattr(self, name)[l]
                slot.copy_(getattr(b, name))
                setattr(b, name, slot)

    @classmethod
    def slots(cls, L: int, like: OrthoBasis, device, dtype) -> "BasisStack":
        """An uninitialised stack of ``L`` bases shaped like ``like`` (fill with adopt)."""
        st = cls.__new__(cls)
        st.L, st.m = L, like.m
        mv = dict(device=device, dtype=dtype)
        if not like.implicit:
            st.dense = torch.empty(L, like.m, like.m, **mv)
            st.denseT = st.dense.transpose(1, 2)
            st.a = st.tau = st.signs = None
        else:
            st.dense = None
            st.a = torch.empty(L, *like.a.shape, **mv)
            st.tau = torch.empty(L, *like.tau.shape, **mv)
            st.signs = torch.empty(L, *like.signs.shape, **mv)
            st.r = like.signs.numel()
        return st

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
