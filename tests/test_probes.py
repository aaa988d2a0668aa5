"""The probe library (rotations.probes, docs/CONVENTIONS.md §6) against exact answers on a tiny
float64 GPT: Hessian rows vs the dense Hessian, the (1,1)-norm and its Cauchy cross-check, the
row partition, the gradient bound, update orthogonality."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

from adamrot.probe import gpt_loss
from lightning_modules.gpt_model import GPT, GPTConfig
from rotations.config import RotationConfig
from rotations.layout import model_layout
from rotations.probes import (RotatedSpace, block_contributions, cauchy_scale_estimate,
                              gradient_linf_bound, hessian_rows, one_one_norm_cauchy,
                              one_one_norm_estimate, one_one_norm_exact, partition_row,
                              update_orthogonality)
from rotations.scopes import ColUnit, GlobalUnit, IdentityUnit, LayerUnit, RotationPlan, RowUnit, SVDUnit


def micro_gpt(seed=0, dtype=torch.float64, vocab=7, embd=4, block=4):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=vocab, block_size=block, n_layer=1, n_head=2, n_embd=embd,
                    attention="math")
    return GPT(cfg).to(dtype)


def make_batches(n, seed=1, B=3, T=4, V=7):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, V, (B, T + 1), generator=g)
        out.append((x[:, :-1], x[:, 1:]))
    return out


def plan_for(model, scope, batches, block_size=16):
    """A plan with SVD bases from the model's gradient at the current weights."""
    views = model_layout(model)
    plan = RotationPlan(views, RotationConfig(scope=scope, block_size=block_size, seed=3))
    if plan.svd_units:
        model.zero_grad()
        gpt_loss(model, batches[0]).backward()
        for u in plan.svd_units:
            u.refresh(u.views[0].matrix(u.views[0].param.grad).detach().clone(), 1)
        model.zero_grad()
    return plan


def dense_R_from_plan(space: RotatedSpace) -> torch.Tensor:
    """``R`` (slot layout) built from the units' own matrices with Kronecker products,
    independently of ``RotatedSpace.rotate_*``: row-major ``vec(A X B) = (A ⊗ Bᵀ) vec(X)``."""
    R = torch.zeros(space.d, space.d, dtype=torch.float64)
    for u, idx in space.units:
        if isinstance(u, GlobalUnit):
            pos = torch.cat([torch.arange(*space.view_range(k)) for k in idx])
            R[pos.unsqueeze(1), pos.unsqueeze(0)] = u.R.dense()
            continue
        for k in idx:
            a, b = space.view_range(k)
            out, inn = space.shapes[k]
            if isinstance(u, IdentityUnit):
                blk = torch.eye(b - a, dtype=torch.float64)
            elif isinstance(u, RowUnit):            # G -> G Qᵀ (each row x -> Q x)
                blk = torch.kron(torch.eye(out, dtype=torch.float64), u.R.dense().contiguous())
            elif isinstance(u, ColUnit):            # G -> Q G
                blk = torch.kron(u.R.dense().contiguous(), torch.eye(inn, dtype=torch.float64))
            elif isinstance(u, LayerUnit):
                blk = u.R.dense()
            elif isinstance(u, SVDUnit):            # G -> Uᵀ G V
                blk = torch.kron(u.U.to_dense().double().t(), u.V.to_dense().double().t())
            else:
                raise AssertionError(type(u))
            R[a:b, a:b] = blk
    return R


@pytest.fixture(scope="module")
def exact():
    """Tiny GPT (float64), two batches and the exact Hessian of their mean loss in the
    standard slot layout (``torch.autograd.functional.hessian``)."""
    model = micro_gpt()
    batches = make_batches(2)
    space = RotatedSpace.identity(model_layout(model))
    names = {id(p): n for n, p in model.named_parameters()}
    pnames = [names[id(p)] for p in space.params]
    flat0 = space.from_params([p.detach() for p in space.params])

    def f(flat):
        params = dict(zip(pnames, space.to_params(flat)))
        return sum(functional_call(model, params, b)[1] for b in batches) / len(batches)

    H = torch.autograd.functional.hessian(f, flat0, vectorize=True)
    return SimpleNamespace(model=model, batches=batches, H=H, d=space.d)


