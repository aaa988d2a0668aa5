"""Text corpus sources: the embedded corpus, local files and hub datasets, read as documents.

Each reader yields non-empty document texts in corpus order; bad content raises
:class:`DataError` (a ``ValueError``) whose message starts with the file (and line) at fault.
The validation hold-out is decided here too, per document. See docs/DATA.md.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow
import pyarrow.parquet as pq

LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")
# File suffix of ``hub_data_files`` -> ``datasets`` packaged builder.
HUB_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv",
                ".txt": "text"}
# Compression suffixes ``datasets`` decompresses while streaming (zstd: ``zstandard``).
HUB_COMPRESSIONS = (".zst", ".gz", ".bz2", ".xz")


class DataError(ValueError):
    """Bad corpus content; the message starts with the file (and line) at fault."""


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


def cap_bytes(texts: Iterable[str], max_bytes: int | None) -> Iterator[str]:
    """The first ``max_bytes`` UTF-8 bytes of ``texts`` (consumed lazily; the document that
    crosses the cap is cut at a character boundary, later ones are not read)."""
    used = 0
    for text in texts:
        if max_bytes is None:
            yield text
            continue
        data = text.encode("utf-8", "surrogatepass")
        if used + len(data) >= max_bytes:
            head = data[:max_bytes - used].decode("utf-8", "ignore")
            if head:
                yield head
            return
        used += len(data)
        yield text


def corpus_hash(texts: Iterable[str]) -> str:
    """sha256 over the documents' UTF-8 bytes in order, each prefixed by its length."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def holdout_score(text: str) -> float:
    """A fixed pseudo-random number in [0, 1) from a document's content (so a document's
    side of the split does not depend on its position, the worker that read it, or copies)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                             person=b"adamrot-val").digest()
    return int.from_bytes(digest, "little") / 2.0 ** 64


def split_heldout(texts: Sequence[str], val_fraction: float, min_bytes: int,
                  label: str = "corpus") -> np.ndarray:
    """Boolean mask of the held-out documents of an in-memory corpus (:func:`split_scores`)."""
    scores = np.array([holdout_score(t) for t in texts], dtype=np.float64)
    sizes = np.array([len(t.encode("utf-8", "surrogatepass")) for t in texts], dtype=np.int64)
    return split_scores(scores, sizes, val_fraction, min_bytes, label)


def split_scores(scores: np.ndarray, sizes: np.ndarray, val_fraction: float, min_bytes: int,
                 label: str = "corpus") -> np.ndarray:
    """Boolean mask of the held-out documents, from each document's :func:`holdout_score` and
    UTF-8 size (so a corpus can be split without holding it in memory).

    Distinct texts (distinct scores: a 64-bit hash of the text) are held out in increasing
    score order, all copies of a text together, so duplicates never straddle the split,
    skipping any whose copies would take the held-out bytes above twice the target
    ``max(val_fraction * bytes, min(min_bytes, bytes / 4))``, until the target is reached; if
    skipping cannot reach it, the shortest score-order prefix that does. At least one distinct
    text stays on each side.
    """
    n = len(scores)
    distinct, first, group = np.unique(scores, return_index=True, return_inverse=True)
    if len(distinct) < 2:
        raise DataError(f"{label}: holds {n} non-empty document(s), {len(distinct)} distinct; "
                        "a document-level validation split needs at least 2 distinct")
    group_bytes = np.bincount(group, weights=sizes, minlength=len(distinct)).astype(np.int64)
    target = max(val_fraction * float(sizes.sum()), min(min_bytes, sizes.sum() / 4))
    chosen, held = [], 0
    for j, b in enumerate(group_bytes):            # np.unique: increasing score
        if held + b <= 2 * target:
            chosen.append(j)
            held += b
            if held >= target:
                break
    else:
        chosen = list(range(int(np.searchsorted(np.cumsum(group_bytes), target)) + 1))
    picked = np.zeros(len(distinct), dtype=bool)
    picked[chosen[:len(distinct) - 1]] = True
    return picked[group]


def scan(texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray, str]:
    """One pass over a corpus: each document's :func:`holdout_score` and UTF-8 size, and
    :func:`corpus_hash` of the whole, holding one document at a time."""
    h = hashlib.sha256()
    scores, sizes = [], []
    for text in texts:
        data = text.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
        scores.append(holdout_score(text))
        sizes.append(len(data))
    return np.array(scores, dtype=np.float64), np.array(sizes, dtype=np.int64), h.hexdigest()


# -- embedded ---------------------------------------------------------------------------

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


def iter_embedded(max_bytes: int | None = None) -> Iterator[str]:
    """The embedded corpus, streamed: one document per non-empty standard-library file."""
    texts = (p.read_bytes().decode("utf-8", "replace") for p in stdlib_source_files())
    return cap_bytes((t for t in texts if t), max_bytes)


def read_embedded(max_bytes: int | None = None) -> list[str]:
    """The embedded corpus: one document per non-empty standard-library source file."""
    return list(iter_embedded(max_bytes))


# -- local files ------------------------------------------------------------------------

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


def check_local_files(paths: Sequence[str]) -> list[Path]:
    """Cheap up-front checks (before any training): every entry matches files, and every file
    has a supported type, is not empty and can be opened. Returns the files."""
    files = expand_local_paths(paths)
    for path in files:
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise DataError(f"{path}: unsupported local file type {path.suffix.lower()!r}; "
                            f"supported: {', '.join(LOCAL_SUFFIXES)}")
        try:
            if path.stat().st_size == 0:
                raise DataError(f"{path}: local file is empty")
            with path.open("rb") as f:
                f.read(1)
        except OSError as e:
            raise DataError(f"{path}: could not read local file: {e}") from e
    return files


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 text (byte {e.start}: "
                        f"{data[e.start:e.start + 4]!r})") from None


def _read_jsonl(path: Path, text_column: str) -> Iterator[object]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path} line {lineno}"
            line = _utf8(raw, where)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: malformed JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict) or text_column not in row:
                raise DataError(f"{where}: expected a JSON object with field {text_column!r}")
            yield row[text_column]


def iter_local_file(path: Path, text_column: str = "text") -> Iterator[str]:
    """The non-empty documents of one ``.txt`` (one document) / ``.jsonl`` (one per line) /
    ``.parquet`` (one per row, read a batch at a time) file, streamed; errors name the file
    (and line)."""
    check_local_files([str(path)])
    suffix = path.suffix.lower()
    found = 0
    try:
        if suffix == ".txt":
            texts: Iterable = [_utf8(path.read_bytes(), str(path))]
        elif suffix == ".jsonl":
            texts = _read_jsonl(path, text_column)
        else:
            columns = pq.read_schema(path).names
            if text_column not in columns:
                raise DataError(f"{path}: parquet file has no column {text_column!r} "
                                f"(columns: {columns})")
            texts = (t for b in pq.ParquetFile(path).iter_batches(batch_size=256,
                                                                  columns=[text_column])
                     for t in b.column(0).to_pylist())
        for text in texts:
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}: {text_column!r} holds {type(text).__name__}, "
                                "expected str")
            if text:
                found += 1
                yield text
    except (OSError, pyarrow.ArrowException) as e:
        raise DataError(f"{path}: could not read local file: {e}") from e
    if not found:
        raise DataError(f"{path}: contains no non-empty text")


def read_local_file(path: Path, text_column: str = "text") -> list[str]:
    """:func:`iter_local_file` as a list."""
    return list(iter_local_file(path, text_column))


def iter_local(paths: Sequence[str], text_column: str = "text",
               max_bytes: int | None = None) -> Iterator[str]:
    """The local corpus, streamed: documents of all files named by ``paths``, in order."""
    files = expand_local_paths(paths)
    return cap_bytes((t for f in files for t in iter_local_file(f, text_column)), max_bytes)


def read_local(paths: Sequence[str], text_column: str = "text",
               max_bytes: int | None = None) -> list[str]:
    """The local corpus: documents of all files named by ``paths``, in order."""
    return list(iter_local(paths, text_column, max_bytes))


# -- hub --------------------------------------------------------------------------------

def hub_texts(dataset: str, data_files: str | None = None, split: str = "train",
              text_column: str = "text", part: int = 0, parts: int = 1,
              batch_size: int = 256) -> Iterator[str]:
    """Stream the non-empty texts of a hub dataset, or of part ``part`` of ``parts``
    (``datasets.distributed.split_dataset_by_node``: whole files per part when they divide
    evenly, so parallel readers never read the same file).

    Without ``data_files``, reads the parquet export of ``dataset``
    (``revision="refs/convert/parquet"``; script-based datasets such as
    ``Skylion007/openwebtext`` have one). With ``data_files`` (a path or glob, local or
    ``hf://datasets/...``), reads those files with the builder matching their suffix.
    Remote code is never run.
    """
    import datasets  # heavy; only this source needs it
    from datasets.distributed import split_dataset_by_node

    if data_files is None:
        ds = datasets.load_dataset(dataset, revision="refs/convert/parquet", split=split,
                                   streaming=True)
    else:
        ds = datasets.load_dataset(hub_builder(data_files), data_files={split: data_files},
                                   split=split, streaming=True)
    if ds.column_names is not None and text_column not in ds.column_names:
        raise DataError(f"{data_files or dataset}: hub dataset has no column {text_column!r} "
                        f"(columns: {ds.column_names})")
    if parts > 1:
        ds = split_dataset_by_node(ds, rank=part, world_size=parts)
    label = data_files or dataset
    row = 0
    try:
        for batch in ds.select_columns([text_column]).iter(batch_size=batch_size):
            for text in batch[text_column]:
                if not isinstance(text, str):
                    raise DataError(_locate_bad_row(data_files, text_column) or
                                    f"{label} row {row} of part {part}: {text_column!r} holds "
                                    f"{type(text).__name__}, expected str")
                row += 1
                if text:
                    yield text
    except DataError:
        raise
    except Exception as e:           # datasets / pyarrow: malformed JSON, not UTF-8, ...
        raise DataError(_locate_bad_row(data_files, text_column) or
                        f"{label}: cannot read hub data ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _locate_bad_row(data_files: str | None, text_column: str) -> str | None:
    """For local json(l) ``data_files`` (optionally compressed): the first bad line, as
    ``<file> line N: ...`` (what :func:`read_local_file` says), else ``None``."""
    if not data_files or "://" in data_files or hub_builder(data_files) != "json":
        return None
    import fsspec

    for path in sorted(glob.glob(os.path.expanduser(data_files), recursive=True)):
        with fsspec.open(path, "rb", compression="infer") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{path} line {lineno}"
                try:
                    line = _utf8(raw, where)
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        return f"{where}: malformed JSON ({e.msg}, column {e.colno})"
                except DataError as e:
                    return str(e)
                if not isinstance(row, dict) or text_column not in row:
                    return f"{where}: expected a JSON object with field {text_column!r}"
                if not isinstance(row[text_column], str):
                    return (f"{where}: {text_column!r} holds {type(row[text_column]).__name__}, "
                            "expected str")
    return None
