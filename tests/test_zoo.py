"""Tests for rotations/zoo.py: every optimizer against a reference, step for step."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from rotations.zoo import (
    AdamOneBeta,
    ClippedSGD,
    MuonAdamW,
    SignSGD,
    Signum,
    is_decoupled,
)
from rotations.probes import adam_moment_stats

DT = torch.float64
SHAPES = [(5, 3), (4,), (2, 3, 2)]


def make_params(seed=0, shapes=SHAPES, dtype=DT):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def clone_params(params):
    return [p.detach().clone().requires_grad_() for p in params]


def grad_seq(params, n, seed=1, scale=1.0, mean=0.0):
    g = torch.Generator().manual_seed(seed)
    return [
        [mean + scale * torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        for _ in range(n)
    ]


def set_grads(params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()


def run(opt, params, grads, sched=None):
    for gs in grads:
        set_grads(params, gs)
        opt.step()
        if sched is not None:
            sched.step()


def assert_same(ps, qs, exact=False):
    for p, q in zip(ps, qs):
        if exact:
            assert torch.equal(p, q), (p - q).abs().max()
        else:
            torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------------------------------
# signSGD / Signum: closed forms
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_signsgd_closed_form(wd):
    params = make_params()
    ref = [p.detach().clone() for p in params]
    lr = 0.05
    opt = SignSGD(params, lr=lr, weight_decay=wd)
    grads = grad_seq(params, 5)
    grads[0][0][0, 0] = 0.0  # sign(0) = 0
    for gs in grads:
        set_grads(params, gs)
        opt.step()
        ref = [r * (1 - lr * wd) - lr * torch.sign(g) for r, g in zip(ref, gs)]
        assert_same(params, ref)
    assert len(opt.state) == 0


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_signum_closed_form(nesterov, wd):
    params = make_params()
    lr, beta = 0.03, 0.9
    opt = Signum(params, lr=lr, momentum=beta, weight_decay=wd, nesterov=nesterov)
    ref = [p.detach().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    for gs in grad_seq(params, 6):
        set_grads(params, gs)
        opt.step()
        m = [beta * mi + (1 - beta) * g for mi, g in zip(m, gs)]
        d = [(1 - beta) * g + beta * mi for mi, g in zip(m, gs)] if nesterov else m
        ref = [r * (1 - lr * wd) - lr * torch.sign(di) for r, di in zip(ref, d)]
        assert_same(params, ref)
        for p, mi in zip(params, m):
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], mi)


def test_signum_from_known_buffer():
    params = make_params()
    lr, beta, wd = 0.1, 0.8, 0.05
    opt = Signum(params, lr=lr, momentum=beta, weight_decay=wd)
    g = torch.Generator().manual_seed(5)
    bufs = [torch.randn(p.shape, generator=g, dtype=DT) for p in params]
    for p, b in zip(params, bufs):
        opt.state[p]["momentum_buffer"] = b.clone()
    before = [p.detach().clone() for p in params]
    grads = grad_seq(params, 1, seed=9)[0]
    set_grads(params, grads)
    opt.step()
    for p, p0, b, gr in zip(params, before, bufs, grads):
        m = beta * b + (1 - beta) * gr
        torch.testing.assert_close(p.detach(), p0 * (1 - lr * wd) - lr * torch.sign(m))


def test_signum_sign_equals_sgd_buffer_convention():
    """sign of the EMA buffer = sign of torch.optim.SGD's buffer (b <- beta b + g)."""
    params = make_params()
    ref = clone_params(params)
    beta = 0.9
    opt = Signum(params, lr=0.1, momentum=beta)
    sgd = torch.optim.SGD(ref, lr=0.1, momentum=beta)
    for gs in grad_seq(params, 5):
        set_grads(params, gs)
        set_grads(ref, gs)
        opt.step()
        sgd.step()
        for p, q in zip(params, ref):
            assert torch.equal(
                torch.sign(opt.state[p]["momentum_buffer"]),
                torch.sign(sgd.state[q]["momentum_buffer"]),
            )


