"""The default launcher: up to ``--jobs N`` ``adamrot fit`` children on this machine at once,
each with its own devices (``CUDA_VISIBLE_DEVICES``) or its share of the CPU threads. A failing
run is recorded and the others go on; Ctrl-C stops every child and leaves the index saved.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import IO, Any, Sequence

from adamrot.sweep.index import (LOG_NAME, Sweep, end_attempt, fmt_dur, prepare_run,
                                 start_attempt)
from adamrot.sweep.options import slot_env
from adamrot.sweep.spec import RunSpec, build_command

POLL_S = 0.1
#: after Ctrl-C: (signal, seconds to wait for the children); the terminal's SIGINT comes first
STOP_STEPS = ((None, 0.5), (signal.SIGINT, None), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))
#: after SIGTERM to the sweep: each run saves last.ckpt on SIGTERM and exits 143 (resumable)
TERM_STEPS = ((signal.SIGTERM, None), (signal.SIGKILL, 5.0))


class Terminated(KeyboardInterrupt):
    """The sweep received SIGTERM (``kill``, a batch system): stop the runs with SIGTERM so
    each saves its checkpoint, save the index, exit 143."""


@dataclass
class Todo:
    tag: str          # "[i/n]"
    run: RunSpec
    action: str       # run | rerun | resume


@dataclass
class _Child:
    todo: Todo
    entry: dict[str, Any]
    proc: subprocess.Popen | None
    log: IO[str]
    t0: float
    slot: int
    rc: int | None = None


def run_pool(sw: Sweep, todo: list[Todo], slots: Sequence[list[str] | None],
             env: dict[str, str], child_grace_s: float = 30.0) -> int:
    """Run ``todo`` with ``len(slots)`` runs at a time; return how many ran."""
    free = list(range(len(slots)))
    running: list[_Child] = []
    n_run, t_sweep = 0, time.monotonic()
    try:
        while todo or running:
            while todo and free:
                running.append(_start(sw, todo.pop(0), free.pop(0), slots, env))
            done = [c for c in running if c.proc is None or c.proc.poll() is not None]
            if not done:
                time.sleep(POLL_S)
            for c in done:
                running.remove(c)
                free.append(c.slot)
                _finish(sw, c, time.monotonic() - t_sweep)
                n_run += 1
    except KeyboardInterrupt as e:
        _interrupt(sw, running, child_grace_s,
                   TERM_STEPS if isinstance(e, Terminated) else STOP_STEPS)
        raise
    return n_run


def _start(sw: Sweep, t: Todo, slot: int, slots, env: dict[str, str]) -> _Child:
    e = sw.entries[t.run.name]
    ck = prepare_run(sw.out_dir, t.run, t.action, sw.say)
    run_dir = str(sw.run_dir(t.run))
    cmd = build_command(sw.spec, t.run, run_dir, ck)
    start_attempt(e, cmd, ck, "running")
    e.update(launcher="process", job_id=None)
    sw.save()
    devices = slots[slot]
    what = "resume" if ck else ("rerun " if t.action == "rerun" else "start ")
    sw.say(f"{t.tag} {what} {t.run.name}" + (f" (from {ck})" if ck else "")
           + (f" on GPU {','.join(devices)}" if devices else ""))
    log = open(os.path.join(run_dir, LOG_NAME), "a", encoding="utf-8")
    log.write(f"=== adamrot sweep {sw.spec.name}: attempt {e['attempts']} at {e['started_at']}\n"
              f"=== {shlex.join(cmd)}\n")
    log.flush()
    child_env = dict(env, **slot_env(devices, len(slots), env), ADAMROT_SWEEP_RUN=t.run.name)
    c = _Child(t, e, None, log, time.monotonic(), slot)
    try:
        c.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=child_env)
    except OSError as ex:  # command not found etc.
        log.write(f"failed to launch: {ex}\n")
        c.rc = 127
    return c


def _finish(sw: Sweep, c: _Child, elapsed: float) -> None:
    rc = c.rc if c.proc is None else c.proc.returncode
    c.log.close()
    dt = time.monotonic() - c.t0
    e = c.entry
    end_attempt(e, rc, dt, c.log.name)
    sw.save()
    sw.say(f"{c.todo.tag} {e['status']:<8} {c.todo.run.name} rc={rc} in {fmt_dur(dt)}"
           f"  | sweep elapsed {fmt_dur(elapsed)}")
    if e["status"] == "failed":
        for line in (e["log_tail"] or "").splitlines()[-5:]:
            sw.say(f"        | {line}")
        sw.say(f"        full log: {c.log.name}")


def _interrupt(sw: Sweep, running: list[_Child], grace: float, steps=STOP_STEPS) -> None:
    """Ctrl-C or SIGTERM: record the running runs as interrupted, stop their processes, save."""
    for c in running:
        end_attempt(c.entry, None, time.monotonic() - c.t0, c.log.name, status="interrupted")
    sw.save()
    if running:
        sw.say(f"interrupted: stopping {len(running)} run(s): "
               + ", ".join(c.todo.run.name for c in running))
    stop_children([c.proc for c in running if c.proc is not None], grace, steps)
    for c in running:
        c.log.close()
        if c.proc is not None:
            c.entry["returncode"] = c.proc.returncode
    sw.save()


def stop_children(procs: list[subprocess.Popen], grace: float = 30.0,
                  steps=STOP_STEPS) -> None:
    """Stop children after Ctrl-C, all at once: a moment for the terminal's SIGINT, then SIGINT
    (``grace`` s), SIGTERM, SIGKILL (``steps``; after SIGTERM: SIGTERM, SIGKILL). A second
    Ctrl-C goes straight to SIGKILL."""
    for sig, wait in steps:
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        try:
            for p in alive:
                if sig is not None:
                    p.send_signal(sig)
            deadline = time.monotonic() + (grace if wait is None else wait)
            while time.monotonic() < deadline and any(p.poll() is None for p in alive):
                time.sleep(0.05)
        except KeyboardInterrupt:
            for p in alive:
                if p.poll() is None:
                    p.kill()
        except ProcessLookupError:
            continue
