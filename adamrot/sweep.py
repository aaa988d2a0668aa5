"""Run a grid of ``adamrot fit`` trainings sequentially, resumably.

Usage::

    adamrot sweep SWEEP.yaml [--dry-run] [--only-failed]
    python -m adamrot.sweep SWEEP.yaml [--dry-run] [--only-failed]

Sweep file (all keys optional except that there must be something to run)::

    name: demo                       # default: the YAML file's stem
    out_dir: runs/demo               # relative to the cwd; default runs/<name>
    configs: [configs/gpt2/tiny.yaml]   # each passed as --config (in order)
    fixed: {trainer.max_steps: 200}     # --key value for every run
    grid:                               # cartesian product (order = key order)
      model.rotation.scope: [none, global]
      model.optimizer.init_args.lr: [1.0e-3, 3.0e-3]
      seed_everything: [0, 1]
    runs:                               # extra runs, each merged over `fixed`
      - {model.optimizer.class_path: torch.optim.SGD, model.rotation.scope: none}
      - {name: sgd_global, model.optimizer.class_path: torch.optim.SGD,
         model.rotation.scope: global}  # `name` (optional) = explicit run name
    command: null    # launcher argv prefix (list or shell-like string);
                     # default [sys.executable, -m, adamrot.cli, fit]

Runs are the grid points (in ``itertools.product`` order over the grid keys
as written) followed by the explicit ``runs``.  An empty/missing grid with
explicit runs gives only those runs; neither gives one run with ``fixed``.
Strings that look like floats in exponent notation without a dot (``1e-3``,
which YAML 1.1 reads as a string) are converted to floats.

Run names are derived from the keys whose value differs between runs, in
order of first appearance: ``<short key>=<value>`` joined by ``_`` (e.g.
``scope=global_lr=0.003_seed=1``).  The short key is the last dotted
component, ``init_args`` dropped, ``X.class_path`` -> ``X``,
``seed_everything`` -> ``seed`` (longer suffixes are used if two short keys
collide); dotted class paths are shortened to the class name.  Each run gets
``--trainer.default_root_dir OUT_DIR/<run name>``; command line::

    <command> --config C1 [--config C2 ...] --key value ... \
        --trainer.default_root_dir OUT_DIR/<run> [--ckpt_path .../last.ckpt]

Values are YAML-dumped scalars (so jsonargparse parses them back to the same
type: ``0.001``, ``true``, ``null``, ``'1.0'`` for the string "1.0"); dicts and
lists are passed as JSON.  Each run's stdout+stderr go to
``OUT_DIR/<run>/run.log``; the environment gets ``ADAMROT_SWEEP_NAME`` and
``ADAMROT_SWEEP_RUN``.

State lives in ``OUT_DIR/index.json`` (+ ``index.csv``), written atomically,
one entry per run: name, overrides, status (``pending|running|finished|
failed|interrupted``), returncode, wall_time_s (last attempt),
total_wall_time_s, attempts, resumed, dir, command, log_tail (failures).
Re-running the sweep:

* ``finished`` runs are skipped;
* ``interrupted``/``running`` (the sweep process died)/``pending`` runs are
  resumed with ``--ckpt_path OUT_DIR/<run>/checkpoints/last.ckpt`` when that
  file exists (the old ``config.yaml`` is moved to ``config.prev.yaml`` so
  LightningCLI's SaveConfigCallback does not refuse to overwrite it),
  otherwise started fresh;
* ``failed`` runs are started fresh;
* with ``--only-failed`` only ``failed`` runs are run.

A fresh start moves an existing non-empty run directory to
``OUT_DIR/.attempts/<run>.<n>`` so stale event files never mix with new ones.
A failing run is recorded (with the tail of its log) and the sweep goes on;
the exit code is 1 if any run of the sweep is ``failed`` afterwards, 2 for an
invalid sweep file, 0 otherwise.  On KeyboardInterrupt the current run is
marked ``interrupted``, the index saved, the child stopped (SIGINT, then
SIGTERM/SIGKILL) and the exception re-raised (``python -m adamrot.sweep``
exits 130).  ``--dry-run`` prints the run list, the action for each run and
its command, and writes nothing.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

STATUSES = ("pending", "running", "finished", "failed", "interrupted")
TOP_LEVEL_KEYS = ("name", "out_dir", "configs", "fixed", "grid", "runs", "command")
# keys managed by the sweep itself; not allowed in fixed/grid/runs
RESERVED_KEYS = ("trainer.default_root_dir", "ckpt_path", "config")
RUN_NAME_KEY = "name"  # explicit run name inside a `runs` entry
LOG_NAME = "run.log"
INDEX_JSON = "index.json"
INDEX_CSV = "index.csv"
ATTEMPTS_DIR = ".attempts"
LOG_TAIL_LINES = 30
MAX_NAME_LEN = 200


class SweepConfigError(ValueError):
    """Invalid sweep YAML; the message names the offending field."""


class SweepLockedError(RuntimeError):
    """Another sweep process is working in the same out_dir."""


# --------------------------------------------------------------------------- #
# spec / expansion (pure)
# --------------------------------------------------------------------------- #
@dataclass
class SweepSpec:
    name: str
    out_dir: str
    configs: list[str] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    command: list[str] | None = None


@dataclass
class RunSpec:
    name: str
    overrides: dict[str, Any]


_EXP_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _coerce(v: Any) -> Any:
    """Turn YAML-1.1 strings like ``1e-3`` into floats (recursively)."""
    if isinstance(v, str) and _EXP_FLOAT.match(v.strip()):
        return float(v)
    if isinstance(v, list):
        return [_coerce(x) for x in v]
    if isinstance(v, dict):
        return {k: _coerce(x) for k, x in v.items()}
    return v


def _check_key(key: Any, where: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise SweepConfigError(f"{where}: keys must be non-empty strings, got {key!r}")
    if key.startswith("-"):
        raise SweepConfigError(
            f"{where}.{key}: write CLI keys without leading dashes (e.g. 'trainer.max_steps')"
        )
    if key in RESERVED_KEYS:
        raise SweepConfigError(
            f"{where}.{key}: '{key}' is set by the sweep itself and cannot be given"
        )
    return key


def parse_spec(raw: Any, default_name: str = "sweep") -> SweepSpec:
    """Validate a loaded sweep YAML document and return a :class:`SweepSpec`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SweepConfigError(
            f"sweep file: top level must be a mapping, got {type(raw).__name__}"
        )
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SweepConfigError(
            f"unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(TOP_LEVEL_KEYS)}"
        )

    name = raw.get("name", default_name)
    if name is None:
        name = default_name
    if not isinstance(name, (str, int)) or not str(name).strip():
        raise SweepConfigError(f"name: expected a non-empty string, got {name!r}")
    name = str(name)

    out_dir = raw.get("out_dir")
    if out_dir is None:
        out_dir = os.path.join("runs", name)
    if not isinstance(out_dir, str) or not out_dir.strip():
        raise SweepConfigError(f"out_dir: expected a path string, got {out_dir!r}")

    configs = raw.get("configs") or []
    if isinstance(configs, str):
        configs = [configs]
    if not isinstance(configs, list):
        raise SweepConfigError(
            f"configs: expected a list of paths, got {type(configs).__name__}"
        )
    for i, c in enumerate(configs):
        if not isinstance(c, str) or not c:
            raise SweepConfigError(f"configs[{i}]: expected a path string, got {c!r}")

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SweepConfigError(
            f"fixed: expected a mapping of CLI key -> value, got {type(fixed).__name__}"
        )
    fixed = {_check_key(k, "fixed"): _coerce(v) for k, v in fixed.items()}

    grid_raw = raw.get("grid") or {}
    if not isinstance(grid_raw, dict):
        raise SweepConfigError(
            f"grid: expected a mapping of CLI key -> list of values, got {type(grid_raw).__name__}"
        )
    grid: dict[str, list[Any]] = {}
    for k, vals in grid_raw.items():
        _check_key(k, "grid")
        if not isinstance(vals, list):
            raise SweepConfigError(
                f"grid.{k}: expected a list of values, got {type(vals).__name__} {vals!r}"
                f" (write [{vals!r}] for a single value, or move it to `fixed`)"
            )
        if not vals:
            raise SweepConfigError(f"grid.{k}: empty list of values")
        seen: list[str] = []
        for v in vals:
            c = _canon(_coerce(v))
            if c in seen:
                raise SweepConfigError(f"grid.{k}: duplicate value {v!r}")
            seen.append(c)
        grid[k] = [_coerce(v) for v in vals]

    runs_raw = raw.get("runs") or []
    if not isinstance(runs_raw, list):
        raise SweepConfigError(
            f"runs: expected a list of mappings, got {type(runs_raw).__name__}"
        )
    runs: list[dict[str, Any]] = []
    for i, r in enumerate(runs_raw):
        if not isinstance(r, dict):
            raise SweepConfigError(
                f"runs[{i}]: expected a mapping of CLI key -> value, got {type(r).__name__}"
            )
        entry: dict[str, Any] = {}
        for k, v in r.items():
            if k == RUN_NAME_KEY:
                if not isinstance(v, (str, int)) or not str(v).strip():
                    raise SweepConfigError(f"runs[{i}].name: expected a non-empty string")
                if _sanitize(str(v)) != str(v):
                    raise SweepConfigError(
                        f"runs[{i}].name: {v!r} is not filesystem-safe "
                        "(use letters, digits and . _ + = -)"
                    )
                entry[k] = str(v)
            else:
                entry[_check_key(k, f"runs[{i}]")] = _coerce(v)
        runs.append(entry)

    command = raw.get("command")
    if command is not None:
        if isinstance(command, str):
            command = shlex.split(command)
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(c, (str, int, float)) for c in command)
        ):
            raise SweepConfigError(
                f"command: expected a non-empty list of strings (or a string), got {command!r}"
            )
        command = [str(c) for c in command]

    return SweepSpec(
        name=name, out_dir=out_dir, configs=list(configs), fixed=fixed,
        grid=grid, runs=runs, command=command,
    )


