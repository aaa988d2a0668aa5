"""Measurement instruments (docs/CONVENTIONS.md §6): Hessian rows, (1,1)-norm, partitions,
gradient bound, update orthogonality, the callbacks and ``adamrot probe``.

Quick CPU tests on tiny GPTs; float64 where exactness matters."""
from __future__ import annotations

import functools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch.func import functional_call

from lightning_modules.gpt_model import GPT, GPTConfig
from rotations.config import RotationConfig
from rotations.layout import model_layout
from rotations.optimizer import RotatedOptimizer
from rotations.probes import (RotatedSpace, block_contributions, gpt_loss,
                              gradient_linf_bound, hessian_rows, one_one_norm_cauchy,
                              one_one_norm_estimate, one_one_norm_exact, partition_row,
                              update_orthogonality)
from rotations.scopes import ColUnit, GlobalUnit, IdentityUnit, LayerUnit, RotationPlan, RowUnit, SVDUnit


# -- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny float64 problems: one intra-op thread (no OpenMP spinning on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    from rotations.probes import cauchy_scale_estimate

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


# -- callbacks -----------------------------------------------------------------------------------
class Recorder:
    """A fake SummaryWriter / Lightning logger."""

    def __init__(self):
        self.hists, self.scalars, self.metrics = [], [], []

    def add_histogram_raw(self, tag, **kw):
        self.hists.append((tag, kw))

    def add_scalar(self, tag, value, global_step=None):
        self.scalars.append((tag, value, global_step))

    # Lightning logger interface
    @property
    def experiment(self):
        return self

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))


def fake_trainer(opt, step, zero=True, tmp=None):
    rec = Recorder()
    return SimpleNamespace(is_global_zero=zero, global_step=step, optimizers=[opt],
                           loggers=[rec], log_dir=str(tmp) if tmp else None,
                           default_root_dir=str(tmp) if tmp else None), rec


