"""Haar-random rotations and the block-plus-permutation construction (paper App. A).

* :func:`haar_orthogonal` samples ``R ∈ O(n)`` exactly from the Haar measure: QR of a
  standard Gaussian matrix, then the columns of ``Q`` are multiplied by
  ``sign(diag(R_qr))`` (Mezzadri 2007). Without that sign correction the distribution of
  LAPACK's ``Q`` is not Haar. We do not force ``det = +1`` (Adam is reflection-equivariant,
  App. A.2), so samples are Haar on O(n) — docs/CONVENTIONS.md §2, Convention.
* :class:`BlockRotation` rotates a ``d``-dimensional subspace by ``R = B P``: a random
  permutation ``P`` of the ``d`` coordinates, followed by the direct sum ``B`` of
  ``k = ⌊d/n⌋`` copies of the *same* ``R_n`` and one residual block ``R_p``,
  ``p = d − k n`` (App. A.3). We do not apply ``Pᵀ`` after ``B`` (Adam is
  permutation-equivariant), so rotated coordinates are in permuted order. When ``d ≤ n``
  the permutation is dropped (``R_d`` alone is already Haar on O(d)).

Everything is generated on the CPU from a ``torch.Generator`` seeded by ``(seed, key)``, in
float64, so every DDP rank builds bit-identical rotations with no communication, and a
checkpoint can regenerate them from the stored seed. Pure PyTorch.
"""
from __future__ import annotations

import zlib
from typing import Optional

import torch


def seeded_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator whose stream depends only on ``(seed, key)`` (stable across runs)."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + zlib.crc32(key.encode("utf-8"))) % (2 ** 63 - 1)
    g = torch.Generator(device="cpu")
    g.manual_seed(mixed)
    return g