def load_spec(path: str | os.PathLike, check_files: bool = True) -> SweepSpec:
    """Read + validate a sweep YAML file (config files must exist if ``check_files``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SweepConfigError(f"cannot read sweep file {str(path)!r}: {e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SweepConfigError(f"{path}: invalid YAML: {e}") from e
    spec = parse_spec(raw, default_name=path.stem)
    if check_files:
        for i, c in enumerate(spec.configs):
            if not os.path.isfile(c):
                raise SweepConfigError(
                    f"configs[{i}]: file not found: {c!r} (paths are relative to the cwd {os.getcwd()!r})"
                )
    return spec


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def short_key(key: str) -> str:
    """``model.optimizer.init_args.lr`` -> ``lr``; ``model.optimizer.class_path`` -> ``optimizer``."""
    if key == "seed_everything":
        return "seed"
    parts = [p for p in key.split(".") if p and p != "init_args"]
    if not parts:
        return key
    if parts[-1] == "class_path" and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Unique short names for ``keys`` (longer dotted suffixes on collision)."""
    out = {k: short_key(k) for k in keys}
    for _ in range(16):
        names = list(out.values())
        dup = {n for n in names if names.count(n) > 1}
        if not dup:
            break
        for k in keys:
            if out[k] in dup:
                parts = [p for p in k.split(".") if p and p != "init_args"]
                cur = out[k].split(".")
                n = min(len(cur) + 1, len(parts))
                out[k] = ".".join(parts[-n:]) if n > len(cur) else k
    return out


