"""Text data for GPT language-model training: :class:`TextDataModule`.

Sources (one interface)
-----------------------
* ``embedded`` (default, no download): the running interpreter's standard-library ``.py``
  files (``sysconfig.get_paths()["stdlib"]``, recursive, without ``site-packages`` /
  ``dist-packages``), one document per non-empty file, in sorted path order.
* ``local``: ``.txt`` (one document per file), ``.jsonl`` (one document per line, field
  ``text_column``) and ``.parquet`` (one document per row, column ``text_column``) files,
  given as paths, directories or glob patterns.
* ``hub``: a Hugging Face hub dataset streamed with ``datasets`` (default OpenWebText). Its
  parquet export (``revision="refs/convert/parquet"``) is read, so datasets that were built
  by loading scripts work without remote code; ``hub_data_files`` reads explicit files (a
  glob, ``hf://...`` or local) instead. See :func:`hub_texts`.

``max_bytes`` caps a corpus to its first ``max_bytes`` UTF-8 bytes (the document that
crosses the cap is cut). Embedded and local corpora, and a hub corpus with ``max_bytes``,
are read into memory and tokenized once in :meth:`TextDataModule.setup`; a hub corpus
without ``max_bytes`` is streamed and tokenized by the data workers.

Documents and validation split
------------------------------
Documents are numbered ``j = 0, 1, ...`` in corpus order (empty documents are dropped
first) and each gets a fixed pseudo-random score (:func:`holdout_score`, a hash of ``j``,
independent of ``seed``); validation documents are those with the lowest scores:

* in-memory corpora: documents in increasing score order until they hold ``val_fraction``
  of the corpus tokens, and at least one window (details in :func:`split_heldout`);
* a streamed hub corpus (size unknown): documents with score below ``val_fraction``.

Held-out documents never reach the training stream. The validation windows are built from
held-out documents in corpus order (each followed by EOT, cut into windows) up to
``val_max_tokens``; for a streamed corpus only as much of the stream is read as that takes.
The windows are one in-memory tensor, split into equal contiguous shares per DDP rank
(remainder dropped) so every rank runs the same number of validation batches.

Training stream and sharding
----------------------------
Sharding is by *document*. There are ``S = world_size * num_workers`` shards; shard
``rank * num_workers + worker_id``. In epoch ``e`` the training documents are put in an order
(a permutation seeded by ``(seed, e)`` for in-memory corpora; stream order for a streamed
hub corpus, which cannot be shuffled) and the document at position ``p`` goes to shard
``p % S`` (so an in-memory corpus needs at least ``S`` training documents). Each shard
appends EOT to each of its documents and cuts the resulting token stream into consecutive,
non-overlapping windows of ``block_size + 1`` tokens (``x = w[:-1]``, ``y = w[1:]``); the
tail of one epoch continues into the next. Every shard's stream is
infinite, so DDP ranks never run out at different times; training length is set by
``trainer.max_steps`` (with Lightning, validate every N steps via an integer
``val_check_interval`` and ``check_val_every_n_epoch=None``). Document-level sharding lets
every worker tokenize only its own documents; its cost is that with a streamed hub corpus
each worker still *reads* the whole stream (other shards' documents are skipped before
tokenization).

Position and exact resume
-------------------------
The training data position is a pure function of the number of training batches this process
has consumed, ``n``: there is no per-worker state to gather. With ``W`` DataLoader workers
(``W = 1`` without workers) the DataLoader takes batches from its workers in turn, so batch
``b`` of rank ``r`` is the ``b // W``-th batch of worker ``b % W``, i.e. windows
``[(b // W) * batch_size, (b // W + 1) * batch_size)`` of shard ``r * W + b % W``
(:func:`resume_schedule`). Window ``k`` of a shard starts at token ``k * (block_size + 1)`` of
that shard's (infinite, epoch-contiguous) token stream, which :meth:`ShuffledDocuments.locate`
maps to ``(epoch, position, offset)`` from the tokenized document lengths alone: resuming
never re-tokenizes and never builds the skipped batches. A streamed hub corpus has no lengths
up front; :meth:`StreamedDocuments.locate` re-reads the stream and tokenizes this shard's
documents to count their lengths (at most one pass: the shard's documents are the same every
epoch), still without building batches.

:class:`TextDataModule` counts the training batches that reach the model
(:meth:`TextDataModule.on_before_batch_transfer`, which Lightning calls for consumed batches
only, never for the one it prefetches) in a :class:`TrainProgress` shared with its dataset, saves
the count in the checkpoint (``state_dict``; every rank consumes the same number of batches, so
rank 0's count restores every rank) and restores it on resume. Each ``iter()`` of the training
DataLoader (its workers are not persistent, so they are started from the current count)
starts every worker at its next unconsumed window, the first batch coming from the worker whose
turn it is. A checkpoint without a count (older checkpoints) falls back to
``global_step * accumulate_grad_batches``. Resuming with another world size, worker count,
batch size or block size is allowed but is not a continuation of the same stream (a warning
says so).

:class:`PackedTrainDataset` used without a :class:`TrainProgress` (tools, tests) still records,
per shard, the position of the next window as ``(epoch, position, offset)``: epoch, index into
the shard's document list for that epoch, and tokens of that document (plus its EOT) already
used; ``state_dict()`` / ``load_state_dict()`` save and restore these.
"""
from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import json
import math
import os
import signal
import sysconfig
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Literal, Protocol, Sequence