# -- Hessian rows ------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["none", "global", "outputwise", "svd"])
def test_hessian_rows_match_exact_hessian(exact, scope):
    model, batches = exact.model, exact.batches
    plan = plan_for(model, scope, batches)
    space = RotatedSpace.from_plan(plan)
    assert space.d == exact.d
    R = dense_R_from_plan(space)
    assert torch.allclose(R @ R.t(), torch.eye(space.d, dtype=torch.float64), atol=1e-10)
    # the space's rotate/unrotate are this R and Rᵀ
    assert torch.allclose(space.dense_rotation(), R, atol=1e-12)
    y = torch.randn(space.d, dtype=torch.float64)
    assert torch.allclose(space.unrotate_std(y), R.t() @ y, atol=1e-12)
    HR = R @ exact.H @ R.t()
    idx = [0, 7, space.d // 2, space.d - 1, 123]
    rows = hessian_rows(model, gpt_loss, batches, space, idx)
    assert rows.shape == (len(idx), space.d)
    scale = HR.abs().max()
    assert (rows - HR[idx]).abs().max() <= 1e-10 * scale


def test_one_one_norm_all_rows_exact_and_cauchy(exact):
    model, batches = exact.model, exact.batches
    space = RotatedSpace.from_plan(plan_for(model, "global", batches))
    R = dense_R_from_plan(space)
    HR = R @ exact.H @ R.t()
    rows = hessian_rows(model, gpt_loss, batches, space, range(space.d))
    est = one_one_norm_estimate(rows)
    truth = one_one_norm_exact(HR)
    assert est == pytest.approx(truth, rel=1e-10)
    assert truth == pytest.approx(HR.abs().sum().item() / space.d)
    # Cauchy cross-check over all d rows. Row errors share the probe vectors (and H has a
    # low effective rank), so the estimate's log-error has sd up to pi/(2 sqrt(M)), no better.
    M = 100
    c = one_one_norm_cauchy(model, gpt_loss, batches, space, n_vectors=M, seed=5,
                            indices=[0, 1, 2])
    sd = math.pi / (2 * math.sqrt(M))
    assert c["row_rel_sd"] == pytest.approx(sd)
    assert abs(math.log(c["estimate"] / truth)) < 3 * sd
    assert c["rows"] == pytest.approx(c["per_row"][:3].tolist())


def test_cauchy_estimator_is_unbiased():
    """The estimator itself, over independent replications for one row h: E[γ̂] = ‖h‖₁ and
    sd(log γ̂) = pi/(2 sqrt(M)). (Rows of one H z share z: their errors are correlated.)"""
    d, M, reps = 50, 16, 2000
    g = torch.Generator().manual_seed(0)
    h = torch.randn(d, generator=g, dtype=torch.float64)
    Z = torch.empty(reps, M, d, dtype=torch.float64).cauchy_(generator=g)
    ratio = cauchy_scale_estimate((Z @ h).abs().log().sum(1), M) / h.abs().sum()
    se = ratio.std().item() / math.sqrt(reps)
    assert abs(ratio.mean().item() - 1) < 4 * se
    assert ratio.log().std().item() == pytest.approx(math.pi / (2 * math.sqrt(M)), rel=0.1)


# -- partition ---------------------------------------------------------------------------------
def test_partition_of_known_indices(exact):
    model = exact.model
    space = RotatedSpace.identity(model_layout(model))
    names = [v.name for v in space.views]
    k = names.index("transformer.h.0.attn.c_attn.weight[value]")
    out, inn = space.shapes[k]
    assert (out, inn) == (4, 4)
    a = space.offsets[k]
    i = a + 2 * inn + 1                                  # value layer, neuron 2, input 1
    c = space.locate(i)
    assert (c.view, c.ptype, c.row, c.col, c.block) == (names[k], "value", 2, 1, 0)
    m = space.block_masks(i)
    assert m["neuron"].nonzero().flatten().tolist() == list(range(a + 2 * inn, a + 3 * inn))
    assert m["layer"].nonzero().flatten().tolist() == (
        list(range(a, a + 2 * inn)) + list(range(a + 3 * inn, a + out * inn)))
    assert int(m["other"].sum()) == space.d - out * inn
    assert not (m["neuron"] & m["layer"]).any() and not (m["layer"] & m["other"]).any()
    assert space.block_sizes(i) == {"neuron": inn, "layer": (out - 1) * inn,
                                    "other": space.d - out * inn}
    # query and key of the same c_attn are *other* layers
    q = names.index("transformer.h.0.attn.c_attn.weight[query]")
    assert m["other"][space.offsets[q]:space.offsets[q + 1]].all()
    # a LayerNorm gain: its own neuron, the rest of the gain is the layer
    j = names.index("transformer.h.0.ln_1.weight")
    i2 = space.offsets[j] + 3
    s = space.block_sizes(i2)
    assert s == {"neuron": 1, "layer": space.numels[j] - 1, "other": space.d - space.numels[j]}
    # tied embedding (vocab, C): a neuron is a token row
    e = names.index("transformer.wte.weight")
    assert space.shapes[e] == (7, 4) and space.block_sizes(space.offsets[e] + 9)["neuron"] == 4
    # values and contributions add up
    row = torch.randn(space.d, dtype=torch.float64)
    delta = torch.randn(space.d, dtype=torch.float64)
    parts = partition_row(row, i, space)
    assert sum(p.numel() for p in parts.values()) == space.d
    con = block_contributions(row, i, delta, space)
    for b in ("neuron", "layer", "other"):
        assert con[b] == pytest.approx(float((row * delta)[m[b]].sum()), abs=1e-12)
    assert con["total"] == pytest.approx(float(row @ delta), abs=1e-12)


# -- gradient bound ------------------------------------------------------------------------------
def test_gradient_bound_brute_force(exact):
    model, batches = exact.model, make_batches(4, seed=9)
    space = RotatedSpace.from_plan(plan_for(model, "global", batches))
    R = dense_R_from_plan(space)
    brute = 0.0
    for b in batches:
        model.zero_grad()
        gpt_loss(model, b).backward()
        g = space.from_params([p.grad for p in space.params])
        brute = max(brute, float((R @ g).abs().max()))
    model.zero_grad()
    got = gradient_linf_bound(model, gpt_loss, batches, space, details=True)
    assert got["bound"] == pytest.approx(brute, rel=1e-12)
    assert len(got["per_batch"]) == 4
    assert gradient_linf_bound(model, gpt_loss, iter(batches), space) == got["bound"]


# -- update orthogonality -----------------------------------------------------------------------
def test_update_orthogonality_definitions():
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    o = update_orthogonality(3.0 * Q)
    assert o["cv_sv"] == pytest.approx(0, abs=1e-12)
    assert o["cv_eig_AAt"] == pytest.approx(0, abs=1e-12)
    assert o["svd_entropy"] == pytest.approx(1.0, abs=1e-12)
    # semi-orthogonal rectangular: the |out-in| structural zeros of AAᵀ are not counted
    o = update_orthogonality(2.0 * Q[:, :4])
    assert o["cv_sv"] == pytest.approx(0, abs=1e-12) and o["cv_eig_AAt"] == pytest.approx(0, abs=1e-12)
    # known spectrum s = (1, 2, 3, 4) in a 4 x 7 matrix
    U, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(7, 4, generator=g, dtype=torch.float64))
    s = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    o = update_orthogonality(U @ torch.diag(s) @ V.t())
    assert o["cv_sv"] == pytest.approx(math.sqrt(1.25) / 2.5, rel=1e-10)       # 0.4472
    lam = [16.0, 9.0, 4.0, 1.0]
    mu = sum(lam) / 4
    assert o["cv_eig_AAt"] == pytest.approx(
        math.sqrt(sum((x - mu) ** 2 for x in lam) / 4) / mu, rel=1e-10)        # 0.7572
    p = [x / 10 for x in (4, 3, 2, 1)]
    assert o["svd_entropy"] == pytest.approx(-sum(x * math.log(x) for x in p) / math.log(4),
                                             rel=1e-10)
    q = [x / 30 for x in lam]
    assert o["svd_entropy_sq"] == pytest.approx(-sum(x * math.log(x) for x in q) / math.log(4),
                                                rel=1e-10)
    assert math.isnan(update_orthogonality(torch.zeros(3, 3))["cv_sv"])
