"""Which Hessian rows ``adamrot probe`` computes (seeded, round-robin over parameter types) and
what it keeps of each row: block sizes, norms, log10 |value| histograms and the contributions
``r_i[I]·δ[I]`` along random and update directions (docs/CONVENTIONS.md §6)."""
from __future__ import annotations

import random
from typing import Any, Optional

import torch

from rotations.probes import BLOCKS, block_contributions

from .loading import ProbeError

HIST_LO, HIST_HI, HIST_BINS = -20.0, 4.0, 96


def row_pools(space, types: Optional[list[str]], layers: Optional[list[int]]) -> dict:
    """``{type: [slot ranges]}`` rows are sampled from: ``types`` (default: every matrix type,
    in layout order) restricted to views in ``layers`` (Transformer block indices; views
    without a block are always eligible)."""
    if types is None:
        types = list(dict.fromkeys(v.ptype for v, s in zip(space.views, space.shapes)
                                   if min(s) > 1))
    known = {v.ptype for v in space.views}
    bad = [t for t in types if t not in known]
    if bad:
        raise ProbeError(f"--row-types: {bad} not in this model (has {sorted(known)})")
    lset = set(layers) if layers is not None else None

    def eligible(v):
        b = v.meta.get("block") if isinstance(v.meta, dict) else None
        return lset is None or b is None or b in lset

    pools = {}
    for t in types:
        ranges = space.indices_of(lambda v, t=t: v.ptype == t and eligible(v))
        if not ranges:
            raise ProbeError(f"no views of type {t!r} in blocks {layers}")
        pools[t] = ranges
    return pools


def pool_sizes(pools: dict) -> dict:
    """Number of coordinates per row type (the strata weights of the (1,1)-norm)."""
    return {t: sum(b - a for a, b in r) for t, r in pools.items()}


def select_rows(space, n: int, types: Optional[list[str]], layers: Optional[list[int]],
                seed: int) -> list[int]:
    """``n`` rotated indices: round-robin over the types of :func:`row_pools`, uniform within a
    type. Deterministic in ``seed``; no repeats."""
    if n <= 0:
        return []
    pools = row_pools(space, types, layers)
    types = list(pools)
    rng = random.Random(seed)
    chosen: list[int] = []
    seen: set[int] = set()
    sizes = pool_sizes(pools)
    k = 0
    while len(chosen) < n:
        if k > 100 * n + 1000:
            break
        t = types[k % len(types)]
        k += 1
        if sum(1 for i in seen if any(a <= i < b for a, b in pools[t])) >= sizes[t]:
            continue
        u = rng.randrange(sizes[t])
        for a, b in pools[t]:
            if u < b - a:
                idx = a + u
                break
            u -= b - a
        if idx in seen:
            continue
        seen.add(idx)
        chosen.append(idx)
    return chosen


def _log_hist(vals: torch.Tensor) -> tuple[list, int]:
    a = vals.abs()
    nz = a[a > 0]
    zeros = int(a.numel() - nz.numel())
    if nz.numel() == 0:
        return [0.0] * HIST_BINS, zeros
    h = torch.histc(torch.log10(nz.float()).clamp(HIST_LO, HIST_HI), bins=HIST_BINS,
                    min=HIST_LO, max=HIST_HI)
    return h.cpu().tolist(), zeros


def row_summary(space, i: int, row: torch.Tensor, randoms: Optional[torch.Tensor],
                update: Optional[torch.Tensor]) -> dict:
    c = space.locate(i)
    masks = space.block_masks(i, row.device)
    blocks = {}
    for b in BLOCKS:
        vals = row[masks[b]]
        a = vals.abs().double()
        hist, zeros = _log_hist(vals)
        blocks[b] = {"size": int(vals.numel()), "l1": float(a.sum()),
                     "l2": float(a.pow(2).sum().sqrt()),
                     "mean_abs": float(a.mean()) if vals.numel() else 0.0,
                     "max_abs": float(a.max()) if vals.numel() else 0.0,
                     "log10_hist": hist, "zeros": zeros}
    contrib: dict[str, Any] = {}
    if randoms is not None and randoms.shape[0] > 0:
        per = [block_contributions(row, i, randoms[j], space) for j in range(randoms.shape[0])]
        contrib["random"] = {k: [p[k] for p in per] for k in (*BLOCKS, "total")}
    if update is not None:
        contrib["update"] = block_contributions(row, i, update, space)
    return {"index": int(i), "view": c.view, "ptype": c.ptype, "layer_id": c.layer_id,
            "block": c.block, "row": c.row, "col": c.col, "scope": c.scope,
            "l1": float(row.abs().double().sum()), "diag": float(row[i]),
            "blocks": blocks, "contributions": contrib}


def random_directions(d: int, n: int, seed: int) -> torch.Tensor:
    """``n`` iid Gaussian directions of unit L2 norm (CPU float64, device independent)."""
    out = torch.empty(n, d, dtype=torch.float64)
    for j in range(n):
        g = torch.Generator().manual_seed(int(seed) * 7_919 + 104_729 * (j + 1))
        z = torch.randn(d, generator=g, dtype=torch.float64)
        out[j] = z / z.norm()
    return out
