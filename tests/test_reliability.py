"""Reliability: exact resume (single process and DDP, with and without DataLoader workers),
ranks agree, bad input refused before training, faults (non-finite values, SIGTERM, torn
checkpoint writes), and safe loading (``weights_only=True``, no remote dataset code).

Tiny GPTs (2 layers, 32 dims, block 32) on the embedded corpus, 8 optimizer steps; resumes
start from the step-3 checkpoint of a straight run and must reproduce its per-step losses and
its final weights, optimizer (with rotation) state, LR schedule and data position bit for bit.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from adamrot.cli import EXIT_CONFIG_ERROR, EXIT_NONFINITE, main
from callbacks.checkpoint_io import CHECKSUM_KEY, RUN_STATE_KEY, AtomicCheckpointIO
from callbacks.preemption import EXIT_PREEMPTED
from datamodules.text import TextDataModule

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--config", str(ROOT / "configs/gpt2/tiny.yaml"),
        "--model.init_args.n_layer", "2", "--model.init_args.n_embd", "32",
        "--model.init_args.n_head", "2", "--model.init_args.block_size", "32",
        "--data.init_args.block_size", "32", "--data.init_args.max_bytes", "60000",
        "--data.init_args.val_max_tokens", "1024", "--data.init_args.batch_size", "4",
        "--model.init_args.warmup_steps", "2", "--trainer.max_steps", "8",
        "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "1",
        "--checkpoint.every_n_train_steps", "3", "--checkpoint.save_top_k", "-1",
        "--checkpoint.filename", "{step}"]

# Two single-process variants: no workers / SVD bases refreshed every 3 steps; two workers with
# 3-batch accumulation (the step-3 checkpoint is 9 batches in: an odd worker turn), dropout and
# a global rotation.
VARIANTS = {
    "w0_svd": ["--data.init_args.num_workers", "0",
               "--model.init_args.rotation.scope", "svd",
               "--model.init_args.rotation.svd_refresh_every", "3"],
    "w2_accum3_dropout_global": ["--data.init_args.num_workers", "2",
                                 "--trainer.accumulate_grad_batches", "3",
                                 "--model.init_args.dropout", "0.1",
                                 "--model.init_args.rotation.scope", "global",
                                 "--model.init_args.rotation.block_size", "64"],
}
DDP = ["--data.init_args.num_workers", "2", "--trainer.devices", "2",
       "--model.init_args.rotation.scope", "svd",
       "--model.init_args.rotation.svd_refresh_every", "3"]


def fit(args: list[str], root: Path) -> int:
    return main(["fit", *TINY, *args, "--trainer.default_root_dir", str(root)])


def losses(run_dir: Path, tag: str = "train/loss") -> dict[int, float]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def step_ckpt(run_dir: Path, step: int) -> Path:
    (path,) = (run_dir / "checkpoints").glob(f"step={step}*.ckpt")
    return path


def assert_same(a, b, where="checkpoint"):
    """Bitwise equality of nested checkpoint content."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def assert_resumed_exactly(straight: Path, resumed: Path, from_step: int = 3):
    a, b = losses(straight), losses(resumed)
    assert sorted(a) == list(range(8))
    assert sorted(b) == list(range(from_step, 8))          # nothing skipped or repeated
    for s in b:
        assert a[s] == b[s], (s, a[s], b[s])                # float32 values, bitwise
    lr_a, lr_b = losses(straight, "train/lr"), losses(resumed, "train/lr")
    assert all(lr_a[s] == lr_b[s] for s in lr_b)
    ca, cb = load(straight / "checkpoints/last.ckpt"), load(resumed / "checkpoints/last.ckpt")
    assert ca["global_step"] == cb["global_step"] == 8
    for key in ("state_dict", "optimizer_states", "lr_schedulers", "TextDataModule"):
        assert_same(ca[key], cb[key], key)
    return ca


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Straight 8-step runs of each variant (built once)."""
    runs = {}

    def get(name: str) -> Path:
        if name not in runs:
            root = tmp_path_factory.mktemp(f"straight_{name}")
            args = DDP + ["--trainer.strategy", "ddp_fork"] if name == "ddp" else VARIANTS[name]
            assert fit(args, root) == 0
            runs[name] = root
        return runs[name]
    return get


# ---- 1. exact resume ---------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exact_resume_single_process(straight, tmp_path, variant):
    """N/2 + resume + N/2 == N straight: losses, weights, optimizer + rotation state, LR
    schedule and data position, bitwise."""
    base = straight(variant)
    assert fit([*VARIANTS[variant], "--ckpt_path", str(step_ckpt(base, 3))], tmp_path) == 0
    ck = assert_resumed_exactly(base, tmp_path)
    assert "rotation" in ck["optimizer_states"][0]
    accumulate = 3 if "accum3" in variant else 1
    assert ck["TextDataModule"]["train_batches"] == 8 * accumulate


def test_ddp_exact_resume_and_ranks_agree(straight, tmp_path):
    """2-process CPU DDP with 2 workers per rank: the straight run under ``ddp_fork``; the
    resume from its step-3 checkpoint under ``strategy=ddp`` (Lightning launches the second
    rank as a subprocess) — same losses and final state, bitwise; and on every rank of both
    runs parameters, rotation state (SVD bases) and optimizer state are identical."""
    base = straight("ddp")
    cmd = [sys.executable, "-m", "adamrot.cli", "fit", *TINY, *DDP,
           "--trainer.strategy", "ddp", "--ckpt_path", str(step_ckpt(base, 3)),
           "--trainer.default_root_dir", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = assert_resumed_exactly(base, tmp_path)
    assert ck["TextDataModule"]["layout"]["world_size"] == 2
    for run in (base, tmp_path):
        agreement = json.loads((run / "rank_agreement.json").read_text())
        assert agreement["step"] == 8 and len(agreement["ranks"]) == 2
        assert agreement["ranks"][0] == agreement["ranks"][1]


# ---- 3. bad input refused before training -------------------------------------------------

def refused(args, root, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        fit(args, root)
    assert e.value.code == EXIT_CONFIG_ERROR or e.value.code == 2
    assert not (root / "checkpoints").exists() and not (root / "config.yaml").exists()
    assert not list(root.glob("events.out.tfevents*"))
    return capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    (["--model.init_args.rotation.scope", "diagonal"], ["scope", "global", "layerwise"]),
    (["--model.init_args.rotation.only", '{"attention": "global"}'],
     ["rotation.only", "'attention'", "query", "mlp_in"]),
    (["--model.init_args.rotation.scope", "global", "--model.init_args.rotation.block_size", "0"],
     ["rotation.block_size", "positive integer", "0"]),
    (["--model.init_args.rotation.scope", "svd", "--model.init_args.rotation.svd_refresh_every",
      "-5"], ["rotation.svd_refresh_every", "positive integer"]),
    (["--model.init_args.optimizer.class_path", "torch.optim.Muon"],
     ["model.optimizer", "Muon", "2D", "MuonAdamW"]),
    (["--model.init_args.optimizer", '{"class_path": "torch.optim.LBFGS", "init_args": {}}',
      "--model.init_args.rotation.scope", "global"],
     ["model.optimizer", "LBFGS", "closure", "'global'", "rotation.scope=none"]),
    (["--nonfinite.action", "ignore"], ["nonfinite.action", "stop", "skip"]),
    (["--resume", "sometimes"], ["resume", "auto", "never"]),
], ids=["scope", "param_type", "block_size", "refresh", "muon_1d", "lbfgs_rotated",
        "nonfinite_action", "resume_mode"])
def test_bad_config_is_refused(tmp_path, capsys, args, expected):
    err = refused(args, tmp_path, capsys)
    for word in expected:
        assert word in err, (word, err[-2000:])


def test_bad_data_paths_are_refused(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    local = ["--data.init_args.source", "local", "--data.init_args.paths"]
    err = refused([*local, json.dumps([str(tmp_path / "missing.txt")])], run, capsys)
    assert "missing.txt" in err and "does not exist" in err
    (tmp_path / "empty.txt").write_text("")
    err = refused([*local, json.dumps([str(tmp_path / "empty.txt")])], run, capsys)
    assert "empty.txt" in err and "is empty" in err
    err = refused([*local, json.dumps([str(tmp_path / "*.jsonl")])], run, capsys)
    assert "*.jsonl" in err and "matched no files" in err
    locked = tmp_path / "locked.txt"
    locked.write_text("some text " * 100)
    if os.geteuid() == 0:                      # root reads anything: simulate EACCES
        real_open = Path.open

        def deny(self, *a, **k):
            if self.name == "locked.txt":
                raise PermissionError(13, "Permission denied", str(self))
            return real_open(self, *a, **k)
        monkeypatch.setattr(Path, "open", deny)
    else:
        locked.chmod(0)
    err = refused([*local, json.dumps([str(locked)])], run, capsys)
    assert "could not read local file" in err and "locked.txt" in err and "denied" in err


def test_mismatched_checkpoint_is_refused(straight, tmp_path, capsys):
    base = straight("w0_svd")
    ckpt = str(step_ckpt(base, 3))
    cases = [
        (["--model.init_args.rotation.scope", "global"],
         ["model.rotation.scope: checkpoint 'svd', config 'global'"]),
        (["--model.init_args.rotation.seed", "1"],             # null: the run's seed, 1337
         ["model.rotation.seed: checkpoint 1337, config 1"]),
        (["--model.init_args.n_layer", "3"], ["model.n_layer: checkpoint 2, config 3"]),
    ]
    for extra, expected in cases:
        err = refused([*VARIANTS["w0_svd"], *extra, "--ckpt_path", ckpt], tmp_path, capsys)
        for text in expected:
            assert text in err, err[-2000:]
    # without hyper_parameters, the model's shapes are checked instead
    bare = load(Path(ckpt))       # as written before checkpoints recorded their config
    for key in ("hyper_parameters", RUN_STATE_KEY, CHECKSUM_KEY):
        bare.pop(key)
    torch.save(bare, tmp_path / "bare.ckpt")
    err = refused([*VARIANTS["w0_svd"], "--model.init_args.n_layer", "3",
                   "--ckpt_path", str(tmp_path / "bare.ckpt")], tmp_path / "b", capsys)
    assert "missing from the checkpoint" in err and "h.2" in err
    # auto-resume (no --ckpt_path) in the straight run's directory checks the same way
    with pytest.raises(SystemExit):
        fit([*VARIANTS["w0_svd"], "--model.init_args.n_layer", "3"], base)
    err = capsys.readouterr().err
    assert "--resume auto" in err and "model.n_layer" in err
    err = refused(["--ckpt_path", str(tmp_path / "nope.ckpt")], tmp_path / "c", capsys)
    assert "nope.ckpt" in err and "does not exist" in err


def test_resume_may_extend_the_schedule(straight, tmp_path):
    """``model.decay_steps`` (like ``trainer.max_steps``) may change on resume: the run goes on
    from the checkpoint with the new cosine; the rotation and weights are the checkpoint's."""
    base = straight("w0_svd")
    ckpt = str(step_ckpt(base, 6))
    assert fit([*VARIANTS["w0_svd"], "--model.init_args.decay_steps", "40",
                "--ckpt_path", ckpt], tmp_path) == 0
    lr_a, lr_b = losses(base, "train/lr"), losses(tmp_path, "train/lr")
    assert sorted(lr_b) == [6, 7]
    assert lr_b[6] == lr_a[6]          # step 6 runs with the lr the checkpoint's optimizer holds
    assert lr_b[7] > lr_a[7]           # then the longer cosine decays more slowly