def test_signum_momentum_zero_is_signsgd():
    a, b = make_params(), make_params()
    grads = grad_seq(a, 4)
    run(Signum(a, lr=0.1, momentum=0.0, weight_decay=0.1), a, grads)
    run(SignSGD(b, lr=0.1, weight_decay=0.1), b, grads)
    assert_same(a, b, exact=True)


# ---------------------------------------------------------------------------------------
# AdamOneBeta
# ---------------------------------------------------------------------------------------
def test_adam_one_beta_equals_adamw():
    a, b = make_params(), make_params()
    grads = grad_seq(a, 8)
    run(AdamOneBeta(a, lr=1e-2, beta=0.9, eps=1e-8, weight_decay=0.1), a, grads)
    run(torch.optim.AdamW(b, lr=1e-2, betas=(0.9, 0.9), eps=1e-8, weight_decay=0.1), b, grads)
    assert_same(a, b, exact=True)


def test_adam_one_beta_group_beta():
    a = make_params()
    opt = AdamOneBeta([{"params": a[:1], "beta": 0.5}, {"params": a[1:]}], beta=0.9)
    assert opt.param_groups[0]["betas"] == (0.5, 0.5)
    assert opt.param_groups[1]["betas"] == (0.9, 0.9)
    with pytest.raises(TypeError):
        AdamOneBeta(a, betas=(0.9, 0.99))


def ew_variance_recursive(grads, beta):
    """EW mean / variance by the incremental recursion, never forming s - mu^2.

    mu_t = beta mu + (1-beta) g ;  S_t = beta (S + (1-beta) (g - mu_{t-1})^2)
    (S_t = s_t - mu_t^2 with s_t = beta s + (1-beta) g^2: an algebraic identity.)
    """
    mu = torch.zeros_like(grads[0])
    S = torch.zeros_like(grads[0])
    out = []
    for g in grads:
        S = beta * (S + (1 - beta) * (g - mu) ** 2)
        mu = beta * mu + (1 - beta) * g
        out.append((mu.clone(), S.clone()))
    return out


def ew_variance_direct(grads, beta):
    """Bias-corrected: weighted variance with normalised weights, two-pass."""
    t = len(grads)
    w = torch.tensor([(1 - beta) * beta ** (t - 1 - i) for i in range(t)], dtype=DT)
    w = w / (1 - beta ** t)
    G = torch.stack(grads)
    mean = torch.einsum("t,t...->...", w, G)
    var = torch.einsum("t,t...->...", w, (G - mean) ** 2)
    return mean, var