_CLASS_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


def value_label(v: Any) -> str:
    """Human/filesystem friendly rendering of an override value."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        if _CLASS_PATH.match(v) and v.rsplit(".", 1)[-1][:1].isupper():
            return v.rsplit(".", 1)[-1]
        return v
    return json.dumps(v, separators=(",", ":"), sort_keys=True, default=str)


def _sanitize(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._+=\-]+", "-", s)
    s = re.sub(r"-{2,}", "-", s).strip("-")
    s = s.lstrip(".")
    return s


def varying_keys(override_sets: Sequence[dict[str, Any]]) -> list[str]:
    """Keys whose value (absence counts as a value) differs between the sets."""
    keys: list[str] = []
    for o in override_sets:
        for k in o:
            if k not in keys:
                keys.append(k)
    out = []
    for k in keys:
        vals = {(_canon(o[k]) if k in o else "\0absent") for o in override_sets}
        if len(vals) > 1:
            out.append(k)
    return out


def make_run_name(overrides: dict[str, Any], keys: Sequence[str], shorts: dict[str, str]) -> str:
    parts = [
        f"{shorts[k]}={value_label(overrides[k])}" for k in keys if k in overrides
    ]
    name = _sanitize("_".join(parts)) or "run"
    if len(name) > MAX_NAME_LEN:
        import hashlib

        h = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name[: MAX_NAME_LEN - 11] + "-" + h
    return name


def expand_runs(spec: SweepSpec) -> list[RunSpec]:
    """Deterministic run list (grid product, then explicit runs) with names."""
    sets: list[dict[str, Any]] = []
    explicit_names: list[str | None] = []
    if spec.grid or not spec.runs:
        keys = list(spec.grid)
        for combo in itertools.product(*(spec.grid[k] for k in keys)):
            o = dict(spec.fixed)
            o.update(zip(keys, combo))
            sets.append(o)
            explicit_names.append(None)
    for r in spec.runs:
        o = dict(spec.fixed)
        o.update({k: v for k, v in r.items() if k != RUN_NAME_KEY})
        sets.append(o)
        explicit_names.append(r.get(RUN_NAME_KEY))

    vk = varying_keys(sets)
    shorts = short_keys(vk)
    runs = [
        RunSpec(name=en or make_run_name(o, vk, shorts), overrides=o)
        for o, en in zip(sets, explicit_names)
    ]
    by_name: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        by_name.setdefault(r.name, []).append(i)
    dups = {n: ix for n, ix in by_name.items() if len(ix) > 1}
    if dups:
        lines = []
        for n, ix in dups.items():
            lines.append(f"  {n!r}: " + "; ".join(_describe(runs[i].overrides, vk) for i in ix))
        raise SweepConfigError(
            "runs: duplicate run names (identical runs, or give explicit runs a `name:`):\n"
            + "\n".join(lines)
        )
    return runs


def _describe(o: dict[str, Any], keys: Sequence[str]) -> str:
    return "{" + ", ".join(f"{k}: {o[k]!r}" for k in keys if k in o) + "}" if keys else "{}"


def cli_value(v: Any) -> str:
    """Render a value so that jsonargparse parses it back to the same thing."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    s = yaml.safe_dump(v, default_flow_style=True, width=float("inf"), allow_unicode=True)
    if s.endswith("\n...\n"):
        s = s[: -len("\n...\n")]
    return s.rstrip("\n")


