"""Resuming a run: which checkpoint continues it (``--resume auto|never``, ``--ckpt_path
last|PATH``) and whether this config may continue it. Every way of resuming is checked the
same way; the keys that may change are listed below (docs/RUNS.md, "Resuming")."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from adamrot.errors import ConfigError
from callbacks.checkpoint_io import RUN_STATE_KEY, load_checkpoint, scan_checkpoints

#: keys (``init_args`` left out) that may change on resume and are applied from the next step
APPLIED = ("optimizer.lr", "decay_steps", "warmup_steps", "warmup_epochs", "min_lr_ratio")
#: runtime choices that do not change the maths of the model, the optimizer or the rotation
RUNTIME = ("compile", "peak_flops", "attention", "optimizer.foreach", "optimizer.fused",
           "optimizer.capturable")
#: Lightning's special ``ckpt_path`` values other than ``last`` (passed through unchecked)
PASSTHROUGH = ("best", "hpc")

_MISSING = object()


@dataclass
class Resume:
    """A checked resume: the checkpoint, how it was found and what changes with it."""
    path: str
    step: int
    found_by: str
    checkpoint: dict
    changes: list = field(default_factory=list)     # (key, checkpoint value, config value)
    lr_ratio: Optional[float] = None                 # new peak lr / the checkpoint's
    data_changes: list = field(default_factory=list)
    #: ``data.json`` keys whose value changed, accepted with ``--accept_changes``
    identity_changes: dict = field(default_factory=dict)


def display(key: str) -> str:
    return key.replace(".init_args", "").replace("._class_path", ".class_path")


def _flatten(value: Any, key: str, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{key}.{k}", out)
    else:
        out[key] = value
    return out


def _norm_rotation(value):
    from rotations.config import RotationConfig
    try:
        return RotationConfig.coerce(value).to_dict()
    except Exception:  # noqa: BLE001 - an invalid rotation is refused at instantiation
        return value


def _hparams_view(section: Any) -> dict:
    """A ``model``/``data`` section as LightningCLI saves ``hyper_parameters``."""
    if not isinstance(section, dict):
        return {}
    if "class_path" in section:
        flat = {"_class_path": section["class_path"], **(section.get("init_args") or {}),
                **(section.get("dict_kwargs") or {})}
    else:
        flat = dict(section)
    flat.pop("_instantiator", None)
    if "rotation" in flat:
        flat["rotation"] = _norm_rotation(flat["rotation"])
    return flat


def _resolve_rotation_seeds(theirs: dict, their_seed: Any, mine: dict, my_seed: Any) -> None:
    """``rotation.seed: null`` is the run's seed (as the module resolves it, and as
    ``hyper_parameters`` record it): resolved on a side that says null when the other side
    names a seed. Both null: equal here (a change of the run's seed is compared as
    ``seed_everything``)."""
    rt, rm = theirs.get("rotation"), mine.get("rotation")
    if not (isinstance(rt, dict) and isinstance(rm, dict)):
        return
    if rt.get("seed", 0) is None and rm.get("seed") is not None and isinstance(their_seed, int):
        theirs["rotation"] = {**rt, "seed": their_seed}
    if rm.get("seed", 0) is None and rt.get("seed") is not None and isinstance(my_seed, int):
        mine["rotation"] = {**rm, "seed": my_seed}


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values differ
        return False


def diff(theirs: dict, mine: dict, prefix: str) -> list[tuple[str, Any, Any]]:
    """``(key, checkpoint value, config value)`` of every leaf present on both sides that
    differs (keys on one side only: older checkpoints, new optional arguments)."""
    a, b = _flatten(theirs, prefix, {}), _flatten(mine, prefix, {})
    return [(display(k), a[k], b[k]) for k in sorted(set(a) & set(b)) if not _same(a[k], b[k])]


def _kind(key: str) -> str:
    short = key.split(".", 1)[1] if "." in key else key
    if short in APPLIED:
        return "applied"
    if short in RUNTIME or short.split(".")[0] in RUNTIME:
        return "runtime"
    return "refused"


def _peak_lrs(ckpt: dict) -> Optional[float]:
    for sched in ckpt.get("lr_schedulers") or []:
        if isinstance(sched, dict) and sched.get("base_lrs"):
            return float(sched["base_lrs"][0])
    for opt in ckpt.get("optimizer_states") or []:
        groups = opt.get("param_groups") or []
        if groups and "initial_lr" in groups[0]:
            return float(groups[0]["initial_lr"])
    return None


#: trainer keys that are where the run lives, not how it trains (not reported as changes)
TRAINER_PLACE = ("default_root_dir", "logger")


#: what the opt-in ``--accept_changes true`` lets a resume change (recorded in resumes.jsonl)
OPT_IN = "the data settings or the data the run streams (data.json)"


def _opt_in_refusal(path: str, found_by: str, what: list) -> ConfigError:
    lines = "\n".join(f"  {k}: checkpoint {a!r}, config {b!r}" for k, a, b in what)
    return ConfigError(
        f"checkpoint {path} ({found_by}): resuming with other data is not the "
        f"continuation of the run:\n{lines}\nResume with the run's settings, start a new run "
        "in another --trainer.default_root_dir, or pass --accept_changes true to continue "
        "anyway (recorded with its step in resumes.jsonl)")


def compare(path: str, found_by: str, ckpt: dict, model: dict, data: dict,
            trainer: Optional[dict] = None, seed: Any = _MISSING, started_seed: Any = _MISSING,
            accept: bool = False) -> Resume:
    """Check ``ckpt`` against the config's ``model``/``data``/``trainer`` sections and
    ``seed`` (``seed_everything``; the checkpoint's record, else ``started_seed`` from the
    run's ``config.yaml``). Refused (:class:`ConfigError`, both values named): any model
    difference outside :data:`APPLIED` / :data:`RUNTIME`; another seed; a data difference
    unless ``accept`` (then recorded); any change of a finished run (its step reached the config's
    ``trainer.max_steps``: nothing would train, only its record would change)."""
    record = (ckpt.get(RUN_STATE_KEY) or {}).get("config") or {}
    if record.get("model"):
        theirs_m, mine_m = _hparams_view(record["model"]), _hparams_view(model)
    else:                                   # checkpoints without the record: hyper_parameters
        theirs_m, mine_m = _hparams_view(ckpt.get("hyper_parameters") or {}), _hparams_view(model)
        if not ckpt.get("hyper_parameters"):
            theirs_m = {}
    theirs_s = record.get("seed_everything", started_seed)
    _resolve_rotation_seeds(theirs_m, theirs_s, mine_m, seed)
    diffs = diff(theirs_m, mine_m, "model")
    # the optimizer's peak lr: the checkpoint's schedule knows it even without the record
    new_lr = ((mine_m.get("optimizer") or {}).get("init_args") or {}).get("lr")
    old_lr = _peak_lrs(ckpt)
    diffs = [d for d in diffs if d[0] != "model.optimizer.lr"]
    if isinstance(new_lr, (int, float)) and old_lr is not None and not _same(old_lr, new_lr):
        diffs.append(("model.optimizer.lr", old_lr, new_lr))
    refused = [d for d in diffs if _kind(d[0]) == "refused"]
    if refused:
        lines = "\n".join(f"  {k}: checkpoint {a!r}, config {b!r}" for k, a, b in refused)
        raise ConfigError(
            f"checkpoint {path} ({found_by}) does not match this run's config:\n{lines}\n"
            "Resume with the checkpoint's settings, or start a new run in another "
            "--trainer.default_root_dir (docs/RUNS.md lists what may change on resume).")
    step = int(ckpt.get("global_step", 0))
    out = Resume(path=path, step=step, found_by=found_by,
                 checkpoint=ckpt, changes=[d for d in diffs if _kind(d[0]) != "runtime"])
    if any(k == "model.optimizer.lr" for k, _, _ in out.changes):
        out.lr_ratio = float(new_lr) / old_lr
    theirs_d = record.get("data") if record.get("data") else ckpt.get("datamodule_hyper_parameters")
    out.data_changes = diff(_hparams_view(theirs_d or {}), _hparams_view(data), "data") \
        if theirs_d else []
    if seed is not _MISSING and theirs_s is not _MISSING and not _same(theirs_s, seed):
        raise ConfigError(
            f"checkpoint {path} ({found_by}) was trained with another seed:\n"
            f"  seed_everything: checkpoint {theirs_s!r}, config {seed!r}\n"
            "A run keeps its seed (it fixes the initialisation, the data order, the per-step "
            "random state and, with rotation.seed null, the rotation): resume with "
            f"--seed_everything {theirs_s!r}, or start a run with the new seed in another "
            "--trainer.default_root_dir")
    opt_in = list(out.data_changes)
    if opt_in and not accept:
        raise _opt_in_refusal(path, found_by, opt_in)
    max_steps = (trainer or {}).get("max_steps")
    theirs_t = {k: v for k, v in (record.get("trainer") or {}).items() if k not in TRAINER_PLACE}
    mine_t = {k: v for k, v in (trainer or {}).items() if k not in TRAINER_PLACE}
    trainer_changes = diff(theirs_t, mine_t, "trainer")
    if isinstance(max_steps, int) and 0 < max_steps <= step and (out.changes or opt_in):
        what = "; ".join(f"{k} {a!r} -> {b!r}" for k, a, b in out.changes + opt_in)
        raise ConfigError(
            f"checkpoint {path} ({found_by}) is at step {step}: the run is finished "
            f"(trainer.max_steps {max_steps}) and nothing would train, yet this config "
            f"changes {what}. A finished run keeps its record: start a new run in another "
            "--trainer.default_root_dir (or raise trainer.max_steps to continue it)")
    out.changes += trainer_changes                       # allowed; logged and recorded
    return out


def locate(ckpt_arg: Optional[str], mode: str, ckpt_dir: Path) -> Optional[tuple[str, str]]:
    """``(path, how it was found)`` of the checkpoint to resume from, or None to start
    fresh. ``last`` and ``--resume auto`` take the newest checkpoint of the run by recorded
    step; ``--resume from-intact`` the newest one that loads and passes its checksum;
    ``--resume never`` refuses a directory that already holds a run. A checkpoint file that
    cannot be read is never taken for "no checkpoint": ``auto``, ``last`` and ``never``
    refuse it, naming the newest intact checkpoint."""
    if ckpt_arg and str(ckpt_arg) != "last":
        return str(ckpt_arg), f"--ckpt_path {ckpt_arg}"
    readable, damaged = scan_checkpoints(ckpt_dir) if ckpt_dir.is_dir() else ([], [])
    if mode == "never" and ckpt_arg != "last" and (readable or damaged):
        what = "; ".join(
            ([f"newest checkpoint {readable[0][0].name}, step {readable[0][1]}"] if readable
             else []) + [f"damaged checkpoint {p}" for p, _ in damaged])
        raise ConfigError(
            f"--resume never: {ckpt_dir.parent} already holds a run ({what}); start over in "
            "another --trainer.default_root_dir, or remove that directory")
    if mode == "from-intact" and ckpt_arg != "last":
        for p, step in readable:
            if _intact(p):
                skipped = [q.name for q, _ in damaged] + [q.name for q, s in readable
                                                         if (s, q) != (step, p) and s >= step]
                return str(p), (f"--resume from-intact: newest intact in {ckpt_dir}, step {step}"
                                + (f"; skipped {', '.join(skipped)}" if skipped else ""))
        raise ConfigError(f"--resume from-intact: no intact checkpoint in {ckpt_dir}"
                          + (f" (damaged: {', '.join(q.name for q, _ in damaged)})"
                             if damaged else ""))
    if damaged:
        raise ConfigError(damaged_message(damaged, readable, ckpt_dir))
    newest = readable[0] if readable else None
    if ckpt_arg == "last":
        if newest is None:
            raise ConfigError(f"--ckpt_path last: no checkpoint in {ckpt_dir}")
        return str(newest[0]), f"--ckpt_path last: newest in {ckpt_dir}, step {newest[1]}"
    if newest is None:
        return None
    return str(newest[0]), (f"found by --resume auto: newest in {ckpt_dir}, step {newest[1]}; "
                            "--resume never starts a new run elsewhere")


def _intact(path: Path) -> bool:
    try:
        load_checkpoint(path)
        return True
    except Exception:  # noqa: BLE001 - corrupt, torn: not intact
        return False


def damaged_message(damaged: list, readable: list, ckpt_dir: Path, skip: tuple = ()) -> str:
    """Why a run with unreadable (or corrupt) checkpoints is not resumed, and how to go on.
    ``damaged``: ``[(path, reason)]``, a reason being a short cause or the whole message of a
    failed load (``checkpoint … is corrupt: …``)."""
    parts = []
    for p, why in damaged:
        why = str(why)
        if why.startswith(f"checkpoint {p}") or why.startswith(f"checkpoint '{p}'"):
            parts.append(why.split(". Resume from another checkpoint")[0].rstrip(". "))
        else:
            parts.append(f"checkpoint {p} cannot be read ({why})")
    intact = None
    for p, step in readable:
        if str(p) not in map(str, skip) and _intact(p):
            intact = (p, step)
            break
    head = "; ".join(parts) + ". The run is not restarted and nothing was written. "
    if intact is None:
        return head + ("No intact checkpoint is left to continue from: start a new run in "
                       "another --trainer.default_root_dir")
    return head + (f"The newest intact checkpoint is {intact[0]} (step {intact[1]}): continue "
                   f"from it with --resume from-intact (or --ckpt_path {intact[0]}), or start a "
                   "new run in another --trainer.default_root_dir")


def load(path: str, found_by: str) -> dict:
    if not Path(path).is_file():
        raise ConfigError(f"checkpoint {path!r} ({found_by}) does not exist")
    try:
        ckpt = load_checkpoint(path)
    except ValueError as e:            # CheckpointCorrupt
        raise ConfigError(str(e)) from e
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"checkpoint {path!r} ({found_by}) cannot be loaded "
                          f"(weights_only=True): {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"checkpoint {path!r} is not a Lightning checkpoint (no state_dict)")
    return ckpt


def check_optimizer_state(resume: Resume, optimizer) -> None:
    """Refuse a checkpoint whose optimizer state was written by another kind of optimizer
    (other hyper-parameter names, rotated vs not) than ``optimizer``."""
    states = resume.checkpoint.get("optimizer_states") or []
    if not states:
        return
    theirs = states[0]
    mine = optimizer.state_dict()
    rot_t, rot_m = "rotation" in theirs, "rotation" in mine
    problems = []
    if rot_t != rot_m:
        problems.append(f"checkpoint optimizer {'rotated' if rot_t else 'not rotated'}, "
                        f"config {'rotated' if rot_m else 'not rotated'}")
    keys = [set((s.get("param_groups") or [{}])[0]) - {"params", "initial_lr"}
            for s in (theirs, mine)]
    if keys[0] and keys[1] and keys[0] != keys[1]:
        problems.append(f"checkpoint optimizer has {sorted(keys[0] - keys[1])}, the configured "
                        f"one {sorted(keys[1] - keys[0])}")
    if problems:
        raise ConfigError(f"checkpoint {resume.path} ({resume.found_by}) was trained with "
                          f"another optimizer: {'; '.join(problems)}. Resume with its "
                          "optimizer, or start a new run in another --trainer.default_root_dir")


class ResumeRecord(Callback):
    """Applies the allowed changes of a resume once the checkpoint is restored (a new peak
    lr from this step on) and appends the resume to ``DIR/resumes.jsonl``."""

    def __init__(self, resume: Resume, run_dir: str):
        self.resume, self.run_dir = resume, run_dir

    def on_train_start(self, trainer, pl_module) -> None:
        r = self.resume
        if r.lr_ratio is not None:
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    g["lr"] *= r.lr_ratio
                    if "initial_lr" in g:
                        g["initial_lr"] *= r.lr_ratio
            for cfg in trainer.lr_scheduler_configs:
                sched = cfg.scheduler
                if hasattr(sched, "base_lrs"):
                    sched.base_lrs = [b * r.lr_ratio for b in sched.base_lrs]
        for k, a, b in r.changes:
            rank_zero_info(f"adamrot: resume at step {trainer.global_step}: {k} {a!r} -> {b!r} "
                           "(applied from this step on)")
        if trainer.is_global_zero:
            changes = {k: [a, b] for k, a, b in r.changes + r.data_changes}
            line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": trainer.global_step,
                    "checkpoint": r.path, "found_by": r.found_by, "changes": changes}
            if r.identity_changes:
                line["data_identity"] = r.identity_changes
            append_line(Path(self.run_dir) / RESUMES, line)


#: the run's append-only record of resumes (one JSON object a line)
RESUMES = "resumes.jsonl"


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line (flushed and fsync'd)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path) -> list[dict]:
    """The records of a ``resumes.jsonl`` (a torn last line is skipped)."""
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
