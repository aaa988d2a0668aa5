"""Exactness of the rotated step where an independent re-derivation found it wrong (2026-12
maths review, docs/CONVENTIONS.md §2 and §4), each checked against its own float64 reference:

* ``global`` / ``layerwise`` without a permutation (``permute: false``, or a block at least
  as large as the vector) must still map the update back with ``Rᵀ``: plain SGD is then the
  unrotated SGD to 1e-12;
* the SVD of a large view (more than 2¹⁶ entries: every matrix of GPT-2 124M) in a float32
  run must give the float64 run's step, at the first refresh and the next one;
* singular vectors follow one sign convention, so float32 and float64 runs pick the same;
* a view with no gradient at step 1 takes its first basis from its first real gradient;
* permutations switch to int64 indices past the int32 range (checked on a small analogue).
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import rotations.sampling as sampling
from rotations.config import RotationConfig
from rotations.layout import LayerView
from rotations.optimizer import RotatedOptimizer
from rotations.sampling import BlockRotation, index_dtype
from rotations.svd import sign_convention, svd_factors

SHAPES = {"w1": (4, 3), "w2": (6, 4), "b": (5,)}          # 12 + 24 + 5 = 41 coordinates


def _views(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ps = {k: nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for k, s in SHAPES.items()}
    views = [LayerView(k, p, "bias" if p.dim() == 1 else "linear", param_name=k)
             for k, p in ps.items()]
    return ps, views


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("permute", [True, False])
@pytest.mark.parametrize("block_size", [4, 12, 41, 100])   # below, = w1, = all params, above
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_under_block_rotations_is_plain_sgd(scope, permute, block_size, momentum):
    """SGD is rotation-equivariant, so under any ``R`` its weights follow unrotated SGD.
    Before the fix, ``global`` without a permutation moved the weights by ``R Δ`` instead of
    ``Δ`` (0.31 off with block 4)."""
    ps, views = _views()
    ref = {k: nn.Parameter(p.detach().clone()) for k, p in ps.items()}
    sgd = functools.partial(torch.optim.SGD, lr=0.1, momentum=momentum)
    opt = RotatedOptimizer(list(ps.values()), sgd, views,
                           RotationConfig(scope=scope, block_size=block_size, permute=permute))
    plain = sgd(list(ref.values()))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for k in ps:
            ps[k].grad = torch.randn(SHAPES[k], generator=g, dtype=torch.float64)
            ref[k].grad = ps[k].grad.clone()
        opt.step()
        plain.step()
    err = max((ps[k].detach() - ref[k].detach()).abs().max().item() for k in ps)
    assert err < 1e-12, err


# -- SVD at paper size in float32 -------------------------------------------------------------
N = 768                                                    # 589,824 entries: > 2¹⁶


def _gradient(kind: str, seed: int) -> torch.Tensor:
    """A float32 ``N x N`` gradient of known spectrum (exactly representable in float32)."""
    g = torch.Generator().manual_seed(seed)
    q1, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(N, N, generator=g, dtype=torch.float64))
    if kind.startswith("rank"):
        r = int(kind[4:])
        s = torch.linspace(1.0, 0.5, r, dtype=torch.float64)
    else:                                                  # decaying: 1 … 1e-6
        r = N
        s = torch.logspace(0, -6, N, dtype=torch.float64)
    return ((q1[:, :r] * s) @ q2[:, :r].t()).float()


def _adam_svd_run(dtype, grads, every, moments):
    w = nn.Parameter(torch.zeros(N, N, dtype=dtype))
    opt = RotatedOptimizer([w], functools.partial(torch.optim.AdamW, lr=1.0, weight_decay=0.0),
                           [LayerView("w", w, "linear", param_name="w")],
                           RotationConfig(scope="svd", svd_refresh_every=every,
                                          svd_moments=moments))
    deltas = []
    for g in grads:
        before = w.detach().double().clone()
        w.grad = g.to(dtype)
        opt.step()
        deltas.append(w.detach().double() - before)
    return deltas, opt


@pytest.mark.parametrize("kind", ["rank2", "rank64", "decaying"])
def test_float32_svd_refreshes_match_float64_at_paper_size(kind):
    """Steps 1 and 2 of Adam under ``svd`` with a refresh at each (F = 1, moments kept, the
    Alg. 5 default) on a 768 x 768 view: the float32 run's updates are the float64 run's to
    1e-4 relative. A float32 SVD gave relative errors of order 1 for rank-deficient
    gradients (every spurious singular value ≈ 1e-7·σ_max becomes an update of ≈ 1)."""
    grads = [_gradient(kind, 0), _gradient(kind, 1)]
    d32, _ = _adam_svd_run(torch.float32, grads, every=1, moments="keep")
    d64, _ = _adam_svd_run(torch.float64, grads, every=1, moments="keep")
    for t, (a, b) in enumerate(zip(d32, d64)):
        rel = ((a - b).norm() / b.norm()).item()
        assert rel <= 1e-4, (kind, t + 1, rel)


def test_sign_convention_is_the_same_in_float32_and_float64():
    """The float32 and float64 runs pick the same sign for every singular pair (distinct
    singular values), and the convention holds: the largest-magnitude entry of each ``u_i``
    is positive."""
    g32 = _gradient("decaying", 2)[:300, :260].contiguous()
    U32, _, V32 = svd_factors(g32)
    U64, _, V64 = svd_factors(g32.double())
    u32, u64 = U32.to_dense()[:, :260].double(), U64.to_dense()[:, :260]
    v32, v64 = V32.to_dense().double(), V64.to_dense()
    assert ((u32 * u64).sum(0) > 0.99).all() and ((v32 * v64).sum(0) > 0.99).all()
    top = u64.gather(0, u64.abs().argmax(0, keepdim=True))
    assert (top > 0).all()
    # the convention on its own: flipping pairs of a factorisation changes nothing
    u, s, vh = torch.linalg.svd(g32.double(), full_matrices=False)
    flip = torch.where(torch.arange(260) % 3 == 0, -1.0, 1.0).double()
    a, b = sign_convention(u, vh.t())
    c, d = sign_convention(u * flip, vh.t() * flip)
    assert torch.equal(a, c) and torch.equal(b, d)
    assert torch.allclose((a * s) @ b.t(), g32.double(), atol=1e-12)


def test_first_svd_basis_waits_for_a_real_gradient():
    """A view without a gradient at step 1 keeps the identity (and does not move) until its
    first gradient, whose SVD then defines its basis: Adam's first step on it is
    ``−lr U diag(S/(S+ε)) Vᵀ``. Before the fix the basis came from a zero gradient
    (``U = V = I``) and stayed until the next scheduled refresh."""
    g = torch.Generator().manual_seed(3)
    a = nn.Parameter(torch.zeros(6, 5, dtype=torch.float64))
    b = nn.Parameter(torch.zeros(6, 5, dtype=torch.float64))
    views = [LayerView("a", a, "linear", param_name="a"),
             LayerView("b", b, "linear", param_name="b")]
    opt = RotatedOptimizer([a, b], functools.partial(torch.optim.AdamW, lr=1.0,
                                                     weight_decay=0.0),
                           views, RotationConfig(scope="svd", svd_refresh_every=100))
    b.grad = torch.randn(6, 5, generator=g, dtype=torch.float64)
    opt.step()                                         # a: no gradient
    assert torch.equal(a.detach(), torch.zeros(6, 5, dtype=torch.float64))
    unit_a = next(u for u in opt.plan.svd_units if u.views[0].name == "a")
    assert unit_a.U is None
    ga = torch.randn(6, 5, generator=g, dtype=torch.float64)
    a.grad, b.grad = ga.clone(), torch.randn(6, 5, generator=g, dtype=torch.float64)
    opt.step()
    assert unit_a.refreshed_at == 2
    u, s, vh = torch.linalg.svd(ga, full_matrices=False)
    exact = -(u * (s / (s + 1e-8))) @ vh
    assert torch.allclose(a.detach(), exact, atol=1e-12)


# -- permutations past the int32 range ---------------------------------------------------------
def test_index_dtype_switches_past_the_smaller_type(monkeypatch):
    """The int32 -> int64 switch at 2³¹, checked on the int16 analogue at 32,768 / 32,769:
    a permutation is sampled in the dtype that holds its indices and still rotates a
    gradient exactly (SGD under global = plain SGD)."""
    assert index_dtype(2 ** 31) == torch.int32 and index_dtype(2 ** 31 + 1) == torch.int64
    monkeypatch.setattr(sampling, "INDEX_DTYPES", (torch.int16, torch.int64))
    assert BlockRotation(32768, 64, 0, "x").perm.dtype == torch.int16
    r = BlockRotation(32769, 64, 0, "x")
    assert r.perm.dtype == torch.int64
    assert torch.equal(r.perm.sort().values, torch.arange(32769))
    w = nn.Parameter(torch.zeros(32769, dtype=torch.float64))
    opt = RotatedOptimizer([w], functools.partial(torch.optim.SGD, lr=1.0),
                           [LayerView("w", w, "bias", param_name="w")],
                           RotationConfig(scope="global", block_size=64))
    grad = torch.randn(32769, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w.grad = grad.clone()
    opt.step()
    assert torch.allclose(w.detach(), -grad, atol=1e-12)
