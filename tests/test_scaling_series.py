"""The scaling series (configs/scaling, our own experiment): the committed tune sweeps are what
the generator writes, every run parses as `adamrot fit` would run it, the parameter counts
are the model's, and the seed stage refuses until the tune runs exist."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "configs" / "scaling"))
import make_sweeps  # noqa: E402

from adamrot import sweep as sweep_mod  # noqa: E402


def test_committed_sweeps_are_the_generated_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(make_sweeps, "HERE", tmp_path)
    for p in make_sweeps.tune():
        committed = ROOT / "configs" / "scaling" / "tune" / p.name
        assert committed.read_text() == p.read_text(), f"regenerate {committed}"


@pytest.mark.parametrize("width,layers,heads", [(32, 2, 2), (64, 4, 4), (128, 4, 4)])
def test_parameter_count_is_the_models(width, layers, heads):
    from lightning_modules.gpt_model import GPT, GPTConfig
    with torch.device("meta"):
        m = GPT(GPTConfig(vocab_size=make_sweeps.VOCAB, block_size=make_sweeps.CONTEXT,
                          n_layer=layers, n_head=heads, n_embd=width, bias=False))
    assert sum(p.numel() for p in m.parameters()) == make_sweeps.parameters(width, layers)


def test_every_tune_run_parses(monkeypatch):
    """Every (scope, lr) of every point parses through the fit parser, with the point's steps
    and width (seeds of one setting parse alike)."""
    import lightning as L
    from test_cli import ParseOnlyCLI
    monkeypatch.chdir(ROOT)
    parser = ParseOnlyCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                          subclass_mode_data=True, run=False,
                          args=["--config", make_sweeps.BASE],
                          auto_configure_optimizers=False).parser
    files = sorted((ROOT / "configs" / "scaling" / "tune").glob("*.sweep.yaml"))
    assert len(files) == len(make_sweeps.POINTS)
    for path in files:
        spec = sweep_mod.load_spec(str(path.relative_to(ROOT)))
        runs = sweep_mod.expand_runs(spec)
        assert len(runs) == (len(spec.grid["model.init_args.optimizer.init_args.lr"])
                             * len(spec.grid["model.init_args.rotation.scope"]))
        assert spec.grid["model.init_args.optimizer.init_args.lr"] == make_sweeps.lrs(
            spec.fixed["model.init_args.n_embd"])
        for run in runs:
            cmd = sweep_mod.build_command(spec, run, "runs/scaling/_test")
            cfg = parser.parse_args(cmd[cmd.index("--config"):])
            assert cfg.trainer.max_steps == spec.fixed["trainer.max_steps"]
            assert cfg.model.init_args.n_embd == spec.fixed["model.init_args.n_embd"]
            assert cfg.model.init_args.rotation.seed is None        # seeds vary R


def test_seed_stage_refuses_without_tune_runs(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "configs/scaling/make_sweeps.py"), "seeds"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "tune runs finished" in out.stderr
