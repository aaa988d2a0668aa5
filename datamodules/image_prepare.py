"""Prepare an image-classification dataset once: litdata chunks of (encoded bytes, label).

Sources: an ``ImageFolder`` tree (``root/<split>/<class>/<image>``, classes = the training
split's sorted folder names) or parquet files with ImageNet-1k's hub schema (an ``image``
struct ``{bytes, path}`` or raw bytes, an integer ``label``). Images are stored as their
original encoded bytes (checked to decode, never re-encoded) with their label and name; the
training data module decodes and augments them in its DataLoader workers.

* **Mixed classes**: a folder tree's training images are written in a seeded random order
  (``ORDER_SEED``), so every chunk holds a uniform sample of the classes; parquet rows are
  interleaved at random across each worker's files (a class-sorted file set is mixed as far
  as the files of one worker reach). Validation keeps the sorted order.
* **The name** is stored as UTF-8 bytes (a ``uint8`` array): litdata would re-read a string
  that is an existing ``.jpg``/``.png``/``.bmp`` path as an image.
* **Cache key**: the tree's resolved root, every file's relative path, size and mtime, and
  the sha256 of ``SAMPLED_FILES`` files picked by a hash of their path (all of them in a
  smaller tree); parquet files: path, size, mtime and the sha256 of their first and last MiB.
Layout, manifest, checksums and idempotence as for text (:mod:`datamodules.prepare`);
docs/DATA.md.
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from datamodules.corpus import DataError
from datamodules.image_sources import (IMG_EXTENSIONS, check_folder_tree, expand_files,
                                       parquet_num_classes)
from datamodules.chunks import writer_rank
from datamodules.prepare import prepare_once, run_parts

CHUNK_BYTES = "64MB"
ORDER_SEED = 0                  # the seeded random write order of training images
SAMPLED_FILES = 1024            # files hashed whole for the cache key


def check_image(data: bytes, name: str) -> None:
    """``DataError`` naming ``name`` unless PIL can read the image's header and data."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception as e:                      # PIL raises OSError, SyntaxError, ...
        raise DataError(f"{name}: cannot decode image: {type(e).__name__}: {e}") from None


def folder_samples(split_dir: str, classes: list[str]) -> list[tuple[str, int]]:
    """``(path, label)`` of every image under ``split_dir/<class>/``, sorted."""
    out = []
    for label, name in enumerate(classes):
        d = Path(split_dir) / name
        if not d.is_dir():
            continue
        for dirpath, _, files in sorted(os.walk(d, followlinks=True)):
            out += [(os.path.join(dirpath, f), label) for f in sorted(files)
                    if f.lower().endswith(IMG_EXTENSIONS)]
    return out


def parquet_rows(path: str, image_column: str, label_column: str
                 ) -> Iterator[tuple[bytes, int, str]]:
    """``(encoded bytes, label, name)`` of the rows of one parquet file, read a batch at a
    time."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as fh:
        row = 0
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=256,
                                                     columns=[image_column, label_column]):
            for img, label in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                name = f"{path} row {row}"
                if isinstance(img, dict):
                    name += f" ({img.get('path')})" if img.get("path") else ""
                    img = img.get("bytes")
                if not isinstance(img, (bytes, bytearray)):
                    raise DataError(f"{name}: no image bytes in column {image_column!r}")
                if isinstance(label, bool) or not isinstance(label, int):
                    raise DataError(f"{name}: label {label!r} is not an integer")
                yield bytes(img), int(label), name
                row += 1


def interleave(iterators: list[Iterator], seed: int) -> Iterator:
    """Items of ``iterators`` in a seeded random interleaving (each iterator's own order
    kept): the next item comes from a uniformly chosen iterator that is not exhausted."""
    rng = np.random.default_rng(seed)
    live = list(iterators)
    while live:
        i = int(rng.integers(len(live)))
        try:
            yield next(live[i])
        except StopIteration:
            live.pop(i)


def _rows(job: dict, split: str, items: list) -> Iterator[tuple[bytes, int, str]]:
    if job["kind"] == "imagefolder":
        for path, label in items:
            yield Path(path).read_bytes(), label, path
        return
    files = [parquet_rows(f, job["image_column"], job["label_column"]) for f in items]
    if split == "train":
        yield from interleave(files, ORDER_SEED + job["part"])
    else:
        for rows in files:
            yield from rows


def _write_images(job: dict) -> dict:
    """Write one part of each split (writer rank ``part``), checking every image."""
    from litdata.streaming.writer import BinaryWriter

    counts = {}
    for split, items in job["splits"].items():
        counts[split] = 0
        if not items:
            continue
        with writer_rank(job["part"]):          # chunk-<part>-<i>.bin, <part>.index.json
            writer = BinaryWriter(os.path.join(job["out"], split), chunk_bytes=CHUNK_BYTES)
            writer.rank
        n = 0
        for data, label, name in _rows(job, split, items):
            check_image(data, name)
            writer.add_item(n, {"image": np.frombuffer(data, np.uint8), "label": label,
                                "name": np.frombuffer(name.encode("utf-8", "surrogateescape"),
                                                      np.uint8)})   # never re-read as a file
            n += 1
            job["report"](1)
        writer.done()
        counts[split] = n
    return counts


def _file_digest(path: str, whole: bool) -> str:
    """sha256 of a file, or of its first and last MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if whole:
            while block := f.read(1 << 22):
                h.update(block)
        else:
            h.update(f.read(1 << 20))
            f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()


