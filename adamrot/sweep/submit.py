"""``--launcher local|slurm``: every run of the sweep becomes a submitit job (:class:`RunJob`),
on this machine through submitit's ``LocalExecutor`` or on a SLURM cluster through its
``SlurmExecutor`` (the same code path, so the cluster path is the tested one).

The sweep process keeps the index: it submits the runs that are missing (``--jobs`` at a time),
records each job id, and brings the entries up to date from the scheduler's state and the job
records (``RUN_DIR/job.json``) whenever it runs (also ``--status``). See ``docs/CLUSTER.md``.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from adamrot.runs import pid_alive
from adamrot.sweep.index import (JOB_RECORD, LOG_NAME, Sweep, end_attempt, log_tail, now,
                                 prepare_run, read_job_record, start_attempt)
from adamrot.sweep.job import RunJob
from adamrot.sweep.options import LaunchOptions, slot_env
from adamrot.sweep.pool import Todo
from adamrot.sweep.spec import RunSpec, build_command

JOBS_DIR = ".submitit"
#: requeues after a *timeout* before a run is given up (preemptions are not counted)
MAX_TIMEOUT_REQUEUES = 20
#: seconds between USR2 and the end of the allocation: the trainer's time to save
SIGNAL_DELAY_S = 180
#: the local executor's time limit when --time is not given (minutes)
LOCAL_TIME_MIN = 60 * 24 * 30
#: seconds between looks at the jobs while waiting: from 0.5 s, doubling up to this, reset on news
POLL_MAX_S = {"local": 2.0, "slurm": 60.0}
_SLURM_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING",
                 "RESIZING", "SUSPENDED"}
_SLURM_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}


def slurm_parameters(opts: LaunchOptions, job_name: str = "adamrot") -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters for ``opts``: one task per GPU, USR2 ahead of the
    time limit, ``--requeue`` so that a preempted job comes back."""
    params: dict[str, Any] = dict(
        job_name=job_name, time=opts.time, nodes=opts.nodes, ntasks_per_node=opts.tasks_per_node,
        signal_delay_s=SIGNAL_DELAY_S, setup=opts.setup or None,
        additional_parameters={"requeue": True, **({"mem": opts.mem} if opts.mem else {}),
                               **opts.slurm_opts})
    for key in ("partition", "gpus_per_node", "account", "qos", "cpus_per_task"):
        if getattr(opts, key) is not None:
            params[key] = getattr(opts, key)
    return params


def make_executor(opts: LaunchOptions, out_dir: Path) -> submitit.Executor:
    folder = out_dir / JOBS_DIR / "%j"
    if opts.launcher == "local":
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
        ex.update_parameters(timeout_min=opts.time or LOCAL_TIME_MIN, signal_delay_s=SIGNAL_DELAY_S)
        return ex
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_TIMEOUT_REQUEUES)
    ex.update_parameters(**slurm_parameters(opts))
    return ex


def sbatch_script(opts: LaunchOptions, out_dir: Path, job_name: str) -> str:
    """The script ``sbatch`` gets for a run (what :class:`submitit.SlurmExecutor` writes)."""
    from submitit.slurm.slurm import _make_sbatch_string  # the text submitit submits

    folder = (out_dir / JOBS_DIR / "%j").absolute()
    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    return _make_sbatch_string(command=command, folder=folder,
                               **slurm_parameters(opts, job_name))


def job_handle(launcher: str, out_dir: Path, job_id: str) -> submitit.Job:
    cls = submitit.SlurmJob if launcher == "slurm" else submitit.LocalJob
    return cls(folder=out_dir / JOBS_DIR / "%j", job_id=str(job_id))


def scheduler_state(launcher: str, job: submitit.Job) -> str:
    """``queued``, ``running``, ``done`` or ``unknown`` (not yet in the accounting)."""
    if launcher == "local":
        state = job.state  # RUNNING / FINISHED / INTERRUPTED, or NO PROCESS… if not ours
        if state.startswith("NO PROCESS"):  # submitted by an earlier call: its controller's pid
            return "running" if pid_alive(int(job.job_id)) else "done"
        return "running" if state == "RUNNING" else "done"
    state = (job.get_info(mode="force").get("State") or "UNKNOWN").split()[0]
    if state in _SLURM_QUEUED:
        return "queued"
    if state in _SLURM_RUNNING:
        return "running"
    return "unknown" if state == "UNKNOWN" else "done"


