"""A damaged or re-used run directory is refused, never restarted (docs/RUNS.md): torn and
empty checkpoints, a renamed checksum key, a finished run re-run with another config, a seed
change on resume, a full disk inside ``torch.save``, a logger that leaves the run directory,
an impossible ``rotation.block_size``, Ctrl-C and the step-checkpoint names.

Tiny GPTs (2 layers, 32 dims) on the embedded corpus, 4–6 optimizer steps.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from adamrot.cli import main
from callbacks.checkpoint_io import (
    CHECKSUM_KEY,
    CheckpointCorrupt,
    load_checkpoint,
    scan_checkpoints,
)
from test_run_integrity import TINY, files, fit, refused, scalars, step_of


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A finished 4-step run with the default step-checkpoint names (steps 2 and 4)."""
    root = tmp_path_factory.mktemp("damage") / "run"
    assert fit(root, "--checkpoint.save_top_k", "-1") == 0
    return root


@pytest.fixture
def run(base_run, tmp_path) -> Path:
    dst = tmp_path / "orig"
    shutil.copytree(base_run, dst)
    return dst


def resumes(run: Path) -> list[dict]:
    path = run / "resumes.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_step_checkpoints_are_named_step_N(base_run):
    names = sorted(p.name for p in (base_run / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step=2.ckpt", "step=4.ckpt"], names
    assert step_of(base_run / "checkpoints/step=2.ckpt") == 2
    assert json.loads((base_run / "run.json").read_text())["run_id"]


# ---- 1. a torn or empty checkpoint is refused, never taken for "no checkpoint" --------------

@pytest.mark.parametrize("damage", ["torn", "empty"])
def test_torn_last_ckpt_names_the_newest_intact_one_and_from_intact_continues(run, capsys,
                                                                              damage):
    last = run / "checkpoints/last.ckpt"
    os.truncate(last, last.stat().st_size // 2 if damage == "torn" else 0)
    (run / "checkpoints/step=4.ckpt").unlink()           # the newest intact one is step 2
    before = files(run)
    for extra in ([], ["--resume", "never"], ["--ckpt_path", "last"]):
        err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6", *extra,
                      "--trainer.default_root_dir", str(run))
        assert str(last) in err.splitlines()[0], err
        assert files(run) == before                       # nothing restarted, nothing written
    assert "step=2.ckpt (step 2)" in refused(capsys, "fit", *TINY, "--trainer.max_steps", "6",
                                             "--trainer.default_root_dir", str(run))
    assert fit(run, "--trainer.max_steps", "6", "--resume", "from-intact") == 0
    line = resumes(run)[-1]
    assert line["step"] == 2 and line["checkpoint"].endswith("step=2.ckpt")
    assert "from-intact" in line["found_by"] and "last.ckpt" in line["found_by"]
    assert step_of(last) == 6                            # replaced by an intact one


def test_torn_last_ckpt_without_an_intact_one_is_refused(run, capsys):
    for p in (run / "checkpoints").glob("step=*.ckpt"):
        p.unlink()
    last = run / "checkpoints/last.ckpt"
    os.truncate(last, 5000)
    before = files(run)
    err = refused(capsys, "fit", *TINY, "--trainer.default_root_dir", str(run))
    assert str(last) in err and "No intact checkpoint" in err
    err = refused(capsys, "fit", *TINY, "--resume", "from-intact",
                  "--trainer.default_root_dir", str(run))
    assert "no intact checkpoint" in err
    assert files(run) == before
    readable, damaged = scan_checkpoints(run / "checkpoints")
    assert readable == [] and [p.name for p, _ in damaged] == ["last.ckpt"]


def test_explicit_ckpt_path_continues_past_a_torn_last(run):
    os.truncate(run / "checkpoints/last.ckpt", 0)
    intact = run / "checkpoints/step=2.ckpt"
    assert fit(run, "--trainer.max_steps", "6", "--ckpt_path", str(intact)) == 0
    assert resumes(run)[-1]["step"] == 2 and resumes(run)[-1]["checkpoint"] == str(intact)


def test_corrupt_newest_checkpoint_names_the_intact_one(run, capsys):
    from test_run_integrity import _flip_a_tensor_byte
    last = run / "checkpoints/last.ckpt"
    for p in (last, run / "checkpoints/step=4.ckpt"):
        _flip_a_tensor_byte(p)
    err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6",
                  "--trainer.default_root_dir", str(run))
    assert "is corrupt" in err and "step=2.ckpt (step 2)" in err


# ---- 6. a missing or renamed checksum key is corruption, not "legacy" ----------------------

def test_renamed_checksum_key_is_corrupt(run, capsys):
    last = run / "checkpoints/last.ckpt"
    ckpt = torch.load(last, weights_only=True)
    ckpt["adamrot_checksuM"] = ckpt.pop(CHECKSUM_KEY)
    ckpt["state_dict"]["model.lm_head.weight"][0, 0] += 1.0          # and a changed weight
    torch.save(ckpt, last)
    with pytest.raises(CheckpointCorrupt, match="adamrot_checksuM"):
        load_checkpoint(last)
    del ckpt["adamrot_checksuM"]                                      # removed altogether
    torch.save(ckpt, last)
    with pytest.raises(CheckpointCorrupt, match="no 'adamrot_checksum'"):
        load_checkpoint(last)
    err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6",
                  "--trainer.default_root_dir", str(run))
    assert "is corrupt" in err
    # a checkpoint from before checksums (no adamrot key at all) still loads
    legacy = {k: v for k, v in ckpt.items() if not k.startswith("adamrot")}
    torch.save(legacy, run / "legacy.ckpt")
    assert load_checkpoint(run / "legacy.ckpt")["global_step"] == 4


