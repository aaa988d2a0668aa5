"""Batched rotations (rotations.batched, rotations.stacks): the optimizer rotates stacks of
same-shape layers with one batched matmul. These tests check the batched path against a straightforward reference —
the dense ``R`` of every rotation built from :meth:`BlockRotation.dense` (or the dense SVD
bases) and applied with a plain float64 matmul — for every scope, on a tiny GPT with two
layers of every shape and block sizes that do and do not divide the dimensions."""
from __future__ import annotations

import functools

import pytest
import torch

from lightning_modules.gpt_model import GPT, GPTConfig
from rotations.config import RotationConfig
from rotations.layout import model_layout
from rotations.optimizer import RotatedOptimizer
from rotations.sampling import BlockRotation
from rotations.scopes import (ColUnit, GlobalUnit, IdentityUnit, LayerUnit, RotationPlan,
                              RowUnit, SVDUnit)
from rotations.scopes import SCOPE_NAMES, PermutationUnit, build_buckets
from rotations.stacks import BasisStack, BlockStack
from rotations.svd import svd_bases

SCOPES = [s for s in SCOPE_NAMES if s != "none"]     # the scope table: a new row is tested
# n_embd 16, mlp 64, vocab 37, context 8: 5 and 24 divide none / some of them, 4 and 8 all
# but 37, 768 is larger than every row, column and layer (no permutation at all)
BLOCKS = [4, 5, 24, 768]


def tiny_gpt(tie=True, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=37, block_size=8, n_layer=2, n_head=2, n_embd=16,
                         attention="math", tie_embeddings=tie))


