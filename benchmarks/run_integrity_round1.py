"""Round 1 of the run-integrity cases (docs/RUNS.md): registered by
benchmarks/run_integrity_cases.py, which runs them."""
from __future__ import annotations

import json
import os

import subprocess
import sys

from run_integrity_harness import (  # noqa: F401
    ROOT, TINY, TMP, BASE, CASES, adamrot, fit, said, step_of, copy_base, resumes, flip_byte, case)


@case("E1", "a run's saved config.yaml used as a template for a new directory")
def _():
    run, new = copy_base("e1"), TMP / "e1-new"
    before = sorted(p.name for p in run.rglob("*"))
    rc, _, err = adamrot("fit", "--config", run / "config.yaml", "--trainer.default_root_dir", new)
    same = sorted(p.name for p in run.rglob("*")) == before
    return ("fit --config RUN/config.yaml --trainer.default_root_dir NEW", rc,
            f"NEW/last.ckpt at step {step_of(new / 'checkpoints/last.ckpt')}; RUN unchanged: "
            f"{same}")


@case("E2", "`--ckpt_path last` into a directory without checkpoints")
def _():
    rc, _, err = fit(TMP / "e2", "--ckpt_path", "last")
    return "fit … --ckpt_path last --trainer.default_root_dir EMPTY", rc, said(err)


@case("E3", "a moved run resumed with another checkpoint period")
def _():
    run = copy_base("e3")
    moved = TMP / "e3-moved"
    run.rename(moved)
    rc, _, err = fit(moved, "--trainer.max_steps", "6", "--checkpoint.every_n_train_steps", "3")
    names = sorted(p.name for p in (moved / "checkpoints").glob("*.ckpt"))
    return ("mv RUN MOVED; fit … --trainer.max_steps 6 --checkpoint.every_n_train_steps 3", rc,
            f"{names}; last.ckpt at step {step_of(moved / 'checkpoints/last.ckpt')}")


@case("E4", "`validate` on a run")
def _():
    run = copy_base("e4")
    start = (run / "config.yaml").read_bytes()
    rc, _, err = adamrot("validate", *TINY, "--ckpt_path", "last",
                         "--trainer.default_root_dir", run)
    return ("validate … --ckpt_path last", rc,
            f"results in RUN/validate/ ({len(list((run / 'validate').iterdir()))} files); "
            f"config.yaml unchanged: {(run / 'config.yaml').read_bytes() == start}")


@case("E5", "resume with a new lr")
def _():
    run = copy_base("e5")
    rc, _, err = fit(run, "--trainer.max_steps", "6",
                     "--model.init_args.optimizer.init_args.lr", "1e-3")
    return "fit … --trainer.max_steps 6 --model.init_args.optimizer.init_args.lr 1e-3", rc, \
        resumes(run)


@case("E6", "resume with another optimizer class")
def _():
    run = copy_base("e6")
    rc, _, err = fit(run, "--trainer.max_steps", "6", "--model.init_args.optimizer",
                     '{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.003, '
                     '"momentum": 0.9}}')
    return "fit … --model.init_args.optimizer '{SGD …}'", rc, said(err)


@case("E7", "resume with another width")
def _():
    run = copy_base("e7")
    rc, _, err = fit(run, "--trainer.max_steps", "6", "--model.init_args.n_embd", "64")
    return "fit … --model.init_args.n_embd 64", rc, said(err)


