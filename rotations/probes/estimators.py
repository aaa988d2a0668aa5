"""Estimators of ``‖H‖_(1,1)/d``: the mean L1 norm of sampled rows, the exact value of a dense
Hessian, and the Cauchy random-projection cross-check (docs/CONVENTIONS.md §6)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .curvature import LossFn, rotated_hvps
from .space import RotatedSpace


def one_one_norm_estimate(rows: Tensor) -> float:
    """``‖H‖_(1,1)/d`` estimated as the mean L1 norm of the sampled rows (docs/CONVENTIONS.md §6)."""
    if rows.dim() != 2 or rows.shape[0] == 0:
        raise ValueError("one_one_norm_estimate: expected a non-empty (k, d) tensor of rows")
    return float(rows.abs().sum(1).to(torch.float64).mean())


def one_one_norm_exact(H: Tensor) -> float:
    """``‖H‖_(1,1)/d = Σ|H_mn| / d`` of a dense Hessian."""
    return float(H.abs().to(torch.float64).sum() / H.shape[0])


def cauchy_scale_estimate(log_abs_sum: Tensor, n_vectors: int) -> Tensor:
    """Unbiased Cauchy-scale estimates ``cos(π/2M)^M · exp(S/M)`` from ``S = Σ_j log|X_j|``."""
    M = int(n_vectors)
    corr = math.cos(math.pi / (2 * M)) ** M if M > 1 else 0.0
    if M == 1:
        raise ValueError("the Cauchy estimator needs at least 2 vectors (bias factor is 0)")
    return corr * torch.exp(log_abs_sum.to(torch.float64) / M)


def cauchy_vector(d: int, seed: int, j: int) -> Tensor:
    """The ``j``-th standard Cauchy probe vector (CPU, float64; device independent)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7919 * int(j) + 17)
    return torch.empty(d, dtype=torch.float64).cauchy_(generator=g)


def one_one_norm_cauchy(model: nn.Module, loss_fn: LossFn, batches: Sequence,
                        space: RotatedSpace, n_vectors: int = 64, seed: int = 0,
                        indices: Optional[Sequence[int]] = None) -> dict:
    """Independent cross-check of ``‖H‖_(1,1)/d`` by Cauchy random projections.

    ``batches`` must be re-iterable (a list): every vector uses all of them. Returns
    ``estimate`` (mean of ``γ̂_i`` over all ``d`` rows), ``row_rel_sd`` (``π/(2√M)``, the
    sampling sd of each ``log γ̂_i``; the estimate's relative sd is at most about that, see
    docs/CONVENTIONS.md §6), ``per_row`` (all ``γ̂_i``) and, for ``indices``, ``rows``.
    """
    batches = list(batches)
    logsum = None
    p0 = space.params[0]
    for j in range(n_vectors):
        z = cauchy_vector(space.d, seed, j).to(device=p0.device, dtype=p0.dtype)
        hz = rotated_hvps(model, loss_fn, batches, space, z.unsqueeze(0))[0]
        la = hz.abs().to(torch.float64).log()
        logsum = la if logsum is None else logsum + la
    gam = cauchy_scale_estimate(logsum, n_vectors)
    out = {"estimate": float(gam.mean()), "n_vectors": n_vectors,
           "row_rel_sd": math.pi / (2 * math.sqrt(n_vectors)), "per_row": gam}
    if indices is not None:
        out["rows"] = [float(gam[int(i)]) for i in indices]
    return out
