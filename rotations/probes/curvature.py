"""Gradients and Hessian rows in rotated coordinates, by (double) backward: the gradient bound
of Alg. 1, minibatch-averaged Hessian-vector products and rows, and a row's split over the
blocks I_N / I_L / I_¬L (docs/CONVENTIONS.md §6)."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from .space import RotatedSpace

#: ``loss_fn(model, batch) -> scalar loss`` (the model-specific part, given by the caller)
LossFn = Callable[[nn.Module, Any], Tensor]

BLOCKS = ("neuron", "layer", "other")


def _grads(loss: Tensor, params: Sequence[Tensor], create_graph: bool) -> list[Optional[Tensor]]:
    return list(torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True))


def rotated_gradient(model: nn.Module, loss_fn: LossFn, batch, space: RotatedSpace) -> Tensor:
    """``R g_B``: the rotated gradient of the minibatch loss (flat)."""
    with torch.enable_grad():
        loss = loss_fn(model, batch)
        g = _grads(loss, space.params, create_graph=False)
    return space.rotate_vec([t.detach() if t is not None else None for t in g])


def gradient_linf_bound(model: nn.Module, loss_fn: LossFn, batches: Iterable,
                        space: RotatedSpace, details: bool = False):
    """Alg. 1: ``max_B ‖R g_B‖_∞`` over ``batches``.

    Returns the float, or with ``details=True`` a dict ``{"bound", "per_batch", "argmax"}``
    (``argmax`` = (batch position, rotated index) of the maximum). For a progress bar, wrap
    ``batches`` (e.g. in ``tqdm``) before passing them: this package imports only torch.
    """
    per_batch, best, arg = [], -math.inf, (None, None)
    for b, batch in enumerate(batches):
        g = rotated_gradient(model, loss_fn, batch, space)
        a = g.abs()
        j = int(torch.argmax(a))
        m = float(a[j])
        per_batch.append(m)
        if m > best:
            best, arg = m, (b, j)
    if not per_batch:
        raise ValueError("gradient_linf_bound: no batches")
    if details:
        return {"bound": best, "per_batch": per_batch, "argmax": arg}
    return best


def rotated_hvps(model: nn.Module, loss_fn: LossFn, batches: Iterable, space: RotatedSpace,
                 vectors: Callable[[int], Tensor] | Tensor, n: Optional[int] = None,
                 init: Optional[Tensor] = None,
                 start_batch: int = 0, on_batch: Optional[Callable[[int, Tensor], None]] = None
                 ) -> Tensor:
    """``(1/k) Σ_B R ∇²f_B Rᵀ z_j`` for rotated vectors ``z_j`` (rows of ``vectors`` or
    ``vectors(j)`` for ``j < n``) by double backward, averaged over the ``k`` batches.

    Each batch's gradient graph is built once and reused for all vectors. ``init`` (the
    running *sum*, shape ``(n, d)``) and ``start_batch`` (the batches it holds) continue an
    interrupted accumulation; ``on_batch(batches_done, running_sum)`` is called after every
    batch (for checkpointing partial results).
    """
    if isinstance(vectors, Tensor):
        mat = vectors
        n = mat.shape[0]
        get = lambda j: mat[j]  # noqa: E731
    else:
        if n is None:
            raise ValueError("rotated_hvps: pass n with a vector callable")
        get = vectors
    acc = init
    count = start_batch
    for batch in batches:
        with torch.enable_grad():
            loss = loss_fn(model, batch)
            g = _grads(loss, space.params, create_graph=True)
            live = [(k, t) for k, t in enumerate(g) if t is not None and t.requires_grad]
            outs = [t for _, t in live]
            ins = [space.params[k] for k, _ in live]
            res = []
            for j in range(n):
                z = get(j)
                v = space.unrotate_vec(z.to(device=ins[0].device, dtype=ins[0].dtype))
                hv = torch.autograd.grad(outs, ins, grad_outputs=[v[k] for k, _ in live],
                                         retain_graph=True, allow_unused=True)
                full: list[Optional[Tensor]] = [None] * len(space.params)
                for (k, _), h in zip(live, hv):
                    full[k] = None if h is None else h.detach()
                res.append(space.rotate_vec(full))
        del g, loss, live, outs
        # never in place: a running sum handed to on_batch stays consistent with its count
        acc = torch.stack(res) if acc is None else acc + torch.stack(res)
        del res
        count += 1
        if on_batch is not None:
            on_batch(count, acc)
    if count == 0 or acc is None:
        raise ValueError("rotated_hvps: no batches")
    return acc / count


def hessian_rows(model: nn.Module, loss_fn: LossFn, batches: Iterable, space: RotatedSpace,
                 indices: Sequence[int]) -> Tensor:
    """Rows ``r_i = (1/k) Σ_B R ∇²f_B Rᵀ e_i`` (``len(indices) x d``) of the minibatch-averaged
    Hessian in the rotated space (paper Sec. 4.2)."""
    idx = [int(i) for i in indices]
    p0 = space.params[0]

    def onehot(j):
        e = torch.zeros(space.d, dtype=p0.dtype, device=p0.device)
        e[idx[j]] = 1.0
        return e

    return rotated_hvps(model, loss_fn, batches, space, onehot, n=len(idx))


# ------------------------------------------------------------------------------------------
# partitions and contributions
# ------------------------------------------------------------------------------------------
def partition_row(row: Tensor, i: int, space: RotatedSpace) -> dict:
    """The entries of row ``i`` in I_N (``neuron``), I_L (``layer``), I_¬L (``other``)."""
    m = space.block_masks(i, row.device)
    return {k: row[m[k]] for k in BLOCKS}


def block_contributions(row: Tensor, i: int, delta: Tensor, space: RotatedSpace) -> dict:
    """``r_i[I]·δ[I]`` for I = I_N, I_L, I_¬L (and their ``total`` = ``r_i·δ``): the
    first-order change of the ``i``-th gradient coordinate along ``δ`` split by block."""
    p = space.partition(i)
    a, b = p["neuron"]
    prod = row.to(torch.float64) * delta.to(device=row.device, dtype=torch.float64)
    total = float(prod.sum())
    neuron = float(prod[a:b].sum())
    layer = sum(float(prod[x:y].sum()) for x, y in p["layer_slots"]) - neuron
    return {"neuron": neuron, "layer": layer, "other": total - neuron - layer, "total": total}