@case("E8", "a second `fit` into a directory being written")
def _():
    run = copy_base("e8")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    (run / ".run.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                               "token": "t", "command": "adamrot fit FIRST"}))
    try:
        rc, _, err = fit(run, "--trainer.max_steps", "6")
    finally:
        holder.kill()
    return "fit … (while another fit holds RUN/.run.lock)", rc, said(err)


@case("E9", "one flipped byte in a checkpoint's tensor data")
def _():
    run = copy_base("e9")
    for p in (run / "checkpoints").glob("*.ckpt"):
        flip_byte(p)
    rc, _, err = fit(run, "--trainer.max_steps", "6")
    return "flip a byte in every checkpoint; fit … --trainer.max_steps 6", rc, said(err)


@case("E10", "tokens seen after a resume")
def _():
    import torch
    run = copy_base("e10")
    rc, _, err = fit(run, "--trainer.max_steps", "6")
    tokens = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["adamrot"]["tokens_seen"]
    return "fit … --trainer.max_steps 6", rc, f"tokens_seen {tokens} = 6 steps x 4 x 32"


@case("E11", "bad data content (a non-UTF-8 local file)")
def _():
    bad = TMP / "bad.txt"
    bad.write_bytes(b"fine text\n" * 50 + b"\xff\xfe broken \xff\n")
    rc, _, err = fit(TMP / "e11", "--data.init_args.source", "local",
                     "--data.init_args.paths", f"[{bad}]")
    return "fit … --data.init_args.source local --data.init_args.paths [bad.txt]", rc, said(err)


@case("E12", "an impossible rotation.block_size (1e8 under global)")
def _():
    rc, _, err = fit(TMP / "e12", "--model.init_args.rotation.scope", "global",
                     "--model.init_args.rotation.block_size", "100000000")
    return "fit … --model.init_args.rotation.block_size 100000000 (global)", rc, said(err)


@case("E13", "a run directory that cannot be created (its parent is a file)")
def _():
    (TMP / "a_file").write_text("")
    rc, _, err = fit(TMP / "a_file" / "run")
    return "fit … --trainer.default_root_dir A_FILE/run", rc, said(err)


@case("E14", "a truncated checkpoint given to `probe`")
def _():
    run = copy_base("e14")
    os.truncate(run / "checkpoints/last.ckpt", 100000)
    rc, _, err = adamrot("probe", run, "--batches", "2", "--hessian-rows", "0")
    return "truncate -s 100000 RUN/checkpoints/last.ckpt; probe RUN", rc, said(err)


@case("E15", "`--resume never` on a directory that holds a run")
def _():
    rc, _, err = fit(copy_base("e15"), "--resume", "never")
    return "fit … --resume never", rc, said(err)


@case("E16", "SIGTERM during training, then the same command")
def _():
    run = TMP / "e16"
    inj = ["--trainer.callbacks", json.dumps([{
        "class_path": "callbacks.fault_injection.FaultInjection",
        "init_args": {"sigterm_at_step": 3}}])]
    rc, _, err = fit(run, *inj)
    rc2, _, _ = fit(run, *inj)
    return ("fit … (SIGTERM at step 3); the same command again", rc,
            said(err) + f"; then exit {rc2}, last.ckpt at step {step_of(run / 'checkpoints/last.ckpt')}")


@case("E17", "a NaN loss")
def _():
    rc, _, err = fit(TMP / "e17", "--trainer.callbacks", json.dumps([{
        "class_path": "callbacks.fault_injection.FaultInjection",
        "init_args": {"nan_loss_at_step": 3}}]))
    return "fit … (NaN loss at step 3)", rc, said(err)[:220]


@case("E18", "a misspelt key")
def _():
    rc, _, err = fit(TMP / "e18", "--trainer.max_stepz", "3")
    return "fit … --trainer.max_stepz 3", rc, said(err)


@case("E19", "a bad value (unknown rotation scope)")
def _():
    rc, _, err = fit(TMP / "e19", "--model.init_args.rotation.scope", "diagonal")
    return "fit … --model.init_args.rotation.scope diagonal", rc, said(err)[:220]


@case("E20", "`report` on runs of which one has no config.yaml")
def _():
    a, b = copy_base("e20/a"), copy_base("e20/b")
    (b / "config.yaml").unlink()
    (b / "run.json").unlink()                    # another run, not a copy of a
    rc, _, err = adamrot("report", TMP / "e20", "--out", TMP / "e20-report")
    return "rm B/config.yaml; report DIR --out OUT", rc, said(err)
