"""Text data pipeline: tokenizers, packing, sharding, validation split, sources, DataModule.

Everything runs on CPU from files written here or the interpreter's own standard library;
nothing is downloaded.
"""
import base64
import json
import math
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from datamodules.text import (
    PackedTrainDataset,
    ShuffledDocuments,
    StreamedDocuments,
    TextDataModule,
    TokenizedDocuments,
    WindowPacker,
    cap_bytes,
    corpus_hash,
    holdout_score,
    hub_texts,
    read_embedded,
    read_local,
    split_heldout,
)
from datamodules.tokenizers import EOT_TEXT, ByteTokenizer, build_tokenizer

BYTES = ByteTokenizer()


def random_text(rng: random.Random, n: int, surrogates: bool = True) -> str:
    """Random code points from the whole Unicode range (lone surrogates optional)."""
    out = []
    while len(out) < n:
        c = rng.choice([rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0x110000)])
        if surrogates or not 0xD800 <= c < 0xE000:
            out.append(chr(c))
    return "".join(out)


def shard_stream(documents, epochs, shard, num_shards, eot):
    """Hand-built token stream of one shard: its documents of each epoch, each plus EOT."""
    parts = [np.append(tokens, eot)
             for epoch in range(epochs)
             for _, _, tokens in documents.shard_epoch(epoch, shard, num_shards)]
    return np.concatenate(parts)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


# ---- tokenizers ----------------------------------------------------------------------

def test_byte_tokenizer_round_trips_unicode():
    rng = random.Random(0)
    texts = ["", "héllo wörld", "🚀 \x00 \ud800 tab\tnl\n", EOT_TEXT]
    texts += [random_text(rng, rng.randrange(1, 200)) for _ in range(200)]
    for text in texts:
        ids = BYTES.encode(text)
        assert all(0 <= t < 256 for t in ids)
        assert BYTES.decode(ids) == text
    assert (BYTES.vocab_size, BYTES.eot_token) == (257, 256)
    assert BYTES.decode(BYTES.encode("a") + [256] + BYTES.encode("b")) == f"a{EOT_TEXT}b"
    assert BYTES.decode([0xFF, 0x41]) == "\ufffdA"  # invalid UTF-8 (a model sample) decodes


def test_tiktoken_from_local_ranks_file(tmp_path):
    merges = [b"th", b"the", b" the", b"in", b"ing"]
    ranks = [bytes([b]) for b in range(256)] + merges
    path = tmp_path / "tiny.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(tok) + b" %d\n" % rank
                              for rank, tok in enumerate(ranks)))
    tok = build_tokenizer("gpt2", ranks_file=str(path))
    assert tok.eot_token == len(ranks) and tok.vocab_size == len(ranks) + 1
    assert tok.encode(" the") == [258] and tok.encode("thing") == [256, 260]
    rng = random.Random(1)
    for text in ["the thing is there", EOT_TEXT] + [random_text(rng, 50, surrogates=False)
                                                    for _ in range(50)]:
        ids = tok.encode(text)
        assert all(0 <= t < tok.eot_token for t in ids)  # a literal "<|endoftext|>" is text
        assert tok.decode(ids) == text
    assert [a.tolist() for a in tok.encode_batch(["the", "ing"])] == [[257], [260]]


def test_build_tokenizer_errors(tmp_path):
    with pytest.raises(ValueError, match=r"tokenizer must be one of 'bytes', 'gpt2', got 'bpe'"):
        build_tokenizer("bpe")
    with pytest.raises(ValueError, match="tiktoken_ranks_file is only used with tokenizer='gpt2'"):
        build_tokenizer("bytes", ranks_file="x.tiktoken")
    missing = str(tmp_path / "missing.tiktoken")
    with pytest.raises(FileNotFoundError, match="missing.tiktoken"):
        build_tokenizer("gpt2", ranks_file=missing)


# ---- packing and sharding ------------------------------------------------------------

def test_window_packer_cuts_contiguous_slices():
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 257, size=5000)
    cuts = np.sort(rng.choice(np.arange(1, len(stream)), size=300, replace=False))
    pieces = np.split(stream, cuts)
    window, packer, got = 33, WindowPacker(33), []
    start = 0  # stream position of the current piece
    for piece in pieces:
        for w, used in packer.feed(piece):
            assert start + used == (len(got) + 1) * window  # where this window ends
            got.append(w.copy())
        start += len(piece)
    assert len(got) == len(stream) // window
    for k, w in enumerate(got):
        np.testing.assert_array_equal(w, stream[k * window:(k + 1) * window])


