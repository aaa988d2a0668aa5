"""The rotation engine: sampling, scopes, and the rotated optimizer step (rotation
engine). The most important property is Proposition 1: SGD with momentum is
rotation-equivariant, so under every scope its trajectory equals the unrotated one."""
from __future__ import annotations

import copy
import functools
import io

import pytest
import torch
from torch import nn

from lightning_modules.gpt_model import GPT, GPTConfig
from rotations.config import RotationConfig
from rotations.layout import LayerView, infer_layout, model_layout
from rotations.optimizer import RotatedOptimizer
from rotations.sampling import BlockRotation, haar_orthogonal, seeded_generator
from rotations.scopes import SCOPE_NAMES, RotationPlan
from rotations.scopes import SCOPES as SCOPES_TABLE
from rotations.svd import OrthoBasis, sign_convention, svd_bases

SCOPES = [s for s in SCOPE_NAMES if s != "none"]     # the scope table: a new row is tested


def tiny_gpt(seed=0, dtype=torch.float32, tie=True):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=37, block_size=8, n_layer=2, n_head=2, n_embd=16,
                    attention="math", tie_embeddings=tie)
    return GPT(cfg).to(dtype)


def batches(n, seed=1, B=4, T=8, V=37):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, V, (B, T + 1), generator=g)
        yield x[:, :-1], x[:, 1:]