def trained_opt(scope, steps=3, **cfg):
    model = micro_gpt(dtype=torch.float32)
    views = model_layout(model)
    factory = functools.partial(torch.optim.AdamW, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    if scope == "plain":
        opt = factory(model.parameters())
    else:
        opt = RotatedOptimizer(model.parameters(), factory, views,
                               RotationConfig(scope=scope, block_size=16, **cfg))
    for b in make_batches(steps, seed=4):
        opt.zero_grad()
        gpt_loss(model, b).backward()
        opt.step()
    return model, views, opt


@pytest.mark.parametrize("scope", ["plain", "global"])
def test_second_moment_histogram_counts(scope, tmp_path):
    from callbacks import SecondMomentHistogram

    model, views, opt = trained_opt(scope)
    module = SimpleNamespace(rotation_views=lambda: views, model=model)
    # push entries outside the range: zeros and huge values are counted in the edge bins
    st = opt.base.state if scope != "plain" else opt.state
    first = next(iter(st.values()))["exp_avg_sq"]
    first.view(-1)[:3] = 0.0
    first.view(-1)[3] = 1e6
    cb = SecondMomentHistogram(every_n_steps=3, bins=40)
    trainer, rec = fake_trainer(opt, 3, tmp=tmp_path)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    d = sum(p.numel() for p in model.parameters())
    tags = {t: kw for t, kw in rec.hists}
    assert tags["second_moment/log10_v/all"]["num"] == d
    assert sum(tags["second_moment/log10_v/all"]["bucket_counts"]) == d
    assert len(tags["second_moment/log10_v/all"]["bucket_limits"]) == 40
    per_type = {}
    for v in views:
        per_type[v.ptype] = per_type.get(v.ptype, 0) + v.numel
    for t, n in per_type.items():
        assert sum(tags[f"second_moment/log10_v/{t}"]["bucket_counts"]) == n
    assert tags["second_moment/log10_v/all"]["bucket_counts"][0] >= 3
    assert tags["second_moment/log10_v/all"]["bucket_counts"][-1] >= 1
    # not at a logging step, not twice for the same step
    cb.on_train_batch_end(trainer, module, None, None, 1)
    trainer.global_step = 4
    cb.on_train_batch_end(trainer, module, None, None, 2)
    assert len(rec.hists) == len(tags)
    cb.on_train_end(trainer, module)                     # end of training: logs + PNG
    assert (tmp_path / "second_moments.png").is_file()
    # rank != 0: nothing computed, nothing logged
    cb2 = SecondMomentHistogram(every_n_steps=1)
    t2, rec2 = fake_trainer(opt, 3, zero=False, tmp=tmp_path / "r1")
    cb2.on_train_batch_end(t2, module, None, None, 0)
    cb2.on_train_end(t2, module)
    assert not rec2.hists and not rec2.scalars and not rec2.metrics and not cb2.history
    assert not (tmp_path / "r1").exists()


@pytest.mark.parametrize("scope", ["plain", "global", "svd"])
def test_update_orthogonality_callback(scope):
    from callbacks import UpdateOrthogonality
    from rotations.probes import adam_direction, view_states

    model, views, opt = trained_opt(scope)
    module = SimpleNamespace(rotation_views=lambda: views, model=model)
    cb = UpdateOrthogonality(every_n_steps=1)
    trainer, rec = fake_trainer(opt, 3)
    cb.on_train_batch_end(trainer, module, None, None, 0)
    (step, m), = rec.metrics
    assert step == 3
    # by hand: A = Rᵀ(m̂/(sqrt(v̂)+eps)) with dense R, for the value matrix
    space = RotatedSpace.from_optimizer(opt, None if scope != "plain" else views)
    states = {s.view.name: s for s in view_states(opt, views)}
    u = space.flatten_views([adam_direction(states[v.name]) for v in space.views]).double()
    R = space.dense_rotation()
    A = space.split_flat((R.t() @ u))
    name = "transformer.h.0.attn.c_attn.weight[value]"
    k = [v.name for v in space.views].index(name)
    want = update_orthogonality(A[k])
    assert m[f"orth_layer/cv/{name}"] == pytest.approx(want["cv_sv"], rel=1e-4)
    assert m[f"orth_layer/svd_entropy/{name}"] == pytest.approx(want["svd_entropy"], rel=1e-4)
    assert m["orth/cv/value"] == pytest.approx(want["cv_sv"], rel=1e-4)
    assert "orth/cv_eig/all" in m and "orth/cv/layernorm" not in m   # 1-D views skipped
    # rank != 0: nothing
    t2, rec2 = fake_trainer(opt, 4, zero=False)
    cb.on_train_batch_end(t2, module, None, None, 0)
    assert not rec2.metrics


def test_svd_refresh_logger():
    from callbacks import SVDRefreshLogger

    model = micro_gpt(dtype=torch.float32)
    opt = RotatedOptimizer(model.parameters(), functools.partial(torch.optim.AdamW, lr=1e-3),
                           model_layout(model), RotationConfig(scope="svd", svd_refresh_every=3))
    cb = SVDRefreshLogger()
    logged = []
    for step, b in enumerate(make_batches(7, seed=2), start=1):
        opt.zero_grad()
        gpt_loss(model, b).backward()
        opt.step()
        trainer, rec = fake_trainer(opt, step)
        cb.on_train_batch_end(trainer, None, None, None, 0)
        cb.on_train_batch_end(trainer, None, None, None, 0)   # accumulation: once per step
        logged += rec.metrics
    assert [s for s, _ in logged] == [1, 4, 7] == cb.refresh_steps
    assert [m["rotation/svd_refresh_count"] for _, m in logged] == [1.0, 2.0, 3.0]
    assert all(m["rotation/svd_refresh"] == 1.0 for _, m in logged)


# -- adamrot probe end to end --------------------------------------------------------------------
def write_run(root, scope):
    """A tiny run directory: config.yaml in LightningCLI's layout and a checkpoint written
    by hand after 3 AdamW steps of a GPTLightningModule."""
    import yaml

    from lightning_modules.gpt import GPTLightningModule

    model_args = dict(vocab_size=257, block_size=8, n_layer=1, n_head=2, n_embd=8,
                      warmup_steps=0, rotation={"scope": scope, "block_size": 32, "seed": 1})
    opt_args = dict(lr=1e-2, betas=[0.9, 0.95], weight_decay=0.1)
    torch.manual_seed(0)
    module = GPTLightningModule(optimizer=functools.partial(torch.optim.AdamW, **opt_args),
                                **model_args)
    opt = module.build_optimizer()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randint(0, 257, (2, 9), generator=g)
        opt.zero_grad()
        module.model(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
    (root / "checkpoints").mkdir(parents=True)
    torch.save({"global_step": 3, "state_dict": module.state_dict(),
                "optimizer_states": [opt.state_dict()]}, root / "checkpoints" / "last.ckpt")
    conf = {"model": {"class_path": "lightning_modules.gpt.GPTLightningModule",
                      "init_args": dict(model_args, compile=False, attention="math",
                                        optimizer={"class_path": "torch.optim.AdamW",
                                                   "init_args": opt_args})},
            "data": {"class_path": "datamodules.text.TextDataModule",
                     "init_args": {"block_size": 8, "batch_size": 2, "max_bytes": 60000,
                                   "val_fraction": 0.1, "num_workers": 0}}}
    (root / "config.yaml").write_text(yaml.safe_dump(conf))
    return root


PROBE_ARGS = ["--batches", "3", "--hessian-rows", "3", "--hessian-batches", "3",
              "--cauchy-vectors", "2", "--random-directions", "2", "--row-types",
              "value,mlp_in,embedding", "--device", "cpu", "--dtype", "float64",
              "--save-every", "1", "--no-progress"]


def test_probe_end_to_end_and_resume(tmp_path, monkeypatch):
    from adamrot import probe
    from adamrot.cli import main as cli_main

    run = write_run(tmp_path / "run", "global")
    assert cli_main(["probe", str(run), "--out", str(tmp_path / "a")] + PROBE_ARGS) == 0
    full = json.loads((tmp_path / "a" / "probe.json").read_text())
    assert full["rotated"] and full["rotation"]["scope"] == "global"
    assert full["gradient_bound"]["batches"] == 3 and full["gradient_bound"]["value"] > 0
    rows = full["hessian"]["rows"]
    assert [r["ptype"] for r in rows] == ["value", "mlp_in", "embedding"]
    r = rows[0]
    assert r["blocks"]["neuron"]["size"] == 8 and r["blocks"]["layer"]["size"] == 56
    assert sum(b["size"] for b in r["blocks"].values()) == full["d"]
    assert sum(sum(b["log10_hist"]) + b["zeros"] for b in r["blocks"].values()) == full["d"]
    con = r["contributions"]
    assert len(con["random"]["neuron"]) == 2
    assert con["update"]["total"] == pytest.approx(
        con["update"]["neuron"] + con["update"]["layer"] + con["update"]["other"])
    assert full["update_direction"]["available"]
    oo = full["one_one_norm"]
    assert oo["estimate"] == pytest.approx(sum(x["l1"] for x in rows) / 3)
    assert full["one_one_norm_cauchy"]["vectors"] == 2
    assert (tmp_path / "a" / "hessian_blocks.png").is_file()
    assert not (tmp_path / "a" / "probe.partial.json").exists()

    # interrupted twice (inside a row's batches, then after a row), resumed twice
    calls = []

    def hook(label):
        calls.append(label)
        if label.endswith(":batch2") and "stop1" not in calls:
            calls.append("stop1")
            raise KeyboardInterrupt
        if label.startswith("rows:") and ":batch" not in label and "stop2" not in calls:
            calls.append("stop2")
            raise KeyboardInterrupt

    monkeypatch.setattr(probe, "_unit_done_hook", hook)
    out_b = ["--out", str(tmp_path / "b")]
    assert probe.main([str(run)] + out_b + PROBE_ARGS) == 130
    part = json.loads((tmp_path / "b" / "probe.partial.json").read_text())
    assert len(part["bound"]["per_batch"]) == 3 and part["rows"] == {}
    assert (tmp_path / "b" / "probe.hvp.pt").is_file()
    assert probe.main([str(run)] + out_b + PROBE_ARGS) == 130
    part = json.loads((tmp_path / "b" / "probe.partial.json").read_text())
    assert len(part["rows"]) == 1
    # other settings are refused while a partial result exists
    assert probe.main([str(run)] + out_b + PROBE_ARGS + ["--seed", "1"]) == 2
    assert probe.main([str(run)] + out_b + PROBE_ARGS) == 0
    res = json.loads((tmp_path / "b" / "probe.json").read_text())
    assert res["resumed"] and res["computed_this_run"]["bound_batches"] == 0
    assert res["computed_this_run"]["row_passes"] == 2
    for x, y in zip(res["hessian"]["rows"], rows):
        assert x["index"] == y["index"]
        assert x["l1"] == pytest.approx(y["l1"], rel=1e-12)
        assert x["contributions"]["update"]["other"] == pytest.approx(
            y["contributions"]["update"]["other"], rel=1e-9, abs=1e-15)
    assert res["gradient_bound"]["value"] == full["gradient_bound"]["value"]
    assert res["one_one_norm_cauchy"]["estimate"] == pytest.approx(
        full["one_one_norm_cauchy"]["estimate"], rel=1e-12)


def test_callbacks_in_a_lightning_fit(tmp_path):
    """All three callbacks on a real Trainer (SVD scope): events reach TensorBoard."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks import SecondMomentHistogram, SVDRefreshLogger, UpdateOrthogonality
    from lightning_modules.gpt import GPTLightningModule

    torch.manual_seed(0)
    module = GPTLightningModule(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8,
                                warmup_steps=0,
                                optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                                rotation={"scope": "svd", "svd_refresh_every": 2})
    x = torch.randint(0, 11, (16, 9), generator=torch.Generator().manual_seed(0))
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:]),
                                     batch_size=4)
    hist = SecondMomentHistogram(every_n_steps=2, bins=30)
    trainer = L.Trainer(max_steps=4, accelerator="cpu", devices=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        logger=TensorBoardLogger(str(tmp_path), name="", version=""),
                        callbacks=[hist, UpdateOrthogonality(every_n_steps=2),
                                   SVDRefreshLogger()], log_every_n_steps=1)
    trainer.fit(module, train_dataloaders=dl)
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "second_moment/log10_v/all" in tags["histograms"]
    assert [e.step for e in acc.Histograms("second_moment/log10_v/all")] == [2, 4]
    n = sum(p.numel() for p in module.parameters())
    assert all(e.histogram_value.num == n for e in acc.Histograms("second_moment/log10_v/all"))
    assert [e.step for e in acc.Scalars("rotation/svd_refresh")] == [1, 3]
    assert [e.step for e in acc.Scalars("orth/cv/value")] == [2, 4]
    assert (tmp_path / "second_moments.png").is_file()
