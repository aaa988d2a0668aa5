"""Measurement probes of a (rotated) parameter space (docs/CONVENTIONS.md §6; paper Sec. 4).

Pure PyTorch (no Lightning). Everything here works *in the rotated coordinates* of a
:class:`~rotations.scopes.RotationPlan`: for a model trained under ``R`` the gradient is
``R g``, the Hessian ``R H Rᵀ``, the Adam update ``Δ_R`` — exactly what the rotated
optimizer sees.

Rotated space and its flat layout
---------------------------------
:class:`RotatedSpace` fixes one flat vector layout of ``d`` coordinates: the model's
:class:`~rotations.layout.LayerView` list, in order, each view's ``(out, in)`` matrix
flattened row-major (a "slot" per view). Because every rotation unit maps its views'
matrices to rotated tensors *of the same shapes*, the rotated vector uses the same slots:
rotated coordinate ``i`` sits in slot ``(view v, row r, col c)``. ``R`` is the ``d x d``
orthogonal map from the standard slot vector to the rotated slot vector
(:meth:`RotatedSpace.dense_rotation` builds it for small models).

Partition of a Hessian row (paper Sec. 4.2: I_N, I_L, I_¬L)
-----------------------------------------------------------
For rotated coordinate ``i`` in slot ``(v, r, c)``:

* ``I_N(i)`` ("neuron") = all coordinates of row ``r`` of slot ``v`` — ``i`` itself included
  (the diagonal entry ``H_ii`` belongs to the neuron block);
* ``I_L(i)`` ("layer") = every other coordinate of the slots whose view has the same
  ``layer_id`` as ``v`` (in the GPT layout a layer is one view: Q, K and V are three layers,
  every 1-D parameter is its own layer);
* ``I_¬L(i)`` ("other") = the rest.

What "same output neuron" means in rotated coordinates, per scope (the partition is always
the positional one above; what it *is* differs):

========== =====================================================================================
scope      meaning of I_N / I_L
========== =====================================================================================
none       exact: I_N = the weights into output neuron ``r`` of layer ``v``; I_L = layer ``v``.
outputwise exact *as a subspace*: row ``r`` is rotated within itself (``G Q_inᵀ``), so I_N
           spans exactly the weights into neuron ``r``; I_L exact.
svd        rotated entry ``(r, c) = u_rᵀ G v_c``; I_N = the coordinates sharing the left singular
           vector ``u_r`` (the "singular output neuron", the natural rotated analogue); I_L exact.
inputwise  I_L exact (rotation within the layer); I_N positional: rotated row ``r`` mixes all
           output neurons (``Q_outᵀ G``), it is not a neuron.
layerwise  I_L exact; I_N positional (``in`` rotated coordinates of the layer, no neuron meaning).
global     both positional: slot ``v`` holds coordinates that mix every layer; I_N / I_L are
           fixed-size sets of rotated coordinates with no physical meaning (the only way to draw
           Fig. 7 for a global rotation).
========== =====================================================================================

1-D parameters are columns ``(dim, 1)``: a row has one entry, so ``I_N(i) = {i}`` and I_L is
the rest of that parameter. The tied GPT-2 embedding is in LM-head layout ``(vocab, C)``:
a "neuron" is a token.

Normalisations fixed here
-------------------------
* Gradient bound (Alg. 1): ``max_B ‖R g_B‖_∞`` over the given minibatches (per-batch mean
  loss, as trained).
* Hessian rows: ``r_i = (1/k) Σ_B R ∇²f_B Rᵀ e_i`` over the ``k`` given minibatches.
* (1,1)-norm: ``‖H‖_(1,1) = Σ_mn |H_mn|`` (Xie et al. 2024); we report ``‖H‖_(1,1) / d``,
  estimated as the **mean L1 norm of the sampled rows** (unbiased under uniform row
  sampling; *not* divided by ``d`` again). With every row sampled it is exact.
* Cauchy cross-check: for ``z`` with iid standard Cauchy entries, ``(Hz)_i`` is Cauchy with
  scale ``γ_i = ‖H_i‖₁``. With ``M`` vectors, ``γ̂_i = cos(π/2M)^M · exp(mean_j log|(Hz_j)_i|)``
  is an unbiased estimate of ``γ_i`` (``E log|X| = log γ`` for Cauchy; ``cos(π/2M)^M`` removes
  the bias of the exponentiated mean), with ``sd(log γ̂_i) = π/(2√M)``. The mean of ``γ̂_i``
  over *all* rows estimates ``‖H‖_(1,1)/d`` from ``M`` HVPs (per batch) instead of one per row.
  The rows' errors share the probe vectors and are strongly correlated when ``H`` has a low
  effective rank (as network Hessians do), so the relative error of that mean is up to
  ``π/(2√M)`` — there is no ``1/√d`` gain in general; use ``M`` in the hundreds for ~10 %.
* Update orthogonality (NeurIPS Sec. 4.2, App. C.4), for ``A`` of rank-dimension
  ``n = min(out, in)`` and singular values ``σ_1..σ_n`` (zeros included):
  ``cv_sv = std(σ)/mean(σ)`` (population std, ddof = 0);
  ``cv_eig_AAt = std(λ)/mean(λ)`` over the ``n`` eigenvalues ``λ_k = σ_k²`` of the smaller Gram
  matrix (``AAᵀ`` and ``AᵀA`` share them; the ``|out − in|`` structural zeros of the larger one
  are excluded);
  ``svd_entropy = −Σ p_k log p_k / log n`` with ``p_k = σ_k / Σσ`` (normalised to [0, 1]; 1 for
  an orthogonal-up-to-scale ``A``); ``svd_entropy_sq`` is the same with ``p_k = σ_k² / Σσ²``
  (Alter et al. 2000). All are NaN for ``A = 0``; for ``n = 1`` the CVs are 0 and the
  entropies NaN.
* Adam direction: ``m̂ / (sqrt(v̂) + ε)`` with ``m̂ = m/(1−β1^t)``, ``v̂ = v/(1−β2^t)``, ``t`` the
  state's step (AdamW's update without lr and weight decay).
"""
from __future__ import annotations