def make_documents(texts, seed=0, val_fraction=0.1, min_tokens=1):
    docs = TokenizedDocuments.from_texts(texts, BYTES)
    train_ids, val_ids = split_heldout(docs.lengths(), val_fraction, min_tokens)
    return docs, ShuffledDocuments(docs, train_ids, seed), val_ids


def test_training_windows_are_slices_of_the_shard_stream():
    rng = random.Random(2)
    texts = [random_text(rng, rng.randrange(1, 120), surrogates=False) for _ in range(40)]
    _, train, _ = make_documents(texts)
    block = 24
    ds = PackedTrainDataset(train, block_size=block, eot_token=BYTES.eot_token)
    stream = shard_stream(train, epochs=3, shard=1, num_shards=2, eot=BYTES.eot_token)
    n = len(stream) // (block + 1)  # reaches into epoch 3's stream: epochs are contiguous
    windows = take(ds.iter_windows(rank=0, world_size=1, worker_id=1, num_workers=2), n)
    for k, w in enumerate(windows):
        assert w.dtype == torch.int64 and w.shape == (block + 1,)
        np.testing.assert_array_equal(w.numpy(), stream[k * (block + 1):(k + 1) * (block + 1)])


def test_ranks_and_workers_partition_the_training_stream():
    block, world, workers = 15, 2, 2
    # Every document is exactly one window (block bytes + EOT), so windows <-> documents.
    texts = [f"doc{i:04d}".ljust(block, "abcdefgh"[i % 8]) for i in range(103)]
    _, train, val_ids = make_documents(texts, seed=3, val_fraction=0.1)
    ds = PackedTrainDataset(train, block_size=block, eot_token=BYTES.eot_token)
    num_shards = world * workers
    seen = []
    for rank in range(world):
        for worker in range(workers):
            shard = rank * workers + worker
            count = len(range(shard, train.num_documents, num_shards))
            it = ds.iter_windows(rank=rank, world_size=world, worker_id=worker, num_workers=workers)
            windows = take(it, count)
            assert all(w[-1] == BYTES.eot_token for w in windows)
            seen += [BYTES.decode(w[:-1].tolist()) for w in windows]
    assert len(seen) == len(set(seen))  # no overlap
    assert sorted(seen) == sorted(texts[j] for j in train.train_ids)  # nothing lost
    assert not set(seen) & {texts[j] for j in val_ids}

    # The same holds at the document level for any shard count and epoch.
    for num_shards in (1, 3, 4, 7):
        for epoch in (0, 1):
            ids = [j for s in range(num_shards)
                   for _, j, _ in train.shard_epoch(epoch, s, num_shards)]
            assert sorted(ids) == train.train_ids.tolist()
    order0 = [j for _, j, _ in train.shard_epoch(0, 0, 1)]
    assert order0 != [j for _, j, _ in train.shard_epoch(1, 0, 1)]  # reshuffled per epoch
    assert order0 == [j for _, j, _ in ShuffledDocuments(train.documents, train.train_ids,
                                                         seed=3).shard_epoch(0, 0, 1)]


def test_training_position_state_resumes_exactly():
    rng = random.Random(4)
    texts = [random_text(rng, rng.randrange(1, 80), surrogates=False) for _ in range(30)]
    _, train, _ = make_documents(texts)
    shard = dict(rank=1, world_size=2, worker_id=0, num_workers=1)
    stop = len(shard_stream(train, 1, 1, 2, BYTES.eot_token)) // 17 + 3  # into epoch 1
    reference = take(PackedTrainDataset(train, 16, 256).iter_windows(**shard), stop + 20)
    first = PackedTrainDataset(train, 16, 256)
    take(first.iter_windows(**shard), stop)
    state = first.state_dict()
    assert state["positions"]["1/2"]["epoch"] == 1
    resumed = PackedTrainDataset(train, 16, 256)
    resumed.load_state_dict(state)
    for a, b in zip(take(resumed.iter_windows(**shard), 20), reference[stop:]):
        assert torch.equal(a, b)


# ---- validation split ----------------------------------------------------------------