# ---- 2 / 3. the run's record is append-only -------------------------------------------------

def test_finished_run_rerun_with_a_new_lr_is_refused(run, capsys):
    before = files(run)
    err = refused(capsys, "fit", "--config", str(run / "config.yaml"),
                  "--model.init_args.optimizer.init_args.lr", "0.01",
                  "--trainer.default_root_dir", str(run))
    assert "the run is finished" in err and "model.optimizer.lr 0.003 -> 0.01" in err
    assert files(run) == before
    assert main(["fit", "--config", str(run / "config.yaml"),     # the same config: a no-op
                 "--trainer.default_root_dir", str(run)]) == 0
    assert files(run) == before


def test_seed_change_on_resume_is_refused_and_a_data_change_opt_in(run, capsys):
    before = files(run)
    for extra in ([], ["--accept_changes", "true"]):
        err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6", "--seed_everything",
                      "99", *extra, "--trainer.default_root_dir", str(run))
        assert "seed_everything: checkpoint 1337, config 99" in err
        assert "--seed_everything 1337" in err
        assert files(run) == before
    err = refused(capsys, "fit", *TINY, "--trainer.max_steps", "6",
                  "--data.init_args.batch_size", "2", "--trainer.default_root_dir", str(run))
    assert "data.batch_size: checkpoint 4, config 2" in err and "--accept_changes" in err
    assert files(run) == before
    assert fit(run, "--trainer.max_steps", "6", "--data.init_args.batch_size", "2",
               "--accept_changes", "true") == 0
    line = resumes(run)[-1]
    assert line["step"] == 4 and line["changes"]["data.batch_size"] == [4, 2]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["seed_everything"] == 1337                      # the run as it was started
    assert saved["data"]["init_args"]["batch_size"] == 4 and not saved["accept_changes"]


def test_applied_lr_change_keeps_the_starting_config(run):
    start = (run / "config.yaml").read_bytes()
    assert fit(run, "--trainer.max_steps", "6",
               "--model.init_args.optimizer.init_args.lr", "1e-3") == 0
    assert (run / "config.yaml").read_bytes() == start
    assert resumes(run)[-1]["changes"]["model.optimizer.lr"] == [0.003, 0.001]


# ---- 5. disk full inside torch.save ---------------------------------------------------------

