"""``adamrot sweep``: the command line, and one invocation from the sweep file to the index
(plan each run, hand the runs to a launcher, summarise). ``--status`` reads only."""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from typing import Any, Sequence

from adamrot.errors import ConfigError, refused_write
from adamrot.runs import DirLock, LockedError
from adamrot.sweep.index import (EXIT_PREEMPTED, INDEX_JSON, LOCK_NAME, STATUSES, Sweep,
                                 ckpt_file, fmt_dur, latest_step, load_index, merge_index,
                                 plan_action, resume_checkpoint)
from adamrot.sweep.options import LaunchOptions, device_slots, resolve_launch
from adamrot.sweep.pool import Terminated, Todo, run_pool
from adamrot.sweep.spec import (RunSpec, SweepConfigError, SweepSpec, build_command, expand_runs,
                                load_spec)
from adamrot.sweep.world import keep_global_batch
from callbacks.exits import EXIT_INTERRUPTED



def _say(msg: str) -> None:
    print(msg, flush=True)


def plan(sw: Sweep, only_failed: bool) -> list[Todo]:
    """The runs to launch now (a submitted job still queued or running is left alone)."""
    todo = []
    n = len(sw.runs)
    for i, r in enumerate(sw.runs, 1):
        e = sw.entries[r.name]
        if e["status"] in ("queued", "running") and e.get("launcher") in ("local", "slurm"):
            continue
        act = plan_action(e, str(sw.run_dir(r)), only_failed)
        if act in ("skip-finished", "skip"):
            why = "finished" if act == "skip-finished" else f"{e['status']}, --only-failed"
            _say(f"[{i}/{n}] skip   {r.name} ({why})")
        else:
            todo.append(Todo(f"[{i}/{n}]", r, act))
    return todo