def test_validation_never_overlaps_training(tmp_path):
    rng = random.Random(5)
    rows = [{"text": f"<{i:03d}>" + random_text(rng, rng.randrange(20, 300), surrogates=False)}
            for i in range(120)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    block = 32
    dm = TextDataModule(source="local", paths=[str(path)], block_size=block, val_fraction=0.15,
                        val_max_tokens=None)
    info = dm.describe()
    assert info["val_documents"] > 1 and info["train_documents"] + info["val_documents"] == 120

    train = dm.train_documents
    ds = PackedTrainDataset(train, block, dm.eot_token, rank=0, world_size=1)
    train_windows = take(iter(ds), info["train_tokens"] // (block + 1))  # one epoch
    val_windows = list(dm.val_windows)
    assert len(val_windows) == info["val_windows"] > 0
    assert not {tuple(w.tolist()) for w in train_windows} & {tuple(w.tolist()) for w in val_windows}

    def markers(windows):
        text = BYTES.decode(torch.cat(windows).tolist())
        return {text[m + 1:m + 4] for m in range(len(text) - 4)
                if text[m] == "<" and text[m + 4] == ">" and text[m + 1:m + 4].isdigit()}

    train_markers, val_markers = markers(train_windows), markers(val_windows)
    assert len(val_markers) > 1 and not train_markers & val_markers
    val_ids = sorted(set(range(120)) - set(train.train_ids.tolist()))
    assert val_markers <= {f"{j:03d}" for j in val_ids}


def test_split_heldout_is_deterministic_and_sized():
    rng = np.random.default_rng(6)
    lengths = rng.integers(10, 1000, size=500)
    train, val = split_heldout(lengths, 0.05, min_tokens=100)
    again = split_heldout(lengths, 0.05, min_tokens=100)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not set(train) & set(val) and len(train) + len(val) == 500
    assert 0.05 <= lengths[val].sum() / lengths.sum() <= 0.1
    # A corpus of few large documents still gets at least one window held out.
    train, val = split_heldout(np.array([5000, 7000, 30, 6000]), 0.01, min_tokens=257)
    assert len(val) >= 1 and np.array([5000, 7000, 30, 6000])[val].sum() >= 257


# ---- sources -------------------------------------------------------------------------

def write_parquet_parts(directory, n_files=2, rows=40):
    texts = []
    for f in range(n_files):
        part = [f"part {f} row {r}: " + "lorem ipsum " * (r % 7 + 1) for r in range(rows)]
        part[3] = ""  # empty documents are dropped
        pq.write_table(pa.table({"text": part, "id": list(range(rows))}),
                       directory / f"train-{f:05d}.parquet")
        texts += [t for t in part if t]
    return texts


def test_hub_reader_on_local_parquet(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # any hub access would fail
    texts = write_parquet_parts(tmp_path)
    pattern = str(tmp_path / "*.parquet")
    assert list(hub_texts("Skylion007/openwebtext", data_files=pattern, split="train",
                          text_column="text")) == texts
    with pytest.raises(ValueError, match="no column 'body'"):
        next(hub_texts("Skylion007/openwebtext", data_files=pattern, text_column="body"))

    # Streamed through the DataModule: held-out documents never reach the shards.
    dm = TextDataModule(source="hub", hub_data_files=pattern, block_size=16, val_fraction=0.1)
    info = dm.describe()
    assert info["corpus_hash"] is None and info["val_windows"] > 0
    assert isinstance(dm.train_documents, StreamedDocuments)
    ids = [j for s in range(3) for _, j, _ in dm.train_documents.shard_epoch(0, s, 3)]
    assert sorted(ids) == [j for j in range(len(texts)) if holdout_score(j) >= 0.1]
    ds = PackedTrainDataset(dm.train_documents, 16, dm.eot_token)
    windows = take(ds.iter_windows(rank=1, world_size=2, worker_id=0, num_workers=1), 5)
    assert all(w.shape == (17,) for w in windows)

    # With max_bytes the head of the stream is read into memory instead.
    capped = TextDataModule(source="hub", hub_data_files=pattern, block_size=16, max_bytes=2000)
    assert capped.describe()["corpus_hash"] == corpus_hash(cap_bytes(texts, 2000))


def test_local_source_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("first text file\nline two\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("second text file", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"text": "json one", "meta": 1}) + "\n\n" + json.dumps({"text": "json two"}),
        encoding="utf-8")
    sub = tmp_path / "pq"
    sub.mkdir()
    parquet_texts = write_parquet_parts(sub, n_files=1, rows=5)

    docs = read_local([str(tmp_path / "*.txt"), str(tmp_path / "c.jsonl"), str(sub)])
    assert docs == ["first text file\nline two\n", "second text file", "json one", "json two",
                    *parquet_texts]
    assert read_local([str(tmp_path / "**" / "*.parquet")]) == parquet_texts
    assert read_local([str(tmp_path / "*.txt")], max_bytes=20) == ["first text file\nline"]

    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_local([missing])
    with pytest.raises(FileNotFoundError, match=r"\*\.csv"):
        read_local([str(tmp_path / "*.csv")])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        read_local([str(tmp_path / "empty.txt")])
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}))
    with pytest.raises(ValueError, match="bad.jsonl.*line 1.*'text'"):
        read_local([str(tmp_path / "bad.jsonl")])
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="could not read local file.*latin1.txt"):
        read_local([str(tmp_path / "latin1.txt")])
    (tmp_path / "x.csv").write_text("text\nhello\n")
    with pytest.raises(ValueError, match="x.csv.*unsupported"):
        read_local([str(tmp_path / "x.csv")])