@pytest.mark.parametrize("beta", [0.9, 0.95])
def test_adam_one_beta_variance_identity(beta):
    (p,) = make_params(shapes=[(50,)])
    opt = AdamOneBeta([p], lr=1e-3, beta=beta, weight_decay=0.1)
    seq = [g[0] for g in grad_seq([p], 12, mean=0.5, scale=0.7)]
    rec = ew_variance_recursive(seq, beta)
    for t, g in enumerate(seq, start=1):
        p.grad = g.clone()
        opt.step()
        st = opt.state[p]
        ea, eas = st["exp_avg"], st["exp_avg_sq"]
        mu, S = rec[t - 1]
        # raw (uncorrected) state: exp_avg = mu_t, exp_avg_sq - exp_avg^2 = S_t
        torch.testing.assert_close(ea, mu, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(eas - ea**2, S, rtol=1e-10, atol=1e-14)
        # bias corrected, via adam_moment_stats, against the direct weighted variance
        stats = adam_moment_stats(ea, eas, st["step"], beta, beta)
        mean, var = ew_variance_direct(seq[:t], beta)
        torch.testing.assert_close(stats["m"], mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(stats["sigma2"], var, rtol=1e-10, atol=1e-13)
        assert stats["sigma2_min"] >= -1e-14
        torch.testing.assert_close(stats["raw_sigma2"], S, rtol=1e-10, atol=1e-14)
        # the update direction m/sqrt(m^2 + sigma2) and its range
        torch.testing.assert_close(stats["ratio"], mean / torch.sqrt(mean**2 + var))
        assert stats["ratio"].abs().max() <= 1 + 1e-12


def test_sigma2_nonnegative_float32_every_step():
    g = torch.Generator().manual_seed(3)
    p = torch.zeros(4096, requires_grad=True)
    beta = 0.95
    opt = AdamOneBeta([p], lr=1e-3, beta=beta)
    for _ in range(30):
        # strongly non-zero mean: the hard case for the cancellation v - m^2
        p.grad = 2.0 + 0.1 * torch.randn(4096, generator=g)
        opt.step()
        st = opt.state[p]
        stats = adam_moment_stats(st["exp_avg"], st["exp_avg_sq"], st["step"], beta, beta)
        eps = torch.finfo(torch.float32).eps
        assert (stats["sigma2"] >= -8 * eps * stats["v"]).all()
        assert (stats["raw_sigma2"] >= -8 * eps * st["exp_avg_sq"]).all()


def test_moment_stats_bias_correction_and_ratio():
    """With beta1 = beta2 the corrections do not cancel: m_hat/sqrt(v_hat) = raw/sqrt(1-b^t)."""
    g = torch.Generator().manual_seed(0)
    ea = torch.randn(1000, generator=g, dtype=DT)
    eas = ea**2 + torch.rand(1000, generator=g, dtype=DT)
    beta, t = 0.9, 7
    s = adam_moment_stats(ea, eas, t, beta, beta)
    c = 1 - beta**t
    assert s["bias_correction"] == pytest.approx(c)
    torch.testing.assert_close(s["m"], ea / c)
    torch.testing.assert_close(s["v"], eas / c)
    torch.testing.assert_close(s["ratio"], ea / eas.sqrt() / math.sqrt(c))
    assert not torch.allclose(s["ratio"], ea / eas.sqrt())
    # statistics agree with torch's own reductions
    for name in ("sigma2", "ratio"):
        x = s[name]
        assert s[f"{name}_mean"] == pytest.approx(x.mean().item())
        assert s[f"{name}_min"] == x.min().item()
        assert s[f"{name}_max"] == x.max().item()
        for k, q in (("q05", 0.05), ("median", 0.5), ("q95", 0.95)):
            assert s[f"{name}_{k}"] == pytest.approx(torch.quantile(x, q).item())
    # lists are concatenated; v = 0 gives ratio 0
    s2 = adam_moment_stats([torch.zeros(3), ea[:5].float()], [torch.zeros(3), eas[:5].float()],
                           torch.tensor(3.0), beta, beta)
    assert s2["ratio"].shape == (8,) and torch.equal(s2["ratio"][:3], torch.zeros(3))
    assert torch.isfinite(s2["ratio"]).all()


# ---------------------------------------------------------------------------------------
# ClippedSGD
# ---------------------------------------------------------------------------------------
def manual_clip(grads, clip, mode):
    if mode == "coordinate":
        return [g.clamp(-clip, clip) for g in grads]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    scale = min(1.0, clip / norm.item())
    return [g * scale for g in grads]


@pytest.mark.parametrize("mode", ["global", "coordinate"])
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_clipped_sgd_equals_sgd_on_clipped(mode, momentum, nesterov, wd):
    a = make_params()
    b = clone_params(a)
    clip = 1.5 if mode == "global" else 0.7
    # two groups: "global" must clip across all of them together
    opt = ClippedSGD([{"params": a[:1]}, {"params": a[1:], "lr": 0.05}], lr=0.1,
                     momentum=momentum, nesterov=nesterov, clip=clip, mode=mode,
                     weight_decay=wd)
    ref = torch.optim.SGD([{"params": b[:1]}, {"params": b[1:], "lr": 0.05}], lr=0.1,
                          momentum=momentum, nesterov=nesterov, weight_decay=wd)
    grads = grad_seq(a, 6, scale=2.0)
    grads[2] = [0.01 * g for g in grads[2]]  # one step below the threshold
    for gs in grads:
        set_grads(a, gs)
        opt.step()
        for p, g in zip(a, gs):
            assert torch.equal(p.grad, g)  # caller's gradient untouched
        set_grads(b, manual_clip(gs, clip, mode))
        ref.step()
        assert_same(a, b)
    if mode == "global":
        clipped = opt.clipped_grads()
        norm = torch.sqrt(sum((clipped[p] ** 2).sum() for p in a))
        assert norm.item() <= clip * (1 + 1e-12)


def test_clipped_sgd_hooks_run_once():
    torch.optim.SGD(make_params(), lr=0.1)  # makes SGD.step a hooked wrapper
    a = make_params()
    opt = ClippedSGD(a, lr=0.1, clip=1.0)
    calls = []
    opt.register_step_pre_hook(lambda *args: calls.append(1))
    set_grads(a, grad_seq(a, 1)[0])
    opt.step()
    assert calls == [1]


def test_clipped_sgd_validation():
    with pytest.raises(ValueError):
        ClippedSGD(make_params(), lr=0.1, clip=1.0, mode="layer")
    with pytest.raises(ValueError):
        ClippedSGD(make_params(), lr=0.1, clip=0.0)


# ---------------------------------------------------------------------------------------
# MuonAdamW
# ---------------------------------------------------------------------------------------
def muon_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = [torch.randn(s, generator=g).requires_grad_() for s in [(8, 6), (6, 8), (8, 8)]]
    emb = torch.randn(20, 8, generator=g).requires_grad_()
    bias = torch.randn(8, generator=g).requires_grad_()
    return hidden, [emb, bias]


MUON_KW = dict(lr=0.02, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.1)
ADAMW_KW = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)


def make_muon_adamw(hidden, other):
    return MuonAdamW(
        [{"params": hidden, "use_muon": True}, {"params": other, "use_muon": False}],
        **MUON_KW, adamw_lr=ADAMW_KW["lr"], adamw_betas=ADAMW_KW["betas"],
        adamw_eps=ADAMW_KW["eps"], adamw_weight_decay=ADAMW_KW["weight_decay"],
    )


@pytest.mark.parametrize("with_sched", [False, True])
def test_muon_adamw_equals_muon_plus_adamw(with_sched):
    hidden, other = muon_setup()
    rh, ro = clone_params(hidden), clone_params(other)
    opt = make_muon_adamw(hidden, other)
    muon = torch.optim.Muon(rh, **MUON_KW)
    adamw = torch.optim.AdamW(ro, **ADAMW_KW)
    assert [g["lr"] for g in opt.param_groups] == [MUON_KW["lr"], ADAMW_KW["lr"]]
    lam = lambda s: 1.0 / (1 + s)  # noqa: E731
    if with_sched:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
        s_m = torch.optim.lr_scheduler.LambdaLR(muon, lam)
        s_a = torch.optim.lr_scheduler.LambdaLR(adamw, lam)
    params, refs = hidden + other, rh + ro
    for i, gs in enumerate(grad_seq(params, 5)):
        set_grads(params, gs)
        set_grads(refs, gs)
        opt.step()
        muon.step()
        adamw.step()
        if with_sched:
            sched.step()
            s_m.step()
            s_a.step()
            # both parts were scaled from their own initial lr
            assert opt.param_groups[0]["lr"] == pytest.approx(MUON_KW["lr"] * lam(i + 1))
            assert opt.param_groups[1]["lr"] == pytest.approx(ADAMW_KW["lr"] * lam(i + 1))
        assert_same(params, refs, exact=True)


def test_muon_adamw_scheduler_changes_both_parts():
    h1, o1 = muon_setup()
    h2, o2 = clone_params(h1), clone_params(o1)
    a, b = make_muon_adamw(h1, o1), make_muon_adamw(h2, o2)
    sched = torch.optim.lr_scheduler.LambdaLR(b, lambda s: 0.1)
    assert [g["lr"] for g in b.param_groups] == pytest.approx([0.002, 3e-4])
    gs = grad_seq(h1 + o1, 1)[0]
    set_grads(h1 + o1, gs)
    set_grads(h2 + o2, gs)
    a.step()
    b.step()
    del sched
    for p, q in zip(h1 + o1, h2 + o2):
        assert not torch.allclose(p, q)


def test_muon_adamw_default_split_and_validation():
    hidden, (emb, bias) = muon_setup()
    opt = MuonAdamW([hidden[0], bias, hidden[1]], lr=0.01, adamw_lr=1e-3)
    assert len(opt.param_groups) == 2
    g0, g1 = opt.param_groups
    assert g0["use_muon"] and g0["params"] == [hidden[0], hidden[1]] and g0["lr"] == 0.01
    assert not g1["use_muon"] and g1["params"] == [bias] and g1["lr"] == 1e-3
    assert opt._muon.param_groups[0] is g0 and opt._adamw.param_groups[0] is g1
    with pytest.raises(ValueError):
        MuonAdamW([{"params": [bias], "use_muon": True}])
    with pytest.raises(ValueError):
        MuonAdamW([{"params": [emb], "use_muon": False, "adamw_lr": 1e-3}])
    with pytest.raises(ValueError):
        MuonAdamW([{"params": [emb], "use_muon": False}, {"params": [emb], "use_muon": True}])
    only_adamw = MuonAdamW([bias])
    assert only_adamw._muon is None
    bias.grad = torch.ones_like(bias)
    only_adamw.step()


def test_muon_adamw_state_dict_roundtrip_and_hooks():
    hidden, other = muon_setup()
    params = hidden + other
    opt = make_muon_adamw(hidden, other)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9**s)
    grads = grad_seq(params, 7)
    run(opt, params, grads[:3], sched)

    h2, o2 = clone_params(hidden), clone_params(other)
    opt2 = make_muon_adamw(h2, o2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.9**s)
    opt2.load_state_dict(roundtrip(opt.state_dict()))
    sched2.load_state_dict(sched.state_dict())
    # the loaded groups are the inner optimizers' groups; state is shared
    assert opt2._muon.param_groups[0] is opt2.param_groups[0]
    assert opt2._adamw.param_groups[0] is opt2.param_groups[1]
    assert opt2._muon.state is opt2.state and opt2._adamw.state is opt2.state
    assert set(opt2.state_dict()["state"]) == set(range(len(params)))

    calls = []
    opt2.register_step_pre_hook(lambda *a: calls.append(1))
    run(opt, params, grads[3:], sched)
    run(opt2, h2 + o2, grads[3:], sched2)
    assert calls == [1] * 4
    assert_same(params, h2 + o2, exact=True)

    # deepcopy keeps the links too
    opt3 = copy.deepcopy(opt)
    assert opt3._muon.param_groups[0] is opt3.param_groups[0]
    assert opt3._adamw.state is opt3.state


