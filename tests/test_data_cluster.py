"""Cluster filesystems (NFS, Lustre, GPFS: litdata's whole-chunk ``WindowShuffle``, forced here
with ``LITDATA_POSIX_FAST=1``): 2 ranks x 2 workers over gloo read balanced, disjoint windows
and resume exactly, because the training datasets keep litdata's full shuffle
(:func:`datamodules.streaming.full_shuffle_only`). docs/DATA.md, issue 23."""
from __future__ import annotations

import os
import pickle
import socket
import sys
from pathlib import Path

import pytest
import torch

from datamodules.prepare import TextCorpus, prepare_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from test_data_integrity import letters_corpus  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, result: str, stop: int) -> None:
    import warnings

    import torch.distributed as dist

    from datamodules.text import TextDataModule

    warnings.filterwarnings("ignore")
    os.environ["LITDATA_POSIX_FAST"] = "1"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    make = lambda: TextDataModule(prepared=out, block_size=16, batch_size=4,  # noqa: E731
                                  num_workers=2, seed=1).train_dataloader()
    loader = make()
    profile = loader.dataset.posix_fast
    epoch, state = [], None
    for x, _ in loader:                          # one epoch; the position after `stop` batches
        epoch.append(x)
        if len(epoch) == stop:
            state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    rest = [x for x, _ in resumed]
    with open(result, "wb") as f:
        pickle.dump({"profile": profile.kind if profile else None, "epoch": epoch,
                     "rest": rest}, f)
    dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_whole_chunk_mode_two_ranks_two_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMROT_CACHE", str(tmp_path / "cache"))
    corpus = TextCorpus("local", (letters_corpus(tmp_path / "c.jsonl", n=30),))
    out, m = prepare_text(corpus, out=tmp_path / "p", workers=2, val_fraction=0.1)
    assert len(m["chunks"]["train"]) == 2                 # fewer chunks than 2 x 2 readers
    ctx = torch.multiprocessing.get_context("fork")   # workers fork too: no re-imports
    port, stop = _free_port(), 5
    results = [str(tmp_path / f"r{r}.pkl") for r in range(2)]
    procs = [ctx.Process(target=_rank, args=(r, 2, port, str(out), results[r], stop))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    got = [pickle.load(open(r, "rb")) for r in results]
    assert all(g["profile"] == "posix" for g in got)          # not litdata's window shuffle
    counts = [len(g["epoch"]) for g in got]
    print(f"batches per rank in whole-chunk (cluster) mode: {counts}")
    windows = [{tuple(w) for b in g["epoch"] for w in b.tolist()} for g in got]
    total = m["train_tokens"] // 17
    assert counts[0] == counts[1] and counts[0] * 2 * 4 >= 0.9 * total   # balanced, ~all
    assert not windows[0] & windows[1]                                  # disjoint ranks
    for g in got:                                                       # exact resume
        assert len(g["rest"]) == len(g["epoch"]) - stop
        assert all(torch.equal(a, b) for a, b in zip(g["rest"], g["epoch"][stop:]))
