"""A run directory is sacred (docs/RUNS.md): one test per defect of the run-integrity issue
(numbers in the test names), each reproducing it and asserting the fixed behaviour — where a
command must not touch a run, the run's files are byte-identical afterwards.

Tiny GPTs (2 layers, 32 dims) on the embedded corpus, 4–6 optimizer steps.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from adamrot.cli import EXIT_CONFIG_ERROR, main
from adamrot.runs import DirLock
from callbacks.checkpoint_io import (
    CHECKSUM_KEY,
    RUN_STATE_KEY,
    AtomicCheckpointIO,
    CheckpointCorrupt,
    load_checkpoint,
)
from datamodules.text import TextDataModule
from lightning_modules.base import warmup_cosine

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


def fit(root: Path, *args: str, base=TINY) -> int:
    return main(["fit", *base, *args, "--trainer.default_root_dir", str(root)])


def refused(capsys, *argv: str) -> str:
    """Run ``adamrot ARGV``, expect exit 2 and return stderr from the ``adamrot: error:``
    line on (warnings before it are Lightning's)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(list(argv))
    assert e.value.code == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err
    assert "adamrot: error: " in err, err[-2000:]
    return err[err.index("adamrot: error: "):]


def files(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def scalars(directory: Path, tag: str) -> dict[int, float]:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] else {}


def step_of(path: Path) -> int:
    return int(load_checkpoint(path)["global_step"])


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 4-step run (checkpoints at steps 2 and 4; AdamW lr 3e-3, scope none)."""
    root = tmp_path_factory.mktemp("base") / "run"
    assert fit(root, "--checkpoint.save_top_k", "-1", "--checkpoint.filename", "{step}") == 0
    return root


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    """A private copy of :func:`base_run`."""
    dst = tmp_path / "orig"
    shutil.copytree(base_run, dst)
    return dst


# ---- 1. a saved config is a template, never a destination ----------------------------------

def test_1_saved_config_writes_only_into_the_new_directory(run, tmp_path, capsys):
    template = yaml.safe_load((run / "config.yaml").read_text())
    assert template["ckpt_path"] is None and not template["trainer"].get("logger")
    # configs saved by older versions named the logger's and checkpoints' directories
    template["trainer"]["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(run), "name": "", "version": ""}}
    template["checkpoint"]["dirpath"] = str(run / "checkpoints")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(template))
    before = files(run)
    new = tmp_path / "new"
    assert main(["fit", "--config", str(tmp_path / "old.yaml"),
                 "--trainer.default_root_dir", str(new)]) == 0
    assert files(run) == before
    assert step_of(new / "checkpoints/last.ckpt") == 4
    assert scalars(new, "train/loss") and (new / "config.yaml").exists()
    # --ckpt_path last means the new directory's last checkpoint, never the template's run
    err = refused(capsys, "fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last",
                  "--trainer.default_root_dir", str(tmp_path / "other"))
    assert "no checkpoint in" in err and str(tmp_path / "other") in err
    assert files(run) == before and not (tmp_path / "other").exists()
    # configs saved by older versions also recorded the checkpoint the run resumed from
    template["ckpt_path"] = str(run / "checkpoints/last.ckpt")
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(template))
    err = refused(capsys, "fit", "--config", str(tmp_path / "old.yaml"),
                  "--trainer.default_root_dir", str(tmp_path / "other"))
    assert "comes from a config file" in err and "--ckpt_path on the command line" in err
    assert files(run) == before and not (tmp_path / "other").exists()


# ---- 2. the newest checkpoint by recorded step, whatever its name ---------------------------

def test_2_resume_finds_the_newest_checkpoint_by_step(run, tmp_path):
    moved = tmp_path / "moved"
    run.rename(moved)                      # a moved run, resumed with another checkpoint period
    assert fit(moved, "--trainer.max_steps", "6", "--checkpoint.every_n_train_steps", "3") == 0
    ckpts = moved / "checkpoints"
    assert not list(ckpts.glob("last-v*.ckpt"))          # last.ckpt is always last.ckpt
    assert step_of(ckpts / "last.ckpt") == 6
    # a directory holding last.ckpt at step 4 and last-v1.ckpt at step 6 (older Lightning)
    (ckpts / "last.ckpt").rename(ckpts / "last-v1.ckpt")
    shutil.copy(ckpts / "step=4.ckpt", ckpts / "last.ckpt")
    assert fit(moved, "--trainer.max_steps", "7") == 0
    resumes = [yaml.safe_load(line) for line in (moved / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["step"] == 6 and resumes[-1]["checkpoint"].endswith("last-v1.ckpt")
    assert step_of(ckpts / "last.ckpt") == 7
    assert sorted(scalars(moved, "train/loss")) == list(range(7))   # no step twice


def test_2_resume_never_does_not_mix_two_histories(run, capsys):
    before = files(run)
    err = refused(capsys, "fit", *TINY, "--resume", "never", "--trainer.default_root_dir", str(run))
    assert "already holds a run" in err and "step 4" in err
    assert files(run) == before


def test_2_resume_on_another_validation_set_is_refused(run, capsys):
    """A run records its data (``data.json``: prepared key, digest of the validation windows);
    resuming it on a different validation set (another ``val_max_tokens``; or, as here, a
    cache rebuilt by another version) is refused before anything is written, unless the
    user accepts it (``--accept_changes``, recorded in ``resumes.jsonl``)."""
    recorded = yaml.safe_load((run / "data.json").read_text())
    assert recorded["val_windows"] == 1024 // 33 and len(recorded["val_digest"]) == 16
    before = files(run)
    err = refused(capsys, "fit", *TINY, "--data.init_args.val_max_tokens", "512",
                  "--trainer.max_steps", "6", "--trainer.default_root_dir", str(run))
    assert "data.val_max_tokens: checkpoint 1024, config 512" in err
    assert files(run) == before
    (run / "data.json").write_text(json.dumps({**recorded, "val_digest": "0" * 16}))
    before = files(run)
    err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6",
                  "--trainer.default_root_dir", str(run))
    assert f"{run / 'data.json'}: this run was trained on other data" in err
    assert f"val_digest: {'0' * 16!r} -> {recorded['val_digest']!r}" in err
    assert "--accept_changes" in err
    assert files(run) == before
    assert fit(run, "--trainer.max_steps", "6", "--accept_changes", "true") == 0
    line = json.loads((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert line["data_identity"] == {"val_digest": ["0" * 16, recorded["val_digest"]]}
    assert fit(run, "--trainer.max_steps", "7") == 0          # accepted once, for good


# ---- 3. validate never modifies the training run -------------------------------------------

def test_3_validate_leaves_the_run_byte_identical(run, capsys):
    before = files(run)
    assert main(["validate", "--config", str(run / "config.yaml"), "--ckpt_path", "last",
                 "--trainer.default_root_dir", str(run)]) == 0
    after = files(run)
    assert {k: v for k, v in after.items() if not k.startswith("validate/")} == before
    assert scalars(run / "validate", "val/loss")
    assert not (run / "validate" / "config.yaml").exists()


# ---- 4. optimizer changes on resume: applied deliberately or refused -----------------------

def test_4_new_lr_is_applied_from_the_next_step_and_recorded(run):
    assert fit(run, "--trainer.max_steps", "6",
               "--model.init_args.optimizer.init_args.lr", "1e-3") == 0
    lr = scalars(run, "train/lr")
    for s in (4, 5):
        assert lr[s] == pytest.approx(1e-3 * warmup_cosine(s, 2, 8, 0.1), rel=1e-6), (s, lr[s])
    assert lr[3] == pytest.approx(3e-3 * warmup_cosine(3, 2, 8, 0.1), rel=1e-6)
    saved = yaml.safe_load((run / "config.yaml").read_text())    # the run as it was started
    assert saved["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 3e-3
    change = yaml.safe_load((run / "resumes.jsonl").read_text().splitlines()[-1])
    assert change["step"] == 4 and change["changes"] == {"model.optimizer.lr": [0.003, 0.001],
                                                         "trainer.max_steps": [4, 6]}


@pytest.mark.parametrize("args, expected", [
    (["--model.init_args.optimizer", '{"class_path": "torch.optim.SGD", "init_args": '
      '{"lr": 0.003, "momentum": 0.9}}'],
     "model.optimizer.class_path: checkpoint 'torch.optim.AdamW', config 'torch.optim.SGD'"),
    (["--model.init_args.optimizer.init_args.betas", "[0.8, 0.9]"],
     "model.optimizer.betas: checkpoint [0.9, 0.95], config [0.8, 0.9]"),
    (["--model.init_args.rotation.scope", "global", "--ckpt_path", "last"],
     "model.rotation.scope: checkpoint 'none', config 'global'"),
    (["--model.init_args.n_embd", "64", "--ckpt_path", "last"],
     "model.n_embd: checkpoint 32, config 64"),
], ids=["optimizer_class", "betas", "scope_with_last", "width_with_last"])
def test_4_other_changes_are_refused_with_both_values(run, capsys, args, expected):
    before = files(run)
    err = refused(capsys, "fit", *TINY, *args, "--trainer.max_steps", "6",
                  "--trainer.default_root_dir", str(run))
    assert expected in err, err
    assert files(run) == before


def test_4_checkpoint_without_config_record_refuses_another_optimizer(run, capsys):
    """Checkpoints written before they recorded their config: the optimizer state itself
    shows the change (no ``KeyError: 'momentum'`` traceback)."""
    ck = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    for key in (RUN_STATE_KEY, CHECKSUM_KEY):
        ck.pop(key)
    torch.save(ck, run / "checkpoints/last.ckpt")
    err = refused(capsys, "fit", *TINY, "--model.init_args.optimizer",
                  '{"class_path": "torch.optim.SGD", "init_args": {"lr": 0.003, "momentum": 0.9}}',
                  "--trainer.max_steps", "6", "--trainer.default_root_dir", str(run))
    assert "another optimizer" in err and "momentum" in err


# ---- 5. one writer per directory ----------------------------------------------------------

def test_5_second_writer_is_refused_naming_the_first(run, capsys):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".run.lock").write_text(f"{holder.pid}\nadamrot fit --config first.yaml\n")
        before = files(run)
        err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6",
                      "--trainer.default_root_dir", str(run))
        assert f"pid {holder.pid}" in err and "adamrot fit --config first.yaml" in err
        assert files(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is taken over, and released at the end
    assert fit(run, "--trainer.max_steps", "5") == 0
    assert not (run / ".run.lock").exists()
    with DirLock(run, ".run.lock"):           # a live lock of this process is re-entrant
        pass


# ---- 6. corrupted checkpoints are named, never trained on ----------------------------------

def _flip_a_tensor_byte(path: Path) -> None:
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        at = info.header_offset + 30 + n + m + info.file_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))


def test_6_flipped_byte_in_tensor_data_is_refused(run, capsys):
    last = run / "checkpoints/last.ckpt"
    _flip_a_tensor_byte(last)
    before = files(run)
    with pytest.raises(CheckpointCorrupt, match="last.ckpt is corrupt"):
        AtomicCheckpointIO().load_checkpoint(last)
    err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6",
                  "--trainer.default_root_dir", str(run))
    assert f"checkpoint {last} is corrupt" in err
    err = refused(capsys, "validate", *TINY, "--ckpt_path", str(last),
                  "--trainer.default_root_dir", str(run))
    assert "is corrupt" in err
    assert files(run) == before


# ---- 7. counters are part of the state ----------------------------------------------------

def test_7_tokens_seen_continue_after_resume(base_run, tmp_path):
    straight = tmp_path / "straight"
    assert fit(straight, "--trainer.max_steps", "6") == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(base_run, resumed)
    assert fit(resumed, "--trainer.max_steps", "6") == 0
    a, b = scalars(straight, "train/tokens"), scalars(resumed, "train/tokens")
    later = [s for s in b if s >= 4]
    assert later and all(b[s] == a[s] for s in later), (a, b)
    assert load_checkpoint(resumed / "checkpoints/last.ckpt")[RUN_STATE_KEY]["tokens_seen"] \
        == 6 * 4 * 32


# ---- 8 / 9. errors found while setting up: exit 2, nothing written ---------------------------

class BrokenCorpus(TextDataModule):
    """A datamodule whose setup finds bad content (as the text datamodule does)."""

    def setup(self, stage=None):
        raise ValueError("data.paths: corpus.jsonl line 1002: no 'text' field")


def test_8_9_setup_errors_exit_2_with_nothing_written(tmp_path, capsys):
    root = tmp_path / "run"
    err = refused(capsys, "fit", *TINY, "--data", "test_run_integrity.BrokenCorpus",
                  "--trainer.default_root_dir", str(root))
    assert err == "adamrot: error: data.paths: corpus.jsonl line 1002: no 'text' field\n"
    assert not root.exists()


# ---- 10. DDP: a rank that loses its launcher exits ----------------------------------------

def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("phase", ["setup", "training"])
def test_10_killing_rank0_leaves_no_orphan(tmp_path, phase):
    """``strategy=ddp`` starts rank 1 as a child of rank 0. SIGKILL to rank 0 while rank 1 is
    setting up the process group (it used to wait there for the 30-min timeout) or training:
    rank 1 exits within seconds; a checkpoint on disk stays intact."""
    root = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "adamrot.cli", "fit", *TINY, "--trainer.devices", "2",
           "--trainer.strategy", "ddp", "--trainer.max_steps", "100000",
           "--trainer.val_check_interval", "1000", "--trainer.default_root_dir", str(root)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    rank0 = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        ready = (lambda: len(_processes_mentioning(str(root))) > 1) if phase == "setup" \
            else (lambda: (root / "checkpoints/last.ckpt").exists())
        while not ready():
            assert rank0.poll() is None and time.time() < deadline, "DDP run did not start"
            time.sleep(0.2)
        if phase == "setup":
            time.sleep(2)                     # rank 1 imports and joins the process group
        assert [p for p in _processes_mentioning(str(root)) if p != rank0.pid], "no rank 1"
        rank0.send_signal(signal.SIGKILL)
        rank0.wait()
        deadline = time.time() + 30
        while _processes_mentioning(str(root)) and time.time() < deadline:
            time.sleep(0.5)
        assert not _processes_mentioning(str(root)), "orphaned rank still running"
    finally:
        for pid in _processes_mentioning(str(root)):
            os.kill(pid, signal.SIGKILL)
    if phase == "training":
        assert step_of(root / "checkpoints/last.ckpt") >= 2       # intact and verified


# ---- 12. unwritable or full run directory --------------------------------------------------

def test_12_unwritable_run_directory_is_one_error_line(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    err = refused(capsys, "fit", *TINY, "--trainer.default_root_dir",
                  str(tmp_path / "a_file" / "run"))
    assert "cannot write to the run directory" in err and err.count("\n") == 1
    if os.geteuid() != 0:                       # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        err = refused(capsys, "fit", *TINY, "--trainer.default_root_dir", str(ro / "run"))
        assert "cannot write" in err


def test_12_full_disk_mid_run_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) > 1:                        # the step-4 checkpoint finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    root = tmp_path / "run"
    err = refused(capsys, "fit", *TINY, "--trainer.default_root_dir", str(root))
    monkeypatch.undo()
    assert "No space left on device" in err and "last checkpoint is intact" in err
    assert step_of(root / "checkpoints/last.ckpt") == 2
    assert not list((root / "checkpoints").glob(".*.tmp"))


# ---- the command itself --------------------------------------------------------------------

def test_help_lists_every_subcommand_quickly():
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "adamrot.cli", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - t
    assert out.returncode == 0
    for sub in ("fit", "validate", "test", "sweep", "report", "probe", "prepare"):
        assert f"\n  {sub} " in out.stdout, sub
    assert took < 2.0, took


def test_config_error_shows_the_reason_first(tmp_path, capsys):
    err = refused(capsys, "fit", *TINY, "--model.init_args.rotation.scope", "diagonal",
                  "--trainer.default_root_dir", str(tmp_path / "run"))
    first = err.splitlines()[0]
    assert first.startswith("adamrot: error: model.rotation.scope: ") and "diagonal" in first
    assert "global" in first and len(err.splitlines()) <= 3
    err = refused(capsys, "fit", *TINY, "--trainer.max_stepz", "3")
    assert "max_stepz" in err.splitlines()[0] and len(err.splitlines()) <= 3
