"""The ``adamrot`` command.

* ``adamrot fit|validate|test --config A.yaml [--config B.yaml] [--key value …]`` —
  LightningCLI over any LightningModule / LightningDataModule of the project (configs name
  them with ``class_path``).
* ``adamrot sweep SWEEP.yaml`` — a grid of ``fit`` runs (:mod:`adamrot.sweep`).
* ``adamrot report RUN_DIR…`` — loss-curve figures and tables (:mod:`adamrot.report`).

A run is placed by ``--trainer.default_root_dir DIR``: TensorBoard events go straight into
``DIR`` (unless a logger is configured), the resolved config to ``DIR/config.yaml`` and
checkpoints to ``DIR/checkpoints/`` (``last.ckpt`` every ``checkpoint.every_n_train_steps``).

Reliability (see :mod:`callbacks.reliability` and ``docs``):

* ``--resume auto|never`` (``fit``; default ``auto``): without ``--ckpt_path``, ``auto``
  resumes from ``DIR/checkpoints/last.ckpt`` (or ``checkpoint.dirpath``) when it exists, so a
  preempted run continues by re-running the same command; ``never`` starts over (and overwrites
  that run's ``last.ckpt``).
* Resuming is exact: weights, optimizer and rotation state, LR schedule, RNG (``step_seed``)
  and the data position of every rank and worker (:mod:`datamodules.text`).
* Bad input is refused before anything is created on disk, with ``adamrot: error: …`` naming
  the key, and exit status 2: invalid values (rotation scope, parameter types, sizes), an
  optimizer that cannot run in the chosen scope, missing/empty/unreadable data files, a
  missing or unloadable checkpoint, and a checkpoint whose model or rotation settings differ
  from the config (``fit`` never silently takes the checkpoint's hyperparameters; ``validate``
  and ``test`` do, as in Lightning).
* Checkpoints are written atomically and loaded with ``weights_only=True``
  (:class:`callbacks.reliability.AtomicCheckpointIO`, installed unless another CheckpointIO
  plugin is configured).
* Forced callback sections (each has defaults): ``nonfinite`` (NaN/inf loss or gradient:
  ``action: stop|skip|off``), ``preemption`` (SIGTERM saves ``last.ckpt`` and stops),
  ``step_seed`` (per-batch RNG), ``rank_check`` (ranks agree at the end of training).

Exit status of ``main``: 0 done, 2 refused configuration, 3 non-finite values stopped training,
143 stopped by SIGTERM after saving ``last.ckpt`` (run the same command to resume).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import yaml
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from callbacks.reliability import (
    EXIT_PREEMPTED,
    AtomicCheckpointIO,
    NonFiniteError,
    NonFiniteGuard,
    PreemptionCheckpoint,
    RankAgreementCheck,
    StepSeed,
    check_optimizer,
)

SUBTOOLS = {
    "sweep": "adamrot.sweep",
    "report": "adamrot.report",
    "probe": "adamrot.probe",
}

EXIT_CONFIG_ERROR = 2
EXIT_NONFINITE = 3
RESUME_MODES = ("auto", "never")
#: model hyperparameters that may differ between a checkpoint and the run resuming from it
#: (runtime choices that do not change the model, the optimizer or the rotation; and the end of
#: the cosine, so that a finished run can be extended — as ``trainer.max_steps`` can)
RESUME_MAY_DIFFER = ("compile", "peak_flops", "attention", "decay_steps")
#: Lightning's special ``ckpt_path`` values
CKPT_KEYWORDS = ("last", "best", "hpc")

_MISSING = object()


class ConfigError(ValueError):
    """A configuration refused before training."""


def _diff(ckpt: Any, conf: Any, key: str) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint value, config value)`` of every leaf that differs; keys present on
    one side only are not compared (older checkpoints, new optional arguments)."""
    if ckpt is _MISSING or conf is _MISSING:
        return []
    if isinstance(ckpt, dict) and isinstance(conf, dict):
        out = []
        for k in sorted(set(ckpt) | set(conf), key=str):
            out += _diff(ckpt.get(k, _MISSING), conf.get(k, _MISSING), f"{key}.{k}")
        return out
    if isinstance(ckpt, (list, tuple)) and isinstance(conf, (list, tuple)) \
            and len(ckpt) == len(conf):
        out = []
        for i, (a, b) in enumerate(zip(ckpt, conf)):
            out += _diff(a, b, f"{key}[{i}]")
        return out
    try:
        same = bool(ckpt == conf)
    except Exception:  # noqa: BLE001 - incomparable values differ
        same = False
    return [] if same else [(key, ckpt, conf)]


