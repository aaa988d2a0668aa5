"""How a sweep's runs are launched: the ``launch:`` section of the sweep file merged with the
command-line flags (flags win), checked before anything is written; and what each launched run
gets from them (its devices or CPU threads, the Lightning multi-node arguments).

See ``docs/CLUSTER.md`` for the three launchers (``process``, ``local``, ``slurm``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from adamrot.sweep.spec import SweepConfigError

LAUNCHERS = ("process", "local", "slurm")
#: keys of the sweep file's ``launch:`` section (each also a ``--flag`` of ``adamrot sweep``)
LAUNCH_KEYS = ("launcher", "jobs", "devices_per_run", "wait", "partition", "gpus_per_node",
               "nodes", "time", "account", "qos", "cpus_per_task", "mem", "setup", "slurm_opts")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass
class LaunchOptions:
    launcher: str = "process"
    jobs: int | None = None            # runs at once; None: 1 (process/local), all (slurm)
    devices_per_run: int | None = None
    wait: bool | None = None           # None: wait for process/local, return for slurm
    partition: str | None = None
    gpus_per_node: int | None = None
    nodes: int = 1
    time: int | None = None            # minutes
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    setup: list[str] = field(default_factory=list)
    slurm_opts: dict[str, Any] = field(default_factory=dict)

    @property
    def waits(self) -> bool:
        return self.wait if self.wait is not None else self.launcher != "slurm"

    @property
    def tasks_per_node(self) -> int:
        """One task per GPU: Lightning's SLURM environment takes each rank from one task."""
        return self.gpus_per_node or 1

    def trainer_args(self) -> list[str]:
        """``--trainer.*`` arguments a SLURM run needs so that Lightning's DDP world matches the
        allocation (num_nodes × tasks per node); nothing for the other launchers."""
        if self.launcher != "slurm" or (self.nodes == 1 and not self.gpus_per_node):
            return []
        return ["--trainer.num_nodes", str(self.nodes), "--trainer.devices", str(self.tasks_per_node)]


def parse_time_min(value: Any, where: str) -> int:
    """SLURM time formats (``MM``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``; an int is minutes) → minutes."""
    if isinstance(value, bool):
        raise SweepConfigError(f"{where}: expected minutes or a SLURM time like 72:00:00")
    if isinstance(value, int):
        minutes = value
    else:
        m = _TIME.match(str(value).strip())
        if not m:
            raise SweepConfigError(f"{where}: {value!r} is not a SLURM time "
                                   "(minutes, HH:MM:SS or D-HH:MM:SS)")
        days, a, b, c = (int(x) if x else None for x in m.groups())
        if days is not None:               # D-HH[:MM[:SS]]
            minutes = days * 1440 + a * 60 + (b or 0) + (1 if c else 0)
        elif c is not None:                # HH:MM:SS
            minutes = a * 60 + b + (1 if c else 0)
        elif b is not None:                # MM:SS
            minutes = a + (1 if b else 0)
        else:                              # MM
            minutes = a
    if minutes <= 0:
        raise SweepConfigError(f"{where}: must be positive, got {value!r}")
    return minutes


def _pos_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SweepConfigError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _opt_str(value: Any, where: str) -> str:
    if not isinstance(value, (str, int)) or not str(value).strip():
        raise SweepConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return str(value)


def parse_slurm_opts(items: Any, where: str) -> dict[str, Any]:
    """``{k: v}`` or ``["k=v", "flag"]`` → extra ``#SBATCH --k=v`` lines (``flag`` → ``--flag``)."""
    if isinstance(items, Mapping):
        return {_opt_str(k, where): (True if v is None else v) for k, v in items.items()}
    if not isinstance(items, list):
        raise SweepConfigError(f"{where}: expected k=v strings or a mapping, got {items!r}")
    out: dict[str, Any] = {}
    for item in items:
        k, eq, v = _opt_str(item, where).partition("=")
        if not k.strip():
            raise SweepConfigError(f"{where}: {item!r} has no option name")
        out[k.strip().lstrip("-")] = v if eq else True
    return out