import lightning as L
import numpy as np
import pyarrow
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from datamodules.tokenizers import Tokenizer, build_tokenizer

SOURCES = ("embedded", "local", "hub")
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
# File suffix of ``hub_data_files`` -> ``datasets`` packaged builder.
HUB_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv",
                ".txt": "text"}
# Compression suffixes ``datasets`` decompresses while streaming (e.g. SlimPajama-627B's
# ``.jsonl.zst``; zstd needs the ``zstandard`` package, a dependency).
HUB_COMPRESSIONS = (".zst", ".gz", ".bz2", ".xz")


def hub_builder(data_files: str) -> str:
    """The ``datasets`` builder for ``hub_data_files`` (by suffix, under a compression suffix)."""
    path = Path(data_files)
    suffix = path.suffix.lower()
    if suffix in HUB_COMPRESSIONS:
        suffix = Path(path.stem).suffix.lower()
    if suffix not in HUB_BUILDERS:
        raise ValueError(f"hub_data_files {data_files!r}: cannot tell the file type from "
                         f"{suffix!r}; supported: {', '.join(HUB_BUILDERS)}, each optionally "
                         f"compressed ({', '.join(HUB_COMPRESSIONS)})")
    return HUB_BUILDERS[suffix]


# --------------------------------------------------------------------------------------
# Corpus readers: each returns/yields the non-empty document texts in corpus order.
# --------------------------------------------------------------------------------------

def cap_bytes(texts: Iterable[str], max_bytes: int | None) -> list[str]:
    """The first ``max_bytes`` UTF-8 bytes of ``texts`` (consumed lazily; the document that
    crosses the cap is cut at a character boundary, later ones are not read)."""
    if max_bytes is None:
        return list(texts)
    out, used = [], 0
    for text in texts:
        data = text.encode("utf-8")
        if used + len(data) > max_bytes:
            head = data[:max_bytes - used].decode("utf-8", "ignore")
            if head:
                out.append(head)
            break
        out.append(text)
        used += len(data)
        if used == max_bytes:
            break
    return out


def corpus_hash(texts: Iterable[str]) -> str:
    """sha256 over the documents' UTF-8 bytes in order, each prefixed by its length."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted by relative path, without installed
    third-party packages."""
    root = stdlib_root()
    relative = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages")]
        base = Path(directory).relative_to(root)
        relative.extend((base / n).as_posix() for n in names if n.endswith(".py"))
    return [root / r for r in sorted(relative)]


def read_embedded(max_bytes: int | None = None) -> list[str]:
    """The embedded corpus: one document per non-empty standard-library source file."""
    texts = (p.read_bytes().decode("utf-8", "replace") for p in stdlib_source_files())
    return cap_bytes((t for t in texts if t), max_bytes)


def expand_local_paths(paths: Sequence[str]) -> list[Path]:
    """Files named by ``paths`` (files, directories searched recursively for supported
    files, or glob patterns, ``**`` allowed), each pattern's matches sorted, duplicates
    dropped. Raises ``FileNotFoundError`` naming any entry that matches nothing."""
    files: list[Path] = []
    seen: set[Path] = set()
    for entry in paths:
        expanded = os.path.expanduser(entry)
        if any(c in expanded for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(expanded, recursive=True)
                             if os.path.isfile(m))
            if not matches:
                raise FileNotFoundError(f"local path pattern {entry!r} matched no files")
        elif os.path.isdir(expanded):
            matches = sorted(p for p in Path(expanded).rglob("*")
                             if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES)
            if not matches:
                raise FileNotFoundError(f"local directory {entry!r} contains no "
                                        f"{'/'.join(LOCAL_SUFFIXES)} files")
        elif os.path.isfile(expanded):
            matches = [Path(expanded)]
        else:
            raise FileNotFoundError(f"local path {entry!r} does not exist")
        for path in matches:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                files.append(path)
    return files


def _local_suffix(path: Path) -> str:
    """The file's (supported) suffix; an unsupported one is an error naming the file."""
    suffix = path.suffix.lower()
    if suffix not in LOCAL_SUFFIXES:
        raise ValueError(f"local file {str(path)!r} has unsupported type {suffix!r}; "
                         f"supported: {', '.join(LOCAL_SUFFIXES)}")
    return suffix


def _check_not_empty(path: Path) -> None:
    """Raises ``ValueError`` for an empty file (``OSError`` if it cannot be stat'ed)."""
    if path.stat().st_size == 0:
        raise ValueError(f"local file {str(path)!r} is empty")


def check_local_files(paths: Sequence[str]) -> list[Path]:
    """Cheap up-front checks of a local corpus (before any training): every entry matches
    files, and every file has a supported type, is not empty and can be opened. Errors name the
    entry or file. Returns the files."""
    files = expand_local_paths(paths)
    for path in files:
        _local_suffix(path)
        try:
            _check_not_empty(path)
            with path.open("rb") as f:
                f.read(1)
        except OSError as e:
            raise ValueError(f"could not read local file {str(path)!r}: {e}") from e
    return files