def default_command() -> list[str]:
    return [sys.executable, "-m", "adamrot.cli", "fit"]


def build_command(
    spec: SweepSpec, run: RunSpec, run_dir: str, ckpt_path: str | None = None
) -> list[str]:
    cmd = list(spec.command) if spec.command else default_command()
    for c in spec.configs:
        cmd += ["--config", c]
    # jsonargparse needs X.class_path before X.init_args.*: class paths go first
    items = sorted(run.overrides.items(), key=lambda kv: not kv[0].endswith(".class_path"))
    for k, v in items:
        cmd += [f"--{k}", cli_value(v)]
    cmd += ["--trainer.default_root_dir", run_dir]
    if ckpt_path:
        cmd += ["--ckpt_path", ckpt_path]
    return cmd


# --------------------------------------------------------------------------- #
# index IO
# --------------------------------------------------------------------------- #
def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def new_entry(run: RunSpec, run_dir: str) -> dict[str, Any]:
    return {
        "name": run.name,
        "overrides": run.overrides,
        "status": "pending",
        "returncode": None,
        "wall_time_s": None,
        "total_wall_time_s": 0.0,
        "attempts": 0,
        "resumed": False,
        "dir": run_dir,
        "started_at": None,
        "finished_at": None,
        "command": None,
        "log_tail": None,
    }