def folder_fingerprint(root: str, items: dict) -> dict:
    """What the cache key of a folder tree covers (the module docstring)."""
    files = [p for v in items.values() for p, _ in v]
    picked = set(sorted(files, key=lambda p: hashlib.sha256(
        os.path.relpath(p, root).encode("utf-8", "surrogateescape")).digest())[:SAMPLED_FILES])
    listing = {}
    for s, v in items.items():
        rows = []
        for p, lab in v:
            st = os.stat(p)
            rows.append((os.path.relpath(p, root), st.st_size, st.st_mtime_ns, lab))
        listing[s] = rows
    return {"root": str(Path(root).resolve()), "listing": listing,
            "sampled": {os.path.relpath(p, root): _file_digest(p, True) for p in sorted(picked)}}


def parquet_fingerprint(items: dict) -> dict:
    out = {}
    for s, files in items.items():
        rows = []
        for f in files:
            if os.path.exists(f):
                st = os.stat(f)
                rows.append((str(Path(f).resolve()), st.st_size, st.st_mtime_ns,
                             _file_digest(f, False)))
            else:
                rows.append((f, None, None, None))  # remote: the URL (the hub's are immutable)
        out[s] = rows
    return {"listing": out}


def prepare_images(kind: str, splits: dict, out: str | None = None, cache_dir: str | None = None,
                   workers: int = 1, progress: bool = False, image_column: str = "image",
                   label_column: str = "label", num_classes: int | None = None) -> str:
    """Prepare ``splits`` (``{"train": ..., "val": ...}``: split directories for
    ``"imagefolder"``, lists of parquet files for ``"imagenet-parquet"``) into ``out``
    (default: the cache) unless already done; returns the directory."""
    return prepare_image_manifest(kind, splits, out, cache_dir, workers, progress, image_column,
                                  label_column, num_classes)[0]


def prepare_image_manifest(kind, splits, out=None, cache_dir=None, workers=1, progress=False,
                           image_column="image", label_column="label", num_classes=None):
    """:func:`prepare_images`, returning ``(directory, manifest)``."""
    if kind == "imagefolder":
        root = str(Path(splits["train"]).parent)
        classes = check_folder_tree(root, Path(splits["train"]).name, Path(splits["val"]).name)
        items = {s: folder_samples(d, classes) for s, d in splits.items()}
        order = np.random.default_rng(ORDER_SEED).permutation(len(items["train"]))
        items["train"] = [items["train"][i] for i in order]    # classes mixed in every chunk
        fingerprint = folder_fingerprint(root, items)
        n_classes = len(classes)
    elif kind == "imagenet-parquet":
        items = {s: expand_files(list(f), f"{s}_files") for s, f in splits.items()}
        fingerprint = parquet_fingerprint(items)
        classes = None
        n_classes = num_classes or parquet_num_classes(items["train"], label_column)
        if n_classes is None:
            raise ValueError(f"{items['train'][0]}: cannot infer the number of classes "
                             "(no ClassLabel metadata, remote files); set num_classes")
    else:
        raise ValueError(f"image source must be 'imagefolder' or 'imagenet-parquet', got {kind!r}")
    material = {"kind": kind, **fingerprint, "columns": [image_column, label_column],
                "order": f"seeded-random-{ORDER_SEED}"}

    def build(local: Path) -> dict:
        parts = max(1, workers)
        jobs = [{"out": str(local), "part": w, "kind": kind, "image_column": image_column,
                 "label_column": label_column,
                 "splits": {s: [v[i] for i in np.array_split(np.arange(len(v)), parts)[w]]
                            for s, v in items.items()}} for w in range(parts)]
        counts = run_parts(_write_images, jobs, progress, "img")
        return {"corpus": ", ".join(str(v) for v in splits.values()), "source": kind,
                "classes": classes, "num_classes": n_classes,
                "train_images": sum(c["train"] for c in counts),
                "val_images": sum(c["val"] for c in counts),
                "cut": {"workers": parts, "chunk_bytes": CHUNK_BYTES,
                        "order": f"seeded-random-{ORDER_SEED}"}}

    return prepare_once("images", material, build, out, cache_dir)
