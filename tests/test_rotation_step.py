"""Semantics of the rotated step at its edges, each checked against an independent derivation
(docs/CONVENTIONS.md §1, §4, §5): weight decay in every mode and scope, the first step after an
SVD refresh in float32, parameters without a gradient, and the one rule for an impossible
``rotation.block_size``."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from rotations.config import RotationConfig
from rotations.layout import LayerView
from rotations.optimizer import RotatedOptimizer
from rotations.scopes import SCOPE_NAMES, RotationPlan, SVDUnit
from rotations.zoo import AdamOneBeta, ClippedSGD, MuonAdamW, Signum, SignSGD

SCOPES = list(SCOPE_NAMES)                    # the scope table: a new row is tested
WD = 0.1
# every zoo optimizer (and torch's coupled / decoupled ones) with weight decay > 0
ZOO = {
    "adamw": functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=WD),
    "adam_l2": functools.partial(torch.optim.Adam, lr=1e-2, weight_decay=WD),
    "sgd_m": functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9, weight_decay=WD),
    "signsgd": functools.partial(SignSGD, lr=1e-2, weight_decay=WD),
    "signum": functools.partial(Signum, lr=1e-2, momentum=0.9, weight_decay=WD),
    "adam_one_beta": functools.partial(AdamOneBeta, lr=1e-2, beta=0.9, weight_decay=WD),
    "clipped_global": functools.partial(ClippedSGD, lr=0.1, momentum=0.9, clip=0.5,
                                        mode="global", weight_decay=WD),
    "clipped_coord": functools.partial(ClippedSGD, lr=0.1, momentum=0.9, clip=0.05,
                                       mode="coordinate", weight_decay=WD),
    # one lr·wd for both parts: under global the Muon and AdamW views share rotated slots,
    # and decoupled decay is each parameter's own (applied in the standard basis)
    "muon": functools.partial(MuonAdamW, lr=0.02, weight_decay=WD, adamw_lr=0.02,
                              adamw_weight_decay=WD, ns_dtype="float32"),
}
SHAPES = {"w1": ((4, 3), "linear"), "w2": ((6, 4), "linear"), "b": ((5,), "bias")}


def _params(seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = {k: nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64))
          for k, (s, _) in SHAPES.items()}
    views = [LayerView(k, p, SHAPES[k][1], param_name=k) for k, p in ps.items()]
    return ps, views


def _grads(seed):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g, dtype=torch.float64) for k, (s, _) in SHAPES.items()}


def _rotate_all(plan, mats, inverse=False):
    """Per view ``(out, in)`` matrices in rotated coordinates (or back), by the plan's units."""
    out = {v.name: v.matrix(mats[v.name]) for v in plan.views}
    for u in plan.units:
        ms = [out[v.name] for v in u.views]
        for v, r in zip(u.views, u.unrotate(ms) if inverse else u.rotate(ms)):
            out[v.name] = r
    return out


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", list(ZOO))
def test_weight_decay_composes_as_documented_in_every_scope(name, scope):
    """The rotated optimizer = the base optimizer run on ``w_R = R w`` with gradient
    ``R g`` (weight decay included, whatever its mode), mapped back with ``Rᵀ``."""
    ps, views = _params()
    muon_opts = (lambda v: {"use_muon": v.param.dim() == 2}) if name == "muon" else None
    opt = RotatedOptimizer(list(ps.values()), ZOO[name], views,
                           RotationConfig(scope=scope, block_size=5), split_views=True,
                           view_group_options=muon_opts)
    ref_w = None
    for t in range(3):
        grads = _grads(10 + t)
        w0 = {k: p.detach().clone() for k, p in ps.items()}
        for k, p in ps.items():
            p.grad = grads[k].clone()
        opt.step()
        if ref_w is None:              # the plan's bases exist after step 1 (svd)
            plan = opt.plan
            ref_w = {k: nn.Parameter(w.clone()) for k, w in _rotate_all(plan, w0).items()}
            groups = ([{"params": [ref_w["w1"], ref_w["w2"]], "use_muon": True},
                       {"params": [ref_w["b"]], "use_muon": False}] if name == "muon"
                      else [{"params": list(ref_w.values())}])
            ref = ZOO[name](groups)
        g_rot = _rotate_all(plan, grads)
        if t == 0 and scope == "svd":  # Uᵀ G V of the defining gradient: exact zeros
            for k, u in zip(g_rot, g_rot.values()):
                u[u.abs() < 1e-12 * u.abs().max()] = 0.0
        for k, p in ref_w.items():
            p.grad = g_rot[k]
        ref.step()
        expect = _rotate_all(plan, {k: p.detach() for k, p in ref_w.items()}, inverse=True)
        for v in views:
            k = v.name
            err = (v.matrix(v.param.detach()) - expect[k]).abs().max().item()
            assert err < 1e-6, (name, scope, t, k, err)


