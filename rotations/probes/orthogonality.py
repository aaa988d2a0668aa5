"""Orthogonality of a layer's update matrix: CV of its singular values and of the eigenvalues
of ``AAᵀ``, SVD entropies (NeurIPS Sec. 4.2, App. C.4; docs/CONVENTIONS.md §6)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

METRICS = ("cv_sv", "cv_eig_AAt", "svd_entropy", "svd_entropy_sq")


def update_orthogonality_tensor(A: Tensor) -> Tensor:
    """``[cv_sv, cv_eig_AAt, svd_entropy, svd_entropy_sq]`` of ``A`` as a device tensor
    (float64 for float64 input, float32 otherwise; definitions in docs/CONVENTIONS.md §6)."""
    if A.dim() != 2:
        raise ValueError(f"update_orthogonality: expected a matrix, got shape {tuple(A.shape)}")
    work = A if A.dtype == torch.float64 else A.float()
    s = torch.linalg.svdvals(work)
    n = s.numel()

    def cv(x):
        mu = x.mean()
        return (x - mu).pow(2).mean().sqrt() / mu

    def entropy(w):
        p = w / w.sum()
        h = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum()
        return h / math.log(n) if n > 1 else torch.full_like(h, float("nan"))

    lam = s * s
    return torch.stack([cv(s), cv(lam), entropy(s), entropy(lam)])


def update_orthogonality(A: Tensor) -> dict:
    """``{"cv_sv", "cv_eig_AAt", "svd_entropy", "svd_entropy_sq"}`` of the matrix ``A``."""
    v = update_orthogonality_tensor(A).tolist()
    return dict(zip(METRICS, v))