# ---------------------------------------------------------------------------------------
# is_decoupled
# ---------------------------------------------------------------------------------------
def test_is_decoupled_table():
    p = [torch.zeros(2, 2, requires_grad=True)]
    table = {
        torch.optim.AdamW: True,
        torch.optim.Muon: True,
        SignSGD: True,
        Signum: True,
        AdamOneBeta: True,
        MuonAdamW: True,
        torch.optim.SGD: False,
        torch.optim.RMSprop: False,
        torch.optim.Adam: False,
        ClippedSGD: False,
    }
    for cls, want in table.items():
        assert is_decoupled(cls) is want, cls
    assert is_decoupled(torch.optim.Adam(p)) is False
    assert is_decoupled(torch.optim.Adam(p, decoupled_weight_decay=True)) is True
    assert is_decoupled(torch.optim.AdamW(p)) is True
    assert is_decoupled(torch.optim.SGD(p, lr=0.1)) is False
    assert is_decoupled(ClippedSGD(p, lr=0.1, clip=1.0)) is False
    assert is_decoupled(Signum(p, lr=0.1)) is True
    assert is_decoupled(MuonAdamW(p)) is True
    with pytest.raises(ValueError):
        is_decoupled(torch.optim.LBFGS)


# ---------------------------------------------------------------------------------------
# state dicts of the single optimizers
# ---------------------------------------------------------------------------------------
FACTORIES = {
    "signsgd": lambda ps: SignSGD(ps, lr=0.01, weight_decay=0.1),
    "signum": lambda ps: Signum(ps, lr=0.01, momentum=0.9, weight_decay=0.1),
    "signum_nesterov": lambda ps: Signum(ps, lr=0.01, momentum=0.9, nesterov=True),
    "adam_one_beta": lambda ps: AdamOneBeta(ps, lr=1e-2, beta=0.95, weight_decay=0.1),
    "clipped_global": lambda ps: ClippedSGD(ps, lr=0.1, momentum=0.9, clip=1.0, mode="global",
                                            weight_decay=0.01),
    "clipped_coord": lambda ps: ClippedSGD(ps, lr=0.1, momentum=0.9, nesterov=True, clip=0.5,
                                           mode="coordinate"),
}


