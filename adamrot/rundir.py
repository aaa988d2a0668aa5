"""The files of a run directory that ``adamrot fit`` owns (docs/RUNS.md): ``config.yaml``
written once when the run is created, ``run.json`` (the run's id), what a failed command
created (removed again), and the rule that nothing a config says writes outside the run."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback

from adamrot.errors import ConfigError
from adamrot.resume import ResumeRecord
from adamrot.runs import atomic_write, create_run_record

#: command-line choices of one invocation, never saved in the run's ``config.yaml``
ONE_OFF = {"ckpt_path": None, "accept_changes": False, "break_lock": False}


class RunConfig(SaveConfigCallback):
    """``fit`` saves the resolved config to ``DIR/config.yaml`` when it creates the run (never
    on a resume: the file describes the run as it was started, and every change since is in
    ``DIR/resumes.jsonl`` with its step), without the one-off choices :data:`ONE_OFF`, so the
    file is a template for new runs; and ``DIR/run.json`` with the run's id, written once.
    ``validate``/``test`` save nothing in the run."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit" or self.already_saved:
            return
        self.already_saved = True
        if not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        path = run_dir / self.config_filename
        resuming = any(isinstance(cb, ResumeRecord) for cb in trainer.callbacks)
        if not (resuming and path.is_file()):
            config = self.config.clone()
            for k, v in ONE_OFF.items():
                if k in config:
                    config[k] = v
            atomic_write(path, self.parser.dump(config, skip_none=False))
        create_run_record(run_dir)


def inside(path: Any, root: Path) -> bool:
    try:
        Path(os.path.abspath(str(path))).relative_to(os.path.abspath(root))
        return True
    except ValueError:
        return False


def snapshot(root: Path) -> Optional[set[str]]:
    if not root.exists():
        return None
    return {str(p) for p in root.rglob("*")}


def remove_new(root: Path, before: Optional[set[str]]) -> None:
    """Remove what this command created under ``root`` (it failed before its first step)."""
    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for p in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if str(p) in before:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def confine(trainer, out: Path, checkpoint_dir: Optional[Path]) -> None:
    """Refuse (:class:`ConfigError`) a logger whose files would leave ``out`` (``save_dir``,
    ``name``, ``version``, ``sub_dir`` resolved, symlinks included); with ``checkpoint_dir``
    (``fit``), checkpoints go there whatever the logger says."""
    real_out = os.path.realpath(out)
    for lg in trainer.loggers:
        for attr in ("save_dir", "log_dir"):
            try:
                where = getattr(lg, attr, None)
            except Exception:  # noqa: BLE001 - a logger that cannot say where it writes
                where = None
            if isinstance(where, (str, os.PathLike)) and not inside(os.path.realpath(where),
                                                                     real_out):
                args = ", ".join(f"{a} {getattr(lg, a, None)!r}" for a in
                                 ("name", "version", "sub_dir")
                                 if getattr(lg, a, None) not in (None, ""))
                raise ConfigError(
                    f"trainer.logger ({type(lg).__name__}) would write to {where}, outside "
                    f"this run's directory {out}" + (f" ({args})" if args else "")
                    + ": a command writes only into its own run directory; drop these "
                    "settings or keep them inside it")
    if checkpoint_dir is not None:
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(checkpoint_dir)
