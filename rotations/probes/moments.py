"""Adam with beta1 = beta2 read as an online gradient mean / variance estimate (Orvieto &
Gower 2025; docs/CONVENTIONS.md §6)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor


_QUANTILES = {"q05": 0.05, "median": 0.5, "q95": 0.95}


def _flat(x: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().reshape(-1)
    return torch.cat([t.detach().reshape(-1) for t in x])


def _quantiles(x: Tensor, qs: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles (as ``torch.quantile``), any size (sort-based)."""
    s, _ = torch.sort(x)
    n = s.numel()
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        a, b = s[lo].double(), s[hi].double()
        out.append(float(a + (b - a) * frac))
    return out


def _stats(x: Tensor, prefix: str) -> dict[str, float]:
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    qs = _quantiles(x, list(_QUANTILES.values()))
    out = {f"{prefix}_mean": float(x.sum(dtype=torch.float64) / x.numel())}
    out.update({f"{prefix}_{k}": v for k, v in zip(_QUANTILES, qs)})
    out[f"{prefix}_min"] = float(x.min())
    out[f"{prefix}_max"] = float(x.max())
    return out


@torch.no_grad()
def adam_moment_stats(
    exp_avg: Union[Tensor, Sequence[Tensor]],
    exp_avg_sq: Union[Tensor, Sequence[Tensor]],
    step: Union[int, float, Tensor],
    beta1: float,
    beta2: float,
) -> dict[str, Any]:
    r"""Adam's state as a gradient mean/variance estimate (Orvieto & Gower 2025).

    With ``beta1 = beta2 = beta`` the bias-corrected moments
    ``m = exp_avg / (1 - beta**t)`` and ``v = exp_avg_sq / (1 - beta**t)`` are the mean and
    second moment of the gradients under the normalised weights
    ``w_i = (1 - beta) beta**(t-i) / (1 - beta**t)``, so ``sigma2 = v - m**2`` is their
    weighted variance (``>= 0`` up to rounding; it is **not** clamped: ``sigma2_min`` is
    the raw minimum) and ``ratio = m / sqrt(v) = m / sqrt(m**2 + sigma2)`` — Adam's update
    direction with ``eps = 0`` — lies in ``[-1, 1]``. ``ratio`` is 0 where ``v = 0``.

    Note: the bias corrections do **not** cancel in the ratio. With equal betas,
    ``m / sqrt(v) = (exp_avg / sqrt(exp_avg_sq)) / sqrt(1 - beta**t)`` (one factor of
    ``1 - beta**t`` against its square root); the raw ratio is smaller by
    ``sqrt(1 - beta**t)`` and only agrees as ``t -> inf``. ``raw_sigma2 =
    exp_avg_sq - exp_avg**2`` is also returned (non-negative too). For ``beta1 != beta2``
    the function still runs but ``sigma2`` is not a variance and may be negative.

    ``exp_avg``/``exp_avg_sq`` may be one tensor or a list (flattened and concatenated).
    Returns tensors ``m``, ``v``, ``sigma2``, ``ratio``, ``raw_sigma2`` (flat) and floats
    ``{sigma2,ratio}_{mean,median,q05,q95,min,max}`` and ``bias_correction``.
    """
    t = float(step.item() if isinstance(step, Tensor) else step)
    if t < 1:
        raise ValueError(f"step must be >= 1, got {t}")
    ea, eas = _flat(exp_avg), _flat(exp_avg_sq)
    if ea.shape != eas.shape:
        raise ValueError("exp_avg and exp_avg_sq differ in size")
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    m = ea / bc1
    v = eas / bc2
    sigma2 = v - m * m
    sqrt_v = v.sqrt()
    ratio = torch.where(v > 0, m / torch.where(v > 0, sqrt_v, torch.ones_like(sqrt_v)),
                        torch.zeros_like(m))
    out: dict[str, Any] = {
        "m": m, "v": v, "sigma2": sigma2, "ratio": ratio,
        "raw_sigma2": eas - ea * ea,
        "bias_correction": bc1 if beta1 == beta2 else (bc1, bc2),
    }
    out.update(_stats(sigma2, "sigma2"))
    out.update(_stats(ratio, "ratio"))
    return out