# ---- 4. faults ---------------------------------------------------------------------------

def inject(**kwargs) -> list[str]:
    return ["--trainer.callbacks", json.dumps(
        [{"class_path": "callbacks.fault_injection.FaultInjection", "init_args": kwargs}])]


@pytest.mark.parametrize("fault, what", [("nan_loss_at_step", "loss (nan)"),
                                         ("nan_grad_at_step", "gradient of model.")])
def test_nonfinite_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, fault, what):
    rc = fit([*VARIANTS["w0_svd"], *inject(**{fault: 5})], tmp_path)
    err = capsys.readouterr().err
    assert rc == EXIT_NONFINITE
    assert f"non-finite {what}" in err and "at step 5" in err and "nonfinite.action=skip" in err
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step=3.ckpt"]                 # nothing after the fault
    last = load(tmp_path / "checkpoints/last.ckpt")
    assert last["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values()
               if v.is_floating_point())


def test_nonfinite_skip_continues(tmp_path):
    with pytest.warns(UserWarning, match="non-finite gradient of model.transformer.wte.weight "
                                         "at step 2: optimizer step skipped"):
        rc = fit([*VARIANTS["w0_svd"], "--nonfinite.action", "skip",
                  *inject(nan_grad_at_step=2, nan_loss_at_step=5)], tmp_path)
    assert rc == 0
    last = load(tmp_path / "checkpoints/last.ckpt")
    assert last["global_step"] == 8
    guard = next(v for k, v in last["callbacks"].items() if k.startswith("NonFiniteGuard"))
    assert guard["skipped"] == [2, 5]
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values()
               if v.is_floating_point())


