"""Prepared data that cannot silently lie: chunk checksums checked before training, a stream
fingerprint that tells a cache cut otherwise, fresh windows each epoch, duplicates on one side
of the split (docs/DATA.md, issue 23)."""
from __future__ import annotations

import json
import random
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from callbacks.checkpoint_io import RunState
from datamodules.chunks import ChunkError
from datamodules.corpus import holdout_score, split_heldout
from datamodules.prepare import TextCorpus, prepare_text, read_manifest
from datamodules.streaming import window_shift
from datamodules.text import TextDataModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMROT_CACHE", str(tmp_path / "cache"))


def letters_corpus(path, n=60, lo=300, hi=1200, seed=0, extra=()):
    """``n`` jsonl documents of random letters (no two windows alike by chance)."""
    rng = random.Random(seed)
    docs = ["".join(rng.choices(string.ascii_letters, k=rng.randrange(lo, hi)))
            for _ in range(n)] + list(extra)
    rng.shuffle(docs)
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return str(path)


def prepared(tmp_path, name="p", workers=1, **kw):
    corpus = TextCorpus("local", (letters_corpus(tmp_path / f"{name}.jsonl", **kw),))
    out, manifest = prepare_text(corpus, out=tmp_path / name, workers=workers,
                                 val_fraction=0.1)
    return Path(out), manifest


def flip(path: Path, at: float = 0.5, value: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] = value if value is not None else data[i] ^ 1
    path.write_bytes(bytes(data))


# ---- checksums -----------------------------------------------------------------------

def test_manifest_records_chunk_checksums_and_the_cut(tmp_path):
    out, m = prepared(tmp_path, workers=2)
    assert m["cut"] == {"workers": 2, "chunk_tokens": 1 << 23}
    assert sorted(m["chunks"]["train"]) == ["chunk-0-0.bin", "chunk-1-0.bin"]
    for split in ("train", "val"):
        for name, c in m["chunks"][split].items():
            import hashlib
            data = (out / split / name).read_bytes()
            assert c == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@pytest.mark.parametrize("split,how", [("train", "half 0xFF"), ("val", "one bit")])
