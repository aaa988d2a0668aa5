"""What a submitit job of a sweep runs (``--launcher local|slurm``): one ``adamrot fit`` as a child
process, resumed from the run's ``last.ckpt`` whenever one exists, with its state reported in
``RUN_DIR/job.json`` (``starts``: how often this job started, requeues included;
``total_wall_time_s``: its wall time over all starts).

Timeouts and preemption: SLURM (or submitit's local controller) sends the job submitit's
signal (USR2) ahead of the end. The trainer ignores it; the job forwards SIGTERM to the trainer,
whose SIGTERM handler saves ``last.ckpt`` and exits 143, then hands over to submitit's own
handler, which calls :meth:`RunJob.checkpoint` and requeues the job. The requeued job starts the
same command, which now resumes. See ``docs/CLUSTER.md``.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import submitit
from submitit.helpers import Checkpointable

from adamrot.sweep.index import (EXIT_PREEMPTED, LOG_NAME, now, resume_checkpoint,
                                 read_job_record, write_job_record)

#: seconds the trainer gets to save its checkpoint after SIGTERM
STOP_GRACE_S = 600.0


class RunFailed(RuntimeError):
    """``adamrot fit`` exited with a non-zero status (the job then ends as failed)."""


def _preempt_signal() -> signal.Signals:
    return getattr(signal, "SIG" + submitit.JobEnvironment.USR_SIG)


class RunJob(Checkpointable):
    """``RunJob(cmd, run_dir, env)()``: run ``cmd`` (+ ``--ckpt_path last.ckpt`` if the run has
    one) on every task of the job; rank 0 writes ``run.log`` and ``job.json``, the other ranks
    ``run.rank<R>.log``. Lightning takes the DDP ranks from SLURM's task variables. Paths are
    relative to the directory the sweep was started in (``cwd``)."""

    def __init__(self, cmd: list[str], run_dir: str, env: dict[str, str], cwd: str | None = None):
        self.cmd, self.run_dir, self.env = list(cmd), str(run_dir), dict(env)
        self.cwd = cwd or os.getcwd()

    def __call__(self) -> int:
        job = submitit.JobEnvironment()
        rank = job.global_rank
        os.chdir(self.cwd)
        run_dir = Path(self.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        before_s = 0.0
        ck = resume_checkpoint(run_dir)
        cmd = self.cmd + (["--ckpt_path", ck] if ck else [])
        log_path = run_dir / (LOG_NAME if rank == 0 else f"run.rank{rank}.log")
        if rank == 0:
            rec = read_job_record(run_dir) or {}
            same = rec.get("job_id") == job.job_id
            starts = rec.get("starts", 0) + 1 if same else 1
            before_s = float(rec.get("total_wall_time_s") or 0) if same else 0.0
            write_job_record(run_dir, job_id=job.job_id, state="running", starts=starts,
                             total_wall_time_s=before_s,
                             host=socket.gethostname(), started_at=now(), finished_at=None,
                             returncode=None, resumed_from=ck, command=cmd)
        sig = _preempt_signal()
        t0 = time.monotonic()
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"=== submitit job {job.job_id} (rank {rank}) at {now()}\n"
                      f"=== {subprocess.list2cmdline(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(os.environ, **self.env),
                preexec_fn=lambda: signal.signal(sig, signal.SIG_IGN))  # the job handles it
            requeue = signal.getsignal(sig)

            def on_preempt(signum, frame):  # stop the trainer (it saves), then requeue
                _stop(proc, signal.SIGTERM)
                if rank == 0:
                    wall = time.monotonic() - t0
                    write_job_record(run_dir, state="requeued", returncode=proc.returncode,
                                     finished_at=now(), wall_time_s=wall,
                                     total_wall_time_s=before_s + wall)
                if callable(requeue):
                    requeue(signum, frame)

            signal.signal(sig, on_preempt)
            try:
                while proc.poll() is None:  # not proc.wait(): the handler must be able to wait
                    time.sleep(0.2)
                rc = proc.returncode
            except KeyboardInterrupt:  # the local executor cancels a job with SIGINT
                _stop(proc, signal.SIGINT)
                rc = proc.returncode
                if rank == 0:
                    wall = time.monotonic() - t0
                    write_job_record(run_dir, state="interrupted", returncode=rc,
                                     finished_at=now(), wall_time_s=wall,
                                     total_wall_time_s=before_s + wall)
                raise
        if rank == 0:
            state = "finished" if rc == 0 else "interrupted" if rc == EXIT_PREEMPTED else "failed"
            wall = time.monotonic() - t0
            write_job_record(run_dir, state=state, returncode=rc, finished_at=now(),
                             wall_time_s=wall, total_wall_time_s=before_s + wall)
        if rc != 0:
            raise RunFailed(f"adamrot fit exited with status {rc}; log: {log_path}")
        return rc


def _stop(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