@pytest.mark.parametrize("name", list(FACTORIES))
def test_state_dict_roundtrip(name):
    make = FACTORIES[name]
    a = make_params()
    opt = make(a)
    grads = grad_seq(a, 8, scale=2.0)
    run(opt, a, grads[:4])
    b = clone_params(a)
    opt2 = make(b)
    opt2.load_state_dict(roundtrip(opt.state_dict()))
    run(opt, a, grads[4:])
    run(opt2, b, grads[4:])
    assert_same(a, b, exact=True)
    # and a deepcopy continues identically too
    c = clone_params(a)
    opt3 = make(c)
    opt3.load_state_dict(copy.deepcopy(opt.state_dict()))
    run(opt, a, grads[:2])
    run(opt3, c, grads[:2])
    assert_same(a, c, exact=True)


def test_updates_do_not_depend_on_params_without_wd():
    """Engine contract: with weight decay 0 the update is a function of grads and state."""
    for name, make in FACTORIES.items():
        a = make_params()
        b = [torch.zeros_like(p).requires_grad_() for p in a]
        oa, ob = make(a), make(b)
        for o in (oa, ob):
            for g in o.param_groups:
                g["weight_decay"] = 0.0
        a0 = [p.detach().clone() for p in a]
        for gs in grad_seq(a, 3):
            set_grads(a, gs)
            set_grads(b, gs)
            oa.step()
            ob.step()
        for p, p0, q in zip(a, a0, b):
            torch.testing.assert_close(p - p0, q, rtol=1e-12, atol=1e-12, msg=name)


