"""The litdata chunks of a prepared dataset: writing in parallel with litdata's public API,
per-chunk checksums, their verification before training, and the stream fingerprint.

* Parallel writers: each preparation worker is a litdata writer of its own rank
  (``DATA_OPTIMIZER_GLOBAL_RANK``, the variable ``litdata.optimize`` sets for its workers:
  chunks ``chunk-<rank>-<i>.bin``, index ``<rank>.index.json``); the indexes are merged with
  ``BinaryWriter.merge`` (public).
* The manifest's ``chunks`` maps ``train/`` and ``val/`` chunk files to their size and sha256;
  :func:`verify_chunks` recomputes them (threads, ~1 GB/s per core) and refuses a mismatch
  with a :class:`ChunkError` naming the chunk, before anything of a run is written.
* :func:`stream_fingerprint` digests one split's chunk list (names, sizes, checksums) and the
  manifest's ``cut`` (how the split was cut: workers, chunk size): two caches with the same key
  but cut otherwise (another ``--workers``) hold different streams and have different
  fingerprints. docs/DATA.md "Integrity".
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

SPLITS = ("train", "val")
RANK_ENV = "DATA_OPTIMIZER_GLOBAL_RANK"


class ChunkError(ValueError):
    """A prepared chunk that is missing or differs from its manifest checksum."""


@contextlib.contextmanager
def writer_rank(rank: int, writers: int = 1) -> Iterator[None]:
    """litdata writers made inside are writer ``rank`` of ``writers`` (the environment
    ``litdata.optimize`` gives its workers): files ``chunk-<rank>-<i>.bin``,
    ``<rank>.index.json``; a rank-0 writer's ``merge`` waits for ``writers`` indexes."""
    env = {RANK_ENV: str(rank), "DATA_OPTIMIZER_NUM_WORKERS": str(writers),
           "DATA_OPTIMIZER_NUM_NODES": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def merge_indexes(local: Path) -> None:
    """The writers' ``<rank>.index.json`` files -> one ``index.json`` per split
    (``BinaryWriter.merge``)."""
    from litdata.streaming.writer import BinaryWriter

    for split in SPLITS:
        d = local / split
        parts = [f for f in os.listdir(d) if f.endswith(".index.json") and f[0].isdigit()]
        if not parts:                           # nothing written: read_manifest refuses it
            continue
        with writer_rank(0, len(parts)):
            BinaryWriter(str(d), chunk_size=1).merge(num_workers=1)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _index_chunks(directory: str) -> list[dict]:
    with open(os.path.join(directory, "index.json")) as f:
        return json.load(f)["chunks"]


def _threads() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


def chunk_checksums(local: Path) -> dict:
    """``{split: {chunk file: {"bytes": size, "sha256": digest}}}`` of a prepared directory."""
    out = {}
    with ThreadPoolExecutor(_threads()) as pool:
        for split in SPLITS:
            names = [c["filename"] for c in _index_chunks(str(local / split))]
            paths = [str(local / split / n) for n in names]
            digests = pool.map(_sha256, paths)
            out[split] = {n: {"bytes": os.path.getsize(p), "sha256": d}
                          for n, p, d in zip(names, paths, digests)}
    return out


def verify_chunks(path: str, manifest: dict, splits=SPLITS) -> None:
    """Recompute every chunk's size and sha256 and compare with the manifest; a
    :class:`ChunkError` naming the first chunk that differs. Local directories only (an
    object-store dataset is read through litdata's download cache and not re-hashed here).
    A manifest without checksums (prepared by an older adamrot) is refused."""
    if "://" in str(path) and not str(path).startswith("file://"):
        return
    root = Path(str(path).removeprefix("file://"))
    expected = manifest.get("chunks")
    if not isinstance(expected, dict):
        raise ChunkError(f"{root}: prepared without chunk checksums (by an older adamrot); "
                         "prepare it again")
    jobs = []
    for split in splits:
        listed = [c["filename"] for c in _index_chunks(str(root / split))]
        if sorted(listed) != sorted(expected.get(split, {})):
            raise ChunkError(f"{root / split / 'index.json'}: lists other chunks than the "
                             f"manifest ({len(listed)} vs {len(expected.get(split, {}))}); "
                             "prepare it again")
        for name, want in expected[split].items():
            p = root / split / name
            if not p.is_file():
                raise ChunkError(f"{p}: chunk missing; prepare the dataset again")
            if p.stat().st_size != want["bytes"]:
                raise ChunkError(f"{p}: corrupt chunk ({p.stat().st_size} bytes, the manifest "
                                 f"records {want['bytes']}); prepare the dataset again")
            jobs.append((p, want["sha256"]))
    with ThreadPoolExecutor(_threads()) as pool:
        for (p, want), got in zip(jobs, pool.map(lambda j: _sha256(str(j[0])), jobs)):
            if got != want:
                raise ChunkError(f"{p}: corrupt chunk (sha256 {got[:16]}..., the manifest "
                                 f"records {want[:16]}...); prepare the dataset again")


def stream_fingerprint(manifest: dict, split: str = "train") -> str:
    """16 hex digits identifying the stream a split holds: its chunks (names, sizes,
    checksums, in index order) and how it was cut (``manifest["cut"]``)."""
    body = {"chunks": (manifest.get("chunks") or {}).get(split), "cut": manifest.get("cut")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