def refresh(sw: Sweep, handles: dict[str, submitit.Job] | None = None) -> list[str]:
    """Bring the entries of submitted runs up to date; return the names of runs whose job is
    still queued or running."""
    live = []
    for e in sw.index["runs"]:
        launcher, job_id = e.get("launcher"), e.get("job_id")
        if launcher not in ("local", "slurm") or not job_id or e["status"] not in ("queued",
                                                                                     "running"):
            continue
        job = (handles or {}).get(e["name"]) or job_handle(launcher, sw.out_dir, job_id)
        state = scheduler_state(launcher, job)
        rec = read_job_record(e["dir"]) or {}
        if rec.get("job_id") != str(job_id):
            rec = {}
        count_starts(e, rec)
        if state in ("queued", "unknown") and rec.get("state") != "running":
            live.append(e["name"])
        elif state in ("queued", "running", "unknown"):
            e["status"] = "running"
            e["started_at"] = rec.get("started_at") or e.get("started_at") or now()
            live.append(e["name"])
        else:
            _record_end(e, rec, job)
    return live


def count_starts(e: dict[str, Any], rec: dict[str, Any]) -> None:
    """Requeues from the job record: a job that started ``n`` times (SLURM requeued it after a
    preemption or time-out) is ``n`` attempts, resumed when it started again, and its wall
    time is the sum over its starts."""
    starts = int(rec.get("starts") or 0)
    if not starts:
        return
    e["starts"] = starts
    e["attempts"] = int(e.get("attempts_before") or 0) + starts
    e["resumed"] = bool(e.get("resumed")) or starts > 1 or bool(rec.get("resumed_from"))
    if rec.get("total_wall_time_s") is not None:
        e["total_wall_time_s"] = round(float(e.get("wall_before") or 0)
                                       + float(rec["total_wall_time_s"]), 3)


def _record_end(e: dict[str, Any], rec: dict[str, Any], job: submitit.Job) -> None:
    log = os.path.join(e["dir"], LOG_NAME)
    state = rec.get("state")
    if state in ("finished", "failed", "interrupted"):
        end_attempt(e, rec.get("returncode"), rec.get("wall_time_s"), log, status=state)
        count_starts(e, rec)             # end_attempt added only the last start's wall time
    elif state in ("running", "requeued"):  # the job ended without a word: killed
        end_attempt(e, rec.get("returncode"), None, log, status="interrupted")
    else:  # never started the trainer: the job's own log says why
        end_attempt(e, None, None, log, status="failed")
        e["log_tail"] = log_tail(job.paths.stderr) or log_tail(job.paths.stdout) or (
            f"job {job.job_id} ended without starting the run (no {JOB_RECORD})")


def job_name(sw: Sweep, run: RunSpec) -> str:
    return f"{sw.spec.name}:{run.name}"[:200]


def submit_one(sw: Sweep, ex: submitit.Executor, opts: LaunchOptions, t: Todo,
               slot: list[str] | None, n_slots: int, env: dict[str, str]) -> submitit.Job:
    run: RunSpec = t.run
    if t.action != "resume":
        prepare_run(sw.out_dir, run, t.action, sw.say)
    run_dir = sw.run_dir(run)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / JOB_RECORD).unlink(missing_ok=True)
    cmd = build_command(sw.spec, run, str(run_dir), None, extra=opts.trainer_args())
    job_env = dict(env, **slot_env(slot, n_slots, os.environ), ADAMROT_SWEEP_RUN=run.name)
    if opts.launcher == "slurm":
        ex.update_parameters(job_name=job_name(sw, run))
    else:
        ex.update_parameters(gpus_per_node=len(slot or ()), visible_gpus=[int(g) for g in slot or ()])
    with _controller_output(sw.out_dir / JOBS_DIR / "local_controller.log",
                            opts.launcher == "local"):
        job = ex.submit(RunJob(cmd, str(run_dir), job_env))
    e = sw.entries[run.name]
    e.update(attempts_before=int(e.get("attempts") or 0), starts=0,
             wall_before=float(e.get("total_wall_time_s") or 0))
    start_attempt(e, cmd, t.action == "resume", "queued")
    e.update(launcher=opts.launcher, job_id=str(job.job_id), submitted_at=now(),
             job_log=str(job.paths.stdout))
    sw.save()
    sw.say(f"{t.tag} submit {run.name} ({opts.launcher} job {job.job_id}"
           + (", resumes" if t.action == "resume" else "") + ")")
    return job