# ---------------------------------------------------------------------------------------
# MuonAdamW(ns_dtype="float32"): torch.optim.Muon's algorithm with an fp32 Newton–Schulz
# ---------------------------------------------------------------------------------------
NS_ABC = (3.4445, -4.775, 2.0315)


def ns_reference(g, steps=5, eps=1e-7):
    """The quintic iteration written out in float64 (X <- aX + (bA + cA²)X, A = XXᵀ)."""
    a, b, c = NS_ABC
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / max(x.norm().item(), eps)
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if tall else x


@pytest.mark.parametrize("shape", [(8, 6), (6, 8), (8, 8)])
def test_newton_schulz_fp32_matches_float64_iteration_and_torch_bf16(shape):
    from rotations.zoo import newton_schulz_fp32
    from torch.optim._muon import _zeropower_via_newtonschulz

    g = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    ours = newton_schulz_fp32(g, NS_ABC, 5, 1e-7)
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    torch.testing.assert_close(ours.double(), ns_reference(g), rtol=0, atol=1e-5)
    # torch's bf16 iteration is the same map up to bf16 rounding
    bf16 = _zeropower_via_newtonschulz(g, NS_ABC, 5, 1e-7).float()
    assert (bf16 - ours).abs().max() < 0.05
    # and it is roughly orthogonal: singular values in Muon's (0.5, 1.5) band
    sv = torch.linalg.svdvals(ours)
    assert sv.min() > 0.3 and sv.max() < 1.5