def random_grads(views, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {v.name: torch.randn(v.shape, generator=g) for v in views}


def refresh_svd(plan, seed=1):
    g = torch.Generator().manual_seed(seed)
    for u in plan.svd_units:
        u.refresh(torch.randn(u.views[0].shape, generator=g), 1)


_DENSE: dict = {}


def dense_of(R):
    """``R.dense()``, cached (the global one is a few thousand wide)."""
    hit = _DENSE.get(id(R))
    if hit is None or hit[0] is not R:
        if R.d > 1000:                       # keep at most one big matrix alive
            _DENSE.clear()
        hit = _DENSE[id(R)] = (R, R.dense())
    return hit[1]


def reference(unit, mats, inverse=False):
    """``R G`` (or ``Rᵀ G``) per view, in float64, from dense matrices and plain matmuls."""
    mats = [m.double() for m in mats]
    if isinstance(unit, IdentityUnit):
        return mats
    if isinstance(unit, SVDUnit):            # G -> Uᵀ G V ; X -> U X Vᵀ
        U, V = unit.U.to_dense().double(), unit.V.to_dense().double()
        return [U @ mats[0] @ V.t()] if inverse else [U.t() @ mats[0] @ V]
    if isinstance(unit, PermutationUnit):    # vec(G) -> P vec(G), P[i, perm[i]] = 1
        n = unit.views[0].numel
        P = torch.zeros(n, n, dtype=torch.float64)
        P[torch.arange(n), unit.perm.long()] = 1.0
        P = P.t() if inverse else P
        return [(P @ mats[0].reshape(-1)).view(mats[0].shape)]
    R = dense_of(unit.R)
    R = R.t() if inverse else R
    if isinstance(unit, GlobalUnit):
        flat = R @ torch.cat([m.reshape(-1) for m in mats])
        return [c.view(m.shape) for c, m in zip(flat.split([m.numel() for m in mats]), mats)]
    G = mats[0]
    if isinstance(unit, LayerUnit):          # vec(G) -> R vec(G) (row-major vec)
        return [(R @ G.reshape(-1)).view(G.shape)]
    if isinstance(unit, ColUnit):            # every column x -> R x (ColUnit is a RowUnit)
        return [R @ G]
    if isinstance(unit, RowUnit):            # every row x -> R x
        return [G @ R.t()]
    raise AssertionError(type(unit))


def close(a, b, tol=2e-5):
    """float32 tolerance relative to the tensor's scale."""
    scale = max(1.0, b.abs().max().item())
    return (a.double() - b).abs().max().item() <= tol * scale


# -- the stacked primitives ----------------------------------------------------------------
@pytest.mark.parametrize("d,n,permute", [(10, 3, True), (9, 3, True), (5, 8, True),
                                         (64, 16, True), (70, 16, True), (70, 16, False),
                                         (16, 16, True), (20, 16, False)])
@pytest.mark.parametrize("m", [1, 6])
def test_block_stack_matches_dense(d, n, permute, m):
    rots = [BlockRotation(d, n, seed=3, key=f"r{i}", permute=permute) for i in range(3)]
    st = BlockStack(rots, dtype=torch.float64)
    dense = [r.dense() for r in rots]
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(3, m, d, dtype=torch.float64, generator=g)     # rotate the last axis
    cols = torch.randn(3, d, m, dtype=torch.float64, generator=g)     # rotate axis 1
    Yr, Yc = st.rotate_last(rows), st.rotate_first(cols)
    for l, R in enumerate(dense):
        assert torch.allclose(Yr[l], rows[l] @ R.t(), atol=1e-12)
        assert torch.allclose(Yc[l], R @ cols[l], atol=1e-12)
        assert torch.allclose(st.unrotate_last(rows)[l], rows[l] @ R, atol=1e-12)
        assert torch.allclose(st.unrotate_first(cols)[l], R.t() @ cols[l], atol=1e-12)
    assert torch.allclose(st.unrotate_last(Yr), rows, atol=1e-12)
    assert torch.allclose(st.unrotate_first(Yc), cols, atol=1e-12)
    # non-contiguous inputs (a transposed stack) give the same result
    cols_t = cols.transpose(1, 2).contiguous().transpose(1, 2)
    assert m == 1 or not cols_t.is_contiguous()
    assert torch.allclose(st.rotate_first(cols_t), Yc, atol=1e-12)


def test_block_stack_rejects_mixed_structures():
    with pytest.raises(ValueError, match="different structure"):
        BlockStack([BlockRotation(10, 3, 0, "a"), BlockRotation(11, 3, 0, "b")])


@pytest.mark.parametrize("shape,dense_max", [((12, 7), 64), ((30, 5), 8), ((5, 30), 8)])
def test_basis_stack_matches_dense(shape, dense_max):
    g = torch.Generator().manual_seed(2)
    bases = [svd_bases(torch.randn(shape, dtype=torch.float64, generator=g), dense_max)
             for _ in range(3)]
    U = BasisStack([b[0] for b in bases])
    V = BasisStack([b[1] for b in bases])
    X = torch.randn(3, *shape, dtype=torch.float64, generator=g)
    Y = U.apply_t(V.apply_right(X))
    for l, (Ub, Vb) in enumerate(bases):
        Ud, Vd = Ub.to_dense(), Vb.to_dense()
        assert torch.allclose(Y[l], Ud.t() @ X[l] @ Vd, atol=1e-12)
        assert torch.allclose(U.apply(V.apply_right_t(X))[l], Ud @ X[l] @ Vd.t(), atol=1e-12)


# -- every scope: buckets and units against the dense reference -----------------------------
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("block_size", BLOCKS)
@pytest.mark.parametrize("scope", SCOPES)
def test_buckets_match_dense_reference(scope, block_size, tie):
    model = tiny_gpt(tie)
    views = model_layout(model)
    cfg = RotationConfig(scope=scope, block_size=block_size, svd_dense_max=20)
    plan = RotationPlan(views, cfg)
    refresh_svd(plan)
    buckets = build_buckets(plan.units)
    # same-shape layers really are batched together
    assert max(len(b.views) for b in buckets) >= 2 or scope == "global"
    assert sum(len(b.views) for b in buckets) == len(views)
    unit_of = plan.unit_of()
    grads = random_grads(views)
    for b in buckets:
        mats = [grads[v.name] for v in b.views]
        rotated = b.rotate(mats)
        back = b.unrotate(rotated)
        # per-view dense reference (the global unit needs all its views at once)
        units = list(dict.fromkeys(unit_of[v.name] for v in b.views))
        ref, ref_inv = {}, {}
        for u in units:
            ms = [grads[v.name] for v in u.views]
            for v, r in zip(u.views, reference(u, ms)):
                ref[v.name] = r
            for v, r in zip(u.views, reference(u, ms, inverse=True)):
                ref_inv[v.name] = r
        for v, m, r, bk in zip(b.views, mats, rotated, back):
            assert r.shape == m.shape and r.dtype == torch.float32
            assert close(r, ref[v.name]), (b.name, v.name)
            assert close(bk, m.double()), (b.name, v.name)
        # unrotating the shadows (the optimizer's path) = Rᵀ applied to them
        for s, m in zip(b.shadows, mats):
            s.copy_(m)
        for v, d in zip(b.views, b.unrotate()):
            assert close(d, ref_inv[v.name]), (b.name, v.name)
    # the units' own (one-layer) API agrees with the same reference
    for u in plan.units:
        ms = [grads[v.name] for v in u.views]
        for r, e in zip(u.rotate(ms), reference(u, ms)):
            assert close(r, e), u.name
        for r, e in zip(u.unrotate(ms), reference(u, ms, inverse=True)):
            assert close(r, e), u.name


# -- the optimizer step: rotated gradient and update ----------------------------------------
class Recorder(torch.optim.Optimizer):
    """Records the (rotated) gradient it is given and steps by a smooth, coordinate-wise
    non-linear rule ``Δ = −lr·tanh(3 g)`` (not rotation-equivariant, so a wrong basis
    shows up in the update)."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p]["grad"] = p.grad.clone()
                p.add_(torch.tanh(3 * p.grad), alpha=-group["lr"])


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("block_size", [5, 24])
@pytest.mark.parametrize("scope", SCOPES + ["none"])
def test_optimizer_step_matches_dense_reference(scope, block_size, tie):
    model = tiny_gpt(tie)
    views = model_layout(model)
    cfg = RotationConfig(scope=scope, block_size=block_size, svd_dense_max=20)
    opt = RotatedOptimizer(model.parameters(), functools.partial(Recorder, lr=0.1), views,
                           cfg, split_views=True)
    g = torch.Generator().manual_seed(5)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    before = {v.name: v.matrix(v.param.detach()).clone() for v in views}
    grads = {v.name: v.matrix(v.param.grad).clone() for v in views}
    opt.step()
    unit_of = opt.plan.unit_of()
    done = set()
    for v in views:
        u = unit_of[v.name]
        if id(u) in done:
            continue
        done.add(id(u))
        rot = reference(u, [grads[w.name] for w in u.views])
        upd = reference(u, [-0.1 * torch.tanh(3 * r) for r in rot], inverse=True)
        for w, r, d in zip(u.views, rot, upd):
            assert close(opt.base_state(w.name)["grad"], r), (scope, w.name)
            after = w.matrix(w.param.detach())
            assert close(after - before[w.name], d), (scope, w.name)
    assert len({v.name for u in opt.plan.units for v in u.views}) == len(views)


def test_shadows_share_their_bucket_buffer():
    model = tiny_gpt()
    opt = RotatedOptimizer(model.parameters(), functools.partial(torch.optim.AdamW, lr=1e-3),
                           model_layout(model), RotationConfig("inputwise", block_size=5))
    for b in opt._buckets:
        for s in b.shadows:
            assert s.untyped_storage().data_ptr() == b.buffer.untyped_storage().data_ptr()
    # the 16 x 16 matrices (query, key, value, attn_out) of both layers: one bucket
    q = [b for b in opt._buckets if any(v.ptype == "query" for v in b.views)]
    assert len(q) == 1
    assert sorted(v.ptype for v in q[0].views) == sorted(["query", "key", "value",
                                                          "attn_out"] * 2)


def test_svd_bucket_restacks_after_refresh():
    """A refresh replaces a unit's bases; the bucket must follow (update = −lr·U Vᵀ for
    β = ε = 0 in every step, with the current gradient's U, V)."""
    from rotations.layout import LayerView
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.float64)) for _ in range(3)]
    views = [LayerView(f"w{i}", w, "linear", param_name=f"w{i}") for i, w in enumerate(ws)]
    opt = RotatedOptimizer(ws, functools.partial(torch.optim.AdamW, lr=1.0, betas=(0.0, 0.0),
                                                 eps=1e-8, weight_decay=0.0),
                           views, RotationConfig(scope="svd", svd_refresh_every=1))
    assert len(opt._buckets) == 1 and len(opt._buckets[0].views) == 3
    for _ in range(3):
        before = [w.detach().clone() for w in ws]
        gs = [torch.randn(6, 4, dtype=torch.float64) for _ in ws]
        for w, gr in zip(ws, gs):
            w.grad = gr.clone()
        opt.step()
        for w, b0, gr in zip(ws, before, gs):
            u, _, vh = torch.linalg.svd(gr, full_matrices=False)
            assert torch.allclose(w.detach() - b0, -(u @ vh), atol=1e-5)