def test_corrupt_chunk_is_refused_naming_it(tmp_path, split, how):
    out, _ = prepared(tmp_path)
    chunk = sorted((out / split).glob("chunk-*.bin"))[0]
    if how == "one bit":
        flip(chunk, 0.7)
    else:
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2:] = b"\xff" * (len(data) - len(data) // 2)
        chunk.write_bytes(bytes(data))
    dm = TextDataModule(prepared=str(out), block_size=16, batch_size=4)
    with pytest.raises(ChunkError, match=f"^{chunk}: corrupt chunk"):
        dm.setup("fit")
    chunk.write_bytes(b"")
    with pytest.raises(ChunkError, match=f"^{chunk}: corrupt chunk \\(0 bytes"):
        TextDataModule(prepared=str(out), block_size=16, batch_size=4).setup("fit")


def test_corrupt_chunk_refused_by_fit_with_nothing_written(tmp_path):
    """``adamrot fit`` on a corrupt prepared dataset: exit 2, one ``adamrot: error:`` line
    naming the chunk, no run directory content left behind."""
    out, _ = prepared(tmp_path)
    chunk = sorted((out / "train").glob("chunk-*.bin"))[0]
    flip(chunk, 0.5)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "adamrot.cli", "fit", "--config",
         str(REPO / "configs/gpt2/tiny.yaml"), "--data.init_args.prepared", str(out),
         "--model.init_args.n_layer", "1", "--model.init_args.n_embd", "16",
         "--model.init_args.n_head", "1", "--trainer.max_steps", "2",
         "--trainer.default_root_dir", str(run)],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("adamrot: error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and f"{chunk}: corrupt chunk" in lines[0]
    assert not run.exists() or not any(run.rglob("*"))


def test_cache_cut_with_other_workers_has_another_stream(tmp_path):
    """Same corpus, same key, cut by 1 or 2 workers: the training streams differ and so do the
    run identities, which a resume compares (RunState.check_data refuses)."""
    a, ma = prepared(tmp_path, "p", workers=1)
    b, mb = prepared(tmp_path, "q", workers=2)
    assert ma["corpus_hash"] == mb["corpus_hash"] and ma["val_sha256"] == mb["val_sha256"]
    ia = TextDataModule(prepared=str(a), block_size=16, batch_size=4).identity()
    ib = TextDataModule(prepared=str(b), block_size=16, batch_size=4).identity()
    assert ia["val_digest"] == ib["val_digest"] and ia["train_stream"] != ib["train_stream"]
    run = tmp_path / "run"
    run.mkdir()
    (run / RunState.DATA_FILE).write_text(json.dumps(ia))
    RunState.check_data(str(run), ia)                             # the same stream: accepted
    with pytest.raises(ValueError, match="train_stream"):
        RunState.check_data(str(run), ib)


def test_older_cache_without_checksums_is_refused_or_rebuilt(tmp_path, recwarn):
    out, m = prepared(tmp_path)
    old = {k: v for k, v in m.items() if k not in ("chunks", "cut")}
    (out / "adamrot_prepared.json").write_text(json.dumps(old))
    with pytest.raises(ChunkError, match="without chunk checksums"):
        TextDataModule(prepared=str(out), block_size=16, batch_size=4).setup("fit")
    corpus = TextCorpus("local", (str(tmp_path / "p.jsonl"),))
    _, again = prepare_text(corpus, out=out, val_fraction=0.1)
    assert again["chunks"] == m["chunks"]
    assert any("older adamrot" in str(w.message) for w in recwarn)


# ---- fresh windows each epoch ----------------------------------------------------------

def _stream(out: Path) -> list[np.ndarray]:
    """Each training chunk's tokens, read through litdata (one window = the whole chunk)."""
    from litdata import StreamingDataset, TokensLoader
    index = json.loads((out / "train" / "index.json").read_text())["chunks"]
    streams = []
    for i, c in enumerate(index):
        ds = StreamingDataset(str(out / "train"), item_loader=TokensLoader(c["dim"]))
        streams.append(np.asarray(ds[sum(d["dim"] // c["dim"] for d in index[:i])]))
    return streams


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_shifted_windows_read_the_token_stream(tmp_path):
    """Epoch 2's windows are exactly the windows of the token stream at offsets
    ``shift + k * window`` (mod the chunk), continued at the chunk's start; epochs 1 and 2
    share no window (the unshifted grid shared all of them)."""
    out, _ = prepared(tmp_path, n=40)
    window = 17
    dm = TextDataModule(prepared=str(out), block_size=window - 1, batch_size=4, seed=3)
    loader = dm.train_dataloader()
    epochs = []
    for _ in range(3):
        epochs.append([tuple(w) for x, y in loader
                       for w in torch.cat([x, y[:, -1:]], 1).tolist()])
    (tokens,) = _stream(out)
    dim = len(tokens)
    for e, got in enumerate(epochs, 1):
        s = window_shift(3, e, window)
        assert (s == 0) == (e == 1)
        grid = [tuple(np.take(tokens, np.arange(k * window + s, (k + 1) * window + s) % dim))
                for k in range(dim // window)]
        assert set(got) <= set(grid) and len(got) >= len(grid) - 4
    shared = len(set(epochs[0]) & set(epochs[1]))
    print(f"windows shared by epochs 1 and 2: {shared} of {len(epochs[0])}")
    assert shared == 0 and len(set(epochs[1]) & set(epochs[2])) == 0


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2])
def test_shifted_epochs_resume_exactly(tmp_path, workers):
    out, _ = prepared(tmp_path, n=40)
    make = lambda: TextDataModule(prepared=str(out), block_size=16, batch_size=4,  # noqa
                                  num_workers=workers, seed=1).train_dataloader()
    ref = make()
    per_epoch = len(ref)
    straight = [x for x, _ in ref] + [x for x, _ in ref]
    stop = per_epoch + 3                                          # inside epoch 2
    first = make()
    list(first)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    del it
    resumed = make()
    resumed.load_state_dict(state)
    got = [x for x, _ in resumed]
    assert len(got) == per_epoch - 3
    assert all(torch.equal(a, b) for a, b in zip(got, straight[stop:]))


def test_seed_defaults_to_the_run_seed(tmp_path, monkeypatch):
    out, _ = prepared(tmp_path, n=30)
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert TextDataModule(prepared=str(out)).seed == 7
    assert TextDataModule(prepared=str(out), seed=2).seed == 2
    monkeypatch.delenv("PL_GLOBAL_SEED")
    assert TextDataModule(prepared=str(out)).seed == 0


# ---- duplicates ------------------------------------------------------------------------

def test_duplicates_never_straddle_the_in_memory_split():
    """Five copies of a document among 40 others, at every target that cuts near them."""
    rng = random.Random(0)
    base = ["".join(rng.choices(string.ascii_letters, k=rng.randrange(200, 400)))
            for _ in range(40)]
    straddled = 0
    for d in range(40):
        texts = base[:d] + [base[d]] * 5 + base[d + 1:]
        copies = [i for i, t in enumerate(texts) if t == base[d]]
        for frac in np.linspace(0.01, 0.5, 25):
            mask = split_heldout(texts, float(frac), 0)
            sides = {bool(mask[i]) for i in copies}
            straddled += len(sides) > 1
    assert straddled == 0


def test_duplicates_on_one_side_when_prepared(tmp_path, monkeypatch):
    """Local (in memory) and hub (streamed by 2 readers): every copy on the same side."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    dup = "duplicate " * 40
    path = letters_corpus(tmp_path / "c.jsonl", n=50, extra=[dup] * 5)
    for source, kw in (("local", {"paths": (path,)}), ("hub", {"hub_data_files": path})):
        out, m = prepare_text(TextCorpus(source, **kw), out=tmp_path / source,
                              val_fraction=0.3, workers=2)
        total = 0
        for split in ("train", "val"):
            text = bytes(t for t in _all_tokens(Path(out), split) if t < 256).decode()
            total += text.count(dup.strip())
            assert text.count(dup.strip()) in (0, 5)
        assert total == 5
    assert holdout_score(dup) == holdout_score(str(dup))


def _all_tokens(out: Path, split: str) -> list[int]:
    from litdata import StreamingDataset, TokensLoader
    index = json.loads((out / split / "index.json").read_text())["chunks"]
    toks = []
    for i, c in enumerate(index):
        ds = StreamingDataset(str(out / split), item_loader=TokensLoader(c["dim"]))
        toks += np.asarray(ds[sum(d["dim"] // c["dim"] for d in index[:i])]).tolist()
    return toks


def _fit(run: Path, out: Path, steps: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "adamrot.cli", "fit", "--config",
         str(REPO / "configs/gpt2/tiny.yaml"), "--data.init_args.prepared", str(out),
         "--data.init_args.block_size", "16", "--data.init_args.val_max_tokens", "170",
         "--model.init_args.n_layer", "1", "--model.init_args.n_embd", "16",
         "--model.init_args.n_head", "1", "--model.init_args.block_size", "16",
         "--trainer.max_steps", str(steps), "--trainer.val_check_interval", "2",
         "--checkpoint.every_n_train_steps", "2", "--trainer.default_root_dir", str(run)],
        capture_output=True, text=True, cwd=REPO, timeout=300)


def _snapshot(run: Path) -> dict:
    return {str(p): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_on_a_recut_or_corrupt_cache_is_refused(tmp_path):
    """A run trained on a cache, resumed after the cache was rebuilt with other workers
    (same key, another stream) or corrupted: exit 2, one line, the run left as it was."""
    out, _ = prepared(tmp_path, "data", workers=1)
    run = tmp_path / "run"
    first = _fit(run, out, 2)
    assert first.returncode == 0, first.stderr[-3000:]
    before = _snapshot(run)
    import shutil
    shutil.rmtree(out)
    prepared(tmp_path, "data", workers=2)                        # same path, same key
    proc = _fit(run, out, 4)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("adamrot: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert "data.json" in lines[0] and "train_stream" in lines[0]
    assert _snapshot(run) == before
    shutil.rmtree(out)
    prepared(tmp_path, "data", workers=1)                        # the original stream again
    flip(sorted((out / "val").glob("chunk-*.bin"))[0], 0.6)
    proc = _fit(run, out, 4)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("adamrot: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "corrupt chunk" in lines[0]
    assert _snapshot(run) == before
