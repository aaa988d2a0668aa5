"""The sweep file: parsing and validation, the run list (grid product, then explicit runs), run
names, and the ``adamrot fit`` command line of each run. Pure functions; nothing is written.

The file format and the naming rule are described in ``docs/CLUSTER.md`` ("Sweep files").
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from adamrot.runs import canon

TOP_LEVEL_KEYS = ("name", "out_dir", "configs", "fixed", "grid", "grid_order", "runs", "command",
                  "launch")
# keys managed by the sweep itself; not allowed in fixed/grid/runs
RESERVED_KEYS = ("trainer.default_root_dir", "ckpt_path", "config")
RUN_NAME_KEY = "name"  # explicit run name inside a `runs` entry
MAX_NAME_LEN = 200


class SweepConfigError(ValueError):
    """Invalid sweep YAML; the message names the offending field."""


@dataclass
class SweepSpec:
    name: str
    out_dir: str
    configs: list[str] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    #: the grid keys from slowest- to fastest-varying in the run order (default: as written);
    #: run names do not depend on it
    grid_order: list[str] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    command: list[str] | None = None
    #: the ``launch:`` section as written (checked by :func:`adamrot.sweep.launch.parse_launch`)
    launch: dict[str, Any] = field(default_factory=dict)


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
            f"sweep file: top level must be a mapping, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SweepConfigError(
            f"unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(TOP_LEVEL_KEYS)}")
    name = _parse_name(raw.get("name"), default_name)
    out_dir = raw.get("out_dir")
    if out_dir is None:
        out_dir = os.path.join("runs", name)
    if not isinstance(out_dir, str) or not out_dir.strip():
        raise SweepConfigError(f"out_dir: expected a path string, got {out_dir!r}")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SweepConfigError(
            f"fixed: expected a mapping of CLI key -> value, got {type(fixed).__name__}")
    launch = raw.get("launch") or {}
    if not isinstance(launch, dict):
        raise SweepConfigError(f"launch: expected a mapping, got {type(launch).__name__}")
    grid = _parse_grid(raw.get("grid"))
    order = raw.get("grid_order") or []
    if order and (not isinstance(order, list) or sorted(map(str, order)) != sorted(grid)):
        raise SweepConfigError(f"grid_order: expected a list holding each grid key once "
                               f"({', '.join(grid) or 'no grid'}), got {order!r}")
    return SweepSpec(
        name=name, out_dir=out_dir, configs=_parse_configs(raw.get("configs")),
        fixed={_check_key(k, "fixed"): _coerce(v) for k, v in fixed.items()},
        grid=grid, grid_order=[str(k) for k in order], runs=_parse_runs(raw.get("runs")),
        command=_parse_command(raw.get("command")), launch=dict(launch),
    )


def _parse_name(name: Any, default: str) -> str:
    if name is None:
        return default
    if not isinstance(name, (str, int)) or not str(name).strip():
        raise SweepConfigError(f"name: expected a non-empty string, got {name!r}")
    return str(name)


def _parse_configs(configs: Any) -> list[str]:
    configs = configs or []
    if isinstance(configs, str):
        configs = [configs]
    if not isinstance(configs, list):
        raise SweepConfigError(f"configs: expected a list of paths, got {type(configs).__name__}")
    for i, c in enumerate(configs):
        if not isinstance(c, str) or not c:
            raise SweepConfigError(f"configs[{i}]: expected a path string, got {c!r}")
    return list(configs)


def _parse_grid(grid_raw: Any) -> dict[str, list[Any]]:
    grid_raw = grid_raw or {}
    if not isinstance(grid_raw, dict):
        raise SweepConfigError(
            f"grid: expected a mapping of CLI key -> list of values, got {type(grid_raw).__name__}")
    grid: dict[str, list[Any]] = {}
    for k, vals in grid_raw.items():
        _check_key(k, "grid")
        if not isinstance(vals, list):
            raise SweepConfigError(
                f"grid.{k}: expected a list of values, got {type(vals).__name__} {vals!r}"
                f" (write [{vals!r}] for a single value, or move it to `fixed`)")
        if not vals:
            raise SweepConfigError(f"grid.{k}: empty list of values")
        vals = [_coerce(v) for v in vals]
        seen = [canon(v) for v in vals]
        for i, c in enumerate(seen):
            if c in seen[:i]:
                raise SweepConfigError(f"grid.{k}: duplicate value {vals[i]!r}")
        grid[k] = vals
    return grid


def _parse_runs(runs_raw: Any) -> list[dict[str, Any]]:
    runs_raw = runs_raw or []
    if not isinstance(runs_raw, list):
        raise SweepConfigError(f"runs: expected a list of mappings, got {type(runs_raw).__name__}")
    runs: list[dict[str, Any]] = []
    for i, r in enumerate(runs_raw):
        if not isinstance(r, dict):
            raise SweepConfigError(
                f"runs[{i}]: expected a mapping of CLI key -> value, got {type(r).__name__}")
        entry: dict[str, Any] = {}
        for k, v in r.items():
            if k != RUN_NAME_KEY:
                entry[_check_key(k, f"runs[{i}]")] = _coerce(v)
            elif not isinstance(v, (str, int)) or not str(v).strip():
                raise SweepConfigError(f"runs[{i}].name: expected a non-empty string")
            elif sanitize(str(v)) != str(v):
                raise SweepConfigError(f"runs[{i}].name: {v!r} is not filesystem-safe "
                                       "(use letters, digits and . _ + = -)")
            else:
                entry[k] = str(v)
        runs.append(entry)
    return runs


def _parse_command(command: Any) -> list[str] | None:
    if command is None:
        return None
    if isinstance(command, str):
        command = shlex.split(command)
    if (not isinstance(command, list) or not command
            or not all(isinstance(c, (str, int, float)) for c in command)):
        raise SweepConfigError(
            f"command: expected a non-empty list of strings (or a string), got {command!r}")
    return [str(c) for c in command]


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


def sanitize(s: str) -> str:
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
        vals = {(canon(o[k]) if k in o else "\0absent") for o in override_sets}
        if len(vals) > 1:
            out.append(k)
    return out


def make_run_name(overrides: dict[str, Any], keys: Sequence[str], shorts: dict[str, str]) -> str:
    parts = [
        f"{shorts[k]}={value_label(overrides[k])}" for k in keys if k in overrides
    ]
    name = sanitize("_".join(parts)) or "run"
    if len(name) > MAX_NAME_LEN:
        h = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name[: MAX_NAME_LEN - 11] + "-" + h
    return name


def expand_runs(spec: SweepSpec) -> list[RunSpec]:
    """Deterministic run list (grid product, then explicit runs) with names."""
    sets: list[dict[str, Any]] = []
    explicit_names: list[str | None] = []
    if spec.grid or not spec.runs:
        keys = list(spec.grid)                  # names follow this order ...
        slow = spec.grid_order or keys          # ... the run order this one
        for combo in itertools.product(*(spec.grid[k] for k in slow)):
            value = dict(zip(slow, combo))
            o = dict(spec.fixed)
            o.update((k, value[k]) for k in keys)
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


def build_command(spec: SweepSpec, run: RunSpec, run_dir: str, ckpt_path: str | None = None,
                  extra: Sequence[str] = ()) -> list[str]:
    """``<command> --config C… --key value… [extra…] --trainer.default_root_dir RUN_DIR
    [--ckpt_path CKPT]`` (``extra``: the launcher's own ``--trainer.*`` settings)."""
    cmd = list(spec.command) if spec.command else default_command()
    for c in spec.configs:
        cmd += ["--config", c]
    # jsonargparse needs X.class_path before X.init_args.*: class paths go first
    items = sorted(run.overrides.items(), key=lambda kv: not kv[0].endswith(".class_path"))
    for k, v in items:
        cmd += [f"--{k}", cli_value(v)]
    cmd += list(extra) + ["--trainer.default_root_dir", run_dir]
    if ckpt_path:
        cmd += ["--ckpt_path", ckpt_path]
    return cmd
