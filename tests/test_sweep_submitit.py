"""``adamrot sweep --launcher local|slurm`` through submitit, on CPU and without a cluster.

``local``: submitit's LocalExecutor runs a 2-run tiny GPT sweep, and ``adamrot report`` reads it.
``slurm``: fake ``sbatch``/``srun``/``sacct``/``scontrol``/``scancel`` (written below, put on
``PATH``) record their arguments and answer like SLURM; ``sbatch`` runs the job script in the
background with SLURM's job variables, ``srun`` starts one process per task with SLURM's task
variables, ``scontrol requeue`` runs the script again once it has exited.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from adamrot import sweep as sw
from test_sweep import REPO, calls, index, sweep_dict, write_sweep, ws  # noqa: F401 (fixture)

FAKE_SBATCH = """
import json, os, subprocess, sys
from pathlib import Path
d = Path(os.environ["FAKE_SLURM_DIR"])
with open(d / "calls.log", "a") as f:
    f.write(json.dumps(["sbatch", *sys.argv[1:]]) + "\\n")
jid = str(int(os.environ["FAKE_SLURM_FIRST_ID"]) + len(list(d.glob("*.script"))))
(d / f"{jid}.script").write_text(Path(sys.argv[-1]).read_text())
(d / f"{jid}.state.tmp").write_text("PENDING")
os.replace(d / f"{jid}.state.tmp", d / f"{jid}.state")  # sacct never sees half a state
if not os.environ.get("FAKE_SLURM_HOLD"):
    runner = subprocess.Popen([sys.executable, str(d / "runner.py"), jid], start_new_session=True,
                              stdout=open(d / f"{jid}.batch.log", "a"), stderr=subprocess.STDOUT)
    (d / f"{jid}.runner").write_text(str(runner.pid))  # its process group: the whole job
print(f"Submitted batch job {jid}")
"""

FAKE_RUNNER = """
import os, re, subprocess, sys
from pathlib import Path
d = Path(os.environ["FAKE_SLURM_DIR"])
jid = sys.argv[1]
script = d / f"{jid}.script"
opts = dict(re.findall(r"^#SBATCH --([\\w-]+)=?(.*)$", script.read_text(), re.M))
nodes, tpn = int(opts.get("nodes", 1)), int(opts.get("ntasks-per-node", 1))
def set_state(state):
    (d / f"{jid}.state.tmp").write_text(state)
    os.replace(d / f"{jid}.state.tmp", d / f"{jid}.state")
restarts = 0
while True:
    set_state("RUNNING")
    env = dict(os.environ, SLURM_JOB_ID=jid, SLURM_JOB_NAME=opts.get("job-name", "x"),
               SLURM_JOB_NUM_NODES=str(nodes), SLURM_NNODES=str(nodes),
               SLURM_NTASKS=str(nodes * tpn), SLURM_NTASKS_PER_NODE=str(tpn),
               SLURM_JOB_NODELIST=f"node[1-{nodes}]" if nodes > 1 else "node1",
               SLURM_RESTART_COUNT=str(restarts))
    rc = subprocess.call(["bash", str(script)], env=env)
    if (d / f"{jid}.requeue").exists():
        (d / f"{jid}.requeue").unlink()
        restarts += 1
        continue
    break
set_state("COMPLETED" if rc == 0 else "FAILED")
"""

FAKE_SRUN = """
import json, os, subprocess, sys
from pathlib import Path
d = Path(os.environ["FAKE_SLURM_DIR"])
args, out, err = sys.argv[1:], None, None
with open(d / "calls.log", "a") as f:
    f.write(json.dumps(["srun", *args]) + "\\n")
while args[0].startswith("-"):
    if args[0] in ("--output", "--error"):
        out, err = (args[1], err) if args[0] == "--output" else (out, args[1])
        args = args[2:]
    else:
        args = args[1:]