def dry_run(spec: SweepSpec, sw: Sweep, opts: LaunchOptions, only_failed: bool) -> int:
    """Print each run's action and command (and, for SLURM, the sbatch script); write nothing."""
    n = len(sw.runs)
    _say(f"sweep {spec.name!r}: {n} run(s) -> {spec.out_dir} (launcher: {opts.launcher})")
    counts: dict[str, int] = {}
    for i, r in enumerate(sw.runs, 1):
        e = sw.entries[r.name]
        act = plan_action(e, str(sw.run_dir(r)), only_failed)
        counts[act] = counts.get(act, 0) + 1
        ck = resume_checkpoint(sw.run_dir(r)) if act == "resume" and opts.launcher == "process" else None
        cmd = build_command(spec, r, str(sw.run_dir(r)), ck, extra=opts.trainer_args())
        _say(f"[{i}/{n}] {r.name}  status={e['status']}  action={act}\n    {shlex.join(cmd)}")
    _say("summary: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    if opts.launcher == "slurm":
        from adamrot.sweep.submit import job_name, sbatch_script

        _say(f"sbatch script of {sw.runs[0].name} (the others differ in the job name):\n"
             + sbatch_script(opts, sw.out_dir, job_name(sw, sw.runs[0])))
    return 0


def run_sweep(spec: SweepSpec, *, opts: LaunchOptions | None = None, only_failed: bool = False,
              dry: bool = False, sweep_file: str | None = None, env: dict[str, str] | None = None,
              child_grace_s: float = 30.0, runs: list[RunSpec] | None = None) -> int:
    """Run (or with ``dry`` describe) the sweep; return the exit code (1 if a run failed).
    ``runs``: the run list (default: the sweep's, with the global batch kept for the launcher)."""
    opts = opts or LaunchOptions()
    if runs is None:
        runs = keep_global_batch(spec, expand_runs(spec), opts, _say)
    prev = load_index(spec.out_dir) if os.path.isdir(spec.out_dir) else None
    if dry:
        return dry_run(spec, Sweep(spec, runs, merge_index(spec, runs, prev, sweep_file, _say),
                                   _say), opts, only_failed)
    base_env = dict(os.environ if env is None else env)
    base_env.setdefault("PYTHONUNBUFFERED", "1")
    base_env["ADAMROT_SWEEP_NAME"] = spec.name
    jobs = opts.jobs or (max(1, len(runs)) if opts.launcher == "slurm" else 1)
    slots = [None] * jobs if opts.launcher == "slurm" else device_slots(
        jobs, opts.devices_per_run, base_env)
    with DirLock(spec.out_dir, LOCK_NAME, what="sweep"):
        sw = Sweep(spec, runs, merge_index(spec, runs, prev, sweep_file, _say), _say)
        sw.save()
        t0 = time.monotonic()
        try:
            if any(e.get("launcher") in ("local", "slurm") for e in sw.index["runs"]):
                from adamrot.sweep.submit import refresh

                refresh(sw)  # what became of the jobs submitted earlier
                sw.save()
            todo = plan(sw, only_failed)
            if opts.launcher == "process":
                n_run = run_pool(sw, todo, slots, base_env, child_grace_s)
            else:
                from adamrot.sweep.submit import run_jobs

                n_run = run_jobs(sw, todo, opts, slots, {k: base_env[k] for k in (
                    "PYTHONUNBUFFERED", "ADAMROT_SWEEP_NAME")})
        except KeyboardInterrupt:
            sw.mark_interrupted()
            raise
    counts = {s: sum(1 for e in sw.index["runs"] if e["status"] == s) for s in STATUSES}
    _say(f"sweep {spec.name!r}: ran {n_run}, "
         + ", ".join(f"{s}={c}" for s, c in counts.items() if c)
         + f" in {fmt_dur(time.monotonic() - t0)}; index: {sw.out_dir / INDEX_JSON}")
    return 1 if counts["failed"] else 0


def show_status(spec: SweepSpec) -> int:
    """Each run's state from the index, brought up to date from the job records (not saved)."""
    runs = expand_runs(spec)
    prev = load_index(spec.out_dir) if os.path.isdir(spec.out_dir) else None
    sw = Sweep(spec, runs, merge_index(spec, runs, prev, None, lambda m: None), _say)
    if any(e.get("launcher") in ("local", "slurm") for e in sw.index["runs"]):
        from adamrot.sweep.submit import refresh

        refresh(sw)
    width = max(len(r.name) for r in runs)
    for e in sw.index["runs"]:
        _say(f"{e['name']:<{width}}  {e['status']:<11} {_detail(e)}".rstrip())
        if e["status"] == "failed":
            for line in (e.get("log_tail") or "").splitlines()[-5:]:
                _say(f"{'':<{width}}  | {line}")
    counts = {s: sum(1 for e in sw.index["runs"] if e["status"] == s) for s in STATUSES}
    _say(f"{spec.name}: " + ", ".join(f"{s}={c}" for s, c in counts.items() if c))
    return 0


def _detail(e: dict[str, Any]) -> str:
    job = f"job {e['job_id']}" if e.get("job_id") else ""
    st = e["status"]
    if st == "running":
        step = latest_step(e["dir"])
        return ", ".join(x for x in (f"step {step}" if step is not None else "step ?", job,
                                     f"since {e.get('started_at')}", _starts(e)) if x)
    if st == "queued":
        return job
    starts = _starts(e)
    if st in ("finished", "failed", "interrupted"):
        wall = e.get("total_wall_time_s") or e.get("wall_time_s")
        parts = [f"rc={e.get('returncode')}", f"in {fmt_dur(wall)}" if wall else "", job,
                 starts]
        if st == "interrupted":
            parts.append("resumes on the next run" if os.path.isfile(ckpt_file(e["dir"]))
                         else "restarts on the next run")
        return ", ".join(p for p in parts if p)
    return ""


def _starts(e: dict[str, Any]) -> str:
    """``2 starts (1 requeue), resumed, attempts 1`` when a run was started more than once."""
    starts = int(e.get("starts") or 0)
    attempts = int(e.get("attempts") or 0)
    if starts <= 1 and attempts <= 1:
        return ""
    parts = []
    if starts > 1:
        parts.append(f"{starts} starts ({starts - 1} requeue{'s' if starts > 2 else ''})")
    parts.append(f"attempts {attempts}")
    if e.get("resumed"):
        parts.append("resumed")
    return ", ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adamrot sweep",
        description="Run a grid of `adamrot fit` trainings: one after the other, N at once on "
                    "this machine, or as submitit jobs (locally or on SLURM). Resumable.",
        epilog="Sweep file format, launchers and requeueing: docs/CLUSTER.md.")
    p.add_argument("config", help="sweep YAML file")
    p.add_argument("--dry-run", action="store_true",
                   help="print the run list, planned actions and commands; run nothing")
    p.add_argument("--only-failed", action="store_true",
                   help="run only the runs whose status is 'failed'")
    p.add_argument("--status", action="store_true",
                   help="show each run's state (with the step of running ones) and exit")
    p.add_argument("--preflight", action="store_true",
                   help="preflight every run (batch, memory, cost, data) and the total; run "
                        "nothing (exit 1 on an error-level finding)")
    p.add_argument("--no-preflight", action="store_true",
                   help="--launcher slurm: submit even when the preflight finds an error")
    p.add_argument("--gpu", choices=("a100-40gb", "a100-80gb", "h100-80gb", "h200"),
                   help="preflight: the GPU the runs target (memory errors, cost)")
    g = p.add_argument_group("launching (each also settable in the sweep file's `launch:`)")
    g.add_argument("--launcher", choices=("process", "local", "slurm"),
                   help="process: child processes here (default); local: submitit jobs here; "
                        "slurm: submitit jobs on SLURM")
    g.add_argument("--jobs", type=int, metavar="N", help="runs at once (default 1; slurm: all)")
    g.add_argument("--devices-per-run", type=int, metavar="K",
                   help="GPUs per run (CUDA_VISIBLE_DEVICES); default: an equal share")
    g.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="wait for submitted jobs (default: yes, except for slurm)")
    s = p.add_argument_group("SLURM")
    s.add_argument("--partition")
    s.add_argument("--gpus-per-node", type=int, metavar="G", help="GPUs per node (one task each)")
    s.add_argument("--nodes", type=int, metavar="N", help="nodes per run (default 1)")
    s.add_argument("--time", metavar="T", help="time limit per job: minutes or [D-]HH:MM:SS")
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--cpus-per-task", type=int, metavar="C")
    s.add_argument("--mem", help="memory per node, e.g. 200G")
    s.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="shell line run before the job (e.g. 'source .venv/bin/activate')")
    s.add_argument("--slurm-opt", dest="slurm_opts", action="append", default=[],
                   metavar="K=V", help="extra #SBATCH --K=V line (repeatable)")
    return p


