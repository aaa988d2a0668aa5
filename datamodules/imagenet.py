"""Image-classification data for the vision runs: :class:`ImageNetDataModule`.

Sources (``data.source``)
-------------------------
* ``embedded`` (default; no download, no files): scikit-learn's bundled *digits*
  (``sklearn.datasets.load_digits``: 1797 real 8x8 grayscale scans, values 0..16, 10 classes),
  scaled to [0, 1], upscaled to ``image_size`` (default 16) bilinearly and standardised with
  the training split's mean and std. Deterministic stratified split: within every class the
  images are permuted with ``torch.Generator().manual_seed(split_seed)`` and the first
  ``round(val_fraction * n_class)`` are held out (1438 train / 359 val). In memory, map-style.
* ``folder``: an ``ImageFolder`` tree ``root/{train_split,val_split}/<class>/<image>`` (classes:
  the training split's sorted folder names); ``parquet``: files with the hub's ImageNet-1k
  schema (``train_files`` / ``val_files``, local or ``hf://``; ``image`` struct or bytes,
  integer ``label``). Both are *prepared* once (:mod:`datamodules.image_prepare`: encoded
  bytes + label in litdata chunks, every image checked) into the cache on first use, or
  beforehand with ``adamrot prepare imagefolder|imagenet-parquet ... --out DIR`` and read
  with ``prepared: DIR``. Training streams them shuffled (``StreamingDataset(shuffle=True)``,
  ``StreamingDataLoader``: sharded over ranks x workers, exact resume from its
  ``state_dict``, which Lightning checkpoints); images are decoded and augmented in the
  workers. See docs/DATA.md.

Transforms (``channels = 3``): training ``RandomResizedCrop(image_size, scale=crop_scale)`` +
horizontal flip; validation ``Resize(round(image_size / crop_ratio))`` + ``CenterCrop``; then
ImageNet mean/std. ``batch_size`` is per device. ``num_classes``, ``image_size`` and
``channels`` are set in ``__init__`` so models can be checked against them.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import lightning as L
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from datamodules.image_sources import (IMG_EXTENSIONS, as_list, check_folder_tree,  # noqa: F401
                                       expand_files, parquet_num_classes)

SOURCES = ("embedded", "folder", "parquet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = {"embedded": 16, "folder": 224, "parquet": 224}

__all__ = ["ImageNetDataModule", "decode_image", "digits_split", "SOURCES"]


# -----------------------------------------------------------------------------------------
# decoding
# -----------------------------------------------------------------------------------------
def decode_image(data: Union[bytes, bytearray, str, os.PathLike], name: str) -> Image.Image:
    """Decode an image (bytes, or a path to open) to RGB; ``ValueError`` naming ``name``
    if PIL cannot read it."""
    try:
        src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
        with Image.open(src) as img:
            return img.convert("RGB")
    except Exception as e:                          # PIL raises OSError, SyntaxError, ...
        raise ValueError(f"cannot decode image {name}: {type(e).__name__}: {e}") from e


# -----------------------------------------------------------------------------------------
# embedded digits
# -----------------------------------------------------------------------------------------
def digits_split(image_size: int = 16, val_fraction: float = 0.2, split_seed: int = 0):
    """scikit-learn's digits as ``(x_train, y_train, x_val, y_val)``; images
    ``(N, 1, image_size, image_size)`` float32, standardised with the training split's
    statistics; deterministic stratified split (see the module docstring)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N,1,8,8)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                          align_corners=False)
    g = torch.Generator().manual_seed(split_seed)
    val_idx = []
    for c in range(int(y.max()) + 1):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        val_idx.append(idx[:round(val_fraction * len(idx))])
    val_mask = torch.zeros(len(y), dtype=torch.bool)
    val_mask[torch.cat(val_idx)] = True
    x_tr, y_tr, x_va, y_va = x[~val_mask], y[~val_mask], x[val_mask], y[val_mask]
    mean, std = x_tr.mean(), x_tr.std()
    return (x_tr - mean) / std, y_tr, (x_va - mean) / std, y_va