@pytest.mark.parametrize("shape,scale", [((64, 64), 1e-3), ((128, 32), 1e-2), ((64, 64), 1e-1)])
def test_svd_first_step_is_exact_in_float32(shape, scale):
    """Adam's first step after a fresh basis: ``ΔW = −lr U diag(S/(S+ε)) Vᵀ`` (computed here
    in float64 from the SVD alone). Rounding in ``Uᵀ G V`` off the diagonal used to turn into
    ±1 updates (relative error 0.13 / 2.0 / 4.0 at these scales)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.zeros(shape))
    g = torch.randn(shape) * scale
    opt = RotatedOptimizer([w], functools.partial(torch.optim.AdamW, lr=1.0, weight_decay=0.0),
                           [LayerView("w", w, "linear", param_name="w")],
                           RotationConfig(scope="svd"))
    w.grad = g.clone()
    opt.step()
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    exact = -(u * (s / (s + 1e-8))) @ vh
    rel = ((w.detach().double() - exact).norm() / exact.norm()).item()
    assert rel < 1e-4, rel


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", ["sgd_m", "adamw", "clipped_global"])
def test_param_without_grad_does_not_move(name, scope):
    """As in torch.optim: a parameter whose ``.grad`` is None is skipped (no momentum, no
    weight decay), in every scope."""
    ps, views = _params()
    opt = RotatedOptimizer(list(ps.values()), ZOO[name], views,
                           RotationConfig(scope=scope, block_size=5), split_views=True)
    for k, p in ps.items():
        p.grad = _grads(1)[k]
    opt.step()
    ps["b"].grad = None
    before = ps["b"].detach().clone()
    ps["w1"].grad, ps["w2"].grad = _grads(2)["w1"], _grads(2)["w2"]
    w1 = ps["w1"].detach().clone()
    opt.step()
    assert torch.equal(ps["b"].detach(), before)
    assert not torch.equal(ps["w1"].detach(), w1)


def test_torch_optim_skips_the_same_way():
    """The behaviour matched above (a guard against torch changing it)."""
    p = nn.Parameter(torch.ones(3))
    opt = ZOO["sgd_m"]([p])
    p.grad = torch.ones(3)
    opt.step()
    before = p.detach().clone()
    p.grad = None
    opt.step()
    assert torch.equal(p.detach(), before)


# -- rotation.block_size: one rule for every scope --------------------------------------------
def _meta_views(*shapes):
    return [LayerView(f"p{i}", nn.Parameter(torch.empty(s, device="meta")), "linear",
                      param_name=f"p{i}") for i, s in enumerate(shapes)]


@pytest.mark.parametrize("scope,shape", [("global", (300, 300)), ("layerwise", (300, 300)),
                                         ("outputwise", (10, 30000)),
                                         ("inputwise", (30000, 10))])
def test_impossible_block_size_is_refused_before_sampling(scope, shape):
    views = _meta_views(shape)
    with pytest.raises(ValueError, match=r"rotation\.block_size=100000000 .* GiB"):
        RotationPlan(views, RotationConfig(scope=scope, block_size=10 ** 8))


def test_block_size_larger_than_every_layer_is_clamped_when_affordable():
    views = _meta_views((30, 20))
    for scope in ("global", "layerwise", "outputwise", "inputwise"):
        plan = RotationPlan(views, RotationConfig(scope=scope, block_size=10 ** 8))
        assert all(u.R.n <= 600 for u in plan.units if hasattr(u, "R"))
    assert isinstance(RotationPlan(views, RotationConfig(scope="svd",
                                                         block_size=10 ** 8)).units[0], SVDUnit)


@pytest.mark.parametrize("name", ["adamw", "sgd_m", "signum", "clipped_global"])
def test_scope_none_is_the_base_optimizer_bitwise(name):
    """``scope: none`` (no split views) hands every parameter to the base optimizer itself:
    no shadows, the base's own foreach/fused path, and bitwise its trajectory."""
    ps, views = _params()
    ref = {k: nn.Parameter(p.detach().clone()) for k, p in ps.items()}
    opt = RotatedOptimizer(list(ps.values()), ZOO[name], views, RotationConfig(scope="none"))
    assert not opt.buckets and not opt.shadows
    base = ZOO[name](list(ref.values()))
    for t in range(3):
        for k in ps:
            ps[k].grad = _grads(20 + t)[k]
            ref[k].grad = ps[k].grad.clone()
        opt.step()
        base.step()
    assert all(torch.equal(ps[k].detach(), ref[k].detach()) for k in ps)