def test_muon_adamw_float32_steps_match_closed_form():
    hidden, other = muon_setup()
    ref = [p.detach().double().clone() for p in hidden]
    bufs = [torch.zeros_like(p) for p in ref]
    opt = MuonAdamW([{"params": hidden, "use_muon": True}, {"params": other, "use_muon": False}],
                    **MUON_KW, ns_dtype="float32")
    from rotations.zoo import Float32Muon
    assert isinstance(opt._muon, Float32Muon)
    mu, lr, wd = MUON_KW["momentum"], MUON_KW["lr"], MUON_KW["weight_decay"]
    for gs in grad_seq(hidden + other, 4):
        set_grads(hidden + other, gs)
        opt.step()
        for i, (p, g) in enumerate(zip(ref, gs[: len(hidden)])):
            g = g.double()
            bufs[i] = mu * bufs[i] + (1 - mu) * g
            upd = ns_reference((1 - mu) * g + mu * bufs[i])       # Nesterov
            A, B = p.shape
            ref[i] = p * (1 - lr * wd) - lr * math.sqrt(max(1, A / B)) * upd
    for p, r in zip(hidden, ref):
        torch.testing.assert_close(p.detach().double(), r, rtol=0, atol=2e-6)
    # the state is Muon's: same keys, so checkpoints are interchangeable
    assert set(opt.state[hidden[0]]) == {"momentum_buffer"}
    sd = opt.state_dict()
    opt2 = MuonAdamW([{"params": clone_params(hidden), "use_muon": True},
                      {"params": clone_params(other), "use_muon": False}],
                     **MUON_KW, ns_dtype="float32")
    opt2.load_state_dict(sd)
    assert isinstance(opt2._muon, Float32Muon)


def test_muon_adamw_bad_ns_dtype_names_field():
    hidden, _ = muon_setup()
    with pytest.raises(ValueError, match="ns_dtype.*allowed: bfloat16, float32"):
        MuonAdamW(hidden, ns_dtype="float16")


def test_weight_decay_mode_registry():
    """How each optimizer's decay composes with a rotation (docs/CONVENTIONS.md §5)."""
    from rotations.zoo import WEIGHT_DECAY_MODES, weight_decay_mode
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert weight_decay_mode(ClippedSGD(p, lr=0.1, clip=1.0)) == "in_rule"
    assert weight_decay_mode(torch.optim.SGD(p, lr=0.1)) == "coupled"
    assert weight_decay_mode(torch.optim.AdamW(p)) == "decoupled"
    assert weight_decay_mode(Signum(p, lr=0.1)) == "decoupled"
    assert weight_decay_mode(torch.optim.LBFGS(p)) == "none"
    assert set(WEIGHT_DECAY_MODES) == {"none", "decoupled", "coupled", "in_rule"}


def test_traits_answer_for_every_optimizer():
    """One place says what an optimizer needs (rotations.zoo.traits): the model, the
    pre-run checks and the non-finite guard ask it instead of keeping their own lists."""
    from rotations.layout import LayerView
    from rotations.zoo import traits
    p = [torch.nn.Parameter(torch.zeros(3, 2))]
    t = traits(torch.optim.AdamW(p))
    assert (t.weight_decay, t.closure, t.split_views, t.view_options) == (
        "decoupled", False, False, None)
    assert traits(torch.optim.LBFGS(p)).closure and traits(ClippedSGD(p, lr=0.1, clip=1.0)
                                                           ).weight_decay == "in_rule"
    m = traits(MuonAdamW([{"params": p, "use_muon": True}], ns_dtype="float32"))
    assert m.split_views and m.weight_decay == "decoupled"
    w = torch.nn.Parameter(torch.zeros(4, 3))
    assert m.view_options(LayerView("q", w, "query")) == {"use_muon": True}
    assert m.view_options(LayerView("e", w, "embedding")) == {"use_muon": False}
    col = torch.nn.Parameter(torch.zeros(4, 1))
    assert m.view_options(LayerView("c", col, "linear")) == {"use_muon": False}


def test_config_class_paths_still_load():
    """Every ``rotations.zoo.X`` class path used in configs/ resolves."""
    import importlib
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1] / "configs"
    paths = {m for f in root.rglob("*.y*ml") for m in re.findall(r"rotations\.zoo\.(\w+)",
                                                                   f.read_text())}
    assert {"Signum", "SignSGD", "ClippedSGD", "AdamOneBeta", "MuonAdamW"} <= paths
    zoo = importlib.import_module("rotations.zoo")
    for name in paths:
        assert isinstance(getattr(zoo, name), type), name
