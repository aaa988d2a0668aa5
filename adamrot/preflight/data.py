"""The data as it will be read, checked on a sample before the run: how the prepared chunks
split over ranks × workers of the target world size, the filesystem they are read from, and
the first batches of the training loader (through the data module's public
``train_dataloader``): distinct documents (text) or classes (images) per batch, and whether a
later epoch reads the same windows again. Warnings: too few chunks for the readers, repeated
windows, single-class batches."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

import torch

NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "fuse", "ceph",
              "glusterfs", "wekafs", "9p")
#: batches read from the loader for the per-batch numbers
SAMPLE_BATCHES = 32
#: corpora up to this many windows are indexed to map windows to documents and epochs
MAX_INDEXED_WINDOWS = 200_000
SINGLE_CLASS_SHARE = 0.5
#: epochs up to this many windows are read twice to compare their windows
MAX_EPOCH_WINDOWS = 20_000


def filesystem(path: str) -> str:
    """``object store (s3)``, ``network filesystem (nfs4 at /mnt)`` or ``local disk (ext4)``."""
    if "://" in path:
        return f"object store ({path.split('://', 1)[0]}): streamed through litdata's cache"
    path = os.path.realpath(path)
    best = ("", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and (path == parts[1] or path.startswith(
                        parts[1].rstrip("/") + "/")) and len(parts[1]) > len(best[0]):
                    best = (parts[1], parts[2])
    except OSError:
        return "unknown"
    kind = "network filesystem" if best[1].split(".")[0] in NETWORK_FS else "local disk"
    return f"{kind} ({best[1]} at {best[0]})"


def litdata_mode(prepared: str) -> str:
    """What litdata detects for the prepared split (``posix``, or a cluster filesystem, where
    it would assign whole chunks to readers; the data modules read with its full shuffle
    either way: ``datamodules/streaming.py``)."""
    from litdata import StreamingDataset

    try:
        profile = getattr(StreamingDataset(f"{prepared}/train"), "posix_fast", None)
    except Exception as e:  # noqa: BLE001 - only a label
        return f"unknown ({type(e).__name__})"
    if profile is None:
        return "litdata default"
    return (f"{profile.kind}" + (" (litdata would assign whole chunks; read with its full "
                                 "shuffle instead)" if profile.window_shuffle else ""))


def chunk_split(prepared: str, world: int, workers: int) -> dict:
    """Chunks of ``prepared``/train and how they spread over ``world × max(1, workers)``
    readers: litdata's full shuffle permutes the chunks and gives each reader an equal range
    of items, so a reader's items come from about ``chunks / readers`` chunks."""
    import fsspec

    with fsspec.open(f"{prepared}/train/index.json") as f:
        chunks = json.loads(f.read())["chunks"]
    readers = world * max(1, workers)
    n = len(chunks)
    items = sum(int(c.get("chunk_size", 0)) for c in chunks)
    return {"chunks": n, "items": items, "readers": readers,
            "per_rank": (n // world, -(-n // world)),
            "per_reader": (n // readers, -(-n // readers)), "items_per_reader": items // readers}


def _key(t: torch.Tensor) -> bytes:
    return hashlib.blake2b(t.contiguous().numpy().tobytes(), digest_size=12).digest()


def text_index(dm) -> Optional[dict]:
    """``{window hash: (first document, last document)}`` of every training window of the
    prepared corpus in stream order (documents counted by their EOT), or None when the corpus
    has more than :data:`MAX_INDEXED_WINDOWS` windows."""
    from litdata import StreamingDataset, TokensLoader

    window = dm.block_size + 1
    ds = StreamingDataset(f"{dm.path}/train", item_loader=TokensLoader(window))
    if len(ds) > MAX_INDEXED_WINDOWS:
        return None
    index, doc = {}, 0
    for i in range(len(ds)):
        w = torch.as_tensor(ds[i]).to(torch.int64)
        eots = int((w == dm.eot_token).sum())
        index.setdefault(_key(w), (doc, doc + eots))
        doc += eots
    return index


def check_text(dm, world: int, epochs: Optional[float]) -> tuple[dict, list]:
    dm.setup()
    out: dict = {"prepared": dm.path, "filesystem": filesystem(dm.path)}
    findings = []
    index = text_index(dm)
    loader = dm.train_dataloader()
    n_batches = len(loader)
    docs, seen = [], set()
    for i, (x, y) in enumerate(loader):
        windows = torch.cat([x, y[:, -1:]], dim=1)
        keys = [_key(w) for w in windows]
        if index is not None:
            ids = set()
            for k in keys:
                a, b = index.get(k, (None, None))
                if a is not None:
                    ids.update(range(a, b + 1))
            docs.append(len(ids))
        seen.update(keys)
        if i + 1 >= SAMPLE_BATCHES:
            break
    if docs:
        out["documents_per_batch"] = {"mean": sum(docs) / len(docs), "min": min(docs),
                                      "batch": dm.batch_size, "batches": len(docs)}
        if sum(docs) / len(docs) < 0.5 * dm.batch_size:
            findings.append(("warning", f"data: {sum(docs) / len(docs):.1f} distinct documents "
                                        f"per batch of {dm.batch_size} windows (sampled)"))
    if index is not None and n_batches * dm.batch_size <= MAX_EPOCH_WINDOWS:
        again = dm.train_dataloader()          # two epochs of a fresh loader

        def epoch() -> list:
            return [_key(w) for x, y in again for w in torch.cat([x, y[:, -1:]], 1)]

        first = set(epoch())
        second = epoch()
        if second:
            same = sum(k in first for k in second) / len(second)
            out["epoch2_repeats"] = same
            if same > 0.5 and (epochs or 0) > 1:
                findings.append(("warning", f"data: epoch 2 reads the same windows as epoch 1 "
                                            f"({same:.0%} identical, in another order); the run "
                                            f"reads {epochs:.1f} epochs"))
    elif (epochs or 0) > 1:
        out["epoch2_repeats"] = None
        findings.append(("info", f"data: the run reads {epochs:.1f} epochs; whether later epochs "
                                 "read other windows is checked only on small corpora"))
    out["sampled_batches"] = min(SAMPLE_BATCHES, n_batches)
    return out, findings


def check_images(dm) -> tuple[dict, list]:
    dm.setup()
    path = getattr(dm, "prepared", None)
    out: dict = {"prepared": path, "filesystem": filesystem(path) if path else "in memory"}
    findings = []
    classes, single = [], 0
    for i, (_, labels) in enumerate(dm.train_dataloader()):
        k = len(set(labels.tolist()))
        classes.append(k)
        single += k == 1
        if i + 1 >= SAMPLE_BATCHES:
            break
    if classes:
        out["classes_per_batch"] = {"mean": sum(classes) / len(classes), "min": min(classes),
                                    "batch": dm.batch_size, "batches": len(classes),
                                    "single_class_batches": single}
        if dm.batch_size > 1 and single / len(classes) >= SINGLE_CLASS_SHARE:
            findings.append(("warning", f"data: {single} of {len(classes)} sampled batches hold "
                                        "a single class (class-sorted data read in order)"))
    out["sampled_batches"] = len(classes)
    return out, findings


def check_data(dm, world: int, epochs: Optional[float]) -> tuple[dict, list]:
    """Run the checks for ``dm`` (a TextDataModule or ImageNetDataModule)."""
    text = hasattr(dm, "eot_token")
    out, findings = check_text(dm, world, epochs) if text else check_images(dm)
    path = out.get("prepared")
    if path:
        split = chunk_split(path, world, int(getattr(dm, "num_workers", None)
                                             or dm.hparams.get("num_workers", 0) or 0))
        if text:
            from datamodules.text import read_index_windows

            split["windows_per_reader"] = (read_index_windows(path, "train", dm.block_size + 1)
                                           // split["readers"])
        out["chunks"] = split
        if split["chunks"] < split["readers"]:
            findings.append(("warning", f"data: {split['chunks']} chunk(s) for {world} rank(s) × "
                                        f"{split['readers'] // world} worker(s) = "
                                        f"{split['readers']} readers: each reader's items come "
                                        "from part of one chunk, so its shuffle mixes only "
                                        "that part (and litdata's whole-chunk mode would "
                                        "leave readers empty); prepare more, smaller chunks "
                                        "or use fewer workers"))
        out["litdata_mode"] = litdata_mode(path)
    return out, findings