def _read_jsonl(path: Path, text_column: str) -> list[str | None]:
    texts = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict) or text_column not in row:
                raise ValueError(f"local file {str(path)!r} line {lineno}: expected a JSON object "
                                 f"with field {text_column!r}")
            texts.append(row[text_column])
    return texts


def read_local_file(path: Path, text_column: str = "text") -> list[str]:
    """The non-empty documents of one ``.txt`` / ``.jsonl`` / ``.parquet`` file; errors name
    the file."""
    suffix = _local_suffix(path)
    try:
        _check_not_empty(path)
        if suffix == ".txt":
            texts: list = [path.read_text(encoding="utf-8")]
        elif suffix == ".jsonl":
            texts = _read_jsonl(path, text_column)
        else:
            columns = pq.read_schema(path).names
            if text_column not in columns:
                raise ValueError(f"local file {str(path)!r} has no column {text_column!r} "
                                 f"(columns: {columns})")
            texts = pq.read_table(path, columns=[text_column]).column(text_column).to_pylist()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, pyarrow.ArrowException) as e:
        raise ValueError(f"could not read local file {str(path)!r}: {e}") from e
    for text in texts:
        if text is not None and not isinstance(text, str):
            raise ValueError(f"local file {str(path)!r}: {text_column!r} holds "
                             f"{type(text).__name__}, expected str")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError(f"local file {str(path)!r} contains no non-empty text")
    return texts


def read_local(paths: Sequence[str], text_column: str = "text",
               max_bytes: int | None = None) -> list[str]:
    """The local corpus: documents of all files named by ``paths``, in order."""
    files = expand_local_paths(paths)
    return cap_bytes((t for f in files for t in read_local_file(f, text_column)), max_bytes)


def hub_texts(dataset: str, data_files: str | None = None, split: str = "train",
              text_column: str = "text", batch_size: int = 256) -> Iterator[str]:
    """Stream the non-empty texts of a hub dataset, in its stored order.

    Without ``data_files``, reads the parquet export of ``dataset``
    (``load_dataset(dataset, revision="refs/convert/parquet", streaming=True)``): current
    ``datasets`` refuses loading scripts, and the export exists for script-based datasets
    such as ``Skylion007/openwebtext``. With ``data_files`` (a path or glob, local or
    ``hf://datasets/...``), reads those files with the builder matching their suffix
    (``dataset`` is then only a label). Nothing is downloaded up front.
    """
    import datasets  # imported here: heavy, and only this source needs it

    if data_files is None:
        ds = datasets.load_dataset(dataset, revision="refs/convert/parquet", split=split,
                                   streaming=True)
    else:
        ds = datasets.load_dataset(hub_builder(data_files), data_files={split: data_files},
                                   split=split, streaming=True)
    if ds.column_names is not None and text_column not in ds.column_names:
        raise ValueError(f"hub dataset {dataset!r} has no column {text_column!r} "
                         f"(columns: {ds.column_names})")
    # ``.iter()`` rather than ``iter(ds)``: inside a DataLoader worker the latter would hand
    # this worker only some of the files; sharding is done by the caller instead.
    for batch in ds.select_columns([text_column]).iter(batch_size=batch_size):
        yield from (text for text in batch[text_column] if text)


@dataclass(frozen=True)
class HubStream:
    """A picklable handle on a hub text stream; calling it starts a new pass."""

    dataset: str
    data_files: str | None
    split: str
    text_column: str

    def __call__(self) -> Iterator[str]:
        return hub_texts(self.dataset, self.data_files, self.split, self.text_column)


# --------------------------------------------------------------------------------------
# Validation hold-out
# --------------------------------------------------------------------------------------

def holdout_score(index: int) -> float:
    """A fixed pseudo-random number in [0, 1) for document ``index``."""
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=8,
                             person=b"adamrot-val").digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def split_heldout(lengths: np.ndarray, val_fraction: float,
                  min_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_ids, val_ids)``, both sorted, of an in-memory corpus whose documents have
    ``lengths`` tokens (EOT included).

    The target is ``max(val_fraction * all tokens, min_tokens)``. Documents are held out in
    increasing :func:`holdout_score` order, skipping any that would take the held-out tokens
    above twice the target, until the target is reached. If skipping cannot reach it (a
    corpus of few, large documents), the shortest score-order prefix that reaches it is used.
    """
    n = len(lengths)
    if n < 2:
        raise ValueError(f"the corpus has {n} document(s); a document-level validation split "
                         "needs at least 2")
    order = np.argsort([holdout_score(j) for j in range(n)], kind="stable")
    target = max(val_fraction * float(lengths.sum()), min_tokens)
    chosen, held = [], 0
    for j in order:
        if held + lengths[j] <= 2 * target:
            chosen.append(j)
            held += lengths[j]
            if held >= target:
                break
    else:
        chosen = order[:int(np.searchsorted(np.cumsum(lengths[order]), target)) + 1]
    if len(chosen) >= n:
        raise ValueError(f"holding out {target:.0f} validation tokens (val_fraction="
                         f"{val_fraction}, at least {min_tokens}) leaves no training documents "
                         f"in a corpus of {n} documents; use a larger corpus")
    heldout = np.zeros(n, dtype=bool)
    heldout[chosen] = True
    return np.flatnonzero(~heldout), np.flatnonzero(heldout)


# --------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------

class WindowPacker:
    """Cuts a token stream, fed piece by piece, into consecutive windows of ``size`` tokens."""

    def __init__(self, size: int):
        self.size = size
        self._pending = np.empty(0, dtype=np.int64)

    def feed(self, piece: np.ndarray) -> Iterator[tuple[np.ndarray, int]]:
        """Yield each window completed by ``piece``, with the number of ``piece``'s tokens
        used up to the window's end. Consume it fully before the next feed."""
        carried = len(self._pending)
        buf = np.concatenate((self._pending, piece)) if carried else piece
        n = len(buf) // self.size
        for k in range(1, n + 1):
            end = k * self.size
            yield buf[end - self.size:end], end - carried
        self._pending = buf[n * self.size:]


