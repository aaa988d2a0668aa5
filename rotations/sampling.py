"""Haar-random rotations and the block-plus-permutation construction ``R = B P``
(docs/CONVENTIONS.md §2). :class:`BlockRotation` is the reference, one-rotation maths; the
optimizer applies stacks of them with :class:`rotations.stacks.BlockStack`.

Everything is sampled on the CPU from a generator seeded by ``(seed, key)``, in float64, so
every DDP rank and every resume rebuilds bit-identical rotations. Pure PyTorch.
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


#: index dtypes a permutation may be stored in, smallest first (docs/CONVENTIONS.md §2)
INDEX_DTYPES = (torch.int32, torch.int64)


def index_dtype(d: int, ladder: Optional[tuple] = None) -> torch.dtype:
    """The first dtype of ``ladder`` that holds every index ``0 … d-1``: int32 up to 2³¹
    coordinates, int64 beyond (``ladder`` is a parameter so tests can check the switch
    on a small analogue, e.g. ``(torch.int16, torch.int64)`` at 32,768 / 32,769; the
    default is :data:`INDEX_DTYPES`, read at call time)."""
    ladder = INDEX_DTYPES if ladder is None else ladder
    for dt in ladder:
        if d - 1 <= torch.iinfo(dt).max:
            return dt
    raise ValueError(f"no index dtype in {ladder} holds {d} coordinates")


def block_structure(d: int, block_size: int) -> tuple[int, int, int]:
    """``(n, k, p)``: block ``n = min(block_size, d)``, ``k = d // n`` copies, residual ``p``."""
    n = min(block_size, d)
    k = d // n
    return n, k, d - k * n


class BlockRotation:
    """``R = B P`` acting on one axis of size ``d`` (docs/CONVENTIONS.md §2).

    ``P`` is a uniformly random permutation (``(P x)_i = x[perm[i]]``, stored once as int32,
    or int64 beyond 2³¹ coordinates: :func:`index_dtype`),
    ``B`` the direct sum of ``k`` copies of one Haar ``R_n`` and a Haar residual ``R_p``.
    Sampling order from the ``(seed, key)`` stream: ``perm`` (when ``d > n``), ``R_n``,
    ``R_p``. The float64 ``R_n``/``R_p`` can be dropped with :meth:`release` once the
    optimizer holds them in its compute dtype; they are re-sampled bit-identically on use.
    """

    def __init__(self, d: int, block_size: int, seed: int, key: str, permute: bool = True):
        if d < 1:
            raise ValueError(f"BlockRotation: dimension must be >= 1, got {d}")
        if block_size < 1:
            raise ValueError(f"rotation.block_size must be a positive int, got {block_size}")
        self.d, self.key, self.seed = d, key, seed
        self.n, self.k, self.p = block_structure(d, block_size)
        self.permuted = bool(permute) and d > self.n
        self._perm: Optional[torch.Tensor] = None
        self._blocks: Optional[tuple] = None
        self._sample()
        self._fingerprint = self._compute_fingerprint()

    def _sample(self) -> None:
        g = seeded_generator(self.seed, self.key)
        perm = (torch.randperm(self.d, generator=g, dtype=index_dtype(self.d))
                if self.permuted else None)
        if self._perm is None:
            self._perm = perm
        R_n = haar_orthogonal(self.n, g)
        R_p = haar_orthogonal(self.p, g) if self.p > 0 else None
        self._blocks = (R_n, R_p)

    @property
    def perm(self) -> Optional[torch.Tensor]:
        """``(d,)`` int32 (int64 beyond 2³¹ coordinates): the source coordinate of every
        rotated one (``None``: no ``P``)."""
        return self._perm

    @property
    def R_n(self) -> torch.Tensor:
        if self._blocks is None:
            self._sample()
        return self._blocks[0]

    @property
    def R_p(self) -> Optional[torch.Tensor]:
        if self._blocks is None:
            self._sample()
        return self._blocks[1]

    def release(self) -> None:
        """Drop the float64 blocks (re-sampled on next use)."""
        self._blocks = None

    @property
    def signature(self) -> tuple:
        """Rotations with equal signatures can be stacked into one ``BlockStack``."""
        return (self.d, self.n, self.k, self.p, self.permuted)

    def _compute_fingerprint(self) -> float:
        s = float(self.R_n.sum()) + float((self.R_n[0] * torch.arange(self.n)).sum())
        if self.R_p is not None:
            s += float(self.R_p.sum())
        if self.perm is not None:
            s += float(self.perm[: min(64, self.d)].double().sum())
        return s

    def fingerprint(self) -> float:
        """A checksum of the sampled matrices (to verify a regenerated rotation)."""
        return self._fingerprint

    def dense(self) -> torch.Tensor:
        """The full ``d x d`` matrix ``R = B P`` in float64 (tests and small problems only),
        built from the definition: ``(B P)[:, c] = B[:, i]`` for the ``i`` with ``perm[i] = c``."""
        blocks = [self.R_n] * self.k + ([self.R_p] if self.R_p is not None else [])
        B = torch.block_diag(*blocks).to(torch.float64)
        if self.perm is None:
            return B.contiguous()
        return B[:, torch.argsort(self.perm.long())].contiguous()

    # -- reference application ----------------------------------------------------------------
    def rotate(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``R x`` along ``dim``."""
        return self._apply(x, dim, inverse=False)

    def unrotate(self, y: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``Rᵀ y`` along ``dim``."""
        return self._apply(y, dim, inverse=True)

    def _apply(self, x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
        if x.dim() == 0 or x.shape[dim] != self.d:
            raise ValueError(f"BlockRotation({self.key}): expected size {self.d} along dim "
                             f"{dim}, got {tuple(x.shape)}")
        n, k, p, kn = self.n, self.k, self.p, self.k * self.n
        xm = x.movedim(dim, -1)
        lead = xm.shape[:-1]
        Rn = self.R_n.to(device=x.device, dtype=x.dtype)
        Rp = self.R_p.to(device=x.device, dtype=x.dtype) if p else None
        perm = self.perm.to(x.device) if self.perm is not None else None
        if not inverse:                      # y_b = R_n x_P[b], as row vectors: x_b @ R_nᵀ
            w = xm.index_select(-1, perm) if perm is not None else xm
            parts = [(w[..., :kn].reshape(*lead, k, n) @ Rn.t()).reshape(*lead, kn)]
            if p:
                parts.append(w[..., kn:] @ Rp.t())
            y = torch.cat(parts, dim=-1)
        else:                                # x_P[b] = R_nᵀ y_b, then undo P
            parts = [(xm[..., :kn].reshape(*lead, k, n) @ Rn).reshape(*lead, kn)]
            if p:
                parts.append(xm[..., kn:] @ Rp)
            z = torch.cat(parts, dim=-1)
            y = z if perm is None else torch.empty_like(z).index_copy_(-1, perm.long(), z)
        return y.movedim(-1, dim)