import bisect
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from .layout import LayerView
from .optimizer import fp32_matmul
from .scopes import IdentityUnit, RotationPlan, SVDUnit, Unit
from .svd import OrthoBasis

LossFn = Callable[[nn.Module, Any], Tensor]

__all__ = [
    "RotatedSpace", "Coordinate", "gpt_loss", "rotated_gradient", "gradient_linf_bound",
    "rotated_hvps", "hessian_rows", "partition_row", "block_contributions",
    "one_one_norm_estimate", "one_one_norm_exact", "cauchy_scale_estimate",
    "one_one_norm_cauchy", "update_orthogonality", "update_orthogonality_tensor",
    "ViewState", "view_states", "adam_direction", "adam_update_views", "BLOCKS",
]

BLOCKS = ("neuron", "layer", "other")


def gpt_loss(model: nn.Module, batch) -> Tensor:
    """Loss of a ``(x, y)`` batch for models returning ``(logits, loss)`` (the GPT)."""
    x, y = batch
    return model(x, y)[1]


# ------------------------------------------------------------------------------------------
# the rotated space
# ------------------------------------------------------------------------------------------
@dataclass
class Coordinate:
    """Where rotated coordinate ``index`` sits in the slot layout."""

    index: int
    view: str
    view_index: int
    ptype: str
    layer_id: str
    row: int
    col: int
    scope: str
    block: Optional[int]


def _cast_basis(b: OrthoBasis, dtype, device) -> OrthoBasis:
    mv = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    signs = None if b.signs is None else b.signs.to(device=device, dtype=dtype)
    return OrthoBasis(b.m, dense=mv(b.dense), a=mv(b.a), tau=mv(b.tau), signs=signs)


def _basis_dtype(b: OrthoBasis):
    return (b.dense if b.dense is not None else b.a).dtype


