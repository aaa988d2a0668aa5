"""Text data: tokenizers, corpus sources and their errors, ``adamrot prepare`` (idempotent,
interrupted, refused directories, hub path on local parquet), shuffled windows (diversity),
exact resume of the training loader, and the train/validation split.

Everything runs on CPU from files written here or the interpreter's own standard library;
nothing is downloaded. Prepared data goes to a temporary ``ADAMROT_CACHE``.
"""
import base64
import json
import random
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from adamrot.prepare import main as prepare_main
from datamodules import prepare as prepare_module
from datamodules import text as text_module
from datamodules.corpus import (
    DataError,
    cap_bytes,
    corpus_hash,
    hub_builder,
    hub_texts,
    read_embedded,
    read_local,
    split_heldout,
)
from datamodules.prepare import (
    MANIFEST,
    PreparedError,
    TextCorpus,
    prepare_text,
    read_manifest,
)
from datamodules.text import TextDataModule
from datamodules.tokenizers import EOT_TEXT, ByteTokenizer, build_tokenizer

BYTES = ByteTokenizer()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMROT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def random_text(rng: random.Random, n: int, surrogates: bool = True) -> str:
    """Random code points from the whole Unicode range (lone surrogates optional)."""
    out = []
    while len(out) < n:
        c = rng.choice([rng.randrange(0x80), rng.randrange(0x800), rng.randrange(0x110000)])
        if surrogates or not 0xD800 <= c < 0xE000:
            out.append(chr(c))
    return "".join(out)


def tagged_corpus(path, n=300, lo=2000, hi=8000, seed=0):
    """``n`` jsonl documents of ``lo..hi`` bytes; document ``i`` is ``|iii|`` repeated."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"text": (f"|{i:03d}" * hi)[:rng.randrange(lo, hi)]}) + "\n")
    return path


def owner(window: torch.Tensor) -> int:
    """The document covering most of a window of a :func:`tagged_corpus` (EOT = 256)."""
    segments = bytes(t if t < 256 else ord("#") for t in window.tolist()).split(b"#")
    return int(re.search(rb"\|(\d{3})", max(segments, key=len)).group(1))


def batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


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


# ---- sources and bad content ---------------------------------------------------------

def write_parquet_parts(directory, n_files=2, rows=40):
    """Files with OpenWebText's parquet schema (one ``text`` column)."""
    texts = []
    for f in range(n_files):
        part = [f"part {f} row {r}: " + "lorem ipsum " * (r % 7 + 1) for r in range(rows)]
        part[3] = ""  # empty documents are dropped
        name = f"train-{f:05d}-of-{n_files:05d}.parquet"
        pq.write_table(pa.table({"text": part}), directory / name)
        texts += [t for t in part if t]
    return texts


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
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_local([str(tmp_path / "nope.jsonl")])
    with pytest.raises(FileNotFoundError, match=r"\*\.csv"):
        read_local([str(tmp_path / "*.csv")])
    (tmp_path / "x.csv").write_text("text\nhello\n")
    with pytest.raises(DataError, match="x.csv: unsupported"):
        read_local([str(tmp_path / "x.csv")])


def bad_files(tmp_path) -> dict:
    """One file per kind of bad content -> the start of the expected message."""
    good = json.dumps({"text": "fine " * 20})
    cases = {}
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait".encode("latin-1"))
    cases[p] = f"{p}: not valid UTF-8 text (byte 3"
    p = tmp_path / "nofield.jsonl"
    p.write_text(good + "\n" + json.dumps({"body": "x"}) + "\n")
    cases[p] = f"{p} line 2: expected a JSON object with field 'text'"
    p = tmp_path / "malformed.jsonl"
    p.write_text((good + "\n") * 1001 + '{"text": "unterminated\n' + good + "\n")
    cases[p] = f"{p} line 1002: malformed JSON"
    p = tmp_path / "badline.jsonl"
    p.write_bytes(good.encode() + b"\n" + b'{"text": "\xff"}\n')
    cases[p] = f"{p} line 2: not valid UTF-8"
    p = tmp_path / "column.parquet"
    pq.write_table(pa.table({"content": ["a", "b"]}), p)
    cases[p] = f"{p}: parquet file has no column 'text'"
    p = tmp_path / "single.txt"
    p.write_text("one document only " * 50)
    cases[p] = f"{p}: holds 1 non-empty document(s)"
    p = tmp_path / "empty.txt"
    p.write_text("")
    cases[p] = f"{p}: local file is empty"
    return cases


