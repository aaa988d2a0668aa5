"""The SLURM path with a real tiny Lightning fit: fake ``sbatch``/``srun`` run the script
submitit writes, a simulated preemption (USR2 to the job's task) stops the trainer with a
checkpoint and requeues the job, the requeued job resumes from ``last.ckpt``, and the run ends
bitwise equal to a straight run; ``--status`` shows the two starts."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import torch
import yaml

from adamrot import sweep as sw
from test_sweep import REPO, index, ws  # noqa: F401 (fixture)
from test_sweep_submitit import jid, slurm, slurm_calls, wait_for  # noqa: F401 (fixture)

SLOW = '''
import time
from lightning.pytorch.callbacks import Callback


class SlowSteps(Callback):
    """Sleeps after every training batch: leaves time to preempt the run mid-way."""

    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_train_batch_end(self, *args, **kwargs):
        time.sleep(self.seconds)
'''

FIXED = {
    "model.init_args.n_layer": 1, "model.init_args.n_embd": 32, "model.init_args.n_head": 2,
    "model.init_args.block_size": 32, "data.init_args.block_size": 32,
    "data.init_args.max_bytes": 100000, "data.init_args.val_max_tokens": 4096,
    "data.init_args.batch_size": 4, "model.init_args.warmup_steps": 2,
    "trainer.limit_val_batches": 2, "trainer.enable_progress_bar": False,
    "trainer.max_steps": 12, "trainer.val_check_interval": 12,
    "checkpoint.every_n_train_steps": 2,
    "trainer.callbacks": [{"class_path": "slowstep.SlowSteps", "init_args": {"seconds": 0.4}}],
}


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, x in enumerate(obj):
            yield from _tensors(x, f"{prefix}/{i}")


def test_slurm_requeue_of_a_real_fit_resumes_bitwise(slurm, monkeypatch, capsys):
    work = slurm.parent
    (work / "slowstep.py").write_text(SLOW)
    monkeypatch.syspath_prepend(str(work))     # the jobs run in `work`, which -m puts on the path
    fixed = dict(FIXED, **{"data.init_args.cache_dir": str(work / "cache")})
    (work / "s.yaml").write_text(yaml.safe_dump({
        "name": "demo", "out_dir": "runs/demo",
        "configs": [os.path.join(REPO, "configs", "gpt2", "tiny.yaml")],
        "fixed": fixed, "grid": {"seed_everything": [0]}}, sort_keys=False))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert sw.main(["s.yaml", "--launcher", "slurm", "--time", "60"]) == 0
    printed = capsys.readouterr().out
    assert "preflight of sweep 'demo'" in printed and "total: 1 run(s)" in printed
    out = work / "runs" / "demo" / "run"
    wait_for(lambda: (out / "checkpoints" / "last.ckpt").exists(), timeout=240,
             what="the first checkpoint")
    for pid in (slurm / f"{jid()}.tasks").read_text().split():   # SLURM's signal
        os.kill(int(pid), signal.SIGUSR2)
    wait_for(lambda: (slurm / f"{jid()}.state").read_text() == "COMPLETED", timeout=300,
             what="the requeued job")
    assert [c[1:] for c in slurm_calls(slurm, "scontrol")] == [["requeue", jid()]]
    rec = json.loads((out / "job.json").read_text())
    assert rec["state"] == "finished" and rec["starts"] == 2
    assert rec["resumed_from"].endswith("last.ckpt")
    log = (out / "run.log").read_text()
    assert log.count("=== submitit job") == 2 and "resuming from" in log

    straight = work / "straight"
    cmd = [sys.executable, "-m", "adamrot.cli", "fit", "--config",
           os.path.join(REPO, "configs", "gpt2", "tiny.yaml")]
    for k, v in sorted(fixed.items(), key=lambda kv: not kv[0].endswith(".class_path")):
        cmd += [f"--{k}", sw.cli_value(v)]
    cmd += ["--seed_everything", "0", "--trainer.default_root_dir", str(straight)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu",
                   weights_only=False)
    assert a["global_step"] == b["global_step"] == 12
    ta, tb = dict(_tensors(a["state_dict"])), dict(_tensors(b["state_dict"]))
    oa, ob = dict(_tensors(a["optimizer_states"])), dict(_tensors(b["optimizer_states"]))
    assert ta.keys() == tb.keys() and oa.keys() == ob.keys() and ta
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert all(torch.equal(oa[k], ob[k]) for k in oa)

    assert sw.main(["s.yaml", "--launcher", "slurm", "--time", "60", "--no-preflight"]) == 0
    e = index(work / "runs" / "demo")["run"]
    assert e["status"] == "finished" and e["starts"] == 2 and e["attempts"] == 2
    capsys.readouterr()
    sw.main(["s.yaml", "--status"])
    assert re.search(r"^run\s+finished\s+rc=0.*2 starts \(1 requeue\)", capsys.readouterr().out,
                     re.M)