def pack_validation(token_docs: Iterable[np.ndarray], eot_token: int, window: int,
                    max_tokens: int | None = None) -> torch.Tensor:
    """``(N, window)`` int64 windows of the documents joined with EOT (each document followed
    by EOT), at most ``max_tokens // window`` of them; stops reading once full."""
    limit = None if max_tokens is None else max_tokens // window
    packer, windows = WindowPacker(window), []
    for tokens in token_docs:
        if limit is not None and len(windows) >= limit:
            break
        windows.extend(w for w, _ in packer.feed(np.append(tokens, eot_token)))
    windows = windows[:limit]
    if not windows:
        return torch.empty(0, window, dtype=torch.long)
    return torch.from_numpy(np.stack(windows).astype(np.int64))


def split_xy(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` = ``(w[:, :-1], w[:, 1:])`` of a ``(B, block_size + 1)`` batch, contiguous."""
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def collate_windows(windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader collate: a list of ``block_size + 1`` windows -> ``(x, y)``."""
    return split_xy(torch.stack(windows))


# --------------------------------------------------------------------------------------
# Documents
# --------------------------------------------------------------------------------------

class TokenizedDocuments:
    """Documents tokenized once, stored as one flat array plus offsets."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray):
        self.tokens = tokens
        self.offsets = offsets

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer: Tokenizer) -> "TokenizedDocuments":
        arrays = tokenizer.encode_batch(texts)
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        dtype = np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.int32
        tokens = np.concatenate(arrays).astype(dtype) if arrays else np.empty(0, dtype)
        return cls(tokens, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, j: int) -> np.ndarray:
        return self.tokens[self.offsets[j]:self.offsets[j + 1]]

    def lengths(self) -> np.ndarray:
        """Tokens of each document in the stream, its EOT included."""
        return np.diff(self.offsets) + 1


class TrainDocuments(Protocol):
    """The training documents, as the training dataset consumes them."""

    num_documents: int | None  # training documents; None when unknown (streamed)

    def shard_epoch(self, epoch: int, shard: int, num_shards: int,
                    start: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        """``(position, document id, tokens)`` of the documents that shard ``shard`` of
        ``num_shards`` gets in ``epoch``, from its position ``start`` on."""

    def locate(self, shard: int, num_shards: int, token: int) -> tuple[int, int, int]:
        """``(epoch, position, offset)`` of token ``token`` of the shard's token stream
        (its documents of epoch 0, 1, ..., each followed by EOT)."""


def locate_in_lengths(lengths: np.ndarray, token: int) -> tuple[int, int]:
    """``(position, offset)`` of token ``token`` in the concatenation of documents of
    ``lengths`` tokens (``token < lengths.sum()``)."""
    ends = np.cumsum(lengths)
    position = int(np.searchsorted(ends, token, side="right"))
    return position, int(token - (ends[position - 1] if position else 0))


class ShuffledDocuments:
    """In-memory training documents, in a fresh seeded order each epoch."""

    def __init__(self, documents: TokenizedDocuments, train_ids: np.ndarray, seed: int):
        self.documents = documents
        self.train_ids = train_ids
        self.seed = seed
        self.num_documents = len(train_ids)

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.train_ids)

    def shard_epoch(self, epoch: int, shard: int, num_shards: int,
                    start: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        if self.num_documents < num_shards:
            raise ValueError(
                f"{self.num_documents} training documents cannot be shared by {num_shards} "
                "shards (world_size x num_workers); use fewer workers or a larger corpus")
        mine = self.epoch_order(epoch)[shard::num_shards]
        for position in range(start, len(mine)):
            yield position, int(mine[position]), self.documents[mine[position]]

    def locate(self, shard: int, num_shards: int, token: int) -> tuple[int, int, int]:
        """From the stored document lengths alone (no tokenization, no windows built)."""
        if self.num_documents < num_shards:
            raise ValueError(
                f"{self.num_documents} training documents cannot be shared by {num_shards} "
                "shards (world_size x num_workers); use fewer workers or a larger corpus")
        lengths = self.documents.lengths()
        epoch = 0
        while True:
            mine = lengths[self.epoch_order(epoch)[shard::num_shards]]
            total = int(mine.sum())
            if token < total:
                return (epoch, *locate_in_lengths(mine, token))
            token -= total
            epoch += 1


class StreamedDocuments:
    """Training documents read from a stream, tokenized as they arrive, in stream order
    (the same every epoch). Held-out documents are skipped."""

    num_documents = None

    def __init__(self, stream: HubStream, tokenizer: Tokenizer, val_fraction: float):
        self.stream = stream
        self.tokenizer = tokenizer
        self.val_fraction = val_fraction

    def shard_epoch(self, epoch: int, shard: int, num_shards: int,
                    start: int = 0) -> Iterator[tuple[int, int, np.ndarray]]:
        count = 0  # training documents seen so far in this pass
        for j, text in enumerate(self.stream()):
            if holdout_score(j) < self.val_fraction:
                continue
            position, mine = divmod(count, num_shards)
            count += 1
            if mine == shard and position >= start:
                yield position, j, np.asarray(self.tokenizer.encode(text), dtype=np.int64)

    def locate(self, shard: int, num_shards: int, token: int) -> tuple[int, int, int]:
        """Reads the stream and tokenizes this shard's documents to learn their lengths
        (at most one pass: the shard gets the same documents every epoch)."""
        if token == 0:
            return 0, 0, 0
        lengths: list[int] = []
        used = 0
        for position, _, tokens in self.shard_epoch(0, shard, num_shards):
            n = len(tokens) + 1
            if used + n > token:
                return 0, position, token - used
            lengths.append(n)
            used += n
        if used == 0:
            raise RuntimeError(f"training shard {shard} of {num_shards} received no documents; "
                               "the corpus is too small")
        epoch, token = divmod(token, used)
        return (epoch, *locate_in_lengths(np.asarray(lengths), token))


# --------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------

def distributed_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM, so a preemption signal sent to
    the whole process group reaches the trainer (which saves and stops) without killing the
    workers under it first (the DataLoader would then fail the step). The trainer shuts its
    workers down itself: normally, on an exception (:meth:`TextDataModule.on_exception`) and,
    as a last resort, at interpreter exit (:func:`_kill_leftover_workers`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


#: live multi-process iterators of training DataLoaders (their workers ignore SIGTERM)
_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


def shutdown_train_workers(iterators: "weakref.WeakSet | None" = None) -> None:
    """Shut down (gracefully) the workers of the given live training DataLoader iterators
    (default: all of this process)."""
    iterators = _LIVE_ITERATORS if iterators is None else iterators
    for it in list(iterators):
        with contextlib.suppress(Exception):
            it._shutdown_workers()
        iterators.discard(it)
        _LIVE_ITERATORS.discard(it)


@atexit.register
def _kill_leftover_workers() -> None:
    """At exit, shut down workers of iterators that were never shut down, and SIGKILL any that
    remain: they ignore the SIGTERM that ``multiprocessing`` sends its children before joining
    them, which would hang the exit."""
    iterators = list(_LIVE_ITERATORS)
    shutdown_train_workers()
    for it in iterators:
        for w in getattr(it, "_workers", None) or []:
            with contextlib.suppress(Exception):
                if w.is_alive():
                    w.kill()


class TrainDataLoader(DataLoader):
    """DataLoader that registers its multi-process iterators in :data:`_LIVE_ITERATORS` (and
    in ``self.live_iterators`` when set)."""

    live_iterators: "weakref.WeakSet | None" = None

    def _get_iterator(self):
        it = super()._get_iterator()
        if self.num_workers > 0:
            _LIVE_ITERATORS.add(it)
            if self.live_iterators is not None:
                self.live_iterators.add(it)
        return it


class TrainProgress:
    """Training batches consumed so far by this process: the whole data position (see the
    module docstring). Shared by :class:`TextDataModule` and its :class:`PackedTrainDataset`;
    DataLoader workers get a copy of it as it is when the DataLoader is iterated."""

    def __init__(self, batches: int = 0):
        self.batches = batches

    def __repr__(self) -> str:
        return f"TrainProgress(batches={self.batches})"


def resume_schedule(batches: int, worker_id: int, num_workers: int,
                    batch_size: int) -> tuple[int, int]:
    """Where DataLoader worker ``worker_id`` of ``num_workers`` starts when the DataLoader is
    iterated after ``batches`` batches were consumed: ``(logical worker, first window)``.

    The DataLoader takes batch ``j`` of a fresh iterator from worker ``j % num_workers``; batch
    ``batches + j`` of the whole run must come from worker ``(batches + j) % num_workers`` of
    the straight run, so physical worker ``w`` plays logical worker
    ``(w + batches) % num_workers`` and skips the ``batch_size``-window batches that logical
    worker already delivered.
    """
    if batches < 0 or not 0 <= worker_id < num_workers:
        raise ValueError(f"invalid schedule: {batches} batches, worker {worker_id} of {num_workers}")
    logical = (worker_id + batches) % num_workers
    done = max(0, (batches - logical + num_workers - 1) // num_workers)
    return logical, done * batch_size


class PackedTrainDataset(IterableDataset):
    """Infinite stream of ``block_size + 1`` token windows of this process's training shard.

    ``rank`` / ``world_size`` default to the process group at iteration time; worker id and
    count come from ``torch.utils.data.get_worker_info()``. :meth:`iter_windows` takes
    explicit values of all four (for tests and tools).

    With ``batch_size`` and ``progress`` (a :class:`TrainProgress`), iteration starts at the
    position of batch ``progress.batches`` of this rank (:func:`resume_schedule`), whatever
    was iterated before; without them it continues from the recorded per-shard positions.
    """

    def __init__(self, documents: TrainDocuments, block_size: int, eot_token: int,
                 rank: int | None = None, world_size: int | None = None,
                 batch_size: int | None = None, progress: TrainProgress | None = None):
        super().__init__()
        if (rank is None) != (world_size is None):
            raise ValueError("pass both rank and world_size, or neither")
        if (batch_size is None) != (progress is None):
            raise ValueError("pass both batch_size and progress, or neither")
        self.documents = documents
        self.block_size = block_size
        self.eot_token = eot_token
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size
        self.progress = progress
        # "shard/num_shards" -> {"epoch", "position", "offset"} of the next window.
        self._positions: dict[str, dict[str, int]] = {}

    def state_dict(self) -> dict:
        """Positions of the shards iterated in this process."""
        return {"positions": {k: dict(v) for k, v in self._positions.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Restore positions saved by :meth:`state_dict`; iteration continues from them."""
        self._positions = {k: dict(v) for k, v in state["positions"].items()}

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.progress is None:
            return self.iter_windows()
        # Resolved now (not lazily in the generator): the position is that of this iter().
        rank, world_size = ((self.rank, self.world_size) if self.rank is not None
                            else distributed_rank_world())
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info else (0, 1)
        logical, window = resume_schedule(self.progress.batches, worker_id, num_workers,
                                          self.batch_size)
        return self.iter_windows(rank, world_size, logical, num_workers, start_window=window)

    def locate_window(self, window: int, shard: int, num_shards: int) -> dict[str, int]:
        """``{"epoch", "position", "offset"}`` where window ``window`` of a shard starts."""
        epoch, position, offset = self.documents.locate(shard, num_shards,
                                                        window * (self.block_size + 1))
        return {"epoch": epoch, "position": position, "offset": offset}

    def _shard(self, rank, world_size, worker_id, num_workers) -> tuple[int, int]:
        if (rank is None) != (world_size is None) or (worker_id is None) != (num_workers is None):
            raise ValueError("pass rank with world_size and worker_id with num_workers")
        if rank is None:
            rank, world_size = ((self.rank, self.world_size) if self.rank is not None
                                else distributed_rank_world())
        if worker_id is None:
            info = get_worker_info()
            worker_id, num_workers = (info.id, info.num_workers) if info else (0, 1)
        if not (0 <= rank < world_size and 0 <= worker_id < num_workers):
            raise ValueError(f"invalid shard: rank {rank} of {world_size}, "
                             f"worker {worker_id} of {num_workers}")
        return rank * num_workers + worker_id, world_size * num_workers

    def iter_windows(self, rank: int | None = None, world_size: int | None = None,
                     worker_id: int | None = None,
                     num_workers: int | None = None,
                     start_window: int | None = None) -> Iterator[torch.Tensor]:
        """Windows (int64, ``block_size + 1``) of one shard, forever, from its recorded
        position, or from window ``start_window`` of the shard's stream when given."""
        shard, num_shards = self._shard(rank, world_size, worker_id, num_workers)
        key = f"{shard}/{num_shards}"
        if start_window is not None:
            self._positions[key] = self.locate_window(start_window, shard, num_shards)
        pos = self._positions.setdefault(key, {"epoch": 0, "position": 0, "offset": 0})
        epoch, start, skip = pos["epoch"], pos["position"], pos["offset"]
        packer = WindowPacker(self.block_size + 1)
        while True:
            received = False
            for position, _, tokens in self.documents.shard_epoch(epoch, shard, num_shards, start):
                received = True
                piece = np.append(tokens, self.eot_token)[skip:]
                for window, used in packer.feed(piece):
                    pos.update(epoch=epoch, position=position, offset=skip + used)
                    yield torch.from_numpy(window.astype(np.int64))
                skip = 0
            if not received and start == 0:
                raise RuntimeError(f"training shard {shard} of {num_shards} received no "
                                   f"documents in epoch {epoch}; the corpus is too small")
            epoch, start = epoch + 1, 0


class ValidationBatches(IterableDataset):
    """Finite, in-order ``(x, y)`` batches of a fixed tensor of windows."""

    def __init__(self, windows: torch.Tensor, batch_size: int):
        super().__init__()
        self.windows = windows
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.windows) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.windows), self.batch_size):
            yield split_xy(self.windows[i:i + self.batch_size])


# --------------------------------------------------------------------------------------
# DataModule
# --------------------------------------------------------------------------------------

def _check_int(name: str, value, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}{' or None' if optional else ''}, got {value!r}")


class TextDataModule(L.LightningDataModule):
    """Packed GPT training windows from the embedded, a local or a hub text corpus.

    Batches are ``(x, y)`` int64 tensors of shape ``(batch_size, block_size)``, ``y`` being
    ``x`` shifted by one token. ``vocab_size`` and ``eot_token`` are set by ``__init__``;
    the corpus is read in :meth:`setup` (or on first use of :meth:`describe` /
    :meth:`unigram_entropy`). See the module docstring for the split and sharding rules.

    Args:
        source: ``"embedded"`` (stdlib sources), ``"local"`` (``paths``) or ``"hub"``.
        paths: local files, directories or globs (``.txt``, ``.jsonl``, ``.parquet``).
        hub_dataset: hub dataset id; its parquet export is streamed.
        hub_data_files: explicit files/glob to stream instead (local or ``hf://``).
        hub_split: split to read.
        text_column: column/field holding the text (jsonl, parquet, hub).
        tokenizer: ``"bytes"`` (vocab 257) or ``"gpt2"`` (tiktoken, vocab 50257).
        tiktoken_ranks_file: local ``.tiktoken`` ranks file for ``"gpt2"`` (offline).
        block_size: tokens per training example.
        batch_size: training windows per batch (per process).
        val_batch_size: validation batch size (default ``batch_size``).
        num_workers: training DataLoader workers (each is one shard).
        val_fraction: share of the corpus held out for validation (whole documents).
        val_max_tokens: cap on validation tokens (None: all held-out documents).
        max_bytes: read only the first ``max_bytes`` bytes of text of the corpus.
        seed: seed of the per-epoch document shuffle.
    """

    def __init__(
        self,
        source: Literal["embedded", "local", "hub"] = "embedded",
        paths: list[str] | None = None,
        hub_dataset: str = "Skylion007/openwebtext",
        hub_data_files: str | None = None,
        hub_split: str = "train",
        text_column: str = "text",
        tokenizer: Literal["bytes", "gpt2"] = "bytes",
        tiktoken_ranks_file: str | None = None,
        block_size: int = 256,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.01,
        val_max_tokens: int | None = 1_000_000,
        max_bytes: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}, "
                             f"got {source!r}")
        if source == "local" and not paths:
            raise ValueError("source='local' requires paths (files, directories or globs)")
        if source != "local" and paths:
            raise ValueError(f"paths is only used with source='local', got source={source!r}")
        if source == "local":
            check_local_files(paths)  # missing, empty or unreadable files: refused now
        for name, value in (("hub_dataset", hub_dataset), ("hub_split", hub_split),
                            ("text_column", text_column)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        _check_int("block_size", block_size, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("val_batch_size", val_batch_size, 1, optional=True)
        _check_int("num_workers", num_workers, 0)
        _check_int("max_bytes", max_bytes, 1, optional=True)
        _check_int("seed", seed, 0)
        _check_int("val_max_tokens", val_max_tokens, 1, optional=True)
        if val_max_tokens is not None and val_max_tokens < block_size + 1:
            raise ValueError(f"val_max_tokens must be at least block_size + 1 = {block_size + 1} "
                             f"(one window) or None, got {val_max_tokens}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
                or not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
        self.save_hyperparameters()

        self.tokenizer: Tokenizer = build_tokenizer(tokenizer, tiktoken_ranks_file)
        self.vocab_size: int = self.tokenizer.vocab_size
        self.eot_token: int = self.tokenizer.eot_token
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size

        self.train_documents: TrainDocuments | None = None
        self.train_dataset: PackedTrainDataset | None = None
        self.progress = TrainProgress()  # the training data position (batches consumed)
        self._train_iterators: weakref.WeakSet = weakref.WeakSet()
        self.val_windows: torch.Tensor | None = None  # (N, block_size + 1), all ranks
        self._info: dict = {}
        self._ready = False

    # -- corpus ------------------------------------------------------------------------

    def _corpus_label(self) -> str:
        hp = self.hparams
        if hp.source == "embedded":
            return f"stdlib:{stdlib_root()}"
        if hp.source == "local":
            return ",".join(hp.paths)
        return hp.hub_data_files or f"{hp.hub_dataset}@refs/convert/parquet"

    def _hub_stream(self) -> HubStream:
        hp = self.hparams
        return HubStream(hp.hub_dataset, hp.hub_data_files, hp.hub_split, hp.text_column)

    def _read_texts(self) -> list[str]:
        hp = self.hparams
        if hp.source == "embedded":
            return read_embedded(hp.max_bytes)
        if hp.source == "local":
            return read_local(hp.paths, hp.text_column, hp.max_bytes)
        return cap_bytes(self._hub_stream()(), hp.max_bytes)

    def _load_in_memory(self) -> None:
        hp = self.hparams
        texts = self._read_texts()
        documents = TokenizedDocuments.from_texts(texts, self.tokenizer)
        train_ids, val_ids = split_heldout(documents.lengths(), hp.val_fraction,
                                           min_tokens=self.block_size + 1)
        self.train_documents = ShuffledDocuments(documents, train_ids, hp.seed)
        self.val_windows = pack_validation((documents[j] for j in val_ids), self.eot_token,
                                           self.block_size + 1, hp.val_max_tokens)
        self._info.update(corpus_hash=corpus_hash(texts), documents=len(documents),
                          train_documents=len(train_ids), val_documents=len(val_ids),
                          train_tokens=int(documents.lengths()[train_ids].sum()))

    def _load_streamed(self) -> None:
        hp = self.hparams
        stream = self._hub_stream()
        self.train_documents = StreamedDocuments(stream, self.tokenizer, hp.val_fraction)
        heldout = (text for j, text in enumerate(stream()) if holdout_score(j) < hp.val_fraction)
        self.val_windows = pack_validation(
            (np.asarray(self.tokenizer.encode(t), dtype=np.int64) for t in heldout),
            self.eot_token, self.block_size + 1, hp.val_max_tokens)
        self._info.update(corpus_hash=None, documents=None, train_documents=None,
                          val_documents=None, train_tokens=None)

    def setup(self, stage: str | None = None) -> None:
        """Read, tokenize and split the corpus (once; later calls do nothing)."""
        if self._ready:
            return
        if self.hparams.source == "hub" and self.hparams.max_bytes is None:
            self._load_streamed()
        else:
            self._load_in_memory()
        if len(self.val_windows) == 0:
            raise ValueError(
                f"the validation documents hold fewer than block_size + 1 = {self.block_size + 1} "
                f"tokens; raise val_fraction (now {self.hparams.val_fraction}) or the corpus size")
        self._ready = True

    # -- loaders -----------------------------------------------------------------------

    def train_dataloader(self) -> DataLoader:
        """This rank's training batches, from the current data position (module docstring)."""
        self.setup()
        rank, world_size = distributed_rank_world()
        if self.train_dataset is None:
            self.train_dataset = PackedTrainDataset(self.train_documents, self.block_size,
                                                    self.eot_token, rank, world_size,
                                                    batch_size=self.batch_size,
                                                    progress=self.progress)
        self._check_resume(world_size)
        workers = self.hparams.num_workers
        # Workers are not persistent: each iter() starts them from ``self.progress``.
        loader = TrainDataLoader(self.train_dataset, batch_size=self.batch_size,
                                 num_workers=workers, collate_fn=collate_windows,
                                 pin_memory=torch.cuda.is_available(), persistent_workers=False,
                                 worker_init_fn=ignore_sigterm if workers > 0 else None)
        loader.live_iterators = self._train_iterators
        return loader

    # -- data position (exact resume) ----------------------------------------------------

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_train_iterators"] = None          # weak references do not pickle (ddp_spawn)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._train_iterators = weakref.WeakSet()

    def _layout(self, world_size: int | None = None) -> dict:
        hp = self.hparams
        if world_size is None:
            world_size = distributed_rank_world()[1]
        return {"world_size": world_size, "num_workers": hp.num_workers,
                "batch_size": self.batch_size, "block_size": self.block_size, "seed": hp.seed,
                "max_bytes": hp.max_bytes, "source": hp.source}

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Counts the training batches that reach the model (Lightning calls this for each
        consumed batch, never for the one it prefetches)."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            self.progress.batches += 1
        return batch

    def on_exception(self, exception: BaseException) -> None:
        shutdown_train_workers(self._train_iterators)

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            shutdown_train_workers(self._train_iterators)

    def state_dict(self) -> dict:
        """The data position: training batches consumed by each rank (all equal), and the
        layout they were consumed under."""
        return {"train_batches": int(self.progress.batches), "layout": self._layout()}

    def load_state_dict(self, state: dict) -> None:
        if "train_batches" not in state:
            return
        self.progress.batches = int(state["train_batches"])
        self._saved_layout = dict(state.get("layout") or {})

    def _check_resume(self, world_size: int) -> None:
        """On resume: fall back to ``global_step * accumulate_grad_batches`` for checkpoints
        without a data position; warn when the layout changed."""
        trainer = self.trainer
        saved = getattr(self, "_saved_layout", None)
        if trainer is not None and saved is None and self.progress.batches == 0 \
                and trainer.global_step > 0:
            self.progress.batches = trainer.global_step * trainer.accumulate_grad_batches
            rank_zero_warn(f"the checkpoint has no training data position; assuming "
                           f"{self.progress.batches} batches (global_step x "
                           f"accumulate_grad_batches) were consumed by each rank")
        if saved:
            now = self._layout(world_size)
            changed = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
            if changed:
                what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                rank_zero_warn(f"resuming the training data with a different layout ({what}); "
                               f"the stream restarts at batch {self.progress.batches} of the new "
                               "layout, which is not the continuation of the checkpointed run")
            self._saved_layout = {}

    def val_dataloader(self) -> DataLoader:
        """This rank's equal share of the validation windows, in order."""
        self.setup()
        rank, world_size = distributed_rank_world()
        share = len(self.val_windows) // world_size
        if share == 0:
            raise ValueError(f"{len(self.val_windows)} validation windows cannot be split over "
                             f"{world_size} ranks; raise val_fraction or val_max_tokens")
        windows = self.val_windows[rank * share:(rank + 1) * share]
        return DataLoader(ValidationBatches(windows, self.val_batch_size), batch_size=None,
                          pin_memory=torch.cuda.is_available())

    # -- reporting ---------------------------------------------------------------------

    def describe(self) -> dict:
        """Source, tokenizer, corpus hash and token counts (reads the corpus if needed).

        ``corpus_hash`` (see :func:`corpus_hash`) and the document/train-token counts are
        None for a streamed hub corpus.
        """
        self.setup()
        hp = self.hparams
        return {
            "source": hp.source,
            "corpus": self._corpus_label(),
            "max_bytes": hp.max_bytes,
            "tokenizer": self.tokenizer.name,
            "vocab_size": self.vocab_size,
            "eot_token": self.eot_token,
            "block_size": self.block_size,
            **self._info,
            "val_windows": len(self.val_windows),
            "val_tokens": self.val_windows.numel(),
        }

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the unigram distribution of the validation targets: the loss
        of the best context-free predictor, a baseline for the validation loss."""
        self.setup()
        counts = torch.bincount(self.val_windows[:, 1:].reshape(-1), minlength=self.vocab_size)
        p = counts[counts > 0].double() / counts.sum()
        return float(-(p * p.log()).sum())