class RotatedSpace:
    """Flat-vector view of a model's (rotated) parameter space; see the module docstring.

    Args:
        views: the layout (order = slot order). With ``plan``, normally ``plan.views``.
        plan: the rotation; ``None`` (or views outside every unit) = identity. SVD units
            must hold their bases (``unit.U``/``unit.V``, e.g. from ``load_state``).
    """

    def __init__(self, views: Sequence[LayerView], plan: Optional[RotationPlan] = None):
        self.views = list(views)
        self.plan = plan
        self.params: list[nn.Parameter] = []
        self._pidx: dict[int, int] = {}
        for v in self.views:
            if id(v.param) not in self._pidx:
                self._pidx[id(v.param)] = len(self.params)
                self.params.append(v.param)
        self.view_param = [self._pidx[id(v.param)] for v in self.views]
        self.shapes = [tuple(v.shape) for v in self.views]
        self.numels = [a * b for a, b in self.shapes]
        self.offsets = [0]
        for n in self.numels:
            self.offsets.append(self.offsets[-1] + n)
        self.d = self.offsets[-1]
        vindex = {v.name: k for k, v in enumerate(self.views)}
        # units covering every view exactly once (missing views -> one identity unit)
        self.units: list[tuple[Unit, list[int]]] = []
        covered: set[int] = set()
        for u in (plan.units if plan is not None else []):
            idx = [vindex[v.name] for v in u.views if v.name in vindex]
            if not idx:
                continue
            if len(idx) != len(u.views):
                raise ValueError(f"rotation unit {u.name!r} spans views missing from the space")
            self.units.append((u, idx))
            covered.update(idx)
        rest = [k for k in range(len(self.views)) if k not in covered]
        if rest:
            self.units.append((IdentityUnit([self.views[k] for k in rest]), rest))
        self.view_scope = [""] * len(self.views)
        for u, idx in self.units:
            for k in idx:
                self.view_scope[k] = u.scope
        # layers
        layer_ids: dict[str, int] = {}
        self.view_layer = []
        for v in self.views:
            self.view_layer.append(layer_ids.setdefault(v.layer_id, len(layer_ids)))
        self.layer_views: dict[int, list[int]] = {}
        for k, lid in enumerate(self.view_layer):
            self.layer_views.setdefault(lid, []).append(k)
        self._cast_cache: dict = {}

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def from_plan(cls, plan: RotationPlan) -> "RotatedSpace":
        return cls(plan.views, plan)

    @classmethod
    def identity(cls, views: Sequence[LayerView]) -> "RotatedSpace":
        return cls(views, None)

    @classmethod
    def from_optimizer(cls, optimizer, views: Optional[Sequence[LayerView]] = None
                       ) -> "RotatedSpace":
        """The space a (possibly :class:`~rotations.optimizer.RotatedOptimizer`) optimizer
        runs in; a plain torch optimizer needs the model's ``views``."""
        plan = getattr(optimizer, "plan", None)
        if plan is not None:
            if views is not None:
                names = {v.name for v in plan.views}
                extra = [v for v in views if v.name not in names]
                return cls(list(plan.views) + extra, plan)
            return cls.from_plan(plan)
        if views is None:
            raise ValueError("RotatedSpace.from_optimizer: a plain optimizer needs the views")
        return cls.identity(views)

    @property
    def rotated(self) -> bool:
        return any(not isinstance(u, IdentityUnit) for u, _ in self.units)

    # -- unit application --------------------------------------------------------------------
    def _unit(self, u: Unit, dtype, device) -> Unit:
        """``u`` with SVD bases in ``dtype``/``device`` (block rotations cast themselves)."""
        if not isinstance(u, SVDUnit):
            return u
        if u.U is None:
            raise RuntimeError(f"SVD unit {u.name!r} has no basis: load the optimizer's "
                               "rotation state (plan.load_state_dict) first")
        if _basis_dtype(u.U) == dtype and (u.U.dense if u.U.dense is not None
                                            else u.U.a).device == device:
            return u
        key = (id(u), id(u.U), id(u.V), dtype, str(device))
        if key not in self._cast_cache:
            if len(self._cast_cache) > 4 * len(self.units) + 8:
                self._cast_cache.clear()
            c = copy.copy(u)
            c.U, c.V = _cast_basis(u.U, dtype, device), _cast_basis(u.V, dtype, device)
            self._cast_cache[key] = c
        return self._cast_cache[key]

    def _apply(self, mats: Sequence[Tensor], inverse: bool) -> list[Tensor]:
        out: list[Optional[Tensor]] = [None] * len(self.views)
        with fp32_matmul():
            for u, idx in self.units:
                ins = [mats[k] for k in idx]
                uu = self._unit(u, ins[0].dtype, ins[0].device)
                res = uu.unrotate(ins) if inverse else uu.rotate(ins)
                for k, r in zip(idx, res):
                    out[k] = r
        return out  # type: ignore[return-value]

    def rotate_views(self, mats: Sequence[Tensor]) -> list[Tensor]:
        """Per-view ``(out, in)`` matrices in the standard basis -> rotated (same shapes)."""
        return self._apply(mats, inverse=False)

    def unrotate_views(self, mats: Sequence[Tensor]) -> list[Tensor]:
        """Per-view rotated matrices -> standard basis (``Rᵀ``)."""
        return self._apply(mats, inverse=True)

    # -- flat vectors --------------------------------------------------------------------------
    def flatten_views(self, mats: Sequence[Tensor]) -> Tensor:
        return torch.cat([m.reshape(-1) for m in mats])

    def split_flat(self, flat: Tensor) -> list[Tensor]:
        if flat.numel() != self.d:
            raise ValueError(f"expected a vector of {self.d} entries, got {flat.numel()}")
        return [c.view(s) for c, s in zip(flat.split(self.numels), self.shapes)]

    def from_params(self, tensors: Sequence[Optional[Tensor]]) -> Tensor:
        """Param-shaped tensors (aligned with :attr:`params`; ``None`` = zeros) -> the
        standard slot vector."""
        mats = []
        for v, pi in zip(self.views, self.view_param):
            t = tensors[pi]
            if t is None:
                t = torch.zeros_like(v.param)
            mats.append(v.matrix(t))
        return self.flatten_views(mats)

    def to_params(self, flat: Tensor) -> list[Tensor]:
        """Standard slot vector -> param-shaped tensors (differentiable: usable inside a
        ``functional_call`` for exact Hessians)."""
        parts: dict[int, list] = {}
        for k, (v, m) in enumerate(zip(self.views, self.split_flat(flat))):
            mm = m.t() if v.transpose else m
            start = v.rows[0] if v.rows is not None else 0
            parts.setdefault(self.view_param[k], []).append((start, mm))
        out = []
        for pi, p in enumerate(self.params):
            blocks = [m for _, m in sorted(parts[pi], key=lambda t: t[0])]
            full = blocks[0] if len(blocks) == 1 else torch.cat(blocks, 0)
            out.append(full.reshape(p.shape))
        return out

    def rotate_std(self, flat: Tensor) -> Tensor:
        """``R x`` for a standard slot vector ``x``."""
        return self.flatten_views(self.rotate_views(self.split_flat(flat)))

    def unrotate_std(self, flat: Tensor) -> Tensor:
        """``Rᵀ y`` -> standard slot vector."""
        return self.flatten_views(self.unrotate_views(self.split_flat(flat)))

    def rotate_vec(self, tensors: Sequence[Optional[Tensor]]) -> Tensor:
        """Param-shaped tensors (e.g. gradients, aligned with :attr:`params`) -> flat ``R g``."""
        return self.rotate_std(self.from_params(tensors))

    def unrotate_vec(self, flat: Tensor) -> list[Tensor]:
        """Flat rotated vector -> param-shaped tensors of ``Rᵀ y``."""
        return self.to_params(self.unrotate_std(flat))

    def dense_rotation(self, dtype=torch.float64, device=None) -> Tensor:
        """``R`` as a dense ``d x d`` matrix (small models / tests only)."""
        eye = torch.eye(self.d, dtype=dtype, device=device)
        return torch.stack([self.rotate_std(eye[j]) for j in range(self.d)], dim=1)

    # -- index bookkeeping ---------------------------------------------------------------------
    def view_of(self, i: int) -> int:
        if not 0 <= i < self.d:
            raise IndexError(f"rotated index {i} out of range [0, {self.d})")
        return bisect.bisect_right(self.offsets, i) - 1

    def locate(self, i: int) -> Coordinate:
        k = self.view_of(i)
        v = self.views[k]
        r, c = divmod(i - self.offsets[k], self.shapes[k][1])
        return Coordinate(index=int(i), view=v.name, view_index=k, ptype=v.ptype,
                          layer_id=v.layer_id, row=r, col=c, scope=self.view_scope[k],
                          block=v.meta.get("block") if isinstance(v.meta, dict) else None)

    def view_range(self, k: int) -> tuple[int, int]:
        return self.offsets[k], self.offsets[k + 1]

    def partition(self, i: int) -> dict:
        """Index ranges ``[a, b)`` of the blocks of row ``i``: ``neuron`` (one range),
        ``layer_slots`` (the ranges of the layer's slots, *including* the neuron range —
        I_L is those minus the neuron), everything else is ``other``."""
        k = self.view_of(i)
        inn = self.shapes[k][1]
        r = (i - self.offsets[k]) // inn
        a = self.offsets[k] + r * inn
        layer = [self.view_range(j) for j in self.layer_views[self.view_layer[k]]]
        return {"neuron": (a, a + inn), "layer_slots": layer}

    def block_sizes(self, i: int) -> dict:
        p = self.partition(i)
        n = p["neuron"][1] - p["neuron"][0]
        lay = sum(b - a for a, b in p["layer_slots"]) - n
        return {"neuron": n, "layer": lay, "other": self.d - n - lay}

    def block_masks(self, i: int, device=None) -> dict:
        """Boolean masks (length ``d``) of I_N, I_L, I_¬L for row ``i``."""
        p = self.partition(i)
        layer = torch.zeros(self.d, dtype=torch.bool, device=device)
        for a, b in p["layer_slots"]:
            layer[a:b] = True
        neuron = torch.zeros(self.d, dtype=torch.bool, device=device)
        a, b = p["neuron"]
        neuron[a:b] = True
        layer[a:b] = False
        return {"neuron": neuron, "layer": layer, "other": ~(neuron | layer)}

    def indices_of(self, predicate: Callable[[LayerView], bool]) -> list[tuple[int, int]]:
        """Slot ranges ``[a, b)`` of the views satisfying ``predicate``."""
        return [self.view_range(k) for k, v in enumerate(self.views) if predicate(v)]