def test_bad_content_is_refused_naming_file_and_line(tmp_path, capsys):
    for path, message in bad_files(tmp_path).items():
        with pytest.raises(ValueError) as e:              # while setting up: before training
            TextDataModule(source="local", paths=[str(path)], block_size=16).setup("fit")
        assert str(e.value).startswith(message), (str(e.value), message)
        assert prepare_main(["local", str(path), "--out", str(tmp_path / "out" / path.stem),
                             "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"adamrot: error: {message}"), err
        assert not (tmp_path / "out" / path.stem / MANIFEST).exists()


def test_embedded_corpus_is_deterministic_and_capped():
    texts = read_embedded(max_bytes=200_000)
    assert texts == read_embedded(max_bytes=200_000) and all(texts)
    assert 190_000 <= sum(len(t.encode()) for t in texts) <= 200_000
    a = TextDataModule(max_bytes=200_000).describe()
    assert a["corpus_hash"] == corpus_hash(texts) and a["documents"] == len(texts)
    assert TextDataModule(max_bytes=100_000).describe()["prepared"] != a["prepared"]


def test_split_heldout_is_deterministic_and_sized():
    rng = random.Random(6)
    texts = [random_text(rng, rng.randrange(10, 1000), surrogates=False) for _ in range(500)]
    mask = split_heldout(texts, 0.05, min_bytes=100)
    assert (mask == split_heldout(list(reversed(texts)), 0.05, 100)[::-1]).all()  # by content
    sizes = [len(t.encode()) for t in texts]
    held = sum(s for s, m in zip(sizes, mask) if m)
    assert 0.05 <= held / sum(sizes) <= 0.1
    few = ["a" * 5000, "b" * 7000, "c" * 30, "d" * 6000]       # few large documents
    mask = split_heldout(few, 0.01, min_bytes=257)
    assert 1 <= mask.sum() < 4 and sum(len(t) for t, m in zip(few, mask) if m) >= 257


def test_hub_reader_on_compressed_jsonl_like_slimpajama(tmp_path, monkeypatch):
    import datasets
    import zstandard

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
    assert list(hub_texts("cerebras/SlimPajama-627B", data_files=pattern)) == texts
    assert list(cap_bytes(texts, 500)) == list(cap_bytes(hub_texts("x", pattern), 500))
    with pytest.raises(ValueError, match=r"cannot tell the file type from '\.tar'"):
        hub_builder("hf://datasets/x/y/data.tar.zst")


def test_hub_path_on_local_parquet_with_openwebtext_schema(tmp_path, monkeypatch):
    """``adamrot prepare hub`` over parquet files shaped like OpenWebText's conversion, with
    2 workers (each reads its own files), then training reads the prepared directory."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)   # any hub access fails
    texts = write_parquet_parts(tmp_path, n_files=2, rows=60)
    pattern = str(tmp_path / "*.parquet")
    assert list(hub_texts("Skylion007/openwebtext", pattern)) == texts
    assert sorted(hub_texts("x", pattern, part=0, parts=2)) == sorted(texts[:59])
    with pytest.raises(DataError, match=r"\*\.parquet: hub dataset has no column 'body'"):
        next(hub_texts("Skylion007/openwebtext", pattern, text_column="body"))
    out = tmp_path / "owt"
    assert prepare_main(["hub", "--hub-data-files", pattern, "--workers", "2",
                         "--val-fraction", "0.2", "--out", str(out), "--no-progress"]) == 0
    m = read_manifest(out)
    assert m["train_documents"] + m["val_documents"] == len(texts) and m["val_documents"] > 0
    assert m["train_tokens"] + m["val_tokens"] == sum(len(t.encode()) + 1 for t in texts)
    dm = TextDataModule(prepared=str(out), block_size=16, batch_size=4)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError, match="was prepared with 'bytes'"):
        TextDataModule(prepared=str(out), tokenizer="gpt2")


# ---- prepare: idempotent, interrupted, refused -------------------------------------------

def test_prepare_is_idempotent_and_redoes_an_interrupted_run(tmp_path, monkeypatch):
    corpus = TextCorpus("local", (str(tagged_corpus(tmp_path / "c.jsonl", n=40)),))
    out = tmp_path / "prepared"
    _, first = prepare_text(corpus, out=out)
    stamp = (out / MANIFEST).stat().st_mtime_ns
    calls = []
    monkeypatch.setattr("datamodules.prepare.run_parts", lambda *a: calls.append(a))
    assert prepare_text(corpus, out=out)[1] == first and not calls     # a no-op
    assert (out / MANIFEST).stat().st_mtime_ns == stamp
    monkeypatch.undo()

    (out / MANIFEST).unlink()              # what a run killed before its last write leaves
    with pytest.raises(PreparedError, match=f"{out}: not a finished prepared dataset"):
        TextDataModule(prepared=str(out))
    _, again = prepare_text(corpus, out=out)
    assert again == first

    real = prepare_module.merge_indexes   # killed after writing chunks, before the merge

    def killed(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr(prepare_module, "merge_indexes", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_text(corpus, out=tmp_path / "killed")
    assert list((tmp_path / "killed" / "train").glob("chunk-*.bin"))
    assert not (tmp_path / "killed" / MANIFEST).exists()
    monkeypatch.setattr(prepare_module, "merge_indexes", real)
    assert prepare_text(corpus, out=tmp_path / "killed")[1]["key"] == first["key"]
    assert TextDataModule(prepared=str(tmp_path / "killed")).describe()["documents"] == 40

    other = TextCorpus("local", (str(tagged_corpus(tmp_path / "d.jsonl", n=30, seed=1)),))
    with pytest.raises(PreparedError, match=f"{out}: holds another prepared text dataset"):
        prepare_text(other, out=out)
    with pytest.raises(PreparedError, match="holds another"):
        prepare_text(corpus, out=out, tokenizer="gpt2",
                     ranks_file=str(tiny_ranks(tmp_path)))


def test_prepare_to_an_object_store_url_writes_the_manifest_last(tmp_path):
    """An fsspec URL (``memory://`` standing in for ``s3://``): written locally, uploaded."""
    import fsspec

    corpus = TextCorpus("local", (str(tagged_corpus(tmp_path / "c.jsonl", n=40)),))
    url, manifest = prepare_text(corpus, out="memory://bucket/prepared")
    fs = fsspec.filesystem("memory")
    assert fs.isfile("/bucket/prepared/train/index.json") and read_manifest(url) == manifest
    assert prepare_text(corpus, out=url)[1] == manifest                  # idempotent there too


def tiny_ranks(tmp_path):
    path = tmp_path / "tiny.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(bytes([b])) + b" %d\n" % b for b in range(256)))
    return path


def test_corrupt_or_foreign_directories_are_refused(tmp_path):
    corpus = TextCorpus("local", (str(tagged_corpus(tmp_path / "c.jsonl", n=40)),))
    foreign = tmp_path / "photos"
    (foreign / "train").mkdir(parents=True)
    (foreign / "train" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(PreparedError, match=f"{foreign}: not a finished prepared dataset"):
        TextDataModule(prepared=str(foreign))
    with pytest.raises(PreparedError, match=f"{foreign}: not empty and not a prepared dataset"):
        prepare_text(corpus, out=foreign)
    assert (foreign / "train" / "cat.jpg").exists()            # nothing of theirs deleted
    with pytest.raises(PreparedError, match=f"{tmp_path / 'nope'}: prepared dataset directory "
                                            "does not exist"):
        TextDataModule(prepared=str(tmp_path / "nope"))
    out, _ = prepare_text(corpus, out=tmp_path / "ok")
    (tmp_path / "ok" / MANIFEST).write_text("{not json")
    with pytest.raises(PreparedError, match=f"{out}: corrupt {MANIFEST}"):
        TextDataModule(prepared=out)
    (tmp_path / "ok" / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(PreparedError, match=f"{out}: not a prepared text dataset"):
        TextDataModule(prepared=out)


# ---- sampling: diversity, exact resume, validation ------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_many_documents(tmp_path, workers):
    """300 documents of 2,000-8,000 bytes, batches of 16 windows of 129 byte tokens: on
    average >= 12 distinct documents per batch (consecutive windows of one document, the old
    stream, gave ~1)."""
    dm = TextDataModule(source="local", paths=[str(tagged_corpus(tmp_path / "c.jsonl"))],
                        block_size=128, batch_size=16, num_workers=workers)
    counts = []
    loader = dm.train_dataloader()
    for i, (x, y) in enumerate(loader):
        windows = torch.cat([x, y[:, -1:]], dim=1)
        counts.append(len({owner(w) for w in windows}))
        if i == 59:
            break
    mean = sum(counts) / len(counts)
    print(f"distinct documents per batch ({workers} workers): mean {mean:.2f}, "
          f"min {min(counts)}, max {max(counts)}")
    assert mean >= 12


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_resumes_exactly(tmp_path, workers):
    """Stopped after k batches, a new loader given ``state_dict()`` yields the batches an
    uninterrupted loader yields next, also across an epoch boundary."""
    path = str(tagged_corpus(tmp_path / "c.jsonl", n=60, lo=200, hi=800))
    make = lambda: TextDataModule(source="local", paths=[path], block_size=16,  # noqa: E731
                                  batch_size=4, num_workers=workers, seed=3).train_dataloader()
    reference = make()
    per_epoch = len(reference)
    straight = [x for x, _ in batches(reference, per_epoch)] + \
        [x for x, _ in batches(reference, 10)]                     # into epoch 2
    for stop in (5, per_epoch - 3):
        first = make()
        it = iter(first)
        for _ in range(stop):
            next(it)
        state = first.state_dict()
        del it
        resumed = make()
        resumed.load_state_dict(state)
        got = [x for x, _ in resumed][:per_epoch - stop]
        assert all(torch.equal(a, b) for a, b in zip(got, straight[stop:per_epoch]))
        assert len(got) == per_epoch - stop
        nxt = next(iter(resumed))[0]                                # next epoch: reshuffled
        assert torch.equal(nxt, straight[per_epoch])
    assert not torch.equal(straight[0], straight[per_epoch])


def test_train_and_validation_never_share_a_document(tmp_path, monkeypatch):
    path = str(tagged_corpus(tmp_path / "c.jsonl", n=120, lo=300, hi=1500))
    dm = TextDataModule(source="local", paths=[path], block_size=32, batch_size=8,
                        val_fraction=0.15, val_max_tokens=None)
    info = dm.describe()
    assert info["val_documents"] > 1 and info["train_documents"] + info["val_documents"] == 120
    train_docs = {owner(torch.cat([x, y[:, -1:]], 1)[i]) for x, y in dm.train_dataloader()
                  for i in range(len(x))}
    val_docs = {owner(w) for w in dm.val_windows}
    assert len(val_docs) > 1 and not train_docs & val_docs
    assert len(train_docs) == info["train_documents"]          # one epoch reaches them all
    # validation: the same windows in every run, seed and worker count; equal rank shares
    other = TextDataModule(source="local", paths=[path], block_size=32, batch_size=8,
                           val_fraction=0.15, val_max_tokens=None, seed=9, num_workers=2)
    other.setup()
    assert torch.equal(dm.val_windows, other.val_windows)
    shares = []
    for rank in range(3):
        monkeypatch.setattr(text_module, "rank_world", lambda r=rank: (r, 3))
        shares.append(torch.cat([x for x, _ in dm.val_dataloader()]))
    assert all(len(s) == len(dm.val_windows) // 3 for s in shares)
    assert torch.equal(torch.cat(shares), dm.val_windows[:3 * len(shares[0]), :-1])


def test_validation_is_identical_across_preparations_and_worker_counts(tmp_path, monkeypatch):
    """The validation windows depend on the corpus, tokenizer and split rule only: preparing
    again (a deleted cache), with other worker counts, or from the hub path with its workers
    reading other files, gives bitwise the same windows and ``val_sha256``; a change of the
    split rule changes the cache key instead of silently reusing or rebuilding under it."""
    path = str(tagged_corpus(tmp_path / "c.jsonl", n=90, lo=300, hi=2500))
    corpus = TextCorpus("local", (path,))

    def windows(out, **kw):
        _, m = prepare_text(corpus, out=tmp_path / out, val_fraction=0.2, **kw)
        dm = TextDataModule(prepared=str(tmp_path / out), block_size=32, batch_size=4,
                            val_max_tokens=40 * 33)
        return m, dm.identity(), dm.val_windows

    m1, id1, w1 = windows("a", workers=1)
    m3, id3, w3 = windows("b", workers=3)
    assert m1["key"] == m3["key"] and m1["val_sha256"] == m3["val_sha256"]
    assert torch.equal(w1, w3)
    assert id1.pop("train_stream") != id3.pop("train_stream")     # training: cut otherwise
    assert id1 == id3
    assert len(w1) == 40                     # the val_max_tokens cut: the same 40 windows
    # the hub path (parts read other files, in another order) holds out the same documents
    # as it always does and writes them in the same canonical order for any worker count
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)   # any hub access fails
    (tmp_path / "pq").mkdir()
    texts = write_parquet_parts(tmp_path / "pq", n_files=4, rows=30)
    hub = TextCorpus("hub", hub_data_files=str(tmp_path / "pq" / "*.parquet"))
    sha = {w: prepare_text(hub, out=tmp_path / f"hub{w}", val_fraction=0.2, workers=w)[1]
           ["val_sha256"] for w in (1, 2, 4)}
    assert len(set(sha.values())) == 1 and len(texts) == 116
    # the split rule is part of the key: a new rule never reuses a cache made by the old one
    monkeypatch.setattr(prepare_module, "MIN_VAL_BYTES", 64 * 1024)
    _, m_rule = prepare_text(corpus, val_fraction=0.2)
    assert m_rule["key"] != m1["key"] and m_rule["split"]["min_val_bytes"] == 64 * 1024


def test_datamodule_batches_and_entropy():
    dm = TextDataModule(max_bytes=200_000, block_size=64, batch_size=4, val_batch_size=5)
    assert (dm.vocab_size, dm.eot_token) == (257, 256)
    for x, y in batches(dm.train_dataloader(), 3):
        assert x.shape == y.shape == (4, 64) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < dm.vocab_size
    val = list(dm.val_dataloader())
    assert all(x.shape[1] == 64 and x.shape[0] <= 5 for x, _ in val)
    assert sum(len(x) for x, _ in val) == len(dm.val_windows)
    assert 0 < dm.unigram_entropy() < torch.log(torch.tensor(257.0))


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


def test_prepare_command_refuses_bad_options(tmp_path, capsys):
    assert prepare_main(["embedded", "--val-fraction", "1.5", "--no-progress"]) == 2
    assert "adamrot: error: --val-fraction must be in (0, 1)" in capsys.readouterr().err
    assert prepare_main(["local", str(tmp_path / "none.txt"), "--no-progress"]) == 2
    assert "none.txt' does not exist" in capsys.readouterr().err
    assert prepare_main(["embedded", "--workers", "0"]) == 2