@contextlib.contextmanager
def _controller_output(path: Path, redirect: bool):
    """submitit's local controller process inherits the sweep's stdout/stderr: give it a log file
    instead, so that its own messages (e.g. its traceback on Ctrl-C) stay off the terminal."""
    if not redirect:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(path, "ab") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def run_jobs(sw: Sweep, todo: list[Todo], opts: LaunchOptions,
             slots: list[list[str] | None], env: dict[str, str]) -> int:
    """Submit ``todo`` (at most ``len(slots)`` jobs live at once, counting those still live from
    earlier calls; the entries are up to date, see :func:`refresh`) and, if the options say
    so, wait for all of them; return the number submitted."""
    ex = make_executor(opts, sw.out_dir)
    handles: dict[str, submitit.Job] = {}
    live = [e for e in sw.index["runs"] if e["status"] in ("queued", "running")]
    free = [s for s in range(len(slots)) if s >= len(live)]
    slot_of: dict[str, int] = {}
    n, poll = 0, 0.5
    try:
        while True:
            while todo and free:
                t, s = todo.pop(0), free.pop(0)
                handles[t.run.name] = submit_one(sw, ex, opts, t, slots[s], len(slots), env)
                slot_of[t.run.name] = s
                n += 1
            if not opts.waits:
                break
            before = {e["name"]: e["status"] for e in sw.index["runs"]}
            live = refresh(sw, handles)
            poll = min(2 * poll, POLL_MAX_S[opts.launcher])
            for e in sw.index["runs"]:
                if before[e["name"]] != e["status"]:
                    poll = 0.5
                    _announce(sw, e)
                    if e["name"] in slot_of and e["name"] not in live:
                        free.append(slot_of.pop(e["name"]))
            sw.save()
            if not live and not todo:
                break
            time.sleep(poll)
    except KeyboardInterrupt:
        _interrupted(sw, opts, handles)
        raise
    if not opts.waits and n:
        sw.say(f"submitted {n} job(s); follow them with `adamrot sweep {sw.index.get('sweep_file') or ''}"
               " --status`; run the same command again to record results and submit the rest")
    return n


def _announce(sw: Sweep, e: dict[str, Any]) -> None:
    extra = f" rc={e['returncode']}" if e["status"] in ("finished", "failed", "interrupted") else ""
    sw.say(f"{e['status']:<8} {e['name']}{extra}")
    if e["status"] == "failed":
        for line in (e.get("log_tail") or "").splitlines()[-5:]:
            sw.say(f"        | {line}")


def _interrupted(sw: Sweep, opts: LaunchOptions, handles: dict[str, submitit.Job]) -> None:
    """Ctrl-C while waiting: local jobs are cancelled (they live on this machine) and recorded
    as interrupted; SLURM jobs keep running on the cluster."""
    if opts.launcher == "slurm":
        sw.say(f"stopped waiting; {len(handles)} SLURM job(s) keep running "
               "(`adamrot sweep FILE --status` to follow them)")
        return
    for job in handles.values():
        job.cancel(check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(scheduler_state("local", j) == "running"
                                              for j in handles.values()):
        time.sleep(0.1)
    refresh(sw, handles)
    for e in sw.index["runs"]:
        if e["name"] in handles and e["status"] in ("queued", "running"):
            end_attempt(e, None, None, os.path.join(e["dir"], LOG_NAME), status="interrupted")
    sw.save()
    sw.say("interrupted: cancelled " + ", ".join(shlex.quote(n) for n in handles))