class DecodeTransform:
    """litdata ``transform`` (runs in the DataLoader workers): a prepared item
    ``{"image": uint8 bytes, "label": int, "name": uint8 UTF-8 bytes}`` -> ``(tensor, label)``."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, item: dict):
        name = bytes(item["name"]).decode("utf-8", "surrogateescape")
        return self.transform(decode_image(item["image"].tobytes(), name)), int(item["label"])


# -----------------------------------------------------------------------------------------
# the datamodule
# -----------------------------------------------------------------------------------------
def _positive_int(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"data.{name} must be a positive int, got {v!r}")


class ImageNetDataModule(L.LightningDataModule):
    """ImageNet-1k (folder or parquet) or the embedded digits; see the module docstring.

    Args:
        source: ``"embedded"`` | ``"folder"`` | ``"parquet"``.
        root: ``folder``: the directory holding ``train_split`` and ``val_split``.
        train_split, val_split: ``folder``: split directory names.
        train_files, val_files: ``parquet``: paths/globs (local or ``hf://``).
        image_column, label_column: ``parquet`` column names.
        num_classes: ``parquet``: override the inferred class count.
        cache_dir: where ``folder`` / ``parquet`` sources are prepared (default
            ``$ADAMROT_CACHE/prepared``).
        prepared: a directory written by ``adamrot prepare imagefolder|imagenet-parquet``
            (``source`` and its arguments are then not used).
        seed: seed of the training shuffle (a fresh order each epoch).
        image_size: side of the (square) training images; default 16 for ``embedded``,
            224 otherwise.
        batch_size: per-device training batch; ``eval_batch_size`` for validation
            (default: ``batch_size``).
        num_workers: DataLoader workers per rank (``embedded`` needs none).
        crop_scale: ``RandomResizedCrop`` area range; ``crop_ratio``: validation centre-crop
            fraction (0.875 = 224/256).
        val_fraction, split_seed: ``embedded`` split.
    """

    def __init__(self, source: Literal["embedded", "folder", "parquet"] = "embedded",
                 root: Optional[str] = None, train_split: str = "train",
                 val_split: str = "val",
                 train_files: Optional[Union[str, list[str]]] = None,
                 val_files: Optional[Union[str, list[str]]] = None,
                 image_column: str = "image", label_column: str = "label",
                 num_classes: Optional[int] = None, cache_dir: Optional[str] = None,
                 image_size: Optional[int] = None, batch_size: int = 128,
                 eval_batch_size: Optional[int] = None, num_workers: int = 8,
                 pin_memory: bool = True, crop_scale: Sequence[float] = (0.08, 1.0),
                 crop_ratio: float = 0.875, val_fraction: float = 0.2, split_seed: int = 0,
                 prepared: Optional[str] = None, seed: int = 0):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"data.source: {source!r} is not allowed; choose one of "
                             f"{', '.join(SOURCES)}")
        self.source = source
        _positive_int("batch_size", batch_size)
        if eval_batch_size is not None:
            _positive_int("eval_batch_size", eval_batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"data.num_workers must be an int >= 0, got {num_workers!r}")
        if image_size is not None:
            _positive_int("image_size", image_size)
        scale = tuple(float(s) for s in crop_scale)
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, "
                             f"got {list(crop_scale)!r}")
        if not 0.0 < float(crop_ratio) <= 1.0:
            raise ValueError(f"data.crop_ratio must be in (0, 1], got {crop_ratio!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {val_fraction!r}")
        if num_classes is not None:
            _positive_int("num_classes", num_classes)

        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.crop_scale, self.crop_ratio = scale, float(crop_ratio)
        self.val_fraction, self.split_seed = float(val_fraction), split_seed
        self.image_size: int = image_size or DEFAULT_IMAGE_SIZE[source]
        self.root, self.train_split, self.val_split = root, train_split, val_split
        self.image_column, self.label_column = image_column, label_column
        self.cache_dir, self.prepared, self.seed = cache_dir, prepared, seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.manifest: Optional[dict] = None

        if prepared is not None:
            from datamodules.prepare import read_manifest
            manifest = read_manifest(prepared, "images")     # refused now, naming the path
            self.channels, self.num_classes = 3, manifest["num_classes"]
            self.image_size = image_size or DEFAULT_IMAGE_SIZE["folder"]
            if num_classes is not None and num_classes != self.num_classes:
                raise ValueError(f"data.num_classes={num_classes} but {prepared} has "
                                 f"{self.num_classes} classes")
        elif source == "embedded":
            self.channels, self.num_classes = 1, 10
            if num_classes is not None and num_classes != 10:
                raise ValueError(f"data.num_classes={num_classes} but the embedded digits "
                                 "have 10 classes")
        elif source == "folder":
            if not root:
                raise ValueError("data.root is required when data.source is 'folder'")
            self.classes = check_folder_tree(root, train_split, val_split)
            self.channels = 3
            self.num_classes = len(self.classes)
            if num_classes is not None and num_classes != self.num_classes:
                raise ValueError(f"data.num_classes={num_classes} but {root!r} has "
                                 f"{self.num_classes} class folders")
        else:
            if not train_files or not val_files:
                raise ValueError("data.train_files and data.val_files are required when "
                                 "data.source is 'parquet'")
            self.train_files = expand_files(as_list(train_files), "train_files")
            self.val_files = expand_files(as_list(val_files), "val_files")
            self.channels = 3
            n = num_classes or parquet_num_classes(self.train_files, label_column)
            if n is None:
                raise ValueError("data.num_classes: cannot infer the number of classes from "
                                 f"{self.train_files[0]!r} (no ClassLabel metadata, remote "
                                 "files); set data.num_classes")
            self.num_classes = n

    # -- info ---------------------------------------------------------------------------------
    def describe(self) -> dict:
        info = {"source": self.source, "num_classes": self.num_classes,
                "image_size": self.image_size, "channels": self.channels,
                "batch_size (per device)": self.batch_size}
        if self.source == "folder":
            info["root"] = self.root
        elif self.source == "parquet":
            info["train_files"] = f"{len(self.train_files)} file(s), first {self.train_files[0]}"
            info["val_files"] = f"{len(self.val_files)} file(s), first {self.val_files[0]}"
        if self.train_set is not None:
            info["train_samples"] = len(self.train_set)
        if self.val_set is not None:
            info["val_samples"] = len(self.val_set)
        return info

    def identity(self) -> dict:
        """What a run's numbers depend on in the data (``callbacks.checkpoint_io.RunState``
        writes it to the run's ``data.json`` and compares it on resume): the prepared key and
        the fingerprints of the training and validation streams; for the embedded digits, the
        split's arguments."""
        if self.source == "embedded" and self.prepared is None:
            return {"source": "embedded", "image_size": self.image_size,
                    "val_fraction": self.val_fraction, "split_seed": self.split_seed}
        from datamodules.chunks import stream_fingerprint
        self.setup()
        return {"prepared_key": self.manifest.get("key"), "corpus": self.manifest.get("corpus"),
                "train_stream": stream_fingerprint(self.manifest, "train"),
                "val_stream": stream_fingerprint(self.manifest, "val")}

    # -- transforms ---------------------------------------------------------------------------
    def train_transform(self):
        from torchvision.transforms import v2
        return v2.Compose([
            v2.RandomResizedCrop(self.image_size, scale=self.crop_scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def val_transform(self):
        from torchvision.transforms import v2
        return v2.Compose([
            v2.Resize(round(self.image_size / self.crop_ratio), antialias=True),
            v2.CenterCrop(self.image_size),
            v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    # -- datasets -----------------------------------------------------------------------------
    def prepare_data(self):
        """Prepare a ``folder`` / ``parquet`` source into the cache unless done (idempotent)."""
        if self.source != "embedded" and self.prepared is None:
            from datamodules.image_prepare import prepare_images
            if self.source == "folder":
                root = Path(self.root)
                splits = {"train": str(root / self.train_split), "val": str(root / self.val_split)}
                self.prepared = prepare_images("imagefolder", splits, cache_dir=self.cache_dir)
            else:
                splits = {"train": self.train_files, "val": self.val_files}
                self.prepared = prepare_images("imagenet-parquet", splits,
                                               cache_dir=self.cache_dir,
                                               image_column=self.image_column,
                                               label_column=self.label_column,
                                               num_classes=self.num_classes)

    def setup(self, stage: Optional[str] = None):
        if self.train_set is not None and self.val_set is not None:
            return
        if self.source == "embedded" and self.prepared is None:
            x_tr, y_tr, x_va, y_va = digits_split(self.image_size, self.val_fraction,
                                                  self.split_seed)
            self.train_set, self.val_set = TensorDataset(x_tr, y_tr), TensorDataset(x_va, y_va)
        else:
            from litdata import StreamingDataset

            from datamodules.chunks import verify_chunks
            from datamodules.prepare import read_manifest
            from datamodules.streaming import full_shuffle_only
            self.prepare_data()
            self.manifest = read_manifest(self.prepared, "images")
            verify_chunks(self.prepared, self.manifest)      # before training writes anything
            self.train_set = full_shuffle_only(StreamingDataset(
                f"{self.prepared}/train", shuffle=True, seed=self.seed, drop_last=True,
                item_shuffle_window="full",
                transform=DecodeTransform(self.train_transform())), self.prepared)
            self.val_set = StreamingDataset(f"{self.prepared}/val",
                                            transform=DecodeTransform(self.val_transform()))
        if len(self.train_set) < self.batch_size:
            raise ValueError(f"data.batch_size={self.batch_size} is larger than the training "
                             f"split ({len(self.train_set)} samples)")

    # -- loaders ------------------------------------------------------------------------------
    def _loader(self, ds, batch_size: int, train: bool) -> DataLoader:
        workers, pin = self.num_workers, self.pin_memory and torch.cuda.is_available()
        if isinstance(ds, TensorDataset):
            return DataLoader(ds, batch_size=batch_size, shuffle=train, drop_last=train,
                              num_workers=workers, persistent_workers=workers > 0,
                              pin_memory=pin)
        from litdata import StreamingDataLoader
        return StreamingDataLoader(ds, batch_size=batch_size, num_workers=workers,
                                   drop_last=train, pin_memory=pin)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        """ImageNet's labelled test set is its validation split."""
        return self._loader(self.val_set, self.eval_batch_size, train=False)
