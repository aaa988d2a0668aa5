"""The ``adamrot`` command: every config parses, the 124M config is 124M parameters, and
tiny ``fit`` runs (bf16-mixed, accumulation, clipping; plain and rotated) train."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from adamrot.cli import AdamrotCLI, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


class ParseOnlyCLI(AdamrotCLI):
    """Parses and validates a config (types, class paths) without instantiating it."""

    def instantiate_classes(self):
        pass


def is_full(path: Path) -> bool:
    data = yaml.safe_load(path.read_text()) or {}
    return "class_path" in (data.get("model") or {})


def compose(path: Path) -> list[str]:
    """Args that load ``path``: full configs alone, overlays on their directory's base
    (or the tiny twin when there is no base)."""
    if is_full(path):
        return ["--config", str(path)]
    for base in ("base.yaml", "tiny.yaml"):
        if (path.parent / base).exists():
            return ["--config", str(path.parent / base), "--config", str(path)]
    return ["--config", str(ROOT / "configs/gpt2/tiny.yaml"), "--config", str(path)]


def parse(args: list[str]):
    cli = ParseOnlyCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                       subclass_mode_data=True, run=False, args=args,
                       auto_configure_optimizers=False)
    return cli.config


# configs/paper is checked by tests/test_catalogue.py; sweep files (*.sweep.yaml, e.g.
# configs/scaling/tune) by the sweep's own tests
TRAIN_CONFIGS = [p for p in CONFIGS if "sweeps" not in p.parts and "paper" not in p.parts
                 and not p.name.endswith(".sweep.yaml")]


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_parses(path):
    cfg = parse(compose(path))
    assert cfg.model.class_path and cfg.data.class_path


def test_overlays_compose_with_base():
    cfg = parse(["--config", "configs/gpt2/base.yaml", "--config", "configs/gpt2/global.yaml"])
    assert cfg.model.init_args.rotation.scope == "global"
    assert cfg.model.init_args.n_layer == 12            # the base survives the overlay
    assert cfg.model.init_args.optimizer.init_args.lr == pytest.approx(6e-4)


def test_gpt2_124m_config_has_124m_parameters():
    cfg = parse(["--config", "configs/gpt2/base.yaml"])
    a = cfg.model.init_args
    from lightning_modules.gpt_model import GPT, GPTConfig
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=a.vocab_size, block_size=a.block_size,
                              n_layer=a.n_layer, n_head=a.n_head, n_embd=a.n_embd,
                              bias=a.bias))
    n = sum(p.numel() for p in model.parameters())
    # nanoGPT's 124M without biases and vocab padded to 50304 (tied embedding counted once)
    assert n == 124_373_760
    assert cfg.trainer.precision == "bf16-mixed"
    assert cfg.trainer.accumulate_grad_batches * cfg.data.init_args.batch_size == 480
    assert cfg.model.init_args.warmup_steps == 2000 and cfg.trainer.max_steps == 100_000


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


TINY = ["--config", "configs/gpt2/tiny.yaml",
        "--model.init_args.n_layer", "2", "--model.init_args.n_embd", "64",
        "--model.init_args.n_head", "2", "--model.init_args.block_size", "64",
        "--data.init_args.block_size", "64", "--data.init_args.max_bytes", "300000",
        "--data.init_args.val_max_tokens", "16384", "--data.init_args.batch_size", "8",
        "--model.init_args.warmup_steps", "5",
        "--trainer.limit_val_batches", "4", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "2"]


@pytest.mark.parametrize("scope", ["none", "global"])
def test_fit_bf16_accumulation_clipping_loss_falls(tmp_path, scope):
    main(["fit", *TINY, "--trainer.max_steps", "40", "--trainer.val_check_interval", "40",
          "--trainer.precision", "bf16-mixed", "--trainer.accumulate_grad_batches", "2",
          "--trainer.gradient_clip_val", "1.0", "--model.init_args.rotation.scope", scope,
          "--checkpoint.every_n_train_steps", "20",
          "--trainer.default_root_dir", str(tmp_path)])
    loss = scalars(tmp_path, "train/loss")
    assert len(loss) >= 10
    first = sum(v for _, v in loss[:3]) / 3
    last = sum(v for _, v in loss[-3:]) / 3
    assert last < first - 0.3, (first, last)
    assert loss[-1][0] <= 40                               # steps are optimizer steps
    assert scalars(tmp_path, "val/loss") and scalars(tmp_path, "train/lr")
    assert (tmp_path / "config.yaml").exists()
    ck = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 40
    opt_state = ck["optimizer_states"][0]
    assert ("rotation" in opt_state) == (scope != "none")


def test_lr_schedule_warmup_cosine_floor():
    from lightning_modules.base import warmup_cosine
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(1 / 11)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(10 / 11)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.55)
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(10_000, 10, 100, 0.1) == pytest.approx(0.1)


def test_bad_rotation_scope_is_refused_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *TINY, "--model.init_args.rotation.scope", "diagonal",
              "--trainer.default_root_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "scope" in err and "global" in err           # names the key and allowed values
    assert not (tmp_path / "checkpoints").exists()
