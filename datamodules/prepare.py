"""Prepare a text corpus once: tokenize it into litdata token chunks (``train/``, ``val/``).

A prepared directory holds ``train/`` and ``val/`` (litdata ``TokensLoader`` chunks: each
document's tokens followed by EOT) and ``adamrot_prepared.json``, the manifest, written
**last**: a directory without it is an interrupted preparation and is redone. The manifest's
``key`` (corpus content or hub spec + tokenizer + split) makes preparation idempotent.
Validation holds whole documents (:mod:`datamodules.corpus`). See docs/DATA.md.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from datamodules import corpus as C
from datamodules.chunks import chunk_checksums, merge_indexes, writer_rank
from datamodules.tokenizers import build_tokenizer

FORMATS = {"text": "adamrot-prepared-text-v1", "images": "adamrot-prepared-images-v2"}
MANIFEST = "adamrot_prepared.json"
CHUNK_TOKENS = 1 << 23          # tokens per litdata chunk (windows are shuffled within one)
MIN_VAL_BYTES = 16 * 1024       # in-memory corpora hold out at least this (<= 1/4 of them)
SPLIT_RULE = "content-score-v2"  # change it (and the cache key changes) when the split rule does
SOURCES = ("embedded", "local", "hub")


class PreparedError(ValueError):
    """A missing, interrupted, corrupt or foreign prepared directory (message starts with it)."""


def available_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a SLURM allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_cache_dir() -> Path:
    """``$ADAMROT_CACHE/prepared``, default ``~/.cache/adamrot/prepared``."""
    root = os.environ.get("ADAMROT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "adamrot")
    return Path(root) / "prepared"


@dataclass(frozen=True)
class TextCorpus:
    """What to prepare: one of the sources of :mod:`datamodules.corpus`."""

    source: str = "embedded"
    paths: tuple[str, ...] = ()
    hub_dataset: str = "Skylion007/openwebtext"
    hub_data_files: str | None = None
    hub_split: str = "train"
    text_column: str = "text"
    max_bytes: int | None = None

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, "
                             f"got {self.source!r}")
        if self.source == "local" and not self.paths:
            raise ValueError("source='local' requires paths (files, directories or globs)")
        if self.source != "local" and self.paths:
            raise ValueError(f"paths is only used with source='local', got source={self.source!r}")
        if self.source == "local":
            C.check_local_files(self.paths)

    @property
    def label(self) -> str:
        if self.source == "embedded":
            return f"stdlib:{C.stdlib_root()}"
        if self.source == "local":
            return ",".join(self.paths)
        return self.hub_data_files or f"{self.hub_dataset}@refs/convert/parquet"

    def iter_texts(self) -> Iterator[str]:
        """The documents of an embedded or local corpus, streamed (one at a time)."""
        if self.source == "embedded":
            return C.iter_embedded(self.max_bytes)
        return C.iter_local(self.paths, self.text_column, self.max_bytes)

    def read(self) -> list[str]:
        """The whole corpus in memory (embedded and local sources)."""
        return list(self.iter_texts())


# -- the parallel writer ----------------------------------------------------------------

def _token_arrays(texts: Iterable[str], tokenizer) -> Iterator[tuple[str, np.ndarray]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == 256:
            yield from zip(batch, tokenizer.encode_batch(batch))
            batch = []
    if batch:
        yield from zip(batch, tokenizer.encode_batch(batch))


def _write_part(job: dict) -> dict:
    """Tokenize one part of the corpus into ``train/`` and ``val/`` chunks of writer rank
    ``part`` (what a litdata ``optimize`` worker does, with two outputs)."""
    import torch
    from litdata import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    tokenizer = build_tokenizer(job["tokenizer"], job["ranks_file"], threads=job["threads"])
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    writers = {}

    def writer(split: str) -> BinaryWriter:     # made on first use: no empty index files
        if split not in writers:
            with writer_rank(job["part"]):      # chunk-<part>-<i>.bin, <part>.index.json
                writers[split] = BinaryWriter(os.path.join(job["out"], split),
                                              chunk_size=CHUNK_TOKENS,
                                              item_loader=TokensLoader())
                writers[split].rank             # read (and kept) while the rank is set
        return writers[split]
    if "range" in job:                          # local/embedded: split decided up front
        lo, hi = job["range"]
        texts = itertools.islice(TextCorpus(**job["corpus"]).iter_texts(), lo, hi)
        heldout = iter(job["heldout"])
        side = lambda text: next(heldout)       # noqa: E731
    else:
        corpus = TextCorpus(**job["corpus"])
        texts = C.cap_bytes(C.hub_texts(corpus.hub_dataset, corpus.hub_data_files,
                                        corpus.hub_split, corpus.text_column, job["part"],
                                        job["parts"]), corpus.max_bytes)
        side = lambda text: C.holdout_score(text) < job["val_fraction"]  # noqa: E731
    stats = {"train_documents": 0, "val_documents": 0, "train_tokens": 0, "val_tokens": 0}
    val: list[tuple[float, np.ndarray]] = []    # written by the parent, in canonical order
    report, pending = job.get("report"), 0
    for i, (text, ids) in enumerate(_token_arrays(texts, tokenizer)):
        split = "val" if side(text) else "train"
        tokens = np.empty(len(ids) + 1, dtype=dtype)
        tokens[:-1], tokens[-1] = ids, tokenizer.eot_token
        if split == "val":
            val.append((C.holdout_score(text), tokens))
        else:
            writer("train").add_item(stats["train_documents"], torch.from_numpy(tokens))
        stats[f"{split}_documents"] += 1
        stats[f"{split}_tokens"] += len(tokens)
        pending += len(tokens)
        if report is not None and pending >= 1 << 20:
            report(pending)
            pending = 0
    for w in writers.values():
        w.done()
    if report is not None and pending:
        report(pending)
    return {**stats, "val": val}


def _write_val(out: str, docs: list[tuple[float, np.ndarray]]) -> str:
    """Write the validation documents as one stream in a canonical order (by content score,
    then tokens), whatever order the corpus or the workers produced them in; returns the
    sha256 of that token stream (the manifest's ``val_sha256``)."""
    import torch
    from litdata import TokensLoader
    from litdata.streaming.writer import BinaryWriter

    docs = sorted(docs, key=lambda d: (d[0], d[1].tobytes()))
    digest = hashlib.sha256()
    with writer_rank(0):
        writer = BinaryWriter(os.path.join(out, "val"), chunk_size=CHUNK_TOKENS,
                              item_loader=TokensLoader())
        writer.rank
    for i, (_, tokens) in enumerate(docs):
        digest.update(tokens.astype(np.uint32).tobytes())
        writer.add_item(i, torch.from_numpy(tokens))
    writer.done()
    return digest.hexdigest()


def run_parts(fn: Callable[[dict], dict], jobs: list[dict], progress: bool,
              unit: str) -> list[dict]:
    """``fn(job)`` for each job, in this process if there is one, else one process each; a
    job reports progress by calling ``job["report"](n)``."""
    from tqdm import tqdm

    bar = tqdm(unit=unit, unit_scale=True, disable=not progress, desc="adamrot prepare")
    try:
        if len(jobs) == 1:
            return [fn({**jobs[0], "report": bar.update})]
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        queue = ctx.Manager().Queue()
        with ctx.Pool(len(jobs)) as pool:
            result = pool.map_async(_reporting, [(fn, job, queue) for job in jobs])
            while not result.ready():
                with contextlib.suppress(Exception):
                    bar.update(queue.get(timeout=0.2))
            stats = result.get()
        while not queue.empty():
            bar.update(queue.get())
        return stats
    finally:
        bar.close()


def _reporting(args) -> dict:
    fn, job, queue = args
    return fn({**job, "report": queue.put})


# -- prepare / open ---------------------------------------------------------------------

def _key(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)           # concurrent preparers of one directory wait
        yield


def read_manifest(path: str | os.PathLike, kind: str = "text") -> dict:
    """The manifest of a finished prepared directory (local or URL); :class:`PreparedError`
    naming ``path`` if it is missing, unfinished, corrupt or not a prepared ``kind`` set."""
    import fsspec

    path = str(path)
    fs, root = fsspec.core.url_to_fs(path)
    if not fs.isdir(root):
        raise PreparedError(f"{path}: prepared dataset directory does not exist "
                            "(create it with `adamrot prepare`)")
    try:
        with fs.open(f"{root}/{MANIFEST}") as f:
            manifest = json.loads(f.read())
    except FileNotFoundError:
        raise PreparedError(f"{path}: not a finished prepared dataset (no {MANIFEST}; an "
                            "interrupted `adamrot prepare` leaves none: run it again)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise PreparedError(f"{path}: corrupt {MANIFEST} ({e})") from None
    expected = FORMATS[kind]
    if not isinstance(manifest, dict) or manifest.get("format") != expected:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise PreparedError(f"{path}: not a prepared {kind} dataset of this version "
                            f"(format {found!r}, expected {expected!r})")
    for split in ("train", "val"):
        if not fs.isfile(f"{root}/{split}/index.json"):
            raise PreparedError(f"{path}: corrupt prepared dataset ({split}/index.json missing)")
    return manifest


def prepare_once(kind: str, material: dict, build: Callable[[Path], dict],
                 out: str | os.PathLike | None, cache_dir: str | os.PathLike | None,
                 log: Callable[[str], None] | None = None) -> tuple[str, dict]:
    """Run ``build(directory)`` (writes ``train/`` and ``val/`` worker chunks, returns manifest
    fields) unless ``out`` (default ``cache_dir/<key of material>``) already holds the same
    preparation; then merge the chunk indexes and write the manifest, last. ``out`` may be an
    object-store URL (written locally first, then uploaded, manifest last)."""
    key = _key({"format": FORMATS[kind], **material})
    out = str(out) if out is not None else str(Path(cache_dir or default_cache_dir()) / key)
    if out.startswith("file://"):
        out = out[len("file://"):]
    remote = "://" in out
    fresh = not remote and not Path(out).exists()
    try:
        return _prepare_locked(kind, key, out, remote, build, log)
    except Exception:
        if not remote:                  # a refused preparation leaves nothing behind
            if fresh:
                shutil.rmtree(out, ignore_errors=True)
            else:
                Path(out, ".lock").unlink(missing_ok=True)
        raise


def _prepare_locked(kind, key, out, remote, build, log) -> tuple[str, dict]:
    with _staging(out, remote) as local, _locked(local):
        try:
            manifest = read_manifest(out, kind)
        except PreparedError:
            manifest = None                     # absent or unfinished: (re)do it
        if manifest is not None and manifest.get("key") == key:
            if isinstance(manifest.get("chunks"), dict):
                return out, manifest
            warnings.warn(f"{out}: prepared by an older adamrot (no chunk checksums); "
                          "preparing it again", stacklevel=2)
            (local / MANIFEST).unlink(missing_ok=True)
        elif manifest is not None:
            raise PreparedError(f"{out}: holds another prepared {kind} dataset "
                                f"({manifest.get('corpus')}); choose another output "
                                "directory or delete it")
        _clear_unfinished(local)
        if log:
            log(f"preparing into {out}")
        try:
            manifest = {"format": FORMATS[kind], "kind": kind, "key": key, **build(local)}
            merge_indexes(local)
            manifest["chunks"] = chunk_checksums(local)   # verified before training
        except Exception:
            _clear_unfinished(local)
            raise
        tmp = local / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(tmp, local / MANIFEST)
        if remote:
            _upload(local, out)
    return out, manifest


@contextlib.contextmanager
def _staging(out: str, remote: bool) -> Iterator[Path]:
    """Where to write: ``out`` itself, or a temporary directory uploaded to a remote ``out``."""
    if not remote:
        yield Path(out)
        return
    local = Path(tempfile.mkdtemp(prefix="adamrot-prepare-"))
    try:
        yield local
    finally:
        shutil.rmtree(local, ignore_errors=True)


def prepare_text(corpus: TextCorpus, tokenizer: str = "bytes", ranks_file: str | None = None,
                 out: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                 val_fraction: float = 0.01, workers: int = 1, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> tuple[str, dict]:
    """Prepare ``corpus`` with ``tokenizer`` into ``out`` (default: the cache) unless already
    done (:func:`prepare_once`); returns ``(directory, manifest)``."""
    tok = build_tokenizer(tokenizer, ranks_file)
    scores = sizes = content = heldout = None
    if corpus.source != "hub":                  # one streaming pass: scores, sizes, hash
        scores, sizes, content = C.scan(corpus.iter_texts())
        heldout = C.split_scores(scores, sizes, val_fraction, MIN_VAL_BYTES, corpus.label)
    spec = asdict(corpus)
    spec["paths"] = [p if any(c in p for c in "*?[") else str(Path(p).expanduser().resolve())
                     for p in corpus.paths]
    split = {"rule": SPLIT_RULE, "min_val_bytes": MIN_VAL_BYTES}
    if heldout is not None:                     # the held-out set itself, whatever the rule
        split["heldout"] = hashlib.sha256(np.flatnonzero(heldout).tobytes()).hexdigest()
    material = {"corpus": spec, "tokenizer": tok.name, "val_fraction": val_fraction,
                "content": content, "split": split}

    def build(local: Path) -> dict:
        if heldout is not None:
            n = max(1, min(workers, len(heldout)))
        else:
            n = 1 if corpus.max_bytes is not None else workers  # a byte cap is on the stream
        base = {"out": str(local), "tokenizer": tokenizer, "ranks_file": ranks_file,
                "val_fraction": val_fraction, "corpus": asdict(corpus),
                "threads": max(1, available_cores() // n)}   # tokenizer threads per worker
        if heldout is not None:
            parts = np.array_split(np.arange(len(heldout)), n)
            jobs = [{**base, "part": w, "range": (int(idx[0]), int(idx[-1]) + 1),
                     "heldout": heldout[idx].tolist()} for w, idx in enumerate(parts)]
        else:
            jobs = [{**base, "part": w, "parts": n} for w in range(n)]
        stats = run_parts(_write_part, jobs, progress, "tok")
        cut = {"workers": len(jobs), "chunk_tokens": CHUNK_TOKENS}
        val = [doc for s in stats for doc in s.pop("val")]
        totals = {k: sum(s[k] for s in stats) for k in stats[0]}
        if totals["val_tokens"] == 0 or totals["train_tokens"] == 0:
            empty = "validation" if totals["train_tokens"] else "training"
            raise C.DataError(f"{corpus.label}: no {empty} documents (val_fraction="
                              f"{val_fraction}); {'raise' if empty == 'validation' else 'lower'}"
                              " it, or use a larger corpus")
        return {"corpus": corpus.label, "source": corpus.source, "tokenizer": tok.name,
                "vocab_size": tok.vocab_size, "eot_token": tok.eot_token,
                "val_fraction": val_fraction, "corpus_hash": content, "split": split,
                "val_sha256": _write_val(str(local), val), "cut": cut, **totals}

    return prepare_once("text", material, build, out, cache_dir, log)


def _clear_unfinished(directory: Path) -> None:
    """Remove what an interrupted preparation left; refuse a directory holding anything else."""
    ours = re.compile(r"(chunk-\d+-\d+\.bin|(\d+\.)?index\.json(\.tmp)?)$")
    for entry in directory.iterdir():
        if entry.name in (".lock", f".{MANIFEST}.tmp"):
            continue
        foreign = entry.name not in ("train", "val") or not entry.is_dir() or any(
            not ours.match(f.name) for f in entry.iterdir())
        if foreign:
            raise PreparedError(f"{directory}: not empty and not a prepared dataset ({entry.name}"
                                " found); choose an empty or new output directory")
    for split in ("train", "val"):
        shutil.rmtree(directory / split, ignore_errors=True)


def _upload(local: Path, url: str) -> None:
    """Copy a prepared directory to an object store, the manifest last."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url)
    for split in ("train", "val"):
        fs.put(str(local / split), f"{root}/{split}", recursive=True)
    fs.put(str(local / MANIFEST), f"{root}/{MANIFEST}")
