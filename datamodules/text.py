"""GPT language-model data: :class:`TextDataModule`, shuffled token windows of a prepared corpus.

Training reads a prepared corpus (:mod:`datamodules.prepare`; ``data.prepared: PATH`` or, for
the embedded/local/hub sources, prepared automatically into a cache on first use) with
litdata: ``StreamingDataset(train/, item_loader=TokensLoader(block_size + 1), shuffle=True)``
and a ``StreamingDataLoader``, which shard it across DDP ranks x workers and whose
``state_dict`` is the exact resume position (Lightning saves and restores it with the loop).
Validation: the held-out documents' windows, in order, equal shares per rank.
See docs/DATA.md.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import math
import os
import signal
import weakref
from typing import Literal

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from litdata import StreamingDataLoader, StreamingDataset, TokensLoader
from torch.utils.data import DataLoader, IterableDataset

from datamodules.chunks import stream_fingerprint, verify_chunks
from datamodules.prepare import TextCorpus, prepare_text, read_manifest
from datamodules.streaming import EpochWindows, ShiftedTokensLoader, full_shuffle_only
from datamodules.tokenizers import build_tokenizer


def _check_int(name: str, value, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}{' or None' if optional else ''}, got {value!r}")


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def split_xy(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` = ``(w[:, :-1], w[:, 1:])`` as int64 of a ``(B, block_size + 1)`` batch."""
    windows = windows.to(torch.int64)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def collate_windows(windows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return split_xy(torch.stack(windows))


def ignore_sigterm(worker_id: int) -> None:
    """Workers ignore SIGTERM, so a preemption signal sent to the whole process group reaches
    the trainer (which saves and stops) without killing the workers under it first; they are
    shut down by the trainer, or at exit (:func:`_kill_leftover_workers`)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


_LIVE_ITERATORS: "weakref.WeakSet" = weakref.WeakSet()


def shutdown_train_workers() -> None:
    for it in list(_LIVE_ITERATORS):
        with contextlib.suppress(Exception):
            it._shutdown_workers()
        _LIVE_ITERATORS.discard(it)


@atexit.register
def _kill_leftover_workers() -> None:
    """Workers ignore the SIGTERM ``multiprocessing`` sends at exit: shut down, else kill."""
    iterators = list(_LIVE_ITERATORS)
    shutdown_train_workers()
    for it in iterators:
        for w in getattr(it, "_workers", None) or []:
            with contextlib.suppress(Exception):
                if w.is_alive():
                    w.kill()


class TrainLoader(StreamingDataLoader):
    """A ``StreamingDataLoader`` whose worker processes are shut down at exit. Its
    ``state_dict`` (litdata's) is the resume position: Lightning saves it in the checkpoint
    and loads it back before iterating; it is exact because the loader has a length, so
    Lightning prefetches nothing."""

    def _get_iterator(self):
        it = super()._get_iterator()
        if self.num_workers > 0:
            _LIVE_ITERATORS.add(it)
        return it


class ValidationBatches(IterableDataset):
    """Finite, in-order ``(x, y)`` batches of a fixed tensor of windows."""

    def __init__(self, windows: torch.Tensor, batch_size: int):
        super().__init__()
        self.windows, self.batch_size = windows, batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.windows) / self.batch_size)

    def __iter__(self):
        for i in range(0, len(self.windows), self.batch_size):
            yield split_xy(self.windows[i:i + self.batch_size])


class TextDataModule(L.LightningDataModule):
    """Shuffled ``(x, y)`` windows (int64, ``(batch_size, block_size)``, ``y`` = ``x`` shifted
    by one) of a prepared corpus; validation windows from held-out documents.

    Args:
        source: ``"embedded"`` (stdlib sources), ``"local"`` (``paths``) or ``"hub"``; ignored
            with ``prepared``. Prepared on first use into ``cache_dir`` (default
            ``$ADAMROT_CACHE/prepared``, ``~/.cache/adamrot/prepared``).
        paths: local ``.txt`` / ``.jsonl`` / ``.parquet`` files, directories or globs.
        hub_dataset, hub_data_files, hub_split, text_column: hub corpus (parquet export of
            ``hub_dataset``, or explicit files) and the text column/field.
        tokenizer: ``"bytes"`` (vocab 257) or ``"gpt2"`` (tiktoken); with ``prepared``, the
            prepared one (giving another is an error).
        tiktoken_ranks_file: local ``.tiktoken`` ranks file for ``"gpt2"`` (offline).
        prepared: a directory (or URL) written by ``adamrot prepare``.
        block_size, batch_size, val_batch_size: window length and batch sizes (per process).
        num_workers: training DataLoader workers per rank.
        val_fraction: share of the corpus held out (whole documents) when preparing.
        val_max_tokens: cap on validation tokens (None: all held-out windows).
        max_bytes: prepare only the first ``max_bytes`` bytes of text of the corpus.
        seed: seed of the window shuffle and of the per-epoch window offset; default
            (``None``): the run's seed (``seed_everything``, ``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, source: Literal["embedded", "local", "hub"] = "embedded",
                 paths: list[str] | None = None, hub_dataset: str = "Skylion007/openwebtext",
                 hub_data_files: str | None = None, hub_split: str = "train",
                 text_column: str = "text", tokenizer: Literal["bytes", "gpt2"] | None = None,
                 tiktoken_ranks_file: str | None = None, prepared: str | None = None,
                 cache_dir: str | None = None, block_size: int = 256, batch_size: int = 8,
                 val_batch_size: int | None = None, num_workers: int = 0,
                 val_fraction: float = 0.01, val_max_tokens: int | None = 1_000_000,
                 max_bytes: int | None = None, seed: int | None = None):
        super().__init__()
        for name, value in (("hub_dataset", hub_dataset), ("hub_split", hub_split),
                            ("text_column", text_column)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        _check_int("block_size", block_size, 1)
        _check_int("batch_size", batch_size, 1)
        _check_int("val_batch_size", val_batch_size, 1, optional=True)
        _check_int("num_workers", num_workers, 0)
        _check_int("max_bytes", max_bytes, 1, optional=True)
        _check_int("seed", seed, 0, optional=True)
        _check_int("val_max_tokens", val_max_tokens, 1, optional=True)
        if val_max_tokens is not None and val_max_tokens < block_size + 1:
            raise ValueError(f"val_max_tokens must be at least block_size + 1 = {block_size + 1} "
                             f"(one window) or None, got {val_max_tokens}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
                or not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
        self.save_hyperparameters()
        if prepared is not None:
            self.corpus = None
            self.manifest = read_manifest(prepared)      # refused now, naming the path
            if tokenizer is not None and tokenizer != self.manifest["tokenizer"]:
                raise ValueError(f"tokenizer={tokenizer!r} but {prepared} was prepared with "
                                 f"{self.manifest['tokenizer']!r}")
            self.vocab_size: int = self.manifest["vocab_size"]
            self.eot_token: int = self.manifest["eot_token"]
        else:
            self.corpus = TextCorpus(source, tuple(paths or ()), hub_dataset, hub_data_files,
                                     hub_split, text_column, max_bytes)
            self.manifest = None
            tok = build_tokenizer(tokenizer or "bytes", tiktoken_ranks_file)
            self.vocab_size, self.eot_token = tok.vocab_size, tok.eot_token
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.path: str | None = prepared
        self.val_windows: torch.Tensor | None = None    # (N, block_size + 1), all ranks
        self._loader: TrainLoader | None = None
        self._train_batches = 0
        self._verified = False

    @property
    def seed(self) -> int:
        """The shuffle seed: ``seed`` if given, else the run's (``PL_GLOBAL_SEED``), else 0."""
        if self.hparams.seed is not None:
            return self.hparams.seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    # -- preparation -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Prepare the corpus into the cache unless done (a no-op when it is; local rank 0,
        the others wait; :meth:`setup` calls it too). Bad content is refused here, before
        training. A large hub corpus is faster with ``adamrot prepare hub --workers N``."""
        if self.path is None:
            hp = self.hparams
            advice = (lambda m: rank_zero_warn(  # noqa: E731  (only when not prepared yet)
                f"{self.corpus.label}: {m} in one process; for a large corpus run "
                "`adamrot prepare hub --workers N` first")) if hp.source == "hub" else None
            self.path, self.manifest = prepare_text(
                self.corpus, hp.tokenizer or "bytes", hp.tiktoken_ranks_file,
                cache_dir=hp.cache_dir, val_fraction=hp.val_fraction, log=advice)

    def setup(self, stage: str | None = None) -> None:
        """Prepare if needed (idempotent, locked) and load the validation windows."""
        if self.val_windows is not None:
            return
        self.prepare_data()
        if not self._verified:                           # before training writes anything
            verify_chunks(self.path, self.manifest)
            self._verified = True
        window = self.block_size + 1
        val = StreamingDataset(f"{self.path}/val", item_loader=TokensLoader(window))
        n = read_index_windows(self.path, "val", window)
        if self.hparams.val_max_tokens is not None:
            n = min(n, self.hparams.val_max_tokens // window)
        if n == 0:
            raise ValueError(f"{self.path}: the validation documents hold fewer than "
                             f"block_size + 1 = {window} tokens; prepare with a larger "
                             "val_fraction or corpus")
        self.val_windows = torch.stack([val[i] for i in range(n)]).to(torch.int64)

    def identity(self) -> dict:
        """What a run's numbers depend on in the data: the prepared key and a digest of the
        validation windows this module evaluates on (written to the run's ``data.json`` and
        compared on every later ``fit`` of that run: ``callbacks.checkpoint_io.RunState``)."""
        self.setup()
        digest = hashlib.sha256(self.val_windows.numpy().tobytes()).hexdigest()[:16]
        return {"prepared_key": self.manifest.get("key"), "corpus": self.manifest["corpus"],
                "tokenizer": self.manifest["tokenizer"], "val_windows": len(self.val_windows),
                "val_digest": digest, "train_stream": stream_fingerprint(self.manifest)}

    # -- loaders -----------------------------------------------------------------------

    def train_dataloader(self) -> TrainLoader:
        """This rank's shuffled training windows (litdata shards across ranks x workers)."""
        self.setup()
        dataset = full_shuffle_only(EpochWindows(
            f"{self.path}/train", item_loader=ShiftedTokensLoader(self.block_size + 1),
            shuffle=True, seed=self.seed, drop_last=True,
            item_shuffle_window="full"), self.path)           # not blocks of 256 windows
        workers = self.hparams.num_workers
        self._loader = TrainLoader(dataset, batch_size=self.batch_size, num_workers=workers,
                                   collate_fn=collate_windows,
                                   pin_memory=torch.cuda.is_available(), drop_last=True,
                                   worker_init_fn=ignore_sigterm if workers > 0 else None)
        return self._loader

    def val_dataloader(self) -> DataLoader:
        """This rank's equal share of the validation windows, in order."""
        self.setup()
        rank, world_size = rank_world()
        share = len(self.val_windows) // world_size
        if share == 0:
            raise ValueError(f"{len(self.val_windows)} validation windows cannot be split over "
                             f"{world_size} ranks; raise val_fraction or val_max_tokens")
        windows = self.val_windows[rank * share:(rank + 1) * share]
        return DataLoader(ValidationBatches(windows, self.val_batch_size), batch_size=None,
                          pin_memory=torch.cuda.is_available())

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Counts the training batches that reach the model (Lightning calls this for each
        consumed batch, never for the one it prefetches)."""
        if self.trainer is not None and self.trainer.training:
            self._train_batches += 1
        return batch

    def on_exception(self, exception: BaseException) -> None:
        shutdown_train_workers()

    def teardown(self, stage: str) -> None:
        if stage == "fit":
            shutdown_train_workers()

    def state_dict(self) -> dict:
        """Training batches consumed by each rank (all equal) and the layout, for reports; the
        resume position itself is the loader's state (:class:`TrainLoader`)."""
        _, world_size = rank_world()
        hp = self.hparams
        return {"train_batches": self._train_batches,
                "layout": {"world_size": world_size, "num_workers": hp.num_workers,
                           "batch_size": self.batch_size, "block_size": self.block_size,
                           "seed": self.seed}}

    def load_state_dict(self, state: dict) -> None:
        self._train_batches = int(state.get("train_batches", 0))

    # -- reporting ---------------------------------------------------------------------

    def describe(self) -> dict:
        """Prepared directory, corpus, tokenizer and token counts (prepares if needed)."""
        self.setup()
        m = self.manifest
        return {"prepared": self.path, "source": m["source"], "corpus": m["corpus"],
                "corpus_hash": m["corpus_hash"], "tokenizer": m["tokenizer"],
                "vocab_size": self.vocab_size, "eot_token": self.eot_token,
                "block_size": self.block_size,
                "documents": m["train_documents"] + m["val_documents"],
                "train_documents": m["train_documents"], "val_documents": m["val_documents"],
                "train_tokens": m["train_tokens"], "val_windows": len(self.val_windows),
                "val_tokens": self.val_windows.numel(),
                "val_digest": self.identity()["val_digest"]}

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the unigram distribution of the validation targets: the loss
        of the best context-free predictor, a baseline for the validation loss."""
        self.setup()
        counts = torch.bincount(self.val_windows[:, 1:].reshape(-1), minlength=self.vocab_size)
        p = counts[counts > 0].double() / counts.sum()
        return float(-(p * p.log()).sum())


def read_index_windows(path: str, split: str, window: int) -> int:
    """Windows of ``window`` tokens litdata reads from a prepared split (each chunk's tail
    shorter than a window is not read)."""
    import json

    import fsspec

    with fsspec.open(f"{path}/{split}/index.json") as f:
        chunks = json.loads(f.read())["chunks"]
    return sum(c["dim"] // window for c in chunks)