# ------------------------------------------------------------------------------------------
# gradients, Hessian rows
# ------------------------------------------------------------------------------------------
def _grads(loss: Tensor, params: Sequence[Tensor], create_graph: bool) -> list[Optional[Tensor]]:
    return list(torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True))


def rotated_gradient(model: nn.Module, loss_fn: LossFn, batch, space: RotatedSpace) -> Tensor:
    """``R g_B``: the rotated gradient of the minibatch loss (flat)."""
    with torch.enable_grad():
        loss = loss_fn(model, batch)
        g = _grads(loss, space.params, create_graph=False)
    return space.rotate_vec([t.detach() if t is not None else None for t in g])


def gradient_linf_bound(model: nn.Module, loss_fn: LossFn, batches: Iterable,
                        space: RotatedSpace, progress: bool = False,
                        details: bool = False):
    """Alg. 1: ``max_B ‖R g_B‖_∞`` over ``batches``.

    Returns the float, or with ``details=True`` a dict ``{"bound", "per_batch", "argmax"}``
    (``argmax`` = (batch position, rotated index) of the maximum).
    """
    per_batch, best, arg = [], -math.inf, (None, None)
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="gradient bound", leave=False)
    for b, batch in enumerate(it):
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
                 progress: bool = False, init: Optional[Tensor] = None,
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
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="hvp batches", leave=False)
    for batch in it:
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
                 indices: Sequence[int], progress: bool = False) -> Tensor:
    """Rows ``r_i = (1/k) Σ_B R ∇²f_B Rᵀ e_i`` (``len(indices) x d``) of the minibatch-averaged
    Hessian in the rotated space (paper Sec. 4.2)."""
    idx = [int(i) for i in indices]
    p0 = space.params[0]

    def onehot(j):
        e = torch.zeros(space.d, dtype=p0.dtype, device=p0.device)
        e[idx[j]] = 1.0
        return e

    return rotated_hvps(model, loss_fn, batches, space, onehot, n=len(idx), progress=progress)


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


