"""How training reads prepared chunks: one shuffle on every filesystem, fresh windows each epoch.

* :func:`full_shuffle_only`: on a cluster filesystem (NFS, Lustre, GPFS, ..., or
  ``LITDATA_POSIX_FAST=1``) litdata switches to ``WindowShuffle``, which assigns **whole
  chunks** to ranks x workers in sequential stripes. Measured with litdata 0.2.76: 2 chunks
  over 2 ranks x 2 workers gave [1178, 0] batches per rank, and a resumed loader matched 0 of
  20 batches. This module keeps litdata's in-place (mmap) reads but always uses its
  ``FullShuffle`` (global chunk permutation, chunks split between readers by item ranges),
  the mode whose balance, disjointness and exact resume the tests check on every filesystem,
  and says so once.
* :class:`ShiftedTokensLoader` / :class:`EpochWindows`: windows of ``block_size + 1`` tokens
  sit on a grid inside each chunk; epoch 1 reads the grid at offset 0, epoch ``e >= 2`` at a
  seeded offset ``shift(seed, e)`` in ``1..window-1`` (the window that runs past the chunk's
  end continues at its start: a chunk ends with EOT and starts a document, so the seam is a
  document boundary). Two epochs therefore share no window unless their offsets coincide
  (probability 1/(window - 1)). The offset is a function of the shuffle seed and litdata's
  epoch counter, both in the loader's ``state_dict``: resume stays exact.
  docs/DATA.md "Sampling".
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import torch
from litdata import StreamingDataset
from litdata import TokensLoader as _TokensLoader


def full_shuffle_only(dataset: StreamingDataset, what: str) -> StreamingDataset:
    """Make ``dataset`` use litdata's ``FullShuffle`` even where it detected a cluster
    filesystem (see the module docstring); warns once when it changes anything."""
    profile = getattr(dataset, "posix_fast", None)
    if profile is not None and profile.window_shuffle:
        warnings.warn(
            f"{what}: litdata detected a cluster filesystem ({profile.kind}) and would assign "
            "whole chunks to ranks x workers (unbalanced ranks with few chunks, no exact "
            "resume); reading with its full shuffle instead (chunks still mmapped in place)",
            stacklevel=2)
        dataset.posix_fast = dataclasses.replace(profile, kind="posix")
    return dataset


def window_shift(seed: int, epoch: int, window: int) -> int:
    """Offset of the window grid in ``epoch`` (1-based): 0 in epoch 1, else a seeded draw in
    ``1..window-1``."""
    if epoch <= 1 or window < 2:
        return 0
    return int(np.random.default_rng([int(seed), int(epoch)]).integers(1, window))


def _numpy_dtype(dtype) -> np.dtype:
    if isinstance(dtype, torch.dtype):
        return torch.empty(0, dtype=dtype).numpy().dtype
    return np.dtype(dtype)


class TokensLoader(_TokensLoader):
    """litdata's ``TokensLoader`` whose window grid is offset by ``self.shift`` tokens (set per
    epoch by :class:`EpochWindows`); named like litdata's because litdata checks the class
    name against the one recorded in ``index.json``. Relies on ``TokensLoader`` keeping the chunk's token buffer in
    ``_buffers[chunk_index]`` after loading an item (litdata 0.2.x; pinned by
    ``tests/test_data_integrity.py::test_shifted_windows_read_the_token_stream``)."""

    def __init__(self, block_size: int):
        super().__init__(block_size)
        self.shift = 0

    def load_item_from_chunk(self, index, chunk_index, chunk_filepath, begin, filesize_bytes):
        aligned = super().load_item_from_chunk(index, chunk_index, chunk_filepath, begin,
                                               filesize_bytes)
        if not self.shift:
            return aligned
        ci = int(getattr(chunk_index, "chunk_index", chunk_index))
        dim, window = int(self._chunks[ci]["dim"]), self._block_size
        tokens = np.frombuffer(self._buffers[ci], dtype=_numpy_dtype(self._dtype))[:dim]
        start = ((index - begin) * window + self.shift) % dim
        end = start + window
        out = tokens[start:end] if end <= dim else np.concatenate(
            [tokens[start:], tokens[:end - dim]])
        out = np.array(out)                             # a copy, never a view of the mmap
        return torch.from_numpy(out) if isinstance(aligned, torch.Tensor) else out


ShiftedTokensLoader = TokensLoader


class EpochWindows(StreamingDataset):
    """``StreamingDataset`` of :class:`ShiftedTokensLoader` windows whose grid offset follows
    litdata's epoch counter and the shuffle seed (restored from a checkpoint with the loader's
    ``state_dict``)."""

    def __getitem__(self, index):
        loader = self.item_loader
        if isinstance(loader, ShiftedTokensLoader) and not isinstance(index, (int, slice, str)):
            seed = self.shuffler.seed if self.shuffler is not None else self.seed
            loader.shift = window_shift(seed, self.current_epoch, loader._block_size)
        return super().__getitem__(index)
