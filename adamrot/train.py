"""``adamrot fit|validate|test``: LightningCLI over any LightningModule / LightningDataModule of
the project, with the run-directory rules of docs/RUNS.md: one directory per run
(``--trainer.default_root_dir``, never overridden by paths inside a config), one writer at a
time (``DIR/.run.lock``), resume only as a checked continuation (:mod:`adamrot.resume`),
``validate``/``test`` results beside the run (``DIR/validate/``, ``DIR/test/``), and bad input
refused with exit status 2 before anything is written."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from adamrot import resume as rs
from adamrot.checks import check_optimizer
from adamrot.errors import ConfigError, rank_label, refuse
from callbacks.exits import EXIT_INTERRUPTED, EXIT_NONFINITE
from adamrot.parse_errors import AdamrotParser, summarize_parse_error
from adamrot.rundir import RunConfig, confine, inside, remove_new, snapshot
from adamrot.runs import DirLock, LockedError
from callbacks.checkpoint_io import AtomicCheckpointIO, RunState, scan_checkpoints
from callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from callbacks.preemption import EXIT_PREEMPTED, PreemptionCheckpoint
from callbacks.rank_check import RankAgreementCheck
from callbacks.step_seed import StepSeed

RESUME_MODES = ("auto", "never", "from-intact")
DEFAULT_ROOT = "runs/default"
LOCK_NAME = ".run.lock"
#: errors raised by checks inside Lightning's setup (data content, rotation sizes, a corrupt
#: checkpoint): refused with exit 2 while no optimizer step has been taken
SETUP_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
                NotADirectoryError)
#: write failures of the run directory (read-only, full): exit 2 whenever they happen
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
#: exit status of ``fit`` stopped by Ctrl-C (128 + SIGINT): the last saved checkpoint is intact


def _launcher() -> bool:
    """Whether this process owns the run directory (not a DDP rank > 0)."""
    return rank_label() is None


class AdamrotCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("parser_class", AdamrotParser)
        kwargs.setdefault("save_config_callback", RunConfig)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"prog": "adamrot"})
        argv = kwargs.get("args")
        self._argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)] \
            if not isinstance(argv, dict) else []
        self._resume: Optional[rs.Resume] = None
        self._run_state: Optional[RunState] = None
        self._finished = False
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 0,
            "checkpoint.every_n_train_steps": 1000,
            "checkpoint.filename": "{step}",                # step=N.ckpt
            "checkpoint.enable_version_counter": False,   # last.ckpt is always last.ckpt
        })
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(StepSeed, "step_seed")
        parser.add_lightning_class_args(RankAgreementCheck, "rank_check")
        parser.add_argument(
            "--resume", type=str, choices=RESUME_MODES, default="auto",
            help="fit without --ckpt_path: 'auto' continues from the run's newest checkpoint "
                 "if there is one (refused when a checkpoint file is damaged); 'from-intact' "
                 "from the newest one that loads and passes its checksum; 'never' refuses a "
                 "directory that already holds a run")
        parser.add_argument(
            "--accept_changes", type=bool, default=False,
            help="fit: let a resume change the data settings or the data the run streams "
                 "(data.json); each change is recorded with its step in resumes.jsonl")
        parser.add_argument(
            "--break_lock", type=bool, default=False,
            help="fit: take over DIR/.run.lock although it was taken on another host (only "
                 "when that process is certainly gone)")

    # -- where the run lives -------------------------------------------------------------------
    def _sub(self):
        sub = self.config.get("subcommand")
        return sub, (self.config[sub] if sub else self.config)

    def run_dir(self) -> Path:
        _, cfg = self._sub()
        trainer = cfg.get("trainer") or {}
        return Path(trainer.get("default_root_dir") or DEFAULT_ROOT)

    def output_dir(self) -> Path:
        """Where this command writes: the run directory (``fit``) or ``DIR/validate|test``."""
        sub, _ = self._sub()
        return self.run_dir() if sub in (None, "fit") else self.run_dir() / sub

    def _dump(self) -> dict:
        sub, _ = self._sub()
        dump = yaml.safe_load(self.parser.dump(self.config, skip_link_targets=False,
                                               skip_none=False, format="yaml"))
        return dump.get(sub, dump) if sub else dump

    # -- resume --------------------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        sub, cfg = self._sub()
        ckpt = cfg.get("ckpt_path")
        if sub != "fit":
            if ckpt == "last":
                found = rs.locate("last", "auto", self.run_dir() / "checkpoints")
                cfg["ckpt_path"] = found[0]
            try:
                return super()._parse_ckpt_path()
            except Exception as e:  # noqa: BLE001 - Lightning's own load of the hparams
                refuse(f"--ckpt_path {cfg.get('ckpt_path')!r} cannot be loaded: {e}")
        ckpt = str(ckpt) if ckpt else None
        if ckpt and (ckpt in rs.PASSTHROUGH or ckpt.startswith("registry") or "://" in ckpt):
            return
        root = self.run_dir()
        on_command_line = any(a == "--ckpt_path" or a.startswith("--ckpt_path=")
                              for a in self._argv)
        if ckpt and ckpt != "last" and not on_command_line and not inside(ckpt, root):
            raise ConfigError(
                f"ckpt_path {ckpt} comes from a config file and is not in this run's directory "
                f"{root}: a saved config is a template, not a resume. To start from that "
                "checkpoint, pass --ckpt_path on the command line")
        ckpt_dir = self.checkpoint_dir()
        mode = cfg.get("resume", "auto")
        found = rs.locate(ckpt, mode, ckpt_dir)
        if found is None:
            return
        path, how = found
        try:
            checkpoint = rs.load(path, how)
        except ConfigError as e:
            if not ckpt or ckpt == "last":          # found here: name the way on, if any
                readable, _ = scan_checkpoints(ckpt_dir)
                raise ConfigError(rs.damaged_message([(Path(path), str(e))], readable,
                                                     ckpt_dir, skip=(path,))) from e
            raise
        dump = self._dump()
        self._resume = rs.compare(path, how, checkpoint, dump.get("model") or {},
                                  dump.get("data") or {}, dump.get("trainer") or {},
                                  seed=dump.get("seed_everything"),
                                  started_seed=self._started_seed(),
                                  accept=bool(cfg.get("accept_changes")))
        rank_zero_info(f"adamrot: resuming from {path} at step {self._resume.step} ({how})")
        max_steps = (dump.get("trainer") or {}).get("max_steps")
        self._finished = isinstance(max_steps, int) and 0 < max_steps <= self._resume.step
        if self._resume.data_changes:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in self._resume.data_changes)
            rank_zero_warn(f"resuming from {path} with other data settings ({what}), accepted "
                           "by --accept_changes: the data stream is not the continuation of the "
                           "checkpointed run (recorded in resumes.jsonl)")

    def checkpoint_dir(self) -> Path:
        """Where this run's checkpoints are: ``checkpoint.dirpath`` when it lies in the run
        directory, else ``DIR/checkpoints``."""
        _, cfg = self._sub()
        root = self.run_dir()
        ck = cfg.get("checkpoint") or {}
        dirpath = ck.get("dirpath") if hasattr(ck, "get") else None
        return Path(dirpath) if dirpath and inside(dirpath, root) else root / "checkpoints"

    def _started_seed(self) -> Any:
        """``seed_everything`` of the run's ``config.yaml`` (the seed it was started with)."""
        try:
            saved = yaml.safe_load((self.run_dir() / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            return rs._MISSING
        if isinstance(saved, dict) and "seed_everything" in saved:
            return saved["seed_everything"]
        return rs._MISSING

    def _prepare_subcommand_kwargs(self, subcommand: str) -> dict:
        kwargs = super()._prepare_subcommand_kwargs(subcommand)
        if subcommand == "fit":
            kwargs["ckpt_path"] = self._resume.path if self._resume else None
        return kwargs

    # -- instantiation -------------------------------------------------------------------------
    def before_instantiate_classes(self):
        sub, cfg = self._sub()
        trainer = cfg.get("trainer")
        if trainer is None:
            return
        root, out = self.run_dir(), self.output_dir()
        trainer["default_root_dir"] = str(root)
        loggers = trainer.get("logger")
        for lg in loggers if isinstance(loggers, list) else [loggers]:
            args = lg.get("init_args") if hasattr(lg, "get") else None
            if args is not None and args.get("save_dir") is not None \
                    and not inside(args["save_dir"], out):
                rank_zero_warn(f"trainer.logger save_dir {args['save_dir']} is not in this "
                               f"run's directory: writing to {out} instead")
                args["save_dir"] = str(out)
        ck = cfg.get("checkpoint")
        if ck is not None and ck.get("dirpath") and not inside(ck["dirpath"], root):
            rank_zero_warn(f"checkpoint.dirpath {ck['dirpath']} is not in this run's directory: "
                           f"writing checkpoints to {root / 'checkpoints'} instead")
            ck["dirpath"] = None
        name = ck.get("filename") if ck is not None else None
        if name and (os.path.isabs(str(name)) or ".." in Path(str(name)).parts):
            raise ConfigError(f"checkpoint.filename {name!r} leaves the checkpoint directory "
                              f"of {root}: give a file name (e.g. '{{step}}')")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except SETUP_ERRORS as e:
            message = str(e)
            if "Does not validate" in message or "Parser key" in message:
                message = summarize_parse_error(message)     # jsonargparse's nesting
            raise ConfigError(message) from e

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with this run's logger, :class:`AtomicCheckpointIO` unless another
        CheckpointIO is configured, and the run-state callbacks."""
        sub, _ = self._sub()
        config = {**(self._get(self.config_init, "trainer", default={}) or {}), **kwargs}
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(save_dir=str(self.output_dir()), name="",
                                                 version="")
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) \
            else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        dump = self._dump()
        self._run_state = RunState({k: dump.get(k) for k in ("model", "data", "trainer",
                                                             "seed_everything")},
                                   run_dir=str(self.run_dir()) if sub == "fit" else None)
        extra = [self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys]
        extra.append(self._run_state)
        if sub == "fit" and self._resume is not None:
            extra.append(rs.ResumeRecord(self._resume, str(self.run_dir())))
        trainer = self._instantiate_trainer(config, extra)
        confine(trainer, self.output_dir(),
                self.checkpoint_dir() if self._sub()[0] == "fit" else None)
        return trainer

    def after_instantiate_classes(self) -> None:
        if self.subcommand != "fit":
            return
        try:
            name = self._get(self.config, "model").init_args.optimizer.class_path
        except AttributeError:
            name = None
        try:
            check_optimizer(self.model, name)
            self._check_rotation_cost()
            identity = getattr(self.datamodule, "identity", None)
            if callable(identity) and (self.run_dir() / RunState.DATA_FILE).is_file():
                accepted = [r["data_identity"] for r in
                            rs.read_lines(self.run_dir() / rs.RESUMES)
                            if isinstance(r.get("data_identity"), dict)]
                _, cfg = self._sub()
                changed = RunState.check_data(str(self.run_dir()), identity(), accepted,
                                              accept=bool(cfg.get("accept_changes")))
                if changed and self._resume is not None:
                    self._resume.identity_changes = changed
                    rank_zero_warn(f"{self.run_dir() / RunState.DATA_FILE}: the run continues on "
                                   f"other data ({', '.join(changed)}), accepted by "
                                   "--accept_changes (recorded in resumes.jsonl)")
            if self._resume is not None:
                self._check_checkpoint_shapes()
                build = getattr(self.model, "build_optimizer", None)
                if callable(build):
                    rs.check_optimizer_state(self._resume, build())
        except ValueError as e:
            raise ConfigError(str(e)) from e
        if self._resume is not None:
            self._resume.checkpoint = {}          # release the memory map

    def _check_rotation_cost(self) -> None:
        """Refuse a rotation whose blocks would take too long or too much memory to sample
        (:func:`rotations.memory.check_sampling`), before anything is sampled."""
        rotation = getattr(self.model, "rotation", None)
        views = getattr(self.model, "rotation_views", None)
        if rotation is None or not getattr(rotation, "active", False) or not callable(views):
            return
        from rotations.memory import check_sampling
        from rotations.scopes import rotated_dims
        check_sampling(rotated_dims(views(), rotation), rotation.block_size)

    def _check_checkpoint_shapes(self) -> None:
        theirs = self._resume.checkpoint.get("state_dict") or {}
        mine = self.model.state_dict()
        wrong = [f"{k}: checkpoint {tuple(theirs[k].shape)}, model {tuple(v.shape)}"
                 for k, v in mine.items()
                 if k in theirs and hasattr(theirs[k], "shape") and theirs[k].shape != v.shape]
        missing = [k for k in mine if k not in theirs]
        parts = []
        for label, items in (("shapes differ: ", wrong), ("missing from the checkpoint: ", missing)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(label + "; ".join(items[:5]) + more)
        if parts:
            raise ValueError(f"checkpoint {self._resume.path} ({self._resume.found_by}): the "
                             f"model does not match it ({'; '.join(parts)})")

    # -- running -------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        out = self.output_dir()
        if subcommand == "fit" and self._finished and _launcher():
            sys.stderr.write(f"adamrot: {out} is finished (its newest checkpoint is at step "
                             f"{self._resume.step}, trainer.max_steps): nothing to do; raise "
                             "--trainer.max_steps to continue it\n")
            return
        before = snapshot(out)
        _, cfg = self._sub()
        lock = DirLock(out, LOCK_NAME, what="adamrot fit",
                       break_lock=bool(cfg.get("break_lock"))) \
            if subcommand == "fit" and _launcher() else None
        try:
            if lock is not None:
                lock.acquire()
                if lock.broken is not None:
                    rank_zero_warn(f"--break_lock: took over {lock.path} from pid "
                                   f"{lock.broken.get('pid')} on {lock.broken.get('host')}")
        except LockedError as e:
            raise ConfigError(str(e)) from e
        except OSError as e:
            raise ConfigError(f"cannot write to the run directory {out}: {e.strerror or e}") from e
        failed_before_training = False
        try:
            super()._run_subcommand(subcommand)
        except (*SETUP_ERRORS, OSError) as e:
            stepped = self._run_state is not None and self._run_state.stepped
            if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
                message = (f"cannot write {e.filename or out}: {e.strerror}"
                           + ("; the last checkpoint is intact" if stepped else ""))
            elif isinstance(e, SETUP_ERRORS) and not stepped:
                message = str(e)
            else:
                raise
            failed_before_training = not stepped
            raise ConfigError(message) from e
        finally:
            if lock is not None:
                lock.release()
            if failed_before_training and _launcher():
                remove_new(out, before)


def run(args: list[str]) -> int:
    """Run ``adamrot fit|validate|test ARGS``; returns the exit status (SystemExit(2) for
    refused input)."""
    if list(args) == sys.argv[1:]:
        args = None                    # LightningCLI reads sys.argv itself (no warning)
    try:
        AdamrotCLI(LightningModule, LightningDataModule, subclass_mode_model=True,
                   subclass_mode_data=True, args=args, auto_configure_optimizers=False)
    except ConfigError as e:
        refuse(str(e))
    except SIGTERMException:
        sys.stderr.write("adamrot: stopped by SIGTERM; run the same command to resume from "
                         "last.ckpt\n")
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as e:
        # Lightning ends a fit interrupted by Ctrl-C with sys.exit(1) inside its handler
        if e.code == 1 and isinstance(e.__context__, KeyboardInterrupt):
            return _interrupted()
        raise
    except NonFiniteError as e:
        sys.stderr.write(f"adamrot: error: {e}\n")
        return EXIT_NONFINITE
    return 0


def _interrupted() -> int:
    sys.stderr.write("adamrot: interrupted (Ctrl-C); the last saved checkpoint is intact: run "
                     "the same command to resume from it\n")
    return EXIT_INTERRUPTED