def load_index(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    p = Path(out_dir) / INDEX_JSON
    if not p.exists():
        return None
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def save_index(out_dir: str | os.PathLike, index: dict[str, Any]) -> None:
    out = Path(out_dir)
    index["updated_at"] = _now()
    _atomic_write(out / INDEX_JSON, json.dumps(index, indent=2, default=str) + "\n")
    # flat CSV view
    entries = index.get("runs", [])
    okeys: list[str] = []
    for e in entries:
        for k in e.get("overrides", {}):
            if k not in okeys:
                okeys.append(k)
    cols = ["name", "status", "returncode", "wall_time_s", "total_wall_time_s",
            "attempts", "resumed", "dir"] + okeys
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for e in entries:
        row = [e.get(c) for c in cols[:8]]
        o = e.get("overrides", {})
        row += [
            (json.dumps(o[k]) if isinstance(o[k], (dict, list)) else o[k]) if k in o else ""
            for k in okeys
        ]
        w.writerow(["" if x is None else x for x in row])
    _atomic_write(out / INDEX_CSV, buf.getvalue())


def _log_tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = data.splitlines()
    return "\n".join(lines[-n:])


def _fmt_dur(s: float) -> str:
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


# --------------------------------------------------------------------------- #
# planning + execution
# --------------------------------------------------------------------------- #
def ckpt_file(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints", "last.ckpt")


def plan_action(entry: dict[str, Any] | None, run_dir: str, only_failed: bool = False) -> str:
    """One of ``skip-finished``, ``skip``, ``resume``, ``rerun``, ``run``."""
    status = (entry or {}).get("status", "pending")
    if status == "finished":
        if not os.path.isdir(run_dir) or not any(os.scandir(run_dir)):
            return "run"          # its directory was deleted: run it again from scratch
        return "skip-finished"
    if only_failed and status != "failed":
        return "skip"
    if status == "failed":
        return "rerun"
    if os.path.isfile(ckpt_file(run_dir)):
        return "resume"
    return "run"


def _archive_dir(out_dir: Path, run_dir: Path, name: str) -> Path | None:
    """Move a non-empty existing run dir aside before a fresh start."""
    if not run_dir.exists():
        return None
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        return None
    base = out_dir / ATTEMPTS_DIR
    base.mkdir(parents=True, exist_ok=True)
    n = 1
    while (base / f"{name}.{n}").exists():
        n += 1
    dest = base / f"{name}.{n}"
    shutil.move(str(run_dir), str(dest))
    return dest


class _Lock:
    def __init__(self, out_dir: Path):
        self.path = out_dir / ".sweep.lock"
        self.held = False

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                alive = False
                if pid > 0 and pid != os.getpid():
                    try:
                        os.kill(pid, 0)
                        alive = True
                    except ProcessLookupError:
                        alive = False
                    except PermissionError:
                        alive = True
                if alive:
                    raise SweepLockedError(
                        f"another sweep (pid {pid}) is running in {self.path.parent}; "
                        f"remove {self.path} if that is wrong"
                    )
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise SweepLockedError(f"could not acquire {self.path}")

    def __exit__(self, *exc):
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        return False


def _stop_child(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """Stop a child after Ctrl-C: give it a moment (it may have got the SIGINT
    from the terminal), then SIGINT, then SIGTERM, then SIGKILL."""
    steps = [(None, 0.5), (signal.SIGINT, grace), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)]
    for sig, wait in steps:
        if proc.poll() is not None:
            return
        if sig is not None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _say(msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
    except Exception:  # pragma: no cover - tqdm missing
        print(msg)
    sys.stdout.flush()


def run_sweep(
    spec: SweepSpec,
    *,
    only_failed: bool = False,
    dry_run: bool = False,
    sweep_file: str | None = None,
    env: dict[str, str] | None = None,
    child_grace_s: float = 30.0,
) -> int:
    """Run (or, with ``dry_run``, describe) the sweep; return the exit code."""
    runs = expand_runs(spec)
    out_dir = Path(spec.out_dir)
    prev = None
    if out_dir.exists():
        prev = load_index(out_dir)
    prev_entries = {e["name"]: e for e in (prev or {}).get("runs", [])}

    n = len(runs)
    run_dirs = {r.name: os.path.join(spec.out_dir, r.name) for r in runs}

    if dry_run:
        counts: dict[str, int] = {}
        _say(f"sweep {spec.name!r}: {n} run(s) -> {spec.out_dir}")
        for i, r in enumerate(runs, 1):
            e = prev_entries.get(r.name)
            act = plan_action(e, run_dirs[r.name], only_failed)
            counts[act] = counts.get(act, 0) + 1
            ck = ckpt_file(run_dirs[r.name]) if act == "resume" else None
            cmd = build_command(spec, r, run_dirs[r.name], ck)
            st = (e or {}).get("status", "pending")
            _say(f"[{i}/{n}] {r.name}  status={st}  action={act}\n    {shlex.join(cmd)}")
        _say("summary: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        return 0

    stale = [k for k in prev_entries if k not in run_dirs]
    if stale:
        _say(f"note: {len(stale)} run(s) in the old index are no longer in the sweep and "
             f"are dropped from it: {', '.join(stale)}")

    with _Lock(out_dir):
        entries: list[dict[str, Any]] = []
        for r in runs:
            e = prev_entries.get(r.name)
            if e is None:
                e = new_entry(r, run_dirs[r.name])
            else:
                e = {**new_entry(r, run_dirs[r.name]), **e}
                if _canon(e.get("overrides")) != _canon(r.overrides):
                    if e.get("status") == "finished":
                        _say(f"warning: overrides of finished run {r.name!r} changed; it is "
                             "NOT rerun (delete its index entry to rerun it)")
                    else:
                        e["overrides"] = r.overrides
                e["dir"] = run_dirs[r.name]
            entries.append(e)
        index: dict[str, Any] = {
            "sweep": spec.name,
            "sweep_file": os.path.abspath(sweep_file) if sweep_file else None,
            "out_dir": spec.out_dir,
            "configs": spec.configs,
            "command": spec.command or default_command(),
            "created_at": (prev or {}).get("created_at") or _now(),
            "runs": entries,
        }
        save_index(out_dir, index)

        base_env = dict(os.environ if env is None else env)
        base_env.setdefault("PYTHONUNBUFFERED", "1")
        base_env["ADAMROT_SWEEP_NAME"] = spec.name

        try:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=spec.name, unit="run", file=sys.stderr,
                       disable=not sys.stderr.isatty(), leave=False)
        except Exception:  # pragma: no cover
            bar = None

        t_sweep = time.monotonic()
        n_run = 0
        try:
            for i, (r, e) in enumerate(zip(runs, entries), 1):
                run_dir = run_dirs[r.name]
                act = plan_action(e, run_dir, only_failed)
                tag = f"[{i}/{n}]"
                if act in ("skip-finished", "skip"):
                    why = "finished" if act == "skip-finished" else f"{e['status']}, --only-failed"
                    _say(f"{tag} skip   {r.name} ({why})")
                    if bar is not None:
                        bar.update(1)
                    continue
                rd = Path(run_dir)
                ck = None
                if act == "resume":
                    ck = ckpt_file(run_dir)
                    cfg = rd / "config.yaml"
                    if cfg.exists():
                        os.replace(cfg, rd / "config.prev.yaml")
                else:
                    moved = _archive_dir(out_dir, rd, r.name)
                    if moved is not None:
                        _say(f"{tag} note   old files of {r.name} moved to {moved}")
                rd.mkdir(parents=True, exist_ok=True)
                cmd = build_command(spec, r, run_dir, ck)
                e.update(
                    status="running", returncode=None, wall_time_s=None,
                    attempts=int(e.get("attempts") or 0) + 1, resumed=bool(ck),
                    started_at=_now(), finished_at=None, command=cmd, log_tail=None,
                )
                save_index(out_dir, index)
                what = "resume" if ck else ("rerun " if act == "rerun" else "start ")
                _say(f"{tag} {what} {r.name}" + (f" (from {ck})" if ck else "")
                     + f"  | sweep elapsed {_fmt_dur(time.monotonic() - t_sweep)}")
                log_path = rd / LOG_NAME
                t0 = time.monotonic()
                proc = None
                with open(log_path, "a", encoding="utf-8") as log:
                    log.write(f"=== adamrot sweep {spec.name}: attempt {e['attempts']} "
                              f"at {e['started_at']}\n=== {shlex.join(cmd)}\n")
                    log.flush()
                    renv = dict(base_env, ADAMROT_SWEEP_RUN=r.name)
                    try:
                        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=renv)
                        rc = proc.wait()
                    except KeyboardInterrupt:
                        dt = time.monotonic() - t0
                        e.update(status="interrupted", wall_time_s=round(dt, 3),
                                 total_wall_time_s=round(float(e.get("total_wall_time_s") or 0) + dt, 3),
                                 finished_at=_now())
                        save_index(out_dir, index)
                        _say(f"{tag} interrupted {r.name} after {_fmt_dur(dt)}; "
                             "index saved, re-run the sweep to resume")
                        if proc is not None:
                            try:
                                _stop_child(proc, child_grace_s)
                            finally:
                                if proc.poll() is None:
                                    proc.kill()
                                if proc.returncode is not None:
                                    e["returncode"] = proc.returncode
                                    save_index(out_dir, index)
                        raise
                    except OSError as ex:  # command not found etc.
                        log.write(f"failed to launch: {ex}\n")
                        rc = 127
                dt = time.monotonic() - t0
                n_run += 1
                e.update(
                    status="finished" if rc == 0 else "failed", returncode=rc,
                    wall_time_s=round(dt, 3),
                    total_wall_time_s=round(float(e.get("total_wall_time_s") or 0) + dt, 3),
                    finished_at=_now(),
                    log_tail=None if rc == 0 else _log_tail(log_path),
                )
                save_index(out_dir, index)
                if bar is not None:
                    bar.update(1)
                _say(f"{tag} {e['status']:<8} {r.name} rc={rc} in {_fmt_dur(dt)}"
                     f"  | sweep elapsed {_fmt_dur(time.monotonic() - t_sweep)}")
                if rc != 0:
                    tail = (e["log_tail"] or "").splitlines()[-5:]
                    for line in tail:
                        _say(f"        | {line}")
                    _say(f"        full log: {log_path}")
        except KeyboardInterrupt:
            # interrupted outside the child's lifetime (e.g. while saving)
            changed = False
            for e in entries:
                if e["status"] == "running":
                    e["status"] = "interrupted"
                    changed = True
            if changed:
                save_index(out_dir, index)
            raise
        finally:
            if bar is not None:
                bar.close()

    counts = {s: sum(1 for e in entries if e["status"] == s) for s in STATUSES}
    _say(f"sweep {spec.name!r} done: ran {n_run}, "
         + ", ".join(f"{s}={c}" for s, c in counts.items() if c)
         + f" in {_fmt_dur(time.monotonic() - t_sweep)}; index: {out_dir / INDEX_JSON}")
    return 1 if counts["failed"] else 0


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adamrot sweep",
        description="Run a grid of `adamrot fit` trainings sequentially (resumable).",
        epilog="See the module docstring of adamrot.sweep for the sweep file format.",
    )
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("--dry-run", action="store_true",
                   help="print the run list, planned actions and commands; run nothing")
    p.add_argument("--only-failed", action="store_true",
                   help="run only the runs whose status is 'failed'")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        spec = load_spec(args.config)
        return run_sweep(spec, only_failed=args.only_failed, dry_run=args.dry_run,
                         sweep_file=args.config)
    except SweepConfigError as e:
        print(f"adamrot sweep: invalid sweep file {args.config}: {e}", file=sys.stderr)
        return 2
    except SweepLockedError as e:
        print(f"adamrot sweep: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("adamrot sweep: interrupted", file=sys.stderr)
        sys.exit(130)