def _check(key: str, value: Any, where: str) -> Any:
    if key == "launcher":
        if value not in LAUNCHERS:
            raise SweepConfigError(f"{where}: expected one of {', '.join(LAUNCHERS)}, got {value!r}")
        return value
    if key in ("jobs", "devices_per_run", "gpus_per_node", "nodes", "cpus_per_task"):
        return _pos_int(value, where)
    if key == "wait":
        if not isinstance(value, bool):
            raise SweepConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if key == "time":
        return parse_time_min(value, where)
    if key == "setup":
        lines = [value] if isinstance(value, str) else value
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise SweepConfigError(f"{where}: expected shell lines (a list of strings)")
        return list(lines)
    if key == "slurm_opts":
        return parse_slurm_opts(value, where)
    return _opt_str(value, where)


def resolve_launch(section: Mapping[str, Any], flags: Mapping[str, Any]) -> LaunchOptions:
    """The sweep file's ``launch:`` values, overridden by the flags given (``None`` = not given;
    ``--setup`` and ``--slurm-opt`` add to the file's)."""
    unknown = [k for k in section if k not in LAUNCH_KEYS]
    if unknown:
        raise SweepConfigError(f"launch: unknown key(s) {', '.join(map(repr, unknown))}; "
                               f"allowed: {', '.join(LAUNCH_KEYS)}")
    values: dict[str, Any] = {}
    for key in LAUNCH_KEYS:
        if section.get(key) is not None:
            values[key] = _check(key, section[key], f"launch.{key}")
        if flags.get(key) not in (None, [], {}):
            flag = _check(key, flags[key], "--" + key.replace("_", "-"))
            if key == "setup":           # lines and options add up; other flags replace
                flag = values.get(key, []) + flag
            elif key == "slurm_opts":
                flag = {**values.get(key, {}), **flag}
            values[key] = flag
    opts = LaunchOptions(**values)
    if opts.launcher != "slurm":
        given = [f.name for f in fields(LaunchOptions) if f.name in values
                 and f.name in ("partition", "account", "qos", "nodes", "gpus_per_node", "time",
                                "cpus_per_task", "mem", "slurm_opts")]
        if opts.launcher == "local":
            given = [g for g in given if g not in ("time", "gpus_per_node")]
        if given:
            raise SweepConfigError(f"{', '.join(given)}: SLURM option(s) given, but the launcher "
                                   f"is {opts.launcher!r} (use --launcher slurm)")
    if opts.launcher == "slurm" and opts.devices_per_run:
        raise SweepConfigError("devices_per_run: with --launcher slurm, a run's devices are "
                               "--gpus-per-node × --nodes")
    return opts


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs this machine lets us use: ``CUDA_VISIBLE_DEVICES`` when set, else torch's count."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch  # only when the machine's GPUs must be counted

    return [str(i) for i in range(torch.cuda.device_count())]


def device_slots(jobs: int, devices_per_run: int | None,
                 env: Mapping[str, str]) -> list[list[str] | None]:
    """One entry per concurrent run: its GPU ids, or ``None`` on a CPU-only machine (threads
    split instead). ``devices_per_run`` defaults to an equal share of the visible GPUs."""
    if jobs == 1 and devices_per_run is None:
        return [None]
    gpus = visible_gpus(env)
    if not gpus:
        if devices_per_run:
            raise SweepConfigError(f"--devices-per-run {devices_per_run}: no CUDA device is "
                                   "visible on this machine")
        return [None] * jobs
    k = devices_per_run or len(gpus) // jobs
    if k < 1 or k * jobs > len(gpus):
        raise SweepConfigError(f"--jobs {jobs} × --devices-per-run {k or 1} needs "
                               f"{jobs * max(k, 1)} GPUs; {len(gpus)} visible ({','.join(gpus)})")
    return [gpus[i * k:(i + 1) * k] for i in range(jobs)]


def slot_env(slot: list[str] | None, jobs: int, env: Mapping[str, str]) -> dict[str, str]:
    """Environment of a run in ``slot``: its ``CUDA_VISIBLE_DEVICES``; on CPU, ``cores // jobs``
    threads (``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, which torch follows) unless already set."""
    out: dict[str, str] = {}
    if slot is not None:
        out["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
    elif jobs > 1 and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        threads = str(max(1, (cores or 1) // jobs))
        out.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return out