def train(model, opt, steps=20, seed=1):
    losses = []
    for x, y in batches(steps, seed):
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def groups(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


# -- sampling ------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 64, 300])
def test_haar_blocks_orthogonal_fp32(n):
    R = haar_orthogonal(n, seeded_generator(0, f"t{n}"), dtype=torch.float32)
    assert torch.allclose(R @ R.t(), torch.eye(n), atol=1e-6)
    assert torch.allclose(R.t() @ R, torch.eye(n), atol=1e-6)


def test_haar_second_moment():
    # E[R_ij^2] = 1/n for Haar O(n): R_ij^2 ~ Beta(1/2, (n-1)/2), variance 2(n-1)/(n^2 (n+2));
    # over k = 200 samples of n = 16 each entry's mean is within 6 standard errors.
    n, k = 16, 200
    g = seeded_generator(3, "moments")
    sq = torch.stack([haar_orthogonal(n, g) ** 2 for _ in range(k)]).mean(0)
    assert abs(sq.mean().item() - 1 / n) < 1e-12           # rows have unit norm exactly
    assert (sq - 1 / n).abs().max().item() < 6 * (2 * (n - 1) / (n * n * (n + 2)) / k) ** 0.5
    # the sign correction makes E[R_ii] = 0 (without it QR's diagonal is biased positive)
    diag = torch.stack([torch.diagonal(haar_orthogonal(n, g)) for _ in range(k)])
    assert abs(diag.mean().item()) < 4 * (1 / n / (k * n)) ** 0.5


@pytest.mark.parametrize("d,n", [(10, 3), (9, 3), (5, 8), (1000, 64)])
def test_block_rotation_structure(d, n):
    R = BlockRotation(d, n, seed=0, key="x")
    dense = R.dense()
    assert torch.allclose(dense @ dense.t(), torch.eye(d, dtype=torch.float64), atol=1e-10)
    x = torch.randn(3, d, dtype=torch.float64)
    assert torch.allclose(R.unrotate(R.rotate(x)), x, atol=1e-12)
    assert torch.allclose(R.rotate(x), x @ dense.t(), atol=1e-12)
    if d > n:
        assert R.perm.dtype == torch.int32
        k = d // n
        # R = B P: after undoing the permutation the blocks are k copies of the same R_n
        B = dense[:, R.perm.long()]
        for b in range(k):
            blk = B[b * n:(b + 1) * n, b * n:(b + 1) * n]
            assert torch.allclose(blk, R.R_n, atol=1e-12)
        assert (B[:k * n, k * n:] == 0).all()


def test_rotation_deterministic_from_seed():
    a, b = BlockRotation(50, 7, 5, "k"), BlockRotation(50, 7, 5, "k")
    assert torch.equal(a.R_n, b.R_n) and torch.equal(a.perm, b.perm)
    assert not torch.equal(a.R_n, BlockRotation(50, 7, 6, "k").R_n)


# -- scopes ----------------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.bn = nn.BatchNorm2d(5)
        self.emb = nn.Embedding(11, 4)
        self.fc = nn.Linear(5, 7)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("model_fn", [tiny_gpt, lambda: tiny_gpt(tie=False), ConvNet])
def test_rotate_unrotate_identity(scope, model_fn):
    model = model_fn().double()
    views = model_layout(model)
    plan = RotationPlan(views, RotationConfig(scope=scope, block_size=5))
    for u in plan.units:
        mats = [torch.randn(v.shape, dtype=torch.float64) for v in u.views]
        if scope == "svd":
            u.refresh(torch.randn(u.views[0].shape, dtype=torch.float64), 1)
        back = u.unrotate(u.rotate(mats))
        for m, b in zip(mats, back):
            assert b.shape == m.shape
            assert torch.allclose(m, b, atol=1e-12)
        # rotations preserve the norm
        rot = u.rotate(mats)
        n0 = sum(m.pow(2).sum() for m in mats)
        n1 = sum(r.pow(2).sum() for r in rot)
        assert torch.allclose(n0, n1, rtol=1e-12)


def _mixing(scope, view_shape, i, j, only=None, block_size=4):
    """Rotate a one-hot gradient of one view; return nonzero masks per view."""
    model = tiny_gpt().double()
    views = model_layout(model)
    cfg = RotationConfig(scope=scope, block_size=block_size, only=only)
    plan = RotationPlan(views, cfg)
    target = [v for v in views if v.shape == view_shape and v.ptype == "mlp_in"][0] \
        if only is None else [v for v in views if v.ptype == "value"][0]
    out = {}
    for u in plan.units:
        mats = [torch.zeros(v.shape, dtype=torch.float64) for v in u.views]
        for v, m in zip(u.views, mats):
            if v is target:
                m[i, j] = 1.0
        for v, r in zip(u.views, u.rotate(mats)):
            out[v.name] = r.abs() > 1e-12
    return target, out, plan


def test_outputwise_mixes_within_rows_only():
    target, out, _ = _mixing("outputwise", (64, 16), 5, 3)
    m = out[target.name]
    assert m[5].sum() > 1 and m.sum() == m[5].sum()
    assert all(not o.any() for k, o in out.items() if k != target.name)


def test_inputwise_mixes_within_columns_only():
    target, out, _ = _mixing("inputwise", (64, 16), 5, 3)
    m = out[target.name]
    assert m[:, 3].sum() > 1 and m.sum() == m[:, 3].sum()
    assert all(not o.any() for k, o in out.items() if k != target.name)


def test_layerwise_never_crosses_layers():
    target, out, _ = _mixing("layerwise", (64, 16), 5, 3, block_size=768)
    assert out[target.name].sum() > 20          # spread over the layer
    assert all(not o.any() for k, o in out.items() if k != target.name)


def test_global_crosses_layers():
    target, out, _ = _mixing("global", (64, 16), 5, 3, block_size=768)
    assert sum(bool(o.any()) for o in out.values()) > 1


def test_only_value_touches_nothing_else():
    target, out, plan = _mixing("none", None, 2, 3, only={"value": "layerwise"})
    assert {v.ptype for u in plan.units for v in u.views} == {"value"}
    assert out[target.name].sum() > 1
    assert set(out) == {v.name for u in plan.units for v in u.views}


def test_fused_qkv_are_three_layers():
    views = model_layout(tiny_gpt())
    qkv = [v for v in views if v.ptype in ("query", "key", "value")]
    assert len(qkv) == 3 * 2 and all(v.shape == (16, 16) for v in qkv)


# -- SVD bases -----------------------------------------------------------------------------
def test_implicit_householder_basis_matches_dense():
    torch.manual_seed(0)
    g = torch.randn(40, 6, dtype=torch.float64)
    U_imp, V = svd_bases(g, dense_max=10)        # 40 > 10: implicit Householder complement
    U_den, _ = svd_bases(g, dense_max=100)
    assert U_imp.implicit and not U_den.implicit
    Ui = U_imp.to_dense()
    assert torch.allclose(Ui.t() @ Ui, torch.eye(40, dtype=torch.float64), atol=1e-12)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    u, _ = sign_convention(u, vh.t())                        # largest |entry| of u_i > 0
    assert torch.allclose(Ui[:, :6], u, atol=1e-10)         # first columns are exactly U_r
    assert torch.allclose(U_den.to_dense()[:, :6], u, atol=1e-10)
    x = torch.randn(40, 3, dtype=torch.float64)
    assert torch.allclose(U_imp.apply(U_imp.apply_t(x)), x, atol=1e-12)
    # the rotated gradient is diag(S) padded with zeros
    rot = U_imp.apply_t(V.apply_t(g.t()).t())
    expect = torch.zeros(40, 6, dtype=torch.float64)
    expect[:6, :6] = torch.diag(s)
    assert torch.allclose(rot, expect, atol=1e-10)


@pytest.mark.parametrize("shape,dense_max", [((12, 12), 64), ((20, 7), 64), ((7, 20), 64),
                                             ((30, 5), 8)])
def test_svd_adam_step_is_muon_update(shape, dense_max):
    """β1 = β2 = 0 (and ε → 0) makes Adam's step sign(g_R); with g_R = diag(S) that is
    U Vᵀ after rotating back (NeurIPS App. E). In float64 the exact zeros off the diagonal
    come out ~1e-16 (and 0/0 is undefined), so ε = 1e-8 stands in for 0: it is far below
    the singular values and far above the rounding noise."""
    torch.manual_seed(1)
    w = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    g = torch.randn(shape, dtype=torch.float64)
    view = LayerView("w", w, "linear", param_name="w")
    opt = RotatedOptimizer([w], functools.partial(torch.optim.AdamW, lr=1.0, betas=(0.0, 0.0),
                                                  eps=1e-8, weight_decay=0.0),
                           [view], RotationConfig(scope="svd", svd_dense_max=dense_max))
    w.grad = g.clone()
    opt.step()
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.allclose(w.detach(), -(u @ vh), atol=1e-5)


def test_svd_refresh_period_and_reproject():
    torch.manual_seed(0)
    w = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    view = LayerView("w", w, "linear", param_name="w")
    opt = RotatedOptimizer([w], functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                           [view], RotationConfig(scope="svd", svd_refresh_every=3,
                                                  svd_moments="reproject"))
    unit = opt.plan.svd_units[0]
    ref = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    refreshed = []
    for t in range(1, 8):
        g = torch.randn(6, 4, dtype=torch.float64)
        w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
        refreshed.append(unit.refreshed_at)
        # with re-projected momentum, SGD-M stays exactly equivariant across refreshes
        assert torch.allclose(w, ref, atol=1e-12)
    assert refreshed == [1, 1, 1, 4, 4, 4, 7]


def test_svd_keep_parts_from_sgd_m_after_a_refresh():
    """With ``svd_moments: keep`` (Alg. 5) the momentum buffer, stored in the old basis, is
    read in the new one after a refresh: by design the trajectory leaves SGD-M's there
    (docs/CONVENTIONS.md §4)."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    opt = RotatedOptimizer([w], functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                           [LayerView("w", w, "linear", param_name="w")],
                           RotationConfig(scope="svd", svd_refresh_every=3, svd_moments="keep"))
    ref = nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    diffs = []
    for _ in range(5):
        g = torch.randn(6, 4, dtype=torch.float64)
        w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
        diffs.append((w - ref).abs().max().item())
    assert max(diffs[:3]) < 1e-12          # steps 1-3: one basis, exactly equivariant
    assert diffs[3] > 1e-3                 # step 4 refreshes: the kept momentum is re-read


# -- the optimizer ---------------------------------------------------------------------------
OPTS = {
    "adamw": functools.partial(torch.optim.AdamW, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1),
    "sgd": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=0.01),
    "nesterov": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9, nesterov=True,
                                  weight_decay=0.01),
}


@pytest.mark.parametrize("name", list(OPTS))
def test_scope_none_matches_torch_optim(name):
    """Through the shadow machinery (split_views forces every view through it) scope none
    reproduces torch.optim step for step."""
    base = tiny_gpt()
    m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
    ref = OPTS[name](groups(m1))
    rot = RotatedOptimizer(groups(m2), OPTS[name], model_layout(m2), RotationConfig("none"),
                           split_views=True)
    l1, l2 = train(m1, ref, 20), train(m2, rot, 20)
    assert torch.allclose(flat(m1), flat(m2), atol=1e-6, rtol=0)
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-5


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", ["sgd", "nesterov"])
def test_sgd_momentum_is_rotation_equivariant(scope, name):
    """Proposition 1: SGD-M in a *fixed* rotated space follows the unrotated trajectory.
    Under svd the 25 steps stay within the first basis (refresh every 200); across a refresh
    this holds only with ``svd_moments: reproject`` (test_svd_refresh_period_and_reproject),
    not with ``keep`` (test_svd_keep_parts_from_sgd_m_after_a_refresh)."""
    base = tiny_gpt()
    m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
    ref = OPTS[name](groups(m1))
    rot = RotatedOptimizer(groups(m2), OPTS[name], model_layout(m2),
                           RotationConfig(scope=scope, block_size=24))
    l1, l2 = train(m1, ref, 25), train(m2, rot, 25)
    diff = (flat(m1) - flat(m2)).abs().max().item()
    assert diff < 2e-5, diff
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4


@pytest.mark.parametrize("scope", SCOPE_NAMES)
def test_adamw_depends_on_the_scope_exactly_when_it_mixes(scope):
    """AdamW in a scope that mixes coordinates leaves the unrotated trajectory; in one that
    does not (``none``, ``permutation``: the table's ``mixes``) it is the unrotated
    trajectory, bitwise — Adam's update is coordinate-wise."""
    base = tiny_gpt()
    m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
    train(m1, OPTS["adamw"](groups(m1)), 10)
    train(m2, RotatedOptimizer(groups(m2), OPTS["adamw"], model_layout(m2),
                               RotationConfig(scope=scope, block_size=24), split_views=True), 10)
    diff = (flat(m1) - flat(m2)).abs().max().item()
    if SCOPES_TABLE[scope].mixes:
        assert diff > 1e-3, diff
    else:
        assert diff == 0.0, diff


def test_adamw_equivariant_to_permutations_and_sign_flips():
    """block_size 1 makes a global 'rotation' a random permutation with random signs
    (each 1x1 Haar block is ±1): Adam is equivariant to those (App. A.2)."""
    base = tiny_gpt()
    m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
    rot = RotatedOptimizer(groups(m2), OPTS["adamw"], model_layout(m2),
                           RotationConfig(scope="global", block_size=1))
    R = rot.plan.units[0].R
    assert R.perm is not None and float(R.R_n.abs()) == 1.0
    train(m1, OPTS["adamw"](groups(m1)), 20)
    train(m2, rot, 20)
    assert torch.allclose(flat(m1), flat(m2), atol=1e-6)


def test_state_dict_resume_is_bit_identical(tmp_path):
    base = tiny_gpt()
    cfg = RotationConfig(scope="svd", svd_refresh_every=3)
    m1 = copy.deepcopy(base)
    o1 = RotatedOptimizer(groups(m1), OPTS["adamw"], model_layout(m1), cfg)
    data = list(batches(12, seed=4))

    def run(m, o, bs):
        for x, y in bs:
            o.zero_grad()
            m(x, y)[1].backward()
            o.step()

    run(m1, o1, data)
    m2 = copy.deepcopy(base)
    o2 = RotatedOptimizer(groups(m2), OPTS["adamw"], model_layout(m2), cfg)
    run(m2, o2, data[:5])
    buf = io.BytesIO()
    torch.save({"model": m2.state_dict(), "opt": o2.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m3 = copy.deepcopy(base)
    m3.load_state_dict(ck["model"])
    o3 = RotatedOptimizer(groups(m3), OPTS["adamw"], model_layout(m3), cfg)
    o3.load_state_dict(ck["opt"])
    run(m3, o3, data[5:])
    assert torch.equal(flat(m1), flat(m3))


def test_load_state_dict_rejects_other_rotation():
    m = tiny_gpt()
    o = RotatedOptimizer(groups(m), OPTS["adamw"], model_layout(m), RotationConfig("global"))
    sd = o.state_dict()
    o2 = RotatedOptimizer(groups(m), OPTS["adamw"], model_layout(m),
                          RotationConfig("global", seed=1))
    with pytest.raises(ValueError, match="rotation.seed"):
        o2.load_state_dict(sd)


def test_lr_scheduler_drives_base_optimizer():
    m = tiny_gpt()
    o = RotatedOptimizer(groups(m), OPTS["adamw"], model_layout(m), RotationConfig("layerwise"))
    sched = torch.optim.lr_scheduler.LambdaLR(o, lambda s: 0.5 ** s)
    train(m, o, 1)
    sched.step()
    train(m, o, 1)
    assert all(g["lr"] == pytest.approx(1.5e-3) for g in o.base.param_groups)
    # the no-decay group keeps weight_decay 0; shadow groups have 0 (decay applied by us)
    assert o.param_groups[1]["weight_decay"] == 0.0


def test_fp32_rotation_with_lower_precision_matmul_setting():
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        base = tiny_gpt()
        m1, m2 = copy.deepcopy(base), copy.deepcopy(base)
        train(m1, OPTS["sgd"](groups(m1)), 5)
        train(m2, RotatedOptimizer(groups(m2), OPTS["sgd"], model_layout(m2),
                                   RotationConfig("global", block_size=24)), 5)
        assert (flat(m1) - flat(m2)).abs().max() < 1e-5
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(prev)


@pytest.mark.parametrize("bad,match", [
    (dict(scope="diagonal"), "rotation.scope"),
    (dict(block_size=0), "rotation.block_size"),
    (dict(svd_refresh_every=-1), "rotation.svd_refresh_every"),
    (dict(svd_moments="rotate"), "rotation.svd_moments"),
    (dict(only={"valu": "layerwise"}), "unknown parameter type 'valu'"),
    (dict(only={"value": "rowwise"}), "rotation.only.value"),
    (dict(scope="global", only={"value": "layerwise"}), "rotation.scope must be 'none'"),
])
def test_config_errors_name_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        RotationConfig(**bad)


def test_infer_layout_generic_model():
    views = infer_layout(ConvNet())
    types = {v.name: v.ptype for v in views}
    assert types["conv.weight"] == "conv" and types["emb.weight"] == "embedding"
    assert types["bn.weight"] == "norm" and types["fc.bias"] == "bias"
    conv = [v for v in views if v.name == "conv.weight"][0]
    assert conv.shape == (5, 27)
    emb = [v for v in views if v.name == "emb.weight"][0]
    assert emb.shape == (4, 11) and emb.transpose


# -- DDP: two CPU processes (gloo) ---------------------------------------------------------
def _ddp_worker(rank, world, port, scope, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.set_num_threads(1)
        model = tiny_gpt()                       # same init on every rank
        opt = RotatedOptimizer(groups(model), OPTS["adamw"], model_layout(model),
                               RotationConfig(scope=scope, svd_refresh_every=2, block_size=24))
        for x, y in batches(6, seed=10 + rank):  # different data per rank
            opt.zero_grad()
            model(x, y)[1].backward()
            for p in model.parameters():         # what DDP does: average the gradients
                dist.all_reduce(p.grad)
                p.grad /= world
            opt.step()
        rot = opt.state_dict()["rotation"]
        torch.save({"params": flat(model), "rotation": rot}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("scope", ["global", "svd"])
def test_ddp_ranks_keep_identical_weights_and_rotations(tmp_path, scope):
    import socket
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, scope, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["params"], r1["params"])

    def tensors(d, prefix=""):
        for k, v in sorted(d.items()):
            if isinstance(v, dict):
                yield from tensors(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    a, b = dict(tensors(r0["rotation"])), dict(tensors(r1["rotation"]))
    assert a.keys() == b.keys() and len(a) > 2
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_svd_refresh_schedule_is_one_rule():
    """Steps 1, 1 + F, 1 + 2F, … refresh (docs/CONVENTIONS.md §4); the optimizer and the
    SVDRefreshLogger both read this one rule."""
    cfg = RotationConfig(scope="svd", svd_refresh_every=3)
    assert [t for t in range(1, 11) if cfg.svd_refresh_due(t)] == [1, 4, 7, 10]
    assert [cfg.svd_refreshes_until(t) for t in (0, 1, 3, 4, 10)] == [0, 1, 1, 2, 4]


def test_every_scope_of_the_table_has_an_overlay_per_architecture():
    """The fourth thing a new scope needs (docs/ROTATIONS.md, "Adding a scope"): an overlay
    ``configs/<arch>/<scope>.yaml`` setting it, for every architecture."""
    import pathlib

    import yaml
    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    for arch in ("gpt2", "vit_s16", "resnet50"):
        for name in SCOPE_NAMES:
            path = root / arch / f"{name}.yaml"
            assert path.is_file(), f"{path} is missing (scope {name!r} of the table)"
            data = yaml.safe_load(path.read_text())
            assert data["model"]["init_args"]["rotation"]["scope"] == name, path