def test_disk_full_inside_torch_save_is_one_error_line(tmp_path, capsys, monkeypatch):
    """The OS refuses a write of the second checkpoint (as a full disk does): ``torch.save``
    turns that into ``RuntimeError: [enforce fail at inline_container.cc…]``."""
    import callbacks.files as cf
    real_fdopen, opened = os.fdopen, []

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        if ".last.ckpt." in os.readlink(f"/proc/self/fd/{fd}"):
            opened.append(fd)
            if len(opened) > 1:
                return Full(f)
        return f
    monkeypatch.setattr(cf.os, "fdopen", fdopen)
    root = tmp_path / "run"
    err = refused(capsys, "fit", *TINY, "--trainer.default_root_dir", str(root))
    monkeypatch.undo()
    assert err.count("\n") == 1, err
    assert "No space left on device" in err and "last.ckpt" in err and "intact" in err
    assert step_of(root / "checkpoints/last.ckpt") == 2
    assert not list((root / "checkpoints").glob(".*.tmp")) and not (root / ".run.lock").exists()


# ---- 7. nothing a config says writes outside the run directory ------------------------------

@pytest.mark.parametrize("init_args", [{"name": "../other"}, {"sub_dir": "ABS"},
                                       {"name": "", "version": "../../other"}])
def test_logger_paths_leaving_the_run_are_refused(run, tmp_path, capsys, init_args):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    before = files(other)
    new = tmp_path / "new"
    args = {k: (str(other) if v == "ABS" else v) for k, v in init_args.items()}
    logger = json.dumps({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": str(new), **args}})
    err = refused(capsys, "fit", *TINY, "--trainer.logger", logger,
                  "--trainer.default_root_dir", str(new))
    assert "trainer.logger" in err and "outside this run's directory" in err
    assert files(other) == before and not (new / "config.yaml").exists()


def test_checkpoint_filename_leaving_the_run_is_refused(tmp_path, capsys):
    err = refused(capsys, "fit", *TINY, "--checkpoint.filename", "../../x{step}",
                  "--trainer.default_root_dir", str(tmp_path / "run"))
    assert "checkpoint.filename" in err


def test_a_logger_inside_the_run_keeps_checkpoints_in_the_run(tmp_path):
    root = tmp_path / "run"
    logger = json.dumps({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                         "init_args": {"save_dir": str(root), "name": "tb"}})
    assert fit(root, "--trainer.logger", logger, "--trainer.max_steps", "2") == 0
    assert step_of(root / "checkpoints/last.ckpt") == 2 and (root / "config.yaml").exists()
    assert scalars(root / "tb" / "version_0", "train/loss")


# ---- 8. rotation.block_size 20000 refused within seconds -------------------------------------

def test_block_size_20000_is_refused_within_seconds(tmp_path, capsys):
    t = time.perf_counter()
    # 1 layer: 23,648 rotated coordinates, blocks 20000 + 3648 = 3.1 GiB, under the 4 GiB rule
    err = refused(capsys, "fit", *TINY, "--model.init_args.rotation.scope", "global",
                  "--model.init_args.n_layer", "1", "--model.init_args.rotation.block_size",
                  "20000",
                  "--trainer.default_root_dir", str(tmp_path / "run"))
    took = time.perf_counter() - t
    assert "rotation.block_size=20000" in err and "at most 120 s" in err, err
    assert took < 60, took                       # sampling alone took 10+ min before
    assert not (tmp_path / "run").exists()


# ---- Ctrl-C in fit: exit 130, the last checkpoint intact -------------------------------------

class CtrlC(Callback):
    """Ctrl-C during the 4th optimizer step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            raise KeyboardInterrupt


def test_ctrl_c_in_fit_exits_130(tmp_path, capsys):
    root = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    try:
        assert fit(root, "--trainer.callbacks", "test_run_damage.CtrlC") == 130
    finally:
        signal.signal(signal.SIGINT, handler)            # Lightning ignores SIGINT after one
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err
    assert step_of(root / "checkpoints/last.ckpt") == 2 and not (root / ".run.lock").exists()
