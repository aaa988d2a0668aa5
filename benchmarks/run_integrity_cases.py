"""Run the run-integrity cases of docs/RUNS.md as a user would, and print the table (case,
command, exit status, what the user sees). On demand, not a test: ~15 min on 2 CPU cores.

    .venv/bin/python benchmarks/run_integrity_cases.py [--only N1a,N2] > cases.md

Tiny GPTs (2 layers, 32 dims) on the embedded corpus, 4-6 optimizer steps, in a temporary
directory (the disk-full case mounts a 800 KiB tmpfs: needs root, else it is skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from run_integrity_harness import (  # noqa: F401
    ROOT, TINY, TMP, BASE, CASES, adamrot, fit, said, step_of, copy_base, resumes, flip_byte, case)
import run_integrity_round1  # noqa: F401,E402  (registers the round-1 cases first)


# ---- round 2 -----------------------------------------------------------------------------

def torn(name: str, size: int, drop_step4: bool = True) -> Path:
    run = copy_base(name)
    if drop_step4:
        (run / "checkpoints/step=4.ckpt").unlink()
    os.truncate(run / "checkpoints/last.ckpt", size)
    return run


@case("N1a", "torn last.ckpt (half its bytes), same command")
def _():
    rc, _, err = fit(torn("n1a", 230000), "--trainer.max_steps", "6")
    return "truncate -s 230000 RUN/checkpoints/last.ckpt; fit …", rc, said(err)


@case("N1b", "0-byte last.ckpt, same command")
def _():
    rc, _, err = fit(torn("n1b", 0), "--trainer.max_steps", "6")
    return "truncate -s 0 RUN/checkpoints/last.ckpt; fit …", rc, said(err)


@case("N1c", "torn last.ckpt, `--resume never`")
def _():
    rc, _, err = fit(torn("n1c", 0), "--trainer.max_steps", "6", "--resume", "never")
    return "fit … --resume never", rc, said(err)


@case("N1d", "torn last.ckpt, `--resume from-intact`")
def _():
    run = torn("n1d", 0)
    rc, _, err = fit(run, "--trainer.max_steps", "6", "--resume", "from-intact")
    line = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    return ("fit … --resume from-intact", rc,
            f"resumes.jsonl: step {line['step']}, found_by {line['found_by']!r}".replace(
                str(TMP) + "/", "") + f"; last.ckpt now step {step_of(run / 'checkpoints/last.ckpt')}")


@case("N1e", "torn last.ckpt and no intact checkpoint")
def _():
    run = torn("n1e", 5000)
    for p in (run / "checkpoints").glob("step=*.ckpt"):
        p.unlink()
    rc, _, err = fit(run, "--trainer.max_steps", "6")
    return "truncate -s 5000 RUN/checkpoints/last.ckpt (only checkpoint); fit …", rc, said(err)


@case("N2", "a finished lr = 0.003 run re-run with lr 0.01")
def _():
    run = copy_base("n2")
    rc, _, err = adamrot("fit", "--config", run / "config.yaml",
                         "--model.init_args.optimizer.init_args.lr", "0.01",
                         "--trainer.default_root_dir", run)
    return ("fit --config RUN/config.yaml --model.init_args.optimizer.init_args.lr 0.01 "
            "--trainer.default_root_dir RUN", rc, said(err))


@case("N3a", "`--seed_everything 99` on resume")
def _():
    rc, _, err = fit(copy_base("n3a"), "--trainer.max_steps", "6", "--seed_everything", "99")
    return "fit … --trainer.max_steps 6 --seed_everything 99", rc, said(err)


@case("N3b", "another batch size on resume")
def _():
    rc, _, err = fit(copy_base("n3b"), "--trainer.max_steps", "6",
                     "--data.init_args.batch_size", "2")
    return "fit … --trainer.max_steps 6 --data.init_args.batch_size 2", rc, said(err)


@case("N3c", "`--seed_everything 99` with `--accept_changes true`")
def _():
    rc, _, err = fit(copy_base("n3c"), "--trainer.max_steps", "6", "--seed_everything", "99",
                     "--accept_changes", "true")
    return "fit … --seed_everything 99 --accept_changes true", rc, said(err)


@case("N3d", "another batch size with `--accept_changes true`")
def _():
    run = copy_base("n3d")
    rc, _, err = fit(run, "--trainer.max_steps", "6", "--data.init_args.batch_size", "2",
                     "--accept_changes", "true")
    import yaml
    bs = yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["batch_size"]
    return ("fit … --data.init_args.batch_size 2 --accept_changes true", rc,
            resumes(run) + f"; config.yaml batch_size {bs}")


@case("N4", "`report` on a run and its copy (`cp -a lr=0.01 lr=0.01.bak`)")
def _():
    run = copy_base("n4/lr=0.01")
    shutil.copytree(run, TMP / "n4/lr=0.01.bak", symlinks=True)
    rc, out, err = adamrot("report", TMP / "n4", "--out", TMP / "n4-report")
    row = [x for x in out.splitlines() if x.startswith("| all")]
    return "report DIR --out OUT", rc, said(err) + (f"; row: {row[0]}" if row else "")


@case("N5", "disk full while writing a checkpoint (800 KiB tmpfs)")
def _():
    mnt = TMP / "n5"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=800k", "tmpfs", str(mnt)]).returncode:
        return "(needs root to mount a tmpfs)", None, "skipped"
    try:
        rc, _, err = fit(mnt / "run")
        last = step_of(mnt / "run/checkpoints/last.ckpt")
    finally:
        subprocess.run(["umount", str(mnt)])
    return "fit … --trainer.default_root_dir TMPFS/run", rc, said(err) + f"; last.ckpt step {last}"


@case("N6", "one byte changed in the key `adamrot_checksum` (and a weight)")
def _():
    import torch
    run = copy_base("n6")
    last = run / "checkpoints/last.ckpt"
    ck = torch.load(last, weights_only=True)
    ck["adamrot_checksuM"] = ck.pop("adamrot_checksum")
    ck["state_dict"]["model.lm_head.weight"][0, 0] += 1.0
    torch.save(ck, last)
    (run / "checkpoints/step=4.ckpt").unlink()
    rc, _, err = fit(run, "--trainer.max_steps", "6")
    return "rename the key in last.ckpt; fit …", rc, said(err)


def logger(**init_args) -> str:
    return json.dumps({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": init_args})


@case("N7a", "a logger `name: ../base1` writing into another run")
def _():
    copy_base("base1")
    rc, _, err = fit(TMP / "n7a", "--trainer.logger", logger(save_dir=str(TMP / "n7a"),
                                                             name="../base1"))
    return "fit … --trainer.logger '{TensorBoardLogger, name: ../base1}'", rc, said(err)


@case("N7b", "a logger `sub_dir: /abs/path/base1`")
def _():
    rc, _, err = fit(TMP / "n7b", "--trainer.logger", logger(save_dir=str(TMP / "n7b"),
                                                             sub_dir=str(TMP / "base1")))
    return "fit … --trainer.logger '{TensorBoardLogger, sub_dir: /abs/base1}'", rc, said(err)


@case("N8a", "`rotation.block_size: 20000` (global)")
def _():
    t = time.perf_counter()
    rc, _, err = fit(TMP / "n8a", "--model.init_args.rotation.scope", "global",
                     "--model.init_args.n_layer", "1",        # 3.1 GiB: passes the 4 GiB rule
                     "--model.init_args.rotation.block_size", "20000")
    return ("fit … --model.init_args.n_layer 1 --model.init_args.rotation.block_size 20000 "
            "(global)", rc,
            said(err) + f" (answered in {time.perf_counter() - t:.0f} s)")


@case("N8b", "Ctrl-C during `fit`")
def _():
    run = TMP / "n8b"
    p = fit_bg = adamrot("fit", *TINY, "--trainer.max_steps", "400",
                         "--trainer.default_root_dir", run, wait=False)
    while not (run / "checkpoints/last.ckpt").exists() and p.poll() is None:
        time.sleep(0.2)
    fit_bg.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    return ("fit … (Ctrl-C after the first checkpoint)", p.returncode,
            said(err) + f"; last.ckpt step {step_of(run / 'checkpoints/last.ckpt')}, lock "
            f"left: {(run / '.run.lock').exists()}")


@case("N8c", "step checkpoint names (`checkpoint.save_top_k: -1`)")
def _():
    return ("fit … --checkpoint.save_top_k -1", 0,
            str(sorted(p.name for p in (BASE / "checkpoints").glob("*.ckpt"))))


@case("N8d", "`.run.lock` taken on another host (its pid is dead here)")
def _():
    run = copy_base("n8d")
    (run / ".run.lock").write_text(json.dumps({"pid": 999999, "host": "node-17", "token": "x",
                                               "command": "adamrot fit (SLURM job 1)"}))
    rc, _, err = fit(run, "--trainer.max_steps", "6")
    rc2, _, err2 = fit(run, "--trainer.max_steps", "6", "--break_lock", "true")
    return ("fit …; then fit … --break_lock true", rc, said(err) + f" — then exit {rc2}: "
            + said(err2))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    only = [x for x in ap.parse_args().only.split(",") if x]
    rc, _, err = fit(BASE, "--checkpoint.save_top_k", "-1")
    assert rc == 0, err
    print("| case | what | command | exit | what the user sees |")
    print("|---|---|---|---|---|")
    for cid, what, fn in CASES:
        if only and cid not in only:
            continue
        t = time.perf_counter()
        try:
            cmd, code, msg = fn()
        except Exception as e:  # noqa: BLE001 - a case that could not run is reported
            cmd, code, msg = "?", None, f"case failed: {type(e).__name__}: {e}"
        print(f"| {cid} | {what} | `{cmd}` | {code} | {msg} |", flush=True)
        print(f"{cid} took {time.perf_counter() - t:.0f} s", file=sys.stderr)
    shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