# ------------------------------------------------------------------------------------------
# (1,1)-norm
# ------------------------------------------------------------------------------------------
def one_one_norm_estimate(rows: Tensor) -> float:
    """``‖H‖_(1,1)/d`` estimated as the mean L1 norm of the sampled rows (notes §6)."""
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
    the module docstring), ``per_row`` (all ``γ̂_i``) and, for ``indices``, ``rows``.
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


# ------------------------------------------------------------------------------------------
# update orthogonality
# ------------------------------------------------------------------------------------------
def update_orthogonality_tensor(A: Tensor) -> Tensor:
    """``[cv_sv, cv_eig_AAt, svd_entropy, svd_entropy_sq]`` of ``A`` as a device tensor
    (float64 for float64 input, float32 otherwise); see the module docstring."""
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
    return dict(zip(("cv_sv", "cv_eig_AAt", "svd_entropy", "svd_entropy_sq"), v))


# ------------------------------------------------------------------------------------------
# optimizer state per view
# ------------------------------------------------------------------------------------------
@dataclass
class ViewState:
    """The optimizer state of one view, in the coordinates the optimizer runs in."""

    view: LayerView
    state: dict
    group: dict
    rotated: bool   # state keyed by a RotatedOptimizer shadow (rotated coordinates)

    def get(self, key: str) -> Optional[Tensor]:
        """``state[key]`` as the view's ``(out, in)`` matrix (``None`` if absent)."""
        t = self.state.get(key)
        if not isinstance(t, Tensor) or t.dim() == 0:
            return None
        return t if self.rotated else self.view.matrix(t)

    @property
    def step(self) -> Optional[float]:
        s = self.state.get("step")
        if s is None:
            return None
        return float(s)


