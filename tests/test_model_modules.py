"""Tests for lightning_modules/base.py and the LightningModules built on it (quick, CPU), the
model configs, and benchmarks/gpu_check.sh at toy size."""
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_modules.base import RotatableModule
from lightning_modules.checks import positive_int
from lightning_modules.gpt import GPTLightningModule
from lightning_modules.resnet import ResNetLightningModule
from lightning_modules.vit import ViTLightningModule
from rotations.optimizer import RotatedOptimizer

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = dict(image_size=16, patch_size=4, num_classes=10, dim=32, depth=1, heads=2,
                mlp_dim=64, channels=1)


# -- hyper-parameters ---------------------------------------------------------------------
@pytest.mark.parametrize("cls, kw, own", [
    (GPTLightningModule, dict(vocab_size=37, block_size=8, n_layer=1, n_head=2, n_embd=16),
     {"vocab_size": 37, "gelu": "tanh", "warmup_steps": 2000, "min_lr_ratio": 0.1}),
    (ViTLightningModule, dict(TINY_VIT, label_smoothing=0.1),
     {"dim": 32, "label_smoothing": 0.1, "warmup_steps": 0, "min_lr_ratio": 0.0}),
    (ResNetLightningModule, dict(arch="tiny", width=4, num_classes=10, channels=1),
     {"arch": "tiny", "width": 4, "num_classes": 10, "min_lr_ratio": 0.0}),
])
def test_hparams_hold_every_level_and_rebuild_the_module(cls, kw, own):
    m = cls(**kw, rotation={"scope": "global", "block_size": 8}, warmup_epochs=2.0,
            compile=False, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    h = dict(m.hparams)
    for key, value in {**own, "warmup_epochs": 2.0, "compile": False}.items():
        assert h[key] == value, key
    assert "optimizer" not in h                           # a callable: not an hparam
    assert h["rotation"]["scope"] == "global" and h["rotation"]["block_size"] == 8
    assert m.optimizer_factory.func is torch.optim.SGD
    # what load_from_checkpoint does: the saved hparams rebuild the same module
    again = cls(**h)
    assert again.rotation == m.rotation
    assert list(again.state_dict()) == list(m.state_dict())
    assert isinstance(m.build_optimizer(), RotatedOptimizer)


def test_the_run_seed_drives_the_rotation_unless_pinned(monkeypatch):
    """``rotation.seed: null`` (the shipped configs) takes the run's ``seed_everything``, so
    seeds vary the rotation with the initialisation; an explicit seed is kept. The resolved
    seed is what hparams (and so checkpoints and probes) record."""
    kw = dict(vocab_size=37, block_size=8, n_layer=1, n_head=2, n_embd=16)
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    free = GPTLightningModule(**kw, rotation={"scope": "global", "block_size": 8})
    pinned = GPTLightningModule(**kw, rotation={"scope": "global", "block_size": 8, "seed": 3})
    assert free.hparams["rotation"]["seed"] == 7 and pinned.hparams["rotation"]["seed"] == 3
    monkeypatch.setenv("PL_GLOBAL_SEED", "8")
    other = GPTLightningModule(**kw, rotation={"scope": "global", "block_size": 8})
    r7 = free.build_optimizer().plan.units[0].R.R_n
    r8 = other.build_optimizer().plan.units[0].R.R_n
    assert not torch.equal(r7, r8)
    assert torch.equal(r7, GPTLightningModule(**free.hparams).build_optimizer()
                       .plan.units[0].R.R_n)             # rebuilt from hparams: the same R
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert GPTLightningModule(**kw, rotation={"scope": "global"}).rotation.seed == 0
    with pytest.raises(ValueError, match="rotation.seed"):
        GPTLightningModule(**kw, rotation={"scope": "global", "seed": -1})


def test_base_arguments_reach_the_cli_through_kwargs():
    from jsonargparse import ArgumentParser
    p = ArgumentParser()
    p.add_class_arguments(ViTLightningModule, "model")
    ns = p.parse_args(["--model.warmup_epochs", "3", "--model.label_smoothing", "0.2",
                       "--model.compile", "true", "--model.rotation.scope", "layerwise"])
    assert ns.model.warmup_epochs == 3 and ns.model.label_smoothing == 0.2
    assert ns.model.compile is True and ns.model.rotation.scope == "layerwise"
    assert ns.model.min_lr_ratio == 0.0                 # the classification default
    with pytest.raises(SystemExit):
        p.parse_args(["--model.warmup_stepz", "3"])


@pytest.mark.parametrize("kw, match", [
    (dict(warmup_steps=-1), "model.warmup_steps must be an int >= 0, got -1"),
    (dict(decay_steps=0), "model.decay_steps must be a positive int or None, got 0"),
    (dict(min_lr_ratio=1.5), "model.min_lr_ratio"),
    (dict(warmup_epochs=-1.0), "model.warmup_epochs"),
])
def test_base_argument_checks(kw, match, tiny_gpt_module):
    with pytest.raises(ValueError, match=match):
        tiny_gpt_module(**kw)


def test_positive_int():
    assert positive_int("x", 3) == 3 and positive_int("x", None, optional=True) is None
    assert positive_int("x", 0, minimum=0) == 0
    for bad in (0, -2, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=r"^x must be a positive int, got "):
            positive_int("x", bad)
    with pytest.raises(ValueError, match="x must be an int >= 2, got 1"):
        positive_int("x", 1, minimum=2)


def test_subclass_must_configure_a_model():
    class Empty(RotatableModule):
        pass
    with pytest.raises(NotImplementedError):
        Empty()


# -- data check ---------------------------------------------------------------------------
class _Data:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_gpt_refuses_data_larger_than_the_model(tiny_gpt_module):
    m = tiny_gpt_module()                                  # vocab 97, block 16
    m.check_data(_Data(vocab_size=97, block_size=8))
    m.check_data(_Data())                                 # nothing exposed: nothing checked
    with pytest.raises(ValueError, match=r"data.vocab_size=257 exceeds model.vocab_size=97; "
                                         r"set model.vocab_size >= 257"):
        m.check_data(_Data(vocab_size=257))
    with pytest.raises(ValueError, match="data.block_size=32 exceeds model.block_size=16"):
        m.check_data(_Data(vocab_size=50, block_size=32))


def test_classifier_refuses_other_data():
    m = ResNetLightningModule(arch="tiny", width=4, num_classes=10, channels=1)
    m.check_data(_Data(num_classes=10, channels=1, image_size=99))   # any size for a ResNet
    with pytest.raises(ValueError, match="data.channels=3 does not match model.channels=1"):
        m.check_data(_Data(num_classes=10, channels=3))
    v = ViTLightningModule(**TINY_VIT)
    with pytest.raises(ValueError, match="data.image_size=32 does not match model.image_size=16"):
        v.check_data(_Data(num_classes=10, channels=1, image_size=32))


# -- compile ------------------------------------------------------------------------------
def test_compiled_and_eager_tiny_gpt_agree(tiny_gpt_module):
    """~30 s on a 2-core CPU (inductor's first compile): the in-place compile keeps the
    state dict's keys and gives the eager model's loss and gradients."""
    eager = tiny_gpt_module(gelu="exact")
    comp = tiny_gpt_module(gelu="exact", compile=True)
    comp.load_state_dict(eager.state_dict())
    keys = list(comp.state_dict())
    comp.configure_model()
    comp.configure_model()                                # once only
    assert comp._compiled and list(comp.state_dict()) == keys
    idx, tgt = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    _, le = eager(idx, tgt)
    _, lc = comp(idx, tgt)
    le.backward()
    lc.backward()
    torch.testing.assert_close(lc, le, atol=1e-6, rtol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), comp.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_checkpoints_of_the_old_compile_wrapper_load(tiny_gpt_module):
    m = tiny_gpt_module()
    sd = m.state_dict()
    ckpt = {"state_dict": {**sd, **{f"forward_model._orig_mod.{k[len('model.'):]}": v
                                    for k, v in sd.items()}}}
    m.on_load_checkpoint(ckpt)
    assert list(ckpt["state_dict"]) == list(sd)
    m.load_state_dict(ckpt["state_dict"])


# -- configs ------------------------------------------------------------------------------
def _model_configs():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        conf = yaml.safe_load(path.read_text())
        model = conf.get("model") if isinstance(conf, dict) else None
        if isinstance(model, dict) and "class_path" in model:
            yield pytest.param(path, model, id=str(path.relative_to(ROOT)))


@pytest.mark.parametrize("path, model", list(_model_configs()))
def test_every_model_config_parses(path, model):
    """Class path importable and every init_arg accepted (nothing is built)."""
    from jsonargparse import ArgumentParser
    from lightning import LightningModule
    p = ArgumentParser(exit_on_error=False)
    p.add_subclass_arguments(LightningModule, "model")
    ns = p.parse_object({"model": model})
    assert ns.model.class_path == model["class_path"]


def test_gpu_defaults_of_the_paper_configs():
    base = yaml.safe_load((ROOT / "configs/gpt2/base.yaml").read_text())["model"]["init_args"]
    assert base["attention"] == "math"                    # the paper's kernel (App. A.4)
    assert base["gelu"] == "exact" and base["compile"] is True
    assert base["optimizer"]["init_args"]["fused"] is True
    flash = yaml.safe_load((ROOT / "configs/gpt2/flash.yaml").read_text())
    assert flash == {"model": {"init_args": {"attention": "flash"}}}
    assert "App. A.4" in (ROOT / "configs/gpt2/flash.yaml").read_text()
    for name in ("vit_s16", "resnet50"):
        conf = yaml.safe_load((ROOT / f"configs/{name}/base.yaml").read_text())
        assert conf["model"]["init_args"]["optimizer"]["init_args"]["fused"] is True


# -- benchmarks/gpu_check.sh --------------------------------------------------------------
def test_gpu_check_runs_at_toy_size():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHON=sys.executable)
    out = subprocess.run(["bash", str(ROOT / "benchmarks/gpu_check.sh"), "--toy"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {tuple(line.split()[:2]): line.split() for line in out.stdout.splitlines()
            if line.split()[:1] in (["math"], ["flash"])}
    from rotations.scopes import SCOPE_NAMES
    scopes = [s for s in SCOPE_NAMES if s != "none"]      # the scope table
    assert set(rows) == {("math", "plain"), ("flash", "plain")} | {("math", s) for s in scopes}
    for cells in rows.values():
        assert float(cells[2]) > 0 and float(cells[4]) > 0 and cells[6].endswith("%")
    errors = {line.split()[0]: [float(x) for x in line.split()[1:]]
              for line in out.stdout.split("relative error")[1].splitlines()
              if line.split()[:1] and line.split()[0] in ["none"] + scopes}
    assert set(errors) == {"none", *scopes}
    for scope, (fp32, bf16) in errors.items():
        assert 0 <= fp32 < 1e-4 < bf16 < 0.5, scope         # bf16 is the coarser one


# -- throughput ---------------------------------------------------------------------------
def test_throughput_metrics(tiny_gpt_module, monkeypatch):
    import types

    import lightning_modules.base as base
    m = tiny_gpt_module(peak_flops=1e9)
    m._trainer = types.SimpleNamespace(world_size=2, is_last_batch=False, global_step=4,
                                       accumulate_grad_batches=1, log_every_n_steps=2)
    logged = {}
    monkeypatch.setattr(m, "log_dict", lambda metrics, **kw: logged.update(metrics))
    clock = iter([10.0, 12.0])
    monkeypatch.setattr(base.time, "perf_counter", lambda: next(clock))
    m.count_samples(4, 64)
    m.on_train_batch_end(None, None, 0)                  # starts the clock, logs nothing
    assert logged == {} and m.tokens_seen == 128
    m.count_samples(4, 64)                               # per rank: x 2 ranks
    m.on_train_batch_end(None, None, 1)
    assert logged["train/tokens"] == 256 and logged["train/tokens_per_s"] == 64.0
    assert logged["train/samples_per_s"] == 4.0
    fps = m.model.flops_per_token() * 16
    assert logged["train/mfu"] == pytest.approx(fps * 8 / 2.0 / 1e9)


def test_peak_flops_table(monkeypatch):
    from lightning_modules.base import peak_bf16_flops
    assert peak_bf16_flops(torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    assert peak_bf16_flops(torch.device("cuda")) == 989e12      # dense, not Lightning's 2e15
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    assert peak_bf16_flops(torch.device("cuda")) == 312e12
