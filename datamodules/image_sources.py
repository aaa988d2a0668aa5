"""Image-classification sources, checked before anything is prepared: an ``ImageFolder`` tree
(``root/<split>/<class>/<image>``) or parquet files with ImageNet-1k's hub schema (local or
``hf://``). Used by :mod:`datamodules.imagenet` (the data module) and
:mod:`datamodules.image_prepare` (preparation); neither is imported here. docs/DATA.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# -----------------------------------------------------------------------------------------
# folder
# -----------------------------------------------------------------------------------------
def _class_folders(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def _has_image(path: Path) -> bool:
    for dirpath, _, files in os.walk(path, followlinks=True):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


def check_folder_tree(root: str, train_split: str, val_split: str) -> list[str]:
    """Validate an ImageFolder tree (cheaply: the first image per split); return the class
    names of the training split. Errors name the offending path."""
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"data.root: directory {str(r)!r} does not exist")
    classes: list[str] = []
    for split in (train_split, val_split):
        d = r / split
        if not d.is_dir():
            raise FileNotFoundError(f"data.root: split directory {str(d)!r} does not exist "
                                    f"(expected {str(r)}/{{{train_split},{val_split}}}/<class>/<image>)")
        found = _class_folders(d)
        if not found:
            raise ValueError(f"data.root: {str(d)!r} has no class folders (expected "
                             f"{str(d)}/<class>/<image>)")
        if split == train_split:
            classes = found
        else:
            extra = sorted(set(found) - set(classes))
            if extra:
                raise ValueError(f"data.root: {str(d)!r} has class folders that the training "
                                 f"split lacks: {', '.join(extra[:10])}")
        if not _has_image(d):
            raise ValueError(f"data.root: split {str(d)!r} contains no images (extensions: "
                             f"{', '.join(IMG_EXTENSIONS)})")
    return classes


# -----------------------------------------------------------------------------------------
# parquet
# -----------------------------------------------------------------------------------------
def as_list(files) -> list[str]:
    if files is None:
        return []
    return [files] if isinstance(files, (str, os.PathLike)) else [str(f) for f in files]


def expand_files(patterns: list[str], field: str) -> list[str]:
    """Expand globs (local or fsspec URLs such as ``hf://``); error naming the field and
    pattern when nothing matches."""
    from fsspec.core import url_to_fs

    out = []
    for pat in patterns:
        pat = str(pat)
        fs, path = url_to_fs(pat)
        if any(ch in path for ch in "*?["):
            found = sorted(fs.glob(path))
        else:
            found = [path] if fs.isfile(path) else []
        if not found:
            raise FileNotFoundError(f"data.{field}: no file matches {pat!r}")
        out.extend(fs.unstrip_protocol(f) if "://" in pat else f for f in found)
    return out


def parquet_num_classes(files: list[str], label_column: str) -> Optional[int]:
    """Number of classes from the ``ClassLabel`` in the first file's ``huggingface`` schema
    metadata, else ``max(label) + 1`` over local files; ``None`` if neither works."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(files[0], "rb") as fh:
        schema = pq.read_schema(fh)
    if label_column not in schema.names:
        raise ValueError(f"data.label_column: {label_column!r} is not a column of "
                         f"{files[0]!r} (columns: {', '.join(schema.names)})")
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        feat = json.loads(meta).get("info", {}).get("features", {}).get(label_column, {})
        if feat.get("_type") == "ClassLabel":
            if feat.get("names"):
                return len(feat["names"])
            if feat.get("num_classes"):
                return int(feat["num_classes"])
    if all("://" not in f or f.startswith("file://") for f in files):
        top = -1
        for f in files:
            col = pq.read_table(f, columns=[label_column]).column(label_column)
            if len(col):
                import pyarrow.compute as pc
                top = max(top, int(pc.max(col).as_py()))
        return top + 1 if top >= 0 else None
    return None