def _group_of(opt, t: Tensor) -> dict:
    for g in opt.param_groups:
        for p in g["params"]:
            if p is t:
                return g
    return {}


def view_states(optimizer, views: Optional[Sequence[LayerView]] = None) -> list[ViewState]:
    """Per-view optimizer state: a :class:`~rotations.optimizer.RotatedOptimizer`'s shadows
    (rotated coordinates) and directly handled parameters, or a plain torch optimizer's
    per-parameter state seen through ``views``. Views without state are included with an
    empty ``state``."""
    out = []
    plan = getattr(optimizer, "plan", None)
    if plan is not None:
        base = optimizer.base
        groups = {}
        for g in base.param_groups:
            for p in g["params"]:
                groups[id(p)] = g
        shadows = optimizer.shadows
        for v in plan.views:
            if v.name in shadows:
                s = shadows[v.name]
                out.append(ViewState(v, base.state.get(s, {}), groups.get(id(s), {}), True))
            else:
                out.append(ViewState(v, base.state.get(v.param, {}),
                                     groups.get(id(v.param), {}), False))
        return out
    if views is None:
        raise ValueError("view_states: a plain optimizer needs the model's views")
    groups = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            groups[id(p)] = g
    for v in views:
        out.append(ViewState(v, optimizer.state.get(v.param, {}), groups.get(id(v.param), {}),
                             False))
    return out


def adam_direction(vs: ViewState) -> Optional[Tensor]:
    """``m̂ / (sqrt(v̂) + ε)`` of an Adam-like state (``exp_avg``, ``exp_avg_sq``, ``step``)
    in the optimizer's coordinates, or ``None`` when the state has no Adam moments."""
    m, v = vs.get("exp_avg"), vs.get("exp_avg_sq")
    t = vs.step
    if m is None or v is None or not t:
        return None
    b1, b2 = vs.group.get("betas", (0.9, 0.999))
    eps = vs.group.get("eps", 1e-8)
    bc1 = 1.0 - float(b1) ** t
    bc2 = 1.0 - float(b2) ** t
    mh = m / bc1 if bc1 > 0 else m
    vh = v / bc2 if bc2 > 0 else v
    return mh / (vh.sqrt() + eps)


def adam_update_views(optimizer, views: Optional[Sequence[LayerView]] = None,
                      space: Optional[RotatedSpace] = None) -> tuple[list[Tensor], list[bool]]:
    """Adam's direction per view of ``space`` in rotated coordinates (zeros for views
    without Adam state) and a flag per view saying whether it had state."""
    space = space or RotatedSpace.from_optimizer(optimizer, views)
    by_name = {s.view.name: s for s in view_states(optimizer, views)}
    mats, has = [], []
    for v, shape in zip(space.views, space.shapes):
        s = by_name.get(v.name)
        u = adam_direction(s) if s is not None else None
        if u is None:
            dt = torch.promote_types(v.param.dtype, torch.float32)
            mats.append(torch.zeros(shape, dtype=dt, device=v.param.device))
            has.append(False)
        else:
            mats.append(u)
            has.append(True)
    return mats, has
