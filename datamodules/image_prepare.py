"""Prepare an image-classification dataset once: litdata chunks of (encoded bytes, label).

Sources: an ``ImageFolder`` tree (``root/<split>/<class>/<image>``, classes = the training
split's sorted folder names) or parquet files with ImageNet-1k's hub schema (an ``image``
struct ``{bytes, path}`` or raw bytes, an integer ``label``). Images are stored as their
original encoded bytes (checked to decode, never re-encoded) with their label and name; the
training data module decodes and augments them in its DataLoader workers.
Layout, manifest and idempotence as for text (:mod:`datamodules.prepare`); docs/DATA.md.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from datamodules.corpus import DataError
from datamodules.imagenet import (IMG_EXTENSIONS, check_folder_tree, expand_files,
                                  parquet_num_classes)
from datamodules.prepare import prepare_once, run_parts

CHUNK_BYTES = "64MB"


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
    """``(encoded bytes, label, name)`` of the rows of one parquet file."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as fh:
        table = pq.read_table(fh, columns=[image_column, label_column])
    row = 0
    for batch in table.to_batches(max_chunksize=256):
        for img, label in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            name = f"{path} row {row}"
            if isinstance(img, dict):
                name += f" ({img.get('path')})" if img.get("path") else ""
                img = img.get("bytes")
            if not isinstance(img, (bytes, bytearray)):
                raise DataError(f"{name}: no image bytes in column {image_column!r}")
            yield bytes(img), int(label), name
            row += 1


def _write_images(job: dict) -> dict:
    """Write one part of each split (writer rank ``part``), checking every image."""
    from litdata.streaming.writer import BinaryWriter

    counts = {}
    for split, items in job["splits"].items():
        counts[split] = 0
        if not items:
            continue
        writer = BinaryWriter(os.path.join(job["out"], split), chunk_bytes=CHUNK_BYTES)
        writer._rank = job["part"]              # chunk-<part>-<i>.bin, <part>.index.json
        n = 0
        for item in items:
            if job["kind"] == "imagefolder":
                path, label = item
                rows = [(Path(path).read_bytes(), label, path)]
            else:
                rows = parquet_rows(item, job["image_column"], job["label_column"])
            for data, label, name in rows:
                check_image(data, name)
                writer.add_item(n, {"image": np.frombuffer(data, np.uint8), "label": label,
                                    "name": name})      # bytes as uint8: never re-encoded
                n += 1
                job["report"](1)
        writer.done()
        counts[split] = n
    return counts


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
        listing = {s: [(os.path.relpath(p, root), os.path.getsize(p), lab) for p, lab in v]
                   for s, v in items.items()}
        n_classes = len(classes)
    elif kind == "imagenet-parquet":
        items = {s: expand_files(list(f), f"{s}_files") for s, f in splits.items()}
        listing = {s: [(f, os.path.getsize(f) if os.path.exists(f) else None) for f in v]
                   for s, v in items.items()}
        classes = None
        n_classes = num_classes or parquet_num_classes(items["train"], label_column)
        if n_classes is None:
            raise ValueError(f"{items['train'][0]}: cannot infer the number of classes "
                             "(no ClassLabel metadata, remote files); set num_classes")
    else:
        raise ValueError(f"image source must be 'imagefolder' or 'imagenet-parquet', got {kind!r}")
    material = {"kind": kind, "listing": listing, "columns": [image_column, label_column]}

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
                "val_images": sum(c["val"] for c in counts)}

    return prepare_once("images", material, build, out, cache_dir)
