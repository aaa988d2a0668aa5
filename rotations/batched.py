"""The optimizer's fast path: stacks of same-shape rotations applied with batched matmuls
(docs/CONVENTIONS.md §3). Every class here is tested against the reference maths of
:mod:`rotations.scopes` / :mod:`rotations.sampling` / :mod:`rotations.svd`
(tests/test_rotation_batching.py). Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch

from .layout import LayerView
from .scopes import ColUnit, GlobalUnit, IdentityUnit, LayerUnit, RowUnit, SVDUnit, Unit
from .svd import OrthoBasis

#: int64 conversion of int32 scatter indices runs in chunks of this many entries (the
#: index is stored once as int32; index_copy_ needs int64)
SCATTER_CHUNK = 1 << 22


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2 ** 31 - 1 else torch.int64


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
        """``Y (L, m, d)`` -> ``X`` with ``X[l, i] = R_lᵀ Y[l, i]`` (``out``: where to write
        it, for vectors; may alias ``Y``)."""
        self._check(Y, 2)
        L, m, d = Y.shape
        if self.permuted and m == 1:
            return self._unrotate_vec(Y, out)
        n, k, p, kn = self.n, self.k, self.p, self.kn
        Z = torch.bmm(Y[..., :kn].reshape(L, m * k, n), self.Rn).view(L, m, kn)
        if p:
            Z = torch.cat([Z, torch.bmm(Y[..., kn:], self.Rp)], dim=2)
        if not self.permuted:
            return Z
        _, _, inv = self._last_indices()
        if L == 1:
            return Z[0].index_select(1, inv).unsqueeze(0)
        return torch.gather(Z, 2, inv.expand(L, m, d))

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


# ------------------------------------------------------------------------------------------
# buckets: the optimizer's views grouped by scope and shape, rotated by the stacks above
# ------------------------------------------------------------------------------------------
def compute_dtype(view: LayerView) -> torch.dtype:
    """Rotations run in fp32 or better (the shadows' dtype)."""
    return torch.promote_types(view.param.dtype, torch.float32)


class Bucket:
    """Views of one or more units, rotated together by batched operations.

    A bucket owns :attr:`buffer`, one tensor holding the *shadows* of all its views
    (:attr:`shadows`, views of the buffer in the views' ``(out, in)`` shapes), so the
    optimizer can hand the shadows to its base optimizer and unrotate the whole buffer at
    once. ``rotate(mats)`` / ``unrotate(mats)`` take and return per-view matrices
    (``unrotate()`` with no argument reads the shadows); the stacked maths lives in
    ``_rotate`` / ``_unrotate`` (tensor in, tensor out, no host syncs), which
    :meth:`compile` may wrap with ``torch.compile``.
    """

    kind = "none"

    def __init__(self, units: list[Unit], device, dtype: torch.dtype):
        self.units = units
        self.views = [v for u in units for v in u.views]
        self.device, self.dtype = torch.device(device), dtype
        self.buffer = torch.zeros(self._buffer_shape(), device=self.device, dtype=dtype)
        self.shadows = self._split(self.buffer)

    @property
    def name(self) -> str:
        return f"{self.kind}[{len(self.views)} x {tuple(self.views[0].shape)}]"

    # -- layout --------------------------------------------------------------------------
    def _buffer_shape(self) -> tuple:
        return (len(self.views),) + tuple(self.views[0].shape)

    def _stack(self, mats: list[torch.Tensor]) -> torch.Tensor:
        if len(mats) == 1:
            return mats[0].unsqueeze(0)
        return torch.stack(mats)

    def _split(self, stacked: torch.Tensor) -> list[torch.Tensor]:
        return list(stacked.unbind(0))

    # -- maths on stacked tensors -----------------------------------------------------------
    def prepare(self) -> None:
        """Bring cached stacks up to date (SVD bases after a refresh)."""

    def _rotate(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unrotate(self, Y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    compiled = False

    def compile(self, **kwargs) -> None:
        """Wrap the stacked maths with ``torch.compile`` (optional; default off)."""
        self.compiled = True
        self._rotate = torch.compile(self._rotate, **kwargs)
        self._unrotate = torch.compile(self._unrotate, **kwargs)

    # -- per-view API ------------------------------------------------------------------------
    def rotate(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Standard-basis matrices of :attr:`views` -> rotated (fresh tensors)."""
        self.prepare()
        return self._split(self._rotate(self._stack(mats)))

    def unrotate(self, mats: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
        """Rotated matrices (default: the shadows) -> standard basis (fresh tensors)."""
        self.prepare()
        X = self.buffer if mats is None else self._stack(mats)
        return self._split(self._unrotate(X))


class _FlatBucket(Bucket):
    """Views of any shapes concatenated into one vector (identity and global)."""

    def _buffer_shape(self) -> tuple:
        self.sizes = [v.numel for v in self.views]
        self.shapes = [tuple(v.shape) for v in self.views]
        return (sum(self.sizes),)

    def _stack(self, mats):
        return torch.cat([m.reshape(-1) for m in mats])

    def _split(self, flat):
        return [c.view(s) for c, s in zip(flat.split(self.sizes), self.shapes)]


class IdentityBucket(_FlatBucket):
    kind = "none"

    def rotate(self, mats):
        # per-view copies (not one concatenated tensor): on the CPU, glibc maps and unmaps a
        # single large block on every step, and the page faults cost more than the copies
        return [m.clone(memory_format=torch.contiguous_format) for m in mats]

    def _rotate(self, X):
        return X.clone()

    def _unrotate(self, Y):
        return Y

    def unrotate(self, mats=None):
        return list(self.shadows) if mats is None else list(mats)

    def compile(self, **kwargs) -> None:
        pass


class GlobalBucket(_FlatBucket):
    """global: all views as one vector, rotated by one ``R = B P``; the update is unrotated
    in place in the shadow buffer (no second vector of the model's size)."""

    kind = "global"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([units[0].R], device=self.device, dtype=dtype)
        self.R.precompute("last", 1)
        units[0].R.release()

    def _rotate(self, X):
        return self.R.rotate_last(X.view(1, 1, -1)).view(-1)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y.view(1, 1, -1)).view(-1)

    def unrotate(self, mats=None):
        if mats is not None or self.compiled:
            return super().unrotate(mats)
        self.R.unrotate_last(self.buffer.view(1, 1, -1), out=self.buffer)
        return list(self.shadows)


class LayerBucket(Bucket):
    """layerwise: ``vec(G_l)`` of same-size layers, stacked ``(L, N)``; unrotated in place."""

    kind = "layerwise"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([u.R for u in units], device=self.device, dtype=dtype)
        self.R.precompute("last", 1)
        for u in units:
            u.R.release()

    def _buffer_shape(self):
        return (len(self.views), self.views[0].numel)

    def _stack(self, mats):
        return super()._stack([m.reshape(-1) for m in mats])

    def _split(self, stacked):
        return [s.view(v.shape) for s, v in zip(stacked.unbind(0), self.views)]

    def _rotate(self, X):
        return self.R.rotate_last(X.unsqueeze(1)).squeeze(1)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y.unsqueeze(1)).squeeze(1)

    def unrotate(self, mats=None):
        if mats is not None or self.compiled or not self.R.permuted:
            return super().unrotate(mats)
        self.R.unrotate_last(self.buffer.unsqueeze(1), out=self.buffer)
        return list(self.shadows)


class RowBucket(Bucket):
    """outputwise: ``G_l (out, in)`` stacked ``(L, out, in)``; every row by ``R_l``."""

    kind = "outputwise"
    axis = "last"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([u.R for u in units], device=self.device, dtype=dtype)
        out, inp = self.views[0].shape
        self.R.precompute(self.axis, out if self.axis == "last" else inp)
        for u in units:
            u.R.release()

    def _rotate(self, X):
        return self.R.rotate_last(X)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y)


class ColBucket(RowBucket):
    """inputwise: every column by ``R_l`` (left multiplication, no transposes)."""

    kind = "inputwise"
    axis = "first"

    def _rotate(self, X):
        return self.R.rotate_first(X)

    def _unrotate(self, Y):
        return self.R.unrotate_first(Y)


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
        if self.U is None:
            self.U = BasisStack.slots(len(self.units), unit.U, self.device, self.dtype)
            self.V = BasisStack.slots(len(self.units), unit.V, self.device, self.dtype)
        self.U.adopt(l, unit.U)
        self.V.adopt(l, unit.V)
        self._held[l] = (unit.U, unit.V)

    def prepare(self) -> None:
        for l, u in enumerate(self.units):
            held = self._held[l]
            if held is None or held[0] is not u.U or held[1] is not u.V:
                u._check()
                self.adopt(u)

    def _rotate(self, X):
        return self.U.apply_t(self.V.apply_right(X))

    def _unrotate(self, Y):
        return self.U.apply(self.V.apply_right_t(Y))


def build_buckets(units: list[Unit], device=None) -> list[Bucket]:
    """Group units into buckets: one per scope, compute dtype, device and view shape (and
    rotation structure); identity views of one dtype/device share one bucket."""
    keyed: dict[tuple, list] = {}
    for u in units:
        v0 = u.views[0]
        dev = torch.device(device) if device is not None else v0.param.device
        if isinstance(u, IdentityUnit):
            for v in u.views:
                keyed.setdefault(("none", compute_dtype(v), str(dev)), []).append(
                    IdentityUnit([v]))
            continue
        dt = compute_dtype(v0)
        if isinstance(u, GlobalUnit):
            dt = v0.param.dtype
            for v in u.views:
                dt = torch.promote_types(dt, compute_dtype(v))
            if any(compute_dtype(v) != dt for v in u.views):
                raise ValueError("global rotation over parameters of different dtypes is not "
                                 "supported (the shadows share one buffer)")
            key = ("global", id(u))
        elif isinstance(u, LayerUnit):
            key = ("layerwise", u.R.signature)
        elif isinstance(u, ColUnit):            # (ColUnit before RowUnit: no subclassing,
            key = ("inputwise", tuple(v0.shape), u.R.signature)   # but keep it explicit)
        elif isinstance(u, RowUnit):
            key = ("outputwise", tuple(v0.shape), u.R.signature)
        elif isinstance(u, SVDUnit):
            key = ("svd", tuple(v0.shape))
        else:
            raise TypeError(f"no bucket for unit type {type(u).__name__}")
        keyed.setdefault(key + (dt, str(dev)), []).append(u)
    cls = {"none": IdentityBucket, "global": GlobalBucket, "layerwise": LayerBucket,
           "outputwise": RowBucket, "inputwise": ColBucket, "svd": SVDBucket}
    buckets = []
    for key, us in keyed.items():
        dt, dev = key[-2], key[-1]
        buckets.append(cls[key[0]](us, dev, dt))
    return buckets
