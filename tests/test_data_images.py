"""Prepared image datasets: classes mixed in every batch, exact resume, cache keys that cover
the tree's root and content, names never re-read as images (docs/DATA.md, issue 23)."""
from __future__ import annotations

import io
import os
from math import comb
from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules import image_prepare
from datamodules.imagenet import ImageNetDataModule


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADAMROT_CACHE", str(tmp_path / "cache"))


def _image(color, fmt="PNG", size=(6, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def sorted_tree(root: Path, classes=10, per_class=40, fmt="PNG", ext="png", color=None,
                size=(6, 6)):
    """``root/{train,val}/cNN/iiii.<ext>``, class-sorted names; class ``c`` is coloured ``c``."""
    for split, n in (("train", per_class), ("val", 2)):
        for c in range(classes):
            d = root / split / f"c{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                (d / f"{i:04d}.{ext}").write_bytes(
                    _image(color if color is not None else (20 * c, 3 * (i % 80), 100), fmt,
                           size))
    return root


def expected_distinct(classes: int, per_class: int, batch: int) -> float:
    """Mean distinct classes in a uniform sample (without replacement) of ``batch`` images."""
    n = classes * per_class
    return classes * (1 - comb(n - per_class, batch) / comb(n, batch))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [0, 2])
def test_class_sorted_tree_gives_mixed_batches(tmp_path, monkeypatch, workers):
    """10 classes x 40 images written class by class; chunks of ~12 images (ImageNet's 64 MB
    chunks hold ~500 images, as one class in a sorted write). Batches of 32 must hold about
    as many classes as uniform sampling predicts (9.7); the class-ordered write gave ~3."""
    monkeypatch.setattr(image_prepare, "CHUNK_BYTES", 12 * len(_image((0, 0, 0))) + 600)
    root = sorted_tree(tmp_path / "tree")
    dm = ImageNetDataModule(source="folder", root=str(root), image_size=4, batch_size=32,
                            num_workers=workers, crop_scale=(1.0, 1.0))
    dm.setup("fit")
    counts = [len(set(y.tolist())) for _, y in dm.train_dataloader()]
    mean, want = sum(counts) / len(counts), expected_distinct(10, 40, 32)
    print(f"distinct classes per batch of 32 ({workers} workers): {mean:.2f}, uniform {want:.2f}")
    assert len(counts) == 400 // 32
    assert abs(mean - want) <= 0.15 * want


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_image_order_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(image_prepare, "CHUNK_BYTES", 12 * len(_image((0, 0, 0))) + 600)
    root = sorted_tree(tmp_path / "tree")
    make = lambda: ImageNetDataModule(source="folder", root=str(root), image_size=4,  # noqa
                                      batch_size=8, num_workers=2, seed=5)
    dm = make()
    dm.setup("fit")
    loader = dm.train_dataloader()
    straight = [y.tolist() for _, y in loader] + [y.tolist() for _, y in loader][:5]
    per_epoch = 400 // 8
    for stop in (7, per_epoch - 2):
        first = make()
        first.setup("fit")
        fl = first.train_dataloader()
        it = iter(fl)
        for _ in range(stop):
            next(it)
        state = fl.state_dict()
        del it
        again = make()
        again.setup("fit")
        rl = again.train_dataloader()
        rl.load_state_dict(state)
        got = [y.tolist() for _, y in rl]
        assert got == straight[stop:per_epoch]
        assert [y.tolist() for _, y in rl][:5] == straight[per_epoch:]   # next epoch too


def test_cache_key_covers_root_and_content(tmp_path):
    """Same relative paths and file sizes: another root, or the same root rewritten with the
    same sizes and mtimes, is another cache entry with other pixels."""
    def mean_pixel(root):
        dm = ImageNetDataModule(source="folder", root=str(root), image_size=4, batch_size=4,
                                num_workers=0)
        dm.setup("fit")
        return dm.prepared, float(torch.stack([x for x, _ in dm.val_set]).mean())

    kw = dict(classes=2, per_class=4, fmt="BMP", ext="bmp")       # uncompressed: same sizes
    black = sorted_tree(tmp_path / "black", color=(0, 0, 0), **kw)
    white = sorted_tree(tmp_path / "white", color=(255, 255, 255), **kw)
    assert len(_image((0, 0, 0), "BMP")) == len(_image((255, 255, 255), "BMP"))
    (kb, mb), (kw, mw) = mean_pixel(black), mean_pixel(white)
    assert kb != kw and mb < 0 < mw
    # rewrite the black tree in place with white pixels, keeping sizes and mtimes
    for p in sorted(black.rglob("*.bmp")):
        st = p.stat()
        p.write_bytes(_image((255, 255, 255), "BMP"))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    k2, m2 = mean_pixel(black)
    assert k2 != kb and m2 == pytest.approx(mw)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_bmp_tree_trains_and_names_stay_strings(tmp_path):
    root = sorted_tree(tmp_path / "bmp", classes=3, per_class=4, fmt="BMP", ext="bmp",
                       size=(32, 32))
    dm = ImageNetDataModule(source="folder", root=str(root), image_size=4, batch_size=4,
                            num_workers=0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 4, 4)
    from litdata import StreamingDataset
    raw = StreamingDataset(f"{dm.prepared}/val")[0]
    name = bytes(raw["name"]).decode()
    assert name == str(root / "val" / "c00" / "0000.bmp")
    images = sum(p.stat().st_size for p in root.rglob("*.bmp"))
    stored = sum(p.stat().st_size for p in Path(dm.prepared).rglob("*.bin"))
    assert stored < 1.5 * images                      # names are not stored as images


def test_class_sorted_parquet_files_are_interleaved(tmp_path, monkeypatch):
    """One class per parquet file (a sorted export): one worker's training chunk interleaves
    the files' rows at random instead of writing them file by file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from litdata import StreamingDataset

    files = []
    for c in range(4):
        rows = [{"bytes": _image((60 * c, i, 0)), "path": f"{c}_{i}.png"} for i in range(30)]
        f = tmp_path / f"train-{c}.parquet"
        pq.write_table(pa.table({"image": rows, "label": [c] * 30}), f)
        files.append(str(f))
    dm = ImageNetDataModule(source="parquet", train_files=files, val_files=files[:1],
                            image_size=4, batch_size=8, num_workers=0)
    dm.setup("fit")
    labels = [int(StreamingDataset(f"{dm.prepared}/train")[i]["label"]) for i in range(120)]
    assert sorted(labels) == sorted([c for c in range(4) for _ in range(30)])
    runs = 1 + sum(a != b for a, b in zip(labels, labels[1:]))
    assert runs > 40                                  # file by file: 4 runs