def _terminate(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    previous = signal.signal(signal.SIGTERM, _terminate) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        spec = load_spec(args.config)
        if args.status:
            return show_status(spec)
        opts = resolve_launch(spec.launch, vars(args))
        if opts.launcher == "slurm" and opts.time is None and not args.preflight:
            raise SweepConfigError("time: --launcher slurm needs a time limit per job "
                                   "(--time or launch.time), e.g. 72:00:00")
        runs = keep_global_batch(spec, expand_runs(spec), opts, _say)
        if args.preflight or (opts.launcher == "slurm" and not args.dry_run
                              and not args.no_preflight):
            from adamrot.sweep.preflight import errors, sweep_preflight

            found = errors(sweep_preflight(spec, runs, opts, args.gpu, _say))
            if args.preflight:
                return 1 if found else 0
            if found:
                print(f"adamrot: error: preflight of {args.config} found {len(found)} error(s), "
                      f"first: {found[0]}; nothing was submitted (--no-preflight submits "
                      "anyway)", file=sys.stderr)
                return 2
        return run_sweep(spec, opts=opts, only_failed=args.only_failed, dry=args.dry_run,
                         sweep_file=args.config, runs=runs)
    except SweepConfigError as e:
        print(f"adamrot: error: sweep file {args.config}: {e}", file=sys.stderr)
        return 2
    except LockedError as e:
        print(f"adamrot: error: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:           # a run's config refused by its preflight
        print(f"adamrot: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:               # disk full, quota, permissions: one line, exit 2
        return refused_write(e, "the sweep stopped (run the same command to resume)")
    except Terminated:
        print("adamrot sweep: stopped by SIGTERM; the index is saved and the local runs were "
              "stopped with SIGTERM (each saves its last.ckpt). Run the same command to resume.",
              file=sys.stderr)
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("adamrot sweep: interrupted; the index is saved and the runs were stopped. Run the "
              "same command to resume.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