def haar_orthogonal(n: int, generator: Optional[torch.Generator] = None,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-distributed ``n x n`` orthogonal matrix (QR of a Gaussian, sign-corrected)."""
    if n < 1:
        raise ValueError(f"rotation dimension must be >= 1, got {n}")
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    d = torch.sign(torch.diagonal(r))
    d[d == 0] = 1.0
    return (q * d.unsqueeze(0)).to(dtype)


class BlockRotation:
    """``R = B P`` acting on one axis of a tensor of size ``d``.

    ``rotate(x) = R x`` and ``unrotate(y) = Rᵀ y``, both along ``dim`` (default last).
    Permutations are stored as int32 indices (``perm`` and its inverse); the only dense
    matrices are ``R_n`` (``n x n``) and ``R_p`` (``p x p``). Application goes through a
    single-rotation :class:`BlockStack` (cached per device and dtype), the same batched code
    that the optimizer runs on stacks of rotations.
    """

    def __init__(self, d: int, block_size: int, seed: int, key: str,
                 permute: bool = True):
        if d < 1:
            raise ValueError(f"BlockRotation: dimension must be >= 1, got {d}")
        if block_size < 1:
            raise ValueError(f"rotation.block_size must be a positive int, got {block_size}")
        self.d, self.key, self.seed = d, key, seed
        g = seeded_generator(seed, key)
        n = min(block_size, d)
        self.n, self.k = n, d // n
        self.p = d - self.k * n
        if permute and d > n:
            perm = torch.randperm(d, generator=g)
            self.perm = perm.to(torch.int32)
            self.inv_perm = torch.argsort(perm).to(torch.int32)
        else:
            self.perm = self.inv_perm = None
        self.R_n = haar_orthogonal(n, g)
        self.R_p = haar_orthogonal(self.p, g) if self.p > 0 else None
        self._cache: dict = {}

    @property
    def signature(self) -> tuple:
        """Rotations with equal signatures can be stacked into one :class:`BlockStack`."""
        return (self.d, self.n, self.k, self.p, self.perm is not None)

    def _stack(self, device, dtype) -> "BlockStack":
        key = (str(device), dtype)
        st = self._cache.get(key)
        if st is None:
            self._cache.clear()
            st = self._cache[key] = BlockStack([self], device=device, dtype=dtype)
        return st

    def fingerprint(self) -> float:
        """A checksum of the sampled matrices (to verify a regenerated rotation)."""
        s = float(self.R_n.sum()) + float((self.R_n[0] * torch.arange(self.n)).sum())
        if self.R_p is not None:
            s += float(self.R_p.sum())
        if self.perm is not None:
            s += float(self.perm[: min(64, self.d)].double().sum())
        return s

    def dense(self) -> torch.Tensor:
        """The full ``d x d`` matrix ``R = B P`` in float64 (tests and small problems only).

        Built directly from the definition (block-diagonal ``B`` of ``k`` copies of ``R_n``
        and ``R_p``, times the permutation matrix ``P`` with ``(P x)_i = x[perm[i]]``, i.e.
        ``B``'s columns reordered), independently of :meth:`rotate`, so tests can use it as
        a reference.
        """
        blocks = [self.R_n] * self.k + ([self.R_p] if self.R_p is not None else [])
        B = torch.block_diag(*blocks).to(torch.float64)
        if self.perm is None:
            return B.contiguous()
        # (B P)[:, c] = B[:, i] for the i with perm[i] = c, i.e. B P = B[:, argsort(perm)]
        return B[:, torch.argsort(self.perm.long())].contiguous()

    # -- application ------------------------------------------------------------------------
    def rotate(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self._apply(x, dim, inverse=False)

    def unrotate(self, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self._apply(y, dim, inverse=True)

    def _apply(self, x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
        if x.dim() == 0 or x.shape[dim] != self.d:
            raise ValueError(f"BlockRotation({self.key}): expected size {self.d} along dim "
                             f"{dim}, got {tuple(x.shape)}")
        dim = dim % x.dim()
        st = self._stack(x.device, x.dtype)
        shape = x.shape
        if dim == x.dim() - 1:          # rows: (…, d) -> (1, m, d)
            X = x.reshape(1, -1, self.d)
            Y = st.unrotate_last(X) if inverse else st.rotate_last(X)
            return Y.reshape(shape)
        if dim == 0:                    # columns: (d, …) -> (1, d, m), no transposes
            X = x.reshape(1, self.d, -1)
            Y = st.unrotate_first(X) if inverse else st.rotate_first(X)
            return Y.reshape(shape)
        # a middle axis: move it to the front (one copy)
        X = x.movedim(dim, 0)
        mshape = X.shape
        X = X.reshape(1, self.d, -1)
        Y = st.unrotate_first(X) if inverse else st.rotate_first(X)
        return Y.reshape(mshape).movedim(0, dim)


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2 ** 31 - 1 else torch.int64


class BlockStack:
    """``L`` block rotations of one structure (same ``d, n, k, p`` and permuted or not,
    each with its own ``R_n``, ``R_p`` and permutation) applied at once to stacked tensors.

    Two layouts, both without transposes of the input:

    * :meth:`rotate_last` / :meth:`unrotate_last` act on the last axis of ``X (L, m, d)``
      (row ``i`` of slice ``l`` -> ``R_l x``): outputwise rows, and with ``m = 1`` the
      flattened layerwise / global vectors. The head blocks of all rows of a slice are one
      ``(m·k, n) @ (n, n)`` product, so a whole stack is one ``bmm``.
    * :meth:`rotate_first` / :meth:`unrotate_first` act on axis 1 of ``X (L, d, m)``
      (every column ``x`` of slice ``l`` -> ``R_l x``): inputwise columns. Rows are gathered
      straight into the ``(L, n, k·m)`` layout so that ``R_n @ [X_1 … X_k]`` is one ``bmm``.

    Permutations become precomputed int32 (int64 beyond 2³¹ entries) gather indices — or,
    for 1-D vectors on the CPU (``permute_by="auto"``), int64 scatter indices, which
    PyTorch parallelises; all index tensors and stacked blocks are built once (the indices on
    first use, or by :meth:`precompute`), never per call. No operation reads tensor values
    on the host, so the methods are safe for CUDA graphs / ``torch.compile``.
    """

    def __init__(self, rotations: list, device=None, dtype: torch.dtype = torch.float32,
                 permute_by: str = "auto"):
        if not rotations:
            raise ValueError("BlockStack needs at least one rotation")
        if permute_by not in ("auto", "gather", "scatter"):
            raise ValueError(f"BlockStack: permute_by must be auto, gather or scatter, "
                             f"got {permute_by!r}")
        sig = rotations[0].signature
        for r in rotations:
            if r.signature != sig:
                raise ValueError(f"BlockStack: rotations of different structure "
                                 f"({r.signature} vs {sig})")
        r0 = rotations[0]
        self.L, self.d, self.n, self.k, self.p = len(rotations), r0.d, r0.n, r0.k, r0.p
        self.kn = self.k * self.n
        self.permuted = r0.perm is not None
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        mv = dict(device=self.device, dtype=dtype)
        self.Rn = torch.stack([r.R_n for r in rotations]).to(**mv).contiguous()
        self.RnT = self.Rn.transpose(1, 2)          # views: bmm takes transposed operands
        self.Rp = self.RpT = None
        if self.p:
            self.Rp = torch.stack([r.R_p for r in rotations]).to(**mv).contiguous()
            self.RpT = self.Rp.transpose(1, 2)
        # source position (in the rotated-permuted order) of every coordinate, per slice
        self._perms = [r.perm for r in rotations]        # the rotations' own int32 (CPU)
        self._idx: dict = {}
        # 1-D permutations: scatter on the CPU (see _flat_indices), gather elsewhere
        self._scatter_vec = (permute_by == "scatter" or
                             (permute_by == "auto" and self.device.type == "cpu"))

    # -- precomputed indices (built lazily, once) -------------------------------------------
    def _perm(self) -> torch.Tensor:
        """``(L, d)`` int64 (CPU): the source coordinate of every rotated-permuted one."""
        if not self.permuted:
            return torch.arange(self.d).expand(self.L, self.d)
        return torch.stack([p.long() for p in self._perms])

    def _flat_indices(self, col: bool):
        """Gather indices into the flattened ``L·d`` positions (entries, or rows when
        ``col``): heads first — in ``(l, b, j)`` order, or ``(l, j, b)`` for ``col`` — then
        the residual blocks ``(l, q)``; and the inverse permutation.

        For 1-D entries on the CPU the permutation runs as a scatter (``index_copy_`` with
        the inverse indices, int64): PyTorch parallelises it, unlike a 1-D
        ``index_select``, and it writes rather than reads at random. Same values either way.
        """
        key = ("col" if col else "vec")
        if key not in self._idx:
            L, d, n, k, kn = self.L, self.d, self.n, self.k, self.kn
            src = self._perm() + (torch.arange(L) * d).unsqueeze(1)            # (L, d)
            head = src[:, :kn].reshape(L, k, n)
            if col:
                head = head.transpose(1, 2)
            fwd = torch.cat([head.reshape(-1), src[:, kn:].reshape(-1)])
            inv = torch.empty_like(fwd)
            inv[fwd] = torch.arange(fwd.numel())
            if not col and self._scatter_vec:
                self._idx[key] = ("scatter", fwd.to(self.device), inv.to(self.device))
            else:
                it = _index_dtype(fwd.numel())
                self._idx[key] = ("gather", fwd.to(device=self.device, dtype=it),
                                  inv.to(device=self.device, dtype=it))
        return self._idx[key]

    @staticmethod
    def _permute(x: torch.Tensor, idx: tuple, inverse: bool) -> torch.Tensor:
        """``x[fwd]`` (``inverse=False``) or ``x[inv]`` along dim 0, from
        :meth:`_flat_indices`."""
        how, fwd, inv = idx
        if how == "gather":
            return x.index_select(0, inv if inverse else fwd)
        # y[i] = x[fwd[i]]  <=>  y[inv[j]] = x[j]
        return torch.empty_like(x).index_copy_(0, fwd if inverse else inv, x)

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
        """Build now the gather indices that ``*_last`` (``axis="last"``) or ``*_first``
        (``axis="first"``) will use on ``m`` rows/columns (otherwise built on first use)."""
        if axis == "last" and self.permuted:
            self._flat_indices(col=False) if m == 1 else self._last_indices()
        elif axis == "first" and (self.permuted or self.k > 1):
            self._flat_indices(col=True)

    def _check(self, X: torch.Tensor, axis: int):
        if X.dim() != 3 or X.shape[0] != self.L or X.shape[axis] != self.d:
            raise ValueError(f"BlockStack(L={self.L}, d={self.d}): got a tensor of shape "
                             f"{tuple(X.shape)} (rotating axis {axis})")

    # -- rows: the last axis ----------------------------------------------------------------
    def rotate_last(self, X: torch.Tensor) -> torch.Tensor:
        """``X (L, m, d)`` -> ``Y`` with ``Y[l, i] = R_l X[l, i]``."""
        self._check(X, 2)
        L, m, d = X.shape
        n, k, p, kn = self.n, self.k, self.p, self.kn
        if not self.permuted:
            Xh, Xt = X[..., :kn], X[..., kn:]
        elif m == 1:
            W = self._permute(X.reshape(-1), self._flat_indices(col=False), inverse=False)
            Xh, Xt = W[:L * kn].view(L, 1, kn), W[L * kn:].view(L, 1, p)
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

    def unrotate_last(self, Y: torch.Tensor) -> torch.Tensor:
        """``Y (L, m, d)`` -> ``X`` with ``X[l, i] = R_lᵀ Y[l, i]``."""
        self._check(Y, 2)
        L, m, d = Y.shape
        n, k, p, kn = self.n, self.k, self.p, self.kn
        Yh = Y[..., :kn].reshape(L, m * k, n)
        if self.permuted and m == 1:
            buf = Y.new_empty(L * d)
            torch.bmm(Yh, self.Rn, out=buf[:L * kn].view(L, k, n))
            if p:
                torch.bmm(Y[..., kn:], self.Rp, out=buf[L * kn:].view(L, 1, p))
            return self._permute(buf, self._flat_indices(col=False), inverse=True).view(L, 1, d)
        Z = torch.bmm(Yh, self.Rn).view(L, m, kn)
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
        W = self._permute(X.reshape(L * d, m), self._flat_indices(col=True), inverse=False)
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
        return self._permute(buf, self._flat_indices(col=True), inverse=True).view(L, d, m)
