"""Haar-random rotations and the block-plus-permutation construction (paper App. A).

* :func:`haar_orthogonal` samples ``R ∈ O(n)`` exactly from the Haar measure: QR of a
  standard Gaussian matrix, then the columns of ``Q`` are multiplied by
  ``sign(diag(R_qr))`` (Mezzadri 2007). Without that sign correction the distribution of
  LAPACK's ``Q`` is not Haar. We do not force ``det = +1`` (Adam is reflection-equivariant,
  App. A.2), so samples are Haar on O(n) — research notes §2, Convention.
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
    """``R = B P`` acting on the last axis of a tensor of size ``d``.

    ``rotate(x) = R x`` and ``unrotate(y) = Rᵀ y``, both along ``dim`` (default last).
    Permutations are stored as int32 indices (``perm`` and its inverse); the only dense
    matrices are ``R_n`` (``n x n``) and ``R_p`` (``p x p``).
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

    # -- device / dtype copies ------------------------------------------------------------
    def _mats(self, device, dtype):
        key = (str(device), dtype)
        if key not in self._cache:
            self._cache.clear()
            self._cache[key] = (
                self.R_n.to(device=device, dtype=dtype),
                None if self.R_p is None else self.R_p.to(device=device, dtype=dtype),
                None if self.perm is None else self.perm.to(device),
                None if self.inv_perm is None else self.inv_perm.to(device),
            )
        return self._cache[key]

    def fingerprint(self) -> float:
        """A checksum of the sampled matrices (to verify a regenerated rotation)."""
        s = float(self.R_n.sum()) + float((self.R_n[0] * torch.arange(self.n)).sum())
        if self.R_p is not None:
            s += float(self.R_p.sum())
        if self.perm is not None:
            s += float(self.perm[: min(64, self.d)].double().sum())
        return s

    def dense(self) -> torch.Tensor:
        """The full ``d x d`` matrix ``R`` (tests and small problems only)."""
        return self.rotate(torch.eye(self.d, dtype=torch.float64), dim=0).contiguous()

    # -- application ------------------------------------------------------------------------
    def rotate(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self._apply(x, dim, inverse=False)

    def unrotate(self, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self._apply(y, dim, inverse=True)

    def _apply(self, x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
        if x.shape[dim] != self.d:
            raise ValueError(f"BlockRotation({self.key}): expected size {self.d} along dim "
                             f"{dim}, got {tuple(x.shape)}")
        moved = dim not in (-1, x.dim() - 1)
        if moved:
            x = x.movedim(dim, -1)
        R_n, R_p, perm, inv_perm = self._mats(x.device, x.dtype)
        batch = x.shape[:-1]
        kn = self.k * self.n
        if not inverse:
            if perm is not None:
                x = x.index_select(-1, perm)
            # each block: y_b = R_n x_b, i.e. row-vector form x_b @ R_nᵀ
            head = (x[..., :kn].reshape(*batch, self.k, self.n) @ R_n.t()).reshape(*batch, kn)
            out = head if R_p is None else torch.cat([head, x[..., kn:] @ R_p.t()], dim=-1)
        else:
            head = (x[..., :kn].reshape(*batch, self.k, self.n) @ R_n).reshape(*batch, kn)
            out = head if R_p is None else torch.cat([head, x[..., kn:] @ R_p], dim=-1)
            if inv_perm is not None:
                out = out.index_select(-1, inv_perm)
        if moved:
            out = out.movedim(-1, dim)
        return out