def test_embedded_corpus_is_deterministic_and_capped():
    texts = read_embedded(max_bytes=200_000)
    assert texts == read_embedded(max_bytes=200_000) and all(texts)
    assert 190_000 <= sum(len(t.encode()) for t in texts) <= 200_000
    a = TextDataModule(max_bytes=200_000).describe()
    b = TextDataModule(max_bytes=200_000).describe()
    assert a["corpus_hash"] == b["corpus_hash"] == corpus_hash(texts)
    assert a["train_tokens"] + a["val_tokens"] > 0 and a["documents"] == len(texts)
    assert TextDataModule(max_bytes=100_000).describe()["corpus_hash"] != a["corpus_hash"]


# ---- DataModule ----------------------------------------------------------------------

def test_datamodule_batches_with_workers():
    dm = TextDataModule(max_bytes=200_000, block_size=64, batch_size=4, val_batch_size=5,
                        num_workers=2)
    assert (dm.vocab_size, dm.eot_token) == (257, 256)  # known before setup
    dm.setup("fit")
    batches = take(iter(dm.train_dataloader()), 4)
    for x, y in batches:
        assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert int(x.max()) < dm.vocab_size
    # The DataLoader takes batches from its workers in turn; worker w reads shard w.
    for worker in range(2):
        ds = PackedTrainDataset(dm.train_documents, 64, dm.eot_token)
        expected = torch.stack(take(ds.iter_windows(0, 1, worker, 2), 8))
        assert torch.equal(torch.cat([batches[worker][0], batches[worker + 2][0]]),
                           expected[:, :-1])

    val = dm.val_dataloader()
    val_batches = list(val)
    assert len(val_batches) == len(val) == math.ceil(len(dm.val_windows) / 5)
    assert all(x.shape[1] == 64 and x.shape[0] <= 5 and x.dtype == torch.int64
               for x, _ in val_batches)
    entropy = dm.unigram_entropy()
    assert 0 < entropy < math.log(257)


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_size=0), "block_size must be a positive int, got 0"),
    (dict(batch_size=2.5), "batch_size must be a positive int, got 2.5"),
    (dict(num_workers=-1), "num_workers must be an int >= 0, got -1"),
    (dict(source="web"), "source must be one of 'embedded', 'local', 'hub', got 'web'"),
    (dict(tokenizer="bpe"), "tokenizer must be one of 'bytes', 'gpt2', got 'bpe'"),
    (dict(source="local"), "source='local' requires paths"),
    (dict(paths=["x.txt"]), "paths is only used with source='local'"),
    (dict(val_fraction=0.0), r"val_fraction must be a number in \(0, 1\), got 0.0"),
    (dict(val_max_tokens=10, block_size=16), "val_max_tokens must be at least block_size"),
    (dict(max_bytes=0), "max_bytes must be a positive int or None, got 0"),
])
def test_datamodule_validates_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextDataModule(**kwargs)


def test_hub_reader_on_compressed_jsonl_like_slimpajama(tmp_path, monkeypatch):
    """SlimPajama-627B ships ``train/chunk*/example_train_*.jsonl.zst`` with a ``text`` column
    and a ``meta`` dict: the same files, written here, stream through ``hub_data_files``."""
    import datasets
    import zstandard

    from datamodules.text import hub_builder

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    texts = []
    for c in range(2):
        rows = [{"text": f"chunk {c} doc {i} " + "zeta " * (i % 5 + 1),
                 "meta": {"redpajama_set_name": "RedPajamaC4"}} for i in range(30)]
        raw = "\n".join(json.dumps(r) for r in rows).encode()
        (tmp_path / f"example_train_{c}.jsonl.zst").write_bytes(
            zstandard.ZstdCompressor().compress(raw))
        texts += [r["text"] for r in rows]
    pattern = str(tmp_path / "example_train_*.jsonl.zst")
    assert hub_builder(pattern) == "json"
    assert list(hub_texts("cerebras/SlimPajama-627B", data_files=pattern, split="train")) == texts
    dm = TextDataModule(source="hub", hub_data_files=pattern, block_size=16, max_bytes=500)
    assert dm.describe()["corpus_hash"] == corpus_hash(cap_bytes(texts, 500))
    with pytest.raises(ValueError, match=r"cannot tell the file type from '\.tar'.*optionally "
                                         r"compressed \(\.zst"):
        hub_builder("hf://datasets/x/y/data.tar.zst")
