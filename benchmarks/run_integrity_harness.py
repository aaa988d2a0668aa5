"""Helpers of benchmarks/run_integrity_cases.py: running ``adamrot`` as a user would on
tiny runs, and what the user reads of it."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
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
BASE = TMP / "base"


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
