"""The ``adamrot`` command.

* ``adamrot fit|validate|test --config A.yaml [--config B.yaml] [--key value …]`` —
  LightningCLI over any LightningModule / LightningDataModule of the project (configs name
  them with ``class_path``).
* ``adamrot sweep SWEEP.yaml`` — a grid of ``fit`` runs (:mod:`adamrot.sweep`).
* ``adamrot report RUN_DIR…`` — loss-curve figures and tables (:mod:`adamrot.report`).

A run is placed by ``--trainer.default_root_dir DIR``: TensorBoard events go straight into
``DIR`` (unless a logger is configured), the resolved config to ``DIR/config.yaml`` and
checkpoints to ``DIR/checkpoints/`` (``last.ckpt`` every ``checkpoint.every_n_train_steps``).
"""
from __future__ import annotations

import sys
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

SUBTOOLS = {
    "sweep": "adamrot.sweep",
    "report": "adamrot.report",
    "probe": "adamrot.probe",
}


class AdamrotCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,
            "checkpoint.every_n_train_steps": 1000,
            "checkpoint.filename": "step{step}",
        })

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


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBTOOLS:
        import importlib
        return int(importlib.import_module(SUBTOOLS[args[0]]).main(args[1:]) or 0)
    AdamrotCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
               subclass_mode_data=True, save_config_kwargs={"overwrite": True},
               args=argv, auto_configure_optimizers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