def test_sigterm_saves_last_and_the_same_command_resumes_exactly(straight, tmp_path, capsys):
    """SIGTERM to the trainer and its DataLoader workers during step 4 (3-batch accumulation):
    ``last.ckpt`` at the end of that step, exit 143; the same command then resumes by itself
    (``--resume auto``) and ends bitwise where the straight run ends."""
    variant = "w2_accum3_dropout_global"
    args = [*VARIANTS[variant], *inject(sigterm_at_step=3)]
    assert fit(args, tmp_path) == EXIT_PREEMPTED
    assert "SIGTERM" in capsys.readouterr().err
    assert load(tmp_path / "checkpoints/last.ckpt")["global_step"] == 4
    assert fit(args, tmp_path) == 0
    assert_resumed_exactly(straight(variant), tmp_path, from_step=0)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 1}, path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def torn_save(obj, f, *a, **k):             # dies half-way through writing
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]   # no temp left
    assert io.load_checkpoint(path)["global_step"] == 1                     # old one intact


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---- 5. safety ---------------------------------------------------------------------------

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_load_weights_only(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _Exploit(str(marker))}, evil, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        AtomicCheckpointIO().load_checkpoint(evil)
    err = refused(["--ckpt_path", str(evil)], tmp_path / "run", capsys)
    assert "weights_only=True" in err and "evil.ckpt" in err
    assert not marker.exists()


def test_datasets_never_run_remote_code(tmp_path, monkeypatch):
    import datasets

    calls = []

    class FakeStream:
        column_names = ["text"]

        def select_columns(self, cols):
            return self

        def iter(self, batch_size):
            yield {"text": [f"document {i} " * 20 for i in range(50)]}

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return FakeStream()
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    dm = TextDataModule(source="hub", block_size=16, val_fraction=0.2)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    TextDataModule(source="hub", hub_data_files=str(tmp_path / "x.parquet"), block_size=16,
                   max_bytes=5000, val_fraction=0.2).setup("fit")
    assert calls and all(not kw.get("trust_remote_code") for _, kw in calls)
    assert all("trust_remote_code" not in kw for _, kw in calls)
    sources = [p for d in ("adamrot", "datamodules", "lightning_modules", "rotations", "callbacks")
               for p in (ROOT / d).rglob("*.py")]
    assert not [p for p in sources if "trust_remote_code" in p.read_text()]
