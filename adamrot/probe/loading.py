"""Loading a run for ``adamrot probe``: paths, the model and data from ``config.yaml``, weights
and optimizer state from the checkpoint, the rotated space, a deterministic batch stream."""
from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn


class ProbeError(Exception):
    """Bad input for ``adamrot probe`` (exit status 2, one ``adamrot: error:`` line)."""


def resolve_paths(target: str, ckpt: Optional[str], config: Optional[str]) -> tuple:
    """``(run_dir, checkpoint, config)`` from a run directory or a checkpoint file."""
    t = Path(target)
    if t.is_file():
        run_dir = t.parent.parent if t.parent.name == "checkpoints" else t.parent
        ckpt_path = Path(ckpt) if ckpt else t
    elif t.is_dir():
        run_dir = t
        ckpt_path = Path(ckpt) if ckpt else t / "checkpoints" / "last.ckpt"
    else:
        raise ProbeError(f"{target}: no such run directory or checkpoint")
    cfg_path = Path(config) if config else run_dir / "config.yaml"
    if not ckpt_path.is_file():
        raise ProbeError(f"checkpoint not found: {ckpt_path}")
    if not cfg_path.is_file():
        raise ProbeError(f"config not found: {cfg_path} (pass --config)")
    return run_dir, ckpt_path, cfg_path


def instantiate_from_config(conf: dict):
    """``(LightningModule, LightningDataModule or None)`` from a LightningCLI config dict,
    with ``compile`` off, ``attention: math`` (double backward) and no loader workers."""
    import lightning as L
    from jsonargparse import ArgumentParser

    if not isinstance(conf, dict) or "model" not in conf:
        raise ProbeError("config has no 'model' section")
    conf = copy.deepcopy(conf)
    margs = conf["model"].setdefault("init_args", {}) if isinstance(conf["model"], dict) else {}
    if "compile" in margs:
        margs["compile"] = False
    if "attention" in margs:
        margs["attention"] = "math"       # fused kernels have no double backward
    data = conf.get("data")
    if isinstance(data, dict) and "num_workers" in data.get("init_args", {}):
        data["init_args"]["num_workers"] = 0
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model", fail_untyped=False, required=True)
    parser.add_subclass_arguments(L.LightningDataModule, "data", fail_untyped=False,
                                  required=False)
    sub = {"model": conf["model"]}
    if data:
        sub["data"] = data
    init = parser.instantiate_classes(parser.parse_object(sub))
    return init.model, getattr(init, "data", None)


def gpt_loss(model: nn.Module, batch) -> Tensor:
    """Loss of an ``(x, y)`` batch for models returning ``(logits, loss)`` (the GPT)."""
    x, y = batch
    return model(x, y)[1]


