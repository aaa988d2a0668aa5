"""The measurement callbacks (callbacks/, docs/CONVENTIONS.md §6) on fake trainers with tiny
rotated optimizers, and on a real Lightning fit writing TensorBoard events."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from adamrot.probe import gpt_loss
from rotations.config import RotationConfig
from rotations.layout import model_layout
from rotations.optimizer import RotatedOptimizer
from rotations.probes import RotatedSpace, adam_direction, update_orthogonality, view_states
from test_probes import make_batches, micro_gpt


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


@pytest.mark.parametrize("at_end", [False, True])
def test_periodic_callback_once_per_step_rank_zero(at_end):
    from callbacks._common import PeriodicCallback

    class Steps(PeriodicCallback):
        def __init__(self):
            super().__init__(every_n_steps=2, at_end=at_end)
            self.steps = []

        def log_now(self, trainer, pl_module, step):
            self.steps.append(step)

    for zero in (True, False):
        cb = Steps()
        trainer = SimpleNamespace(is_global_zero=zero, global_step=0)
        for step in range(0, 6):                 # two batches per step (accumulation)
            trainer.global_step = step
            cb.on_train_batch_end(trainer, None, None, None, 0)
            cb.on_train_batch_end(trainer, None, None, None, 1)
        cb.on_train_end(trainer, None)
        cb.on_train_end(trainer, None)
        want = ([2, 4, 5] if at_end else [2, 4]) if zero else []
        assert cb.steps == want
    with pytest.raises(ValueError):
        PeriodicCallback(every_n_steps=0)
