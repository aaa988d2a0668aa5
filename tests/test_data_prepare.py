"""``adamrot prepare`` streams local corpora and bounds its tokenizer threads (issue 23)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from datamodules import prepare as prepare_module
from datamodules.prepare import TextCorpus, prepare_text

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data_integrity import letters_corpus  # noqa: E402


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMROT_CACHE", str(tmp_path / "cache"))


def test_local_corpus_is_streamed_not_read_whole(tmp_path, monkeypatch):
    """Preparation never holds the corpus as a list (``TextCorpus.read``), and gives the
    same manifest (key, split, token counts) as before the streaming change would."""
    path = letters_corpus(tmp_path / "c.jsonl", n=50)
    corpus = TextCorpus("local", (path,))
    whole = corpus.read()

    def refuse(self):
        raise AssertionError("the corpus was read whole")
    monkeypatch.setattr(TextCorpus, "read", refuse)
    _, m = prepare_text(corpus, out=tmp_path / "p", workers=2, val_fraction=0.1)
    assert m["train_documents"] + m["val_documents"] == len(whole)
    assert m["train_tokens"] + m["val_tokens"] == sum(len(t.encode()) + 1 for t in whole)
    from datamodules.corpus import corpus_hash
    assert m["corpus_hash"] == corpus_hash(whole)


@pytest.mark.parametrize("workers,cores,threads", [(1, 8, 8), (2, 8, 4), (16, 8, 1)])
def test_tokenizer_threads_share_the_cores(tmp_path, monkeypatch, workers, cores, threads):
    seen = []
    real = prepare_module.run_parts

    def spy(fn, jobs, progress, unit):
        seen.extend(j["threads"] for j in jobs)
        return real(fn, jobs, progress, unit)
    monkeypatch.setattr(prepare_module, "run_parts", spy)
    monkeypatch.setattr(prepare_module, "available_cores", lambda: cores)
    path = letters_corpus(tmp_path / "c.jsonl", n=40)
    prepare_text(TextCorpus("local", (path,)), out=tmp_path / "p", workers=workers,
                 val_fraction=0.1)
    assert seen and set(seen) == {threads}


def test_tiktoken_gets_the_thread_count(monkeypatch):
    from datamodules import tokenizers as T

    calls = []

    class Enc:
        n_vocab, eot_token = 10, 9

        def encode_ordinary_batch(self, texts, num_threads=8):
            calls.append(num_threads)
            return [[1] for _ in texts]
    tok = T.TiktokenTokenizer(Enc(), threads=3)
    tok.encode_batch(["a", "b"])
    assert calls == [3]
