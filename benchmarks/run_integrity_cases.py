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
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", str(ROOT / "configs/gpt2/tiny.yaml"),
        "--model.init_args.n_layer", "2", "--model.init_args.n_embd", "32",
        "--model.init_args.n_head", "2", "--model.init_args.block_size", "32",
        "--data.init_args.block_size", "32", "--data.init_args.max_bytes", "60000",
        "--data.init_args.val_max_tokens", "1024", "--data.init_args.batch_size", "4",
        "--model.init_args.warmup_steps", "2", "--model.init_args.decay_steps", "8",
        "--trainer.max_steps", "4", "--trainer.val_check_interval", "2",
        "--trainer.limit_val_batches", "2", "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1", "--checkpoint.every_n_train_steps", "2"]
TMP = Path(tempfile.mkdtemp(prefix="adamrot-cases-"))


def adamrot(*args: str, wait: bool = True, **kw):
    cmd = [sys.executable, "-m", "adamrot.cli", *map(str, args)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, **kw)
    if not wait:
        return p
    out, err = p.communicate(timeout=900)
    return p.returncode, out, err


def fit(root: Path, *extra: str):
    return adamrot("fit", *TINY, *extra, "--trainer.default_root_dir", root)


def said(err: str) -> str:
    """What the user reads: the adamrot lines (errors, stops) and warnings, paths shortened."""
    lines, raw = [], err.splitlines()
    for i, x in enumerate(raw):
        if x.startswith("adamrot: error:"):
            lines.append(" ".join(y.strip() for y in raw[i:] if y.strip()))   # to the end
            break
        if x.startswith(("adamrot:", "warning:")) and not x.startswith("adamrot: resuming"):
            lines.append(x.strip())
        elif "UserWarning: " in x:
            lines.append(x.split("UserWarning: ", 1)[-1].strip())
    text = " / ".join(lines) or "(nothing)"
    return text.replace(str(TMP) + "/", "").replace("|", "\\|").replace("\n", " ")


def step_of(path: Path):
    import torch
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])
    except Exception as e:  # noqa: BLE001
        return f"unreadable ({type(e).__name__})"


def copy_base(name: str) -> Path:
    dst = TMP / name
    shutil.copytree(BASE, dst)
    return dst


def resumes(run: Path) -> str:
    p = run / "resumes.jsonl"
    if not p.exists():
        return "no resumes.jsonl"
    last = json.loads(p.read_text().splitlines()[-1])
    return f"resumes.jsonl: step {last['step']}, changes {last['changes']}"


def flip_byte(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + n + m + info.file_size // 2
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x40]))


# ---- the cases: (id, what, function returning (command shown, rc, message)) ----------------

CASES = []


def case(cid: str, what: str):
    def deco(fn):
        CASES.append((cid, what, fn))
        return fn
    return deco


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
    rc, _, err = adamrot("report", TMP / "e20", "--out", TMP / "e20-report")
    return "rm B/config.yaml; report DIR --out OUT", rc, said(err)


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


@case("N3c", "seed and batch size changed with `--accept_changes true`")
def _():
    run = copy_base("n3c")
    rc, _, err = fit(run, "--trainer.max_steps", "6", "--seed_everything", "99",
                     "--data.init_args.batch_size", "2", "--accept_changes", "true")
    import yaml
    seed = yaml.safe_load((run / "config.yaml").read_text())["seed_everything"]
    return ("fit … --seed_everything 99 --data.init_args.batch_size 2 --accept_changes true",
            rc, resumes(run) + f"; config.yaml seed_everything {seed}")


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
                     "--model.init_args.rotation.block_size", "20000")
    return ("fit … --model.init_args.rotation.block_size 20000 (global)", rc,
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


BASE = TMP / "base"


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