def _flat_hparams(section: Any) -> dict:
    """A config's ``model``/``data`` section flattened the way LightningCLI saves it as
    ``hyper_parameters`` (``_class_path`` plus the init args)."""
    if not isinstance(section, dict):
        return {}
    if "class_path" in section:
        return {"_class_path": section["class_path"], **(section.get("init_args") or {}),
                **(section.get("dict_kwargs") or {})}
    return dict(section)


def _normalise_rotation(value):
    from rotations.config import RotationConfig
    try:
        return RotationConfig.coerce(value).to_dict()
    except Exception:  # noqa: BLE001 - invalid configs are refused at instantiation
        return value


def _load_checkpoint(path: str) -> dict:
    """``torch.load(weights_only=True)``, memory-mapped when possible (only what is read is
    read: cheap for a large checkpoint)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - retry without mmap (legacy format), then report
        return torch.load(path, map_location="cpu", weights_only=True)


class AdamrotCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,
            "checkpoint.every_n_train_steps": 1000,
            "checkpoint.filename": "step{step}",
        })
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(StepSeed, "step_seed")
        parser.add_lightning_class_args(RankAgreementCheck, "rank_check")
        parser.add_argument(
            "--resume", type=str, choices=RESUME_MODES, default="auto",
            help="fit without --ckpt_path: 'auto' resumes from the run's last.ckpt if it "
                 "exists, 'never' starts over")

    # -- refusing bad input ------------------------------------------------------------------
    def _refuse(self, message: str) -> None:
        sys.stderr.write(f"adamrot: error: {message}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_CONFIG_ERROR)

    def _subconfig(self):
        sub = self.config.get("subcommand")
        return sub, (self.config[sub] if sub else self.config)

    @staticmethod
    def _root_dir(cfg) -> str:
        trainer = cfg.get("trainer") or {}
        return trainer.get("default_root_dir") or "runs/default"

    @classmethod
    def _last_checkpoint(cls, cfg) -> Path:
        ck = cfg.get("checkpoint") or {}
        dirpath = ck.get("dirpath") if hasattr(ck, "get") else None
        directory = Path(dirpath) if dirpath else Path(cls._root_dir(cfg)) / "checkpoints"
        return directory / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"

    def _config_dump(self, sub: str) -> dict:
        dump = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False,
                                               skip_none=False, format="yaml"))
        return dump.get(sub, dump) if sub else dump

    def _parse_ckpt_path(self) -> None:
        """``fit``: resolve ``--resume auto``, then check the checkpoint against the config
        (instead of Lightning's silent override of the config by the checkpoint's
        hyperparameters). Other subcommands keep Lightning's behaviour."""
        sub, cfg = self._subconfig()
        if sub != "fit":
            return super()._parse_ckpt_path()
        self._resume_checkpoint = None
        ckpt = cfg.get("ckpt_path")
        auto = False
        if not ckpt:
            last = self._last_checkpoint(cfg)
            if cfg.get("resume", "auto") == "auto":
                if last.is_file():
                    cfg["ckpt_path"] = ckpt = str(last)
                    auto = True
                    rank_zero_info(f"adamrot: resuming from {last} (--resume auto; "
                                   "--resume never starts over)")
            elif last.is_file():
                rank_zero_warn(f"--resume never: starting over in a directory that holds {last}, "
                               "which this run will overwrite")
        if not ckpt:
            return
        ckpt = str(ckpt)
        if ckpt in CKPT_KEYWORDS or ckpt.startswith("registry") or "://" in ckpt:
            return
        label = (f"checkpoint {ckpt!r} (found by --resume auto; --resume never starts over)"
                 if auto else f"--ckpt_path {ckpt!r}")
        if not os.path.isfile(ckpt):
            self._refuse(f"{label} does not exist")
        try:
            loaded = _load_checkpoint(ckpt)
        except Exception as e:  # noqa: BLE001
            self._refuse(f"{label} cannot be loaded (weights_only=True): "
                         f"{type(e).__name__}: {e}")
        if not isinstance(loaded, dict) or "state_dict" not in loaded:
            self._refuse(f"{label} is not a Lightning checkpoint (no state_dict)")
        self._resume_checkpoint = loaded
        self._check_checkpoint_hparams(sub, ckpt, loaded, auto)

    def _check_checkpoint_hparams(self, sub: str, path: str, ckpt: dict, auto: bool) -> None:
        dump = self._config_dump(sub)
        theirs = dict(ckpt.get("hyper_parameters") or {})
        if theirs:
            mine = _flat_hparams(dump.get("model"))
            theirs.pop("_instantiator", None)
            for side in (theirs, mine):
                if "rotation" in side:
                    side["rotation"] = _normalise_rotation(side["rotation"])
            diffs = [d for d in _diff(theirs, mine, "model")
                     if d[0].split(".")[1].split("[")[0] not in RESUME_MAY_DIFFER]
            if diffs:
                lines = "\n".join(
                    f"  {k.replace('._class_path', '.class_path')}: checkpoint {a!r}, config {b!r}"
                    for k, a, b in diffs)
                found = " (found by --resume auto)" if auto else ""
                self._refuse(
                    f"checkpoint {path}{found} does not match this run's config:\n{lines}\n"
                    "Resume with the checkpoint's settings, or start a new run (another "
                    "--trainer.default_root_dir, or --resume never to start over here).")
        data_theirs = dict(ckpt.get("datamodule_hyper_parameters") or {})
        if data_theirs:
            data_theirs.pop("_instantiator", None)
            ddiffs = _diff(data_theirs, _flat_hparams(dump.get("data")), "data")
            if ddiffs:
                what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ddiffs)
                rank_zero_warn(f"resuming from {path} with other data settings ({what}): the "
                               "data stream is not the continuation of the checkpointed run")

    def before_instantiate_classes(self):
        cfg = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        trainer = cfg.get("trainer")
        if trainer is None:
            return
        root = trainer.get("default_root_dir") or "runs/default"
        trainer["default_root_dir"] = root
        if trainer.get("logger") in (None, True):
            trainer["logger"] = {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": root, "name": "", "version": ""},
            }

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
                NotADirectoryError) as e:
            self._refuse(str(e))

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The trainer, with :class:`AtomicCheckpointIO` unless a CheckpointIO is configured."""
        if "plugins" not in kwargs:
            trainer_cfg = self._get(self.config_init, "trainer", default={}) or {}
            plugins = trainer_cfg.get("plugins")
            if plugins is None:
                plugins = []
            elif not isinstance(plugins, (list, tuple)):
                plugins = [plugins]
            plugins = list(plugins)
            if not any(isinstance(p, CheckpointIO) for p in plugins):
                plugins.append(AtomicCheckpointIO())
            kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        if self.subcommand != "fit":
            return
        try:
            self._check_model_and_data()
            self._check_checkpoint_shapes()
        except ValueError as e:
            self._refuse(str(e))

    def _check_model_and_data(self) -> None:
        model, dm = self.model, self.datamodule
        opt = self._get(self.config, "model")
        name = None
        try:
            name = opt.init_args.optimizer.class_path
        except AttributeError:
            pass
        check_optimizer(model, name)
        mconf = getattr(model, "config", None)
        for key in ("vocab_size", "block_size"):
            m, d = getattr(mconf, key, None), getattr(dm, key, None)
            if isinstance(m, int) and isinstance(d, int) and d > m:
                raise ValueError(f"data.{key}={d} exceeds model.{key}={m}; set "
                                 f"model.{key} >= {d}")

    def _check_checkpoint_shapes(self) -> None:
        ckpt = getattr(self, "_resume_checkpoint", None)
        if not ckpt:
            return
        theirs = ckpt.get("state_dict") or {}
        mine = self.model.state_dict()
        wrong = [f"{k}: checkpoint {tuple(theirs[k].shape)}, model {tuple(v.shape)}"
                 for k, v in mine.items()
                 if k in theirs and hasattr(theirs[k], "shape") and theirs[k].shape != v.shape]
        missing = [k for k in mine if k not in theirs]
        if wrong or missing:
            parts = []
            if wrong:
                parts.append("shapes differ: " + "; ".join(wrong[:5])
                             + (f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""))
            if missing:
                parts.append("missing from the checkpoint: " + ", ".join(missing[:5])
                             + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
            raise ValueError(f"--ckpt_path {self.config[self.subcommand].get('ckpt_path')}: the "
                             f"model does not match the checkpoint ({'; '.join(parts)})")
        self._resume_checkpoint = None  # release the memory map


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBTOOLS:
        import importlib
        return int(importlib.import_module(SUBTOOLS[args[0]]).main(args[1:]) or 0)
    try:
        AdamrotCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                   subclass_mode_data=True, save_config_kwargs={"overwrite": True},
                   args=argv, auto_configure_optimizers=False)
    except SIGTERMException:
        sys.stderr.write("adamrot: stopped by SIGTERM; run the same command to resume from "
                         "last.ckpt\n")
        return EXIT_PREEMPTED
    except NonFiniteError as e:
        sys.stderr.write(f"adamrot: error: {e}\n")
        return EXIT_NONFINITE
    return 0


if __name__ == "__main__":
    sys.exit(main())