def classifier_loss(model: nn.Module, batch) -> Tensor:
    """Cross-entropy of ``model(x)`` against ``y`` (the vision models)."""
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def default_loss_fn(model: nn.Module) -> Callable:
    """:func:`gpt_loss` for models taking targets, else :func:`classifier_loss`."""
    try:
        params = [p for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    return gpt_loss if len(params) >= 2 else classifier_loss


class Loaded:
    """A run loaded for probing: the module, its data, model, optimizer, views and space."""

    def __init__(self, module, datamodule, optimizer, space, ckpt: dict):
        self.module, self.datamodule, self.model = module, datamodule, module.model
        self.optimizer, self.views, self.space = optimizer, module.rotation_views(), space
        self.global_step = int(ckpt.get("global_step", 0))


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint loaded as training loads it (``weights_only=True``, checksum
    verified); a truncated, corrupt or foreign file is a :class:`ProbeError` naming it."""
    from callbacks.checkpoint_io import CheckpointCorrupt, load_checkpoint

    try:
        ckpt = load_checkpoint(path, mmap=False)
    except CheckpointCorrupt as e:
        raise ProbeError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProbeError(f"{path}: cannot read the checkpoint (truncated or not a checkpoint: "
                         f"{msg})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ProbeError(f"{path}: not a training checkpoint (no state_dict)")
    return ckpt


def load_config(cfg_path: Path):
    import yaml

    from lightning_modules.base import RotatableModule

    try:
        conf = yaml.safe_load(Path(cfg_path).read_text())
        module, dm = instantiate_from_config(conf)
    except ProbeError as e:
        raise ProbeError(f"{cfg_path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - jsonargparse/yaml/constructor errors
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ProbeError(f"{cfg_path}: cannot build the model and data: {msg}") from None
    if not isinstance(module, RotatableModule):
        raise ProbeError(f"{cfg_path}: model {type(module).__name__} is not a RotatableModule")
    return module, dm


def load_run(cfg_path: Path, ckpt_path: Path, device, dtype) -> Loaded:
    """The run as trained: weights and, when the checkpoint has it, the optimizer state loaded
    into the module's own optimizer (block rotations regenerated from the seed, SVD bases from
    the checkpoint); without optimizer state the rotation is rebuilt from the config."""
    from rotations.probes import RotatedSpace
    from rotations.scopes import RotationPlan

    ckpt = read_checkpoint(ckpt_path)
    module, dm = load_config(cfg_path)
    module.on_load_checkpoint(ckpt)  # the module's own clean-up of older checkpoint layouts
    missing, unexpected = module.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ProbeError(f"{ckpt_path}: does not match the model of {cfg_path}: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    module.to(device=device, dtype=dtype)
    module.eval()
    views = module.rotation_views()
    opt_states = ckpt.get("optimizer_states") or []
    optimizer = None
    if opt_states:
        optimizer = module.build_optimizer()
        try:
            optimizer.load_state_dict(opt_states[0])
        except (ValueError, KeyError, RuntimeError) as e:
            raise ProbeError(f"{ckpt_path}: could not load its optimizer state: {e}") from None
        space = RotatedSpace.from_optimizer(optimizer, views)
    elif module.rotation.active:
        plan = RotationPlan(views, module.rotation)
        if plan.svd_units:
            raise ProbeError(f"{ckpt_path}: an SVD-rotated checkpoint without optimizer state "
                             "(the bases cannot be reconstructed)")
        space = RotatedSpace.from_plan(plan)
    else:
        space = RotatedSpace.identity(views)
    return Loaded(module, dm, optimizer, space, ckpt)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class BatchStream:
    """Deterministic minibatch stream of a data module: batch ``b`` is always the same.

    ``iterate(start, count)`` asks the data module for a fresh loader (which must start from
    the same position each time, as a seeded :class:`~datamodules.text.TextDataModule` does)
    and skips ``start`` batches; finite loaders are cycled.
    """

    def __init__(self, datamodule=None, split: str = "train", device="cpu", seed: int = 0,
                 loader_factory: Optional[Callable[[], Any]] = None):
        self.dm, self.split, self.device, self.seed = datamodule, split, device, seed
        self._factory = loader_factory
        if datamodule is not None and loader_factory is None:
            datamodule.prepare_data()
            datamodule.setup("fit")

    def _loader(self):
        if self._factory is not None:
            return self._factory()
        if self.dm is None:
            raise ProbeError("the config has no data section")
        loader = (self.dm.train_dataloader() if self.split == "train"
                  else self.dm.val_dataloader())
        return loader[0] if isinstance(loader, (list, tuple)) else loader

    def iterate(self, start: int, count: int):
        torch.manual_seed(self.seed)
        it = iter(self._loader())
        i = produced = 0
        fresh = True
        while produced < count:
            try:
                b = next(it)
            except StopIteration:
                if fresh:
                    raise ProbeError("the data loader yields no batches")
                it, fresh = iter(self._loader()), True
                continue
            fresh = False
            if i >= start:
                yield _to_device(b, self.device)
                produced += 1
            i += 1