jid, n, tpn = (os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE"))
procs = []
for t in range(int(n)):
    o, e = (Path(p.replace("%j", jid).replace("%t", str(t))) for p in (out, err))
    o.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, SLURM_PROCID=str(t), SLURM_LOCALID=str(t % int(tpn)),
               SLURM_NODEID=str(t // int(tpn)), SLURM_STEP_ID="0")
    procs.append(subprocess.Popen(args, env=env, stdout=open(o, "a"), stderr=open(e, "a")))
(d / f"{jid}.tasks").write_text(" ".join(str(p.pid) for p in procs))
sys.exit(max(abs(p.wait()) for p in procs))
"""

FAKE_SACCT = """
import json, os, sys
from pathlib import Path
d = Path(os.environ["FAKE_SLURM_DIR"])
with open(d / "calls.log", "a") as f:
    f.write(json.dumps(["sacct", *sys.argv[1:]]) + "\\n")
ids = [sys.argv[i + 1] for i, a in enumerate(sys.argv) if a == "-j"]
print("JobID|State|NodeList")
for jid in ids:
    if (d / f"{jid}.state").exists():
        print(f"{jid}|{(d / f'{jid}.state').read_text()}|node1")
"""

FAKE_SCONTROL = """
import json, os, sys
from pathlib import Path
d = Path(os.environ["FAKE_SLURM_DIR"])
with open(d / "calls.log", "a") as f:
    f.write(json.dumps(["scontrol", *sys.argv[1:]]) + "\\n")
if sys.argv[1] == "requeue":
    (d / f"{sys.argv[2]}.requeue").write_text("")
"""

FAKE_SCANCEL = """
import json, os, sys
from pathlib import Path
d = Path(os.environ["FAKE_SLURM_DIR"])
with open(d / "calls.log", "a") as f:
    f.write(json.dumps(["scancel", *sys.argv[1:]]) + "\\n")
"""


_FIRST_IDS = itertools.count(1000, 100)  # job ids never repeat within a process (submitit's
#                                         watcher remembers finished ones)


@pytest.fixture
def slurm(ws, monkeypatch):
    """Fake SLURM commands on PATH; returns their state directory (``d.first``: first job id)."""
    d = ws / "fake_slurm"
    bin_dir = d / "bin"
    bin_dir.mkdir(parents=True)
    for name, src in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT),
                      ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n" + textwrap.dedent(src))
        (bin_dir / name).chmod(0o755)
    (d / "runner.py").write_text(textwrap.dedent(FAKE_RUNNER))
    monkeypatch.setenv("FAKE_SLURM_DIR", str(d))
    monkeypatch.setenv("FAKE_SLURM_FIRST_ID", str(next(_FIRST_IDS)))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    yield d
    for f in d.glob("*.runner"):  # a test that failed half-way leaves no job behind
        try:
            os.killpg(int(f.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def jid(k: int = 0) -> str:
    """The id of the k-th job submitted in this test."""
    return str(int(os.environ["FAKE_SLURM_FIRST_ID"]) + k)


def slurm_calls(d: Path, cmd: str) -> list[list[str]]:
    p = d / "calls.log"
    lines = [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
    return [c for c in lines if c[0] == cmd]


def wait_for(cond, timeout=120.0, what=""):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def sbatch_flags(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script, re.M))


def test_slurm_script_requests_the_options_and_multinode_env(slurm, capsys):
    """Two nodes × one GPU per run: the script asks for what the flags say; srun starts one task
    per GPU, and Lightning's SLURM environment in the trainer sees a 2-rank world."""
    write_sweep(slurm.parent / "s.yaml", sweep_dict(
        grid={"seed_everything": [0]},
        fixed={"trainer.accumulate_grad_batches": 2},   # 2 micro-batches: 1 on each of 2 ranks
        launch={"launcher": "slurm", "partition": "gpu", "time": "2-00:00:00", "wait": True,
                "slurm_opts": ["constraint=a100"]}))
    rc = sw.main(["s.yaml", "--nodes", "2", "--gpus-per-node", "1", "--account", "proj",
                  "--qos", "high", "--cpus-per-task", "8", "--mem", "200G",
                  "--slurm-opt", "exclusive", "--setup", "echo setting up"])
    assert rc == 0, capsys.readouterr()
    out = slurm.parent / "runs" / "demo"
    assert len(slurm_calls(slurm, "sbatch")) == 1
    script = (slurm / f"{jid()}.script").read_text()
    flags = sbatch_flags(script)
    assert {k: flags[k] for k in ("partition", "time", "nodes", "ntasks-per-node",
                                  "gpus-per-node", "account", "qos", "cpus-per-task", "mem",
                                  "constraint", "job-name", "signal")} == {
        "partition": "gpu", "time": "2880", "nodes": "2", "ntasks-per-node": "1",
        "gpus-per-node": "1", "account": "proj", "qos": "high", "cpus-per-task": "8",
        "mem": "200G", "constraint": "a100", "job-name": "demo:run", "signal": "USR2@180"}
    assert "requeue" in flags and "exclusive" in flags
    assert "echo setting up" in script and re.search(r"^srun .*submitit\.core\._submit", script,
                                                      re.M)
    idx = index(out)
    assert [(e["status"], e["job_id"]) for e in idx.values()] == [("finished", jid())]
    ranks = sorted(calls(out / "run"), key=lambda c: c["env"]["SLURM_PROCID"])
    assert [c["env"]["SLURM_PROCID"] for c in ranks] == ["0", "1"]
    for c in ranks:  # the trainer is told the world that SLURM allocated, and the kept batch
        assert c["kv"]["trainer.num_nodes"] == "2" and c["kv"]["trainer.devices"] == "1"
        assert c["kv"]["trainer.accumulate_grad_batches"] == "1"
    assert idx["run"]["overrides"]["trainer.accumulate_grad_batches"] == 1
    assert (out / "run" / "run.log").exists() and (out / "run" / "run.rank1.log").exists()

    from lightning.fabric.plugins.environments import SLURMEnvironment

    for c in ranks:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in c["env"].items():
                if v is not None and k.startswith("SLURM_"):
                    mp.setenv(k, v)
            assert SLURMEnvironment.detect()
            env = SLURMEnvironment()
            assert env.world_size() == 2
            assert env.global_rank() == int(c["env"]["SLURM_PROCID"])
            assert env.node_rank() == int(c["env"]["SLURM_NODEID"])


def test_slurm_preemption_requeues_and_resumes(slurm, monkeypatch, capsys):
    """Submit and return; the trainer runs (status: running at its step); SLURM's USR2 reaches
    the job (the trainer ignores it): the job stops the trainer with SIGTERM (it saves
    last.ckpt, exits 143) and submitit requeues it; the requeued job resumes from last.ckpt.
    Re-running the sweep records the result and submits nothing."""
    write_sweep(slurm.parent / "s.yaml", sweep_dict(grid={"seed_everything": [0]}))
    out = slurm.parent / "runs" / "demo"
    monkeypatch.setenv("FAKE_WAIT_TERM", "run")
    assert sw.main(["s.yaml", "--launcher", "slurm", "--time", "60"]) == 0
    assert index(out)["run"]["status"] == "queued"
    wait_for(lambda: (out / "run" / "waiting").exists(), what="the trainer to start")
    capsys.readouterr()
    assert sw.main(["s.yaml", "--status"]) == 0
    status = capsys.readouterr().out
    assert re.search(rf"^run\s+running\s+step 5, job {jid()}", status, re.M), status

    trainer = calls(out / "run")[0]["pid"]
    os.kill(trainer, signal.SIGUSR2)  # SLURM signals every process of the step
    time.sleep(0.5)
    os.kill(trainer, 0)  # the trainer ignored it
    for pid in (slurm / f"{jid()}.tasks").read_text().split():
        os.kill(int(pid), signal.SIGUSR2)
    wait_for(lambda: (slurm / f"{jid()}.state").read_text() == "COMPLETED", what="the requeued job")

    assert [c[1:] for c in slurm_calls(slurm, "scontrol")] == [["requeue", jid()]]
    c = calls(out / "run")
    assert len(c) == 2 and "ckpt_path" not in c[0]["kv"]
    assert c[1]["kv"]["ckpt_path"] == "runs/demo/run/checkpoints/last.ckpt"
    assert c[1]["resumed_from"] == "step=5"  # the checkpoint the SIGTERM handler saved
    assert (out / "run" / "done").exists()
    rec = json.loads((out / "run" / "job.json").read_text())
    assert rec["state"] == "finished" and rec["starts"] == 2 and rec["job_id"] == jid()

    assert sw.main(["s.yaml", "--launcher", "slurm", "--time", "60"]) == 0
    e = index(out)["run"]
    # one submission, two starts: counted from the job record, wall time over both starts
    assert e["status"] == "finished" and e["returncode"] == 0 and e["attempts"] == 2
    assert e["starts"] == 2 and e["resumed"] is True
    assert e["total_wall_time_s"] == pytest.approx(rec["total_wall_time_s"], abs=1e-3)
    assert rec["total_wall_time_s"] > rec["wall_time_s"]
    assert len(slurm_calls(slurm, "sbatch")) == 1  # nothing was missing
    capsys.readouterr()
    sw.main(["s.yaml", "--status"])
    assert re.search(r"^run\s+finished\s+rc=0.*2 starts \(1 requeue\), attempts 2, resumed",
                     capsys.readouterr().out, re.M)


def test_slurm_failure_and_queued_status(slurm, monkeypatch, capsys):
    """A job still pending shows as queued; a failing run is recorded with its log tail, and
    only it is submitted again."""
    write_sweep(slurm.parent / "s.yaml", sweep_dict(grid={"seed_everything": [0, 1]}))
    out = slurm.parent / "runs" / "demo"
    monkeypatch.setenv("FAKE_FAIL", "seed=1")
    args = ["s.yaml", "--launcher", "slurm", "--time", "60", "--wait"]
    assert sw.main(args) == 1
    idx = index(out)
    assert idx["seed=0"]["status"] == "finished"
    assert idx["seed=1"]["status"] == "failed" and "RuntimeError: boom" in idx["seed=1"]["log_tail"]
    monkeypatch.setenv("FAKE_SLURM_HOLD", "1")
    assert sw.main(args[:-1]) == 0  # without --wait: the failed run is submitted again, queued
    assert len(slurm_calls(slurm, "sbatch")) == 3
    assert index(out)["seed=1"]["status"] == "queued"
    capsys.readouterr()
    sw.main(["s.yaml", "--status"])
    assert re.search(rf"^seed=1\s+queued\s+job {jid(2)}", capsys.readouterr().out, re.M)
    assert sw.main(args[:-1]) == 0  # still queued: not submitted twice
    assert len(slurm_calls(slurm, "sbatch")) == 3


def test_slurm_dry_run_prints_the_script(ws, capsys):
    write_sweep(ws / "s.yaml", sweep_dict(grid={"seed_everything": [0, 1]},
                                          fixed={"trainer.accumulate_grad_batches": 4}))
    assert sw.main(["s.yaml", "--dry-run", "--launcher", "slurm", "--time", "72:00:00",
                    "--gpus-per-node", "4", "--partition", "gpu"]) == 0
    text = capsys.readouterr().out
    flags = sbatch_flags(text)
    assert flags["time"] == "4320" and flags["gpus-per-node"] == "4"
    assert flags["ntasks-per-node"] == "4" and flags["partition"] == "gpu"
    assert "--trainer.num_nodes 1 --trainer.devices 4" in text
    assert "--trainer.accumulate_grad_batches 1 " in text   # 4 micro-batches: 1 per GPU
    assert "trainer.accumulate_grad_batches 4 -> 1" in text
    assert not (ws / "runs").exists()


TINY_GPT = {
    "model.init_args.n_layer": 1, "model.init_args.n_embd": 32, "model.init_args.n_head": 2,
    "model.init_args.block_size": 32, "data.init_args.block_size": 32,
    "data.init_args.max_bytes": 100000, "data.init_args.val_max_tokens": 4096,
    "data.init_args.batch_size": 4, "model.init_args.warmup_steps": 2,
    "trainer.limit_val_batches": 2, "trainer.enable_progress_bar": False,
    "trainer.log_every_n_steps": 1, "trainer.max_steps": 4, "trainer.val_check_interval": 4,
}


def test_local_launcher_runs_tiny_gpt_and_report_reads_it(tmp_path, monkeypatch):
    """Two tiny GPT runs as submitit LocalExecutor jobs (the cluster code path on this machine);
    `adamrot report` reads the sweep directory."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "sweep"
    (tmp_path / "s.yaml").write_text(json.dumps({
        "name": "local2", "out_dir": str(out), "configs": ["configs/gpt2/tiny.yaml"],
        "fixed": TINY_GPT, "grid": {"model.init_args.rotation.scope": ["none", "global"]},
        "launch": {"launcher": "local", "jobs": 2}}))
    assert sw.main([str(tmp_path / "s.yaml")]) == 0
    idx = index(out)
    assert [e["status"] for e in idx.values()] == ["finished", "finished"]
    for name, e in idx.items():
        assert e["launcher"] == "local" and e["job_id"]
        assert json.loads((out / name / "job.json").read_text())["state"] == "finished"
        assert (out / name / "checkpoints" / "last.ckpt").exists()

    from adamrot.report import main as report_main

    assert report_main([str(out), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "summary.csv").read_text()
    assert "none" in table and "global" in table


def test_local_launcher_ctrl_c(ws):
    """Ctrl-C on a sweep waiting for local submitit jobs: one line, exit 130, the jobs cancelled
    (their trainers gone), the runs interrupted; submitit's own messages stay in its log."""
    write_sweep(ws / "s.yaml", sweep_dict(grid={"seed_everything": [0, 1]},
                                          launch={"launcher": "local", "jobs": 2}))
    out = ws / "runs" / "demo"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FAKE_SLEEP="120")
    p = subprocess.Popen(  # in its own process group, which gets the terminal's SIGINT
        [sys.executable, "-m", "adamrot.cli", "sweep", "s.yaml"], cwd=ws, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: (os.setpgrp(), signal.signal(signal.SIGINT, signal.SIG_DFL)))
    try:
        wait_for(lambda: all(len(calls(out / n)) == 1 for n in ("seed=0", "seed=1")),
                 what="both trainers")
        os.killpg(p.pid, signal.SIGINT)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "adamrot sweep: interrupted" in stderr
    idx = index(out)
    assert [e["status"] for e in idx.values()] == ["interrupted", "interrupted"]
    for name in idx:
        pid = calls(out / name)[0]["pid"]
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=30, what="trainer exit")
