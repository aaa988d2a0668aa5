"""Preflight's data section: the chunk split for the target world size, documents and classes
per sampled batch, and the warnings (too few chunks, single-class batches); a clean config has
none."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from adamrot.preflight.data import check_data
from adamrot.preflight.report import preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def corpus(path, n=120):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "eps"]
    with open(path, "w") as f:
        for i in range(n):
            text = f"doc {i} " + " ".join(rng.choice(words) for _ in range(rng.randint(300, 1200)))
            f.write(json.dumps({"text": text}) + "\n")
    return path


def text_args(tmp_path, *extra):
    return ["--config", os.path.join(REPO, "configs", "gpt2", "tiny.yaml"),
            "--data.init_args.source", "local",
            "--data.init_args.paths", json.dumps([str(corpus(tmp_path / "c.jsonl"))]),
            "--data.init_args.cache_dir", str(tmp_path / "cache"),
            "--trainer.max_steps", "50", *extra]


def warnings_of(r):
    return [f["message"] for f in r["findings"] if f["level"] in ("warning", "error")]


def test_clean_config_no_warning_and_too_few_chunks_for_four_ranks(tmp_path):
    clean = preflight(text_args(tmp_path))
    assert warnings_of(clean) == []
    d = clean["data"]
    assert d["chunks"]["chunks"] == 1 and d["chunks"]["readers"] == 1
    docs = d["documents_per_batch"]
    print("documents per batch:", docs)
    assert docs["batches"] == 32 and 8 <= docs["mean"] <= 16 and docs["batch"] == 16
    assert d["filesystem"].startswith(("local disk", "network filesystem"))

    four = preflight(text_args(tmp_path, "--trainer.devices", "4"))
    msgs = warnings_of(four)
    assert len(msgs) == 1 and msgs[0].startswith("data: 1 chunk(s) for 4 rank(s)")
    ch = four["data"]["chunks"]
    assert tuple(ch["per_rank"]) == (0, 1) and ch["readers"] == 4
    assert ch["windows_per_reader"] == d["chunks"]["windows_per_reader"] // 4 > 0


class SortedImages:
    """The public face of an image data module over a class-sorted tree read in order."""

    def __init__(self, shuffle: bool):
        labels = torch.arange(3).repeat_interleave(32)
        self.batch_size, self.prepared, self.num_workers = 8, None, 0
        g = torch.Generator().manual_seed(0)
        self.loader = DataLoader(TensorDataset(torch.zeros(96, 1), labels), batch_size=8,
                                 shuffle=shuffle, generator=g, drop_last=True)

    def setup(self, stage=None):
        pass

    def train_dataloader(self):
        return self.loader


def test_single_class_batches_are_warned():
    out, found = check_data(SortedImages(shuffle=False), world=1, epochs=1.0)
    assert out["classes_per_batch"]["single_class_batches"] == 12
    assert len(found) == 1 and "12 of 12 sampled batches hold a single class" in found[0][1]
    out, found = check_data(SortedImages(shuffle=True), world=1, epochs=1.0)
    assert out["classes_per_batch"]["mean"] > 1.5 and found == []


def test_class_sorted_image_tree(tmp_path):
    """A class-sorted ImageFolder tree through the real data module: classes per batch are
    counted, and the single-class warning is given exactly when most sampled batches hold
    one class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("val", 4)):
        for c in range(3):
            d = tmp_path / "tree" / split / f"n0{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(d / f"{i}.png")
    r = preflight(["--model", "lightning_modules.resnet.ResNetLightningModule",
                   "--model.arch", "tiny", "--model.num_classes", "3", "--model.image_size", "8",
                   "--data", "datamodules.imagenet.ImageNetDataModule", "--data.source", "folder",
                   "--data.root", str(tmp_path / "tree"), "--data.image_size", "8",
                   "--data.batch_size", "8", "--data.num_workers", "0",
                   "--data.cache_dir", str(tmp_path / "cache"), "--trainer.max_steps", "5",
                   "--trainer.precision", "32-true"])
    c = r["data"]["classes_per_batch"]
    print("classes per batch of a class-sorted tree:", c)
    assert c["batches"] == 15 and 1 <= c["min"] <= c["mean"] <= 3
    warned = any("single class" in m for m in warnings_of(r))
    assert warned == (c["single_class_batches"] / c["batches"] >= 0.5)
    assert r["batch"]["dataset_samples"] == 120 and r["batch"]["epochs"] == pytest.approx(40 / 120)
    assert r["memory"]["activations"] > 0      # meta-device count for the ResNet


def test_repeated_windows_and_few_documents_per_batch_are_warned(tmp_path):
    """The same windows every epoch, read in stream order (the loader of a data module that
    neither shuffles nor shifts its windows): both warnings."""
    from datamodules.text import TextDataModule
    from litdata import StreamingDataset, TokensLoader

    from adamrot.preflight.data import check_text

    dm = TextDataModule(source="local", paths=[str(corpus(tmp_path / "c.jsonl"))],
                        block_size=128, batch_size=16, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    ds = StreamingDataset(f"{dm.path}/train", item_loader=TokensLoader(129))
    windows = torch.stack([torch.as_tensor(ds[i]).to(torch.int64) for i in range(len(ds))])
    in_order = DataLoader(TensorDataset(windows[:, :-1], windows[:, 1:]), batch_size=16,
                          drop_last=True)
    dm.train_dataloader = lambda: in_order
    out, found = check_text(dm, world=1, epochs=3.0)
    messages = [m for _, m in found]
    assert out["epoch2_repeats"] == 1.0
    assert any("epoch 2 reads the same windows as epoch 1 (100% identical" in m for m in messages)
    assert out["documents_per_batch"]["mean"] < 4
    assert any("distinct documents per batch of 16 windows" in m for m in messages)
