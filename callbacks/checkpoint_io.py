"""Checkpoints on disk: atomic writes, a checksum of their content verified on every load,
finding a run's newest checkpoint by its recorded step, and the run counters a checkpoint
carries (tokens seen, the config it was trained with). See docs/RUNS.md."""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from callbacks.files import atomic_write, atomic_write_with

__all__ = ["AtomicCheckpointIO", "CheckpointCorrupt", "RunState", "digest", "seal", "verify",
           "load_checkpoint", "checkpoint_step", "newest_checkpoint", "scan_checkpoints",
           "last_checkpoint_path", "CHECKSUM_KEY", "RUN_STATE_KEY"]

#: key of the checksum inside a saved checkpoint dict
CHECKSUM_KEY = "adamrot_checksum"
#: key of :class:`RunState`'s record (tokens seen, the config of the run)
RUN_STATE_KEY = "adamrot"


class CheckpointCorrupt(ValueError):
    """A checkpoint whose content does not match its checksum."""


def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            t = t.cpu().contiguous().reshape(-1).view(torch.uint8)
            h.update(memoryview(t.numpy()))
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def digest(obj) -> str:
    """sha256 of nested tensors (dtype, shape, bytes) and plain values, in a canonical order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def seal(checkpoint: dict) -> dict:
    """``checkpoint`` with the sha256 of its content under :data:`CHECKSUM_KEY`."""
    body = {k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}
    return {**body, CHECKSUM_KEY: {"sha256": digest(body)}}


def _adamrot_keys(checkpoint: dict) -> list:
    """Top-level keys adamrot writes, or one damaged byte away from them: a checkpoint with
    any of them was written since checksums exist (the run-state record came with them)."""
    out = []
    for k in checkpoint:
        name = k if isinstance(k, str) else repr(k)
        if name.startswith("adamrot") or any(
                difflib.SequenceMatcher(None, name, mine).ratio() >= 0.8
                for mine in (CHECKSUM_KEY, RUN_STATE_KEY)):
            out.append(k)
    return out


def verify(checkpoint: Any, path: Any) -> Any:
    """Check and remove the checksum; raise :class:`CheckpointCorrupt` naming ``path`` when
    the content differs, or when the checksum is missing from a checkpoint written by adamrot
    since checksums exist (it carries the run-state record :data:`RUN_STATE_KEY`, or a key
    one damaged byte away from either). Only checkpoints without any adamrot key (written
    before checksums, or by plain Lightning) load unchecked."""
    if not isinstance(checkpoint, dict):
        return checkpoint
    if CHECKSUM_KEY not in checkpoint:
        marks = _adamrot_keys(checkpoint)
        if marks:
            raise CheckpointCorrupt(
                f"checkpoint {path} is corrupt: it has no {CHECKSUM_KEY!r} but was written by "
                f"adamrot with one (keys {', '.join(map(repr, marks))}); it was not loaded. "
                "Resume from another checkpoint (--ckpt_path) or start a new run.")
        return checkpoint
    record = checkpoint.pop(CHECKSUM_KEY)
    want = record.get("sha256") if isinstance(record, dict) else None
    if want != digest(checkpoint):
        raise CheckpointCorrupt(
            f"checkpoint {path} is corrupt: its content does not match the sha256 it was saved "
            "with (a changed byte on disk); it was not loaded. Resume from another checkpoint "
            "(--ckpt_path) or start a new run.")
    return checkpoint


def load_checkpoint(path: str | os.PathLike, mmap: bool = True) -> dict:
    """``torch.load(weights_only=True)`` on the CPU, memory-mapped when the format allows,
    with the checksum verified."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError:
        if not mmap:
            raise
        ckpt = torch.load(path, map_location="cpu", weights_only=True)   # legacy format
    return verify(ckpt, path)


def checkpoint_step(path: str | os.PathLike) -> Optional[int]:
    """The ``global_step`` a checkpoint records (not verified: cheap), or None if unreadable."""
    try:
        return _read_step(path)
    except Exception:  # noqa: BLE001 - a torn or foreign file has no step
        return None


def _read_step(path) -> int:
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise ValueError("no global_step: not a Lightning checkpoint")
    return int(ckpt["global_step"])


def scan_checkpoints(directory: str | os.PathLike
                     ) -> tuple[list[tuple[Path, int]], list[tuple[Path, str]]]:
    """Every ``*.ckpt`` of ``directory``: ``(readable, damaged)`` where ``readable`` is
    ``[(path, step)]``, newest first (highest recorded ``global_step``, ties: most recently
    written), and ``damaged`` is ``[(path, reason)]`` for files that cannot be read (torn,
    empty, not a checkpoint). Cheap: nothing is verified."""
    readable, damaged = [], []
    for p in sorted(Path(directory).glob("*.ckpt")):
        try:
            step = _read_step(p)
        except Exception as e:  # noqa: BLE001 - torn, empty or foreign
            text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = text.split(". ")[0][:160]
            size = p.stat().st_size if p.exists() else 0
            damaged.append((p, first if size == 0 else f"{size} bytes; {first}"))
            continue
        readable.append(((step, p.stat().st_mtime_ns), p))
    readable.sort(key=lambda x: x[0], reverse=True)
    return [(p, key[0]) for key, p in readable], damaged


def newest_checkpoint(directory: str | os.PathLike) -> Optional[tuple[Path, int]]:
    """The readable checkpoint of ``directory`` with the highest recorded ``global_step``
    (ties: the most recently written), as ``(path, step)``; None when there is none. File
    names do not matter (``last.ckpt``, ``last-v1.ckpt``, ``step=…``). Damaged files are
    skipped here: :func:`scan_checkpoints` lists them."""
    readable, _ = scan_checkpoints(directory)
    return readable[0] if readable else None


def last_checkpoint_path(trainer) -> str:
    """Where ``last.ckpt`` goes: the ModelCheckpoint's directory, else
    ``default_root_dir/checkpoints``."""
    cb = trainer.checkpoint_callback
    if isinstance(cb, ModelCheckpoint) and cb.dirpath:
        return os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
    return os.path.join(trainer.default_root_dir, "checkpoints", "last.ckpt")


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` that never leaves a partial checkpoint, seals each one with a
    checksum and never unpickles code.

    ``save_checkpoint`` writes through :func:`callbacks.files.atomic_write_with` (temp file,
    fsync, rename, fsync of the directory): a crash leaves the previous checkpoint intact.
    Remote (fsspec) paths fall back to Lightning's transactional save. ``load_checkpoint``
    uses ``torch.load(weights_only=True)`` and verifies the checksum
    (:class:`CheckpointCorrupt` otherwise).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None
                        ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        sealed = seal(checkpoint)
        if not isinstance(get_filesystem(path), LocalFileSystem):
            return super().save_checkpoint(sealed, path)
        atomic_write_with(path, lambda f: torch.save(sealed, f))

    def load_checkpoint(self, path, map_location: Optional[Callable] = lambda storage, loc: storage,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        ckpt = super().load_checkpoint(path, map_location=map_location,
                                       weights_only=True if weights_only is None else weights_only)
        return verify(ckpt, path)


class RunState(Callback):
    """Run counters that belong in a checkpoint: the module's ``tokens_seen`` (so
    ``train/tokens`` continues on resume) and ``config`` — the ``model``/``data``/``trainer``
    sections the run was trained with, compared on resume (``adamrot/resume.py``).

    Also tells the CLI whether this process has completed an optimizer step (``stepped``):
    an error before that is a configuration error, with nothing of the run to keep.

    With ``run_dir``, the data the run is trained and validated on (the datamodule's
    ``identity()``: prepared key, digest of the validation windows) is written to
    ``run_dir/data.json`` on the first ``fit`` and compared on every later one: a run whose
    validation set changed (a cache prepared by another version, another ``val_max_tokens``)
    is refused instead of continuing with numbers that no longer compare.
    """

    DATA_FILE = "data.json"

    def __init__(self, config: Optional[dict] = None, run_dir: Optional[str] = None):
        self.config = config or {}
        self.run_dir = run_dir
        self.stepped = False
        self._start: Optional[int] = None

    @classmethod
    def check_data(cls, run_dir: str, identity: dict, accepted: list = (),
                   accept: bool = False) -> dict:
        """Compare ``identity`` with ``run_dir/data.json`` updated by the changes accepted
        since (``accepted``: ``{key: [old, new]}`` dicts, oldest first). Returns the
        differences ``{key: [recorded, now]}``; raises ``ValueError`` naming the file when
        there are some and not ``accept``. Nothing to compare for a new run."""
        path = Path(run_dir) / cls.DATA_FILE
        if not path.is_file():
            return {}
        theirs = json.loads(path.read_text())
        for change in accepted:
            theirs.update({k: v[1] for k, v in change.items()})
        changed = {k: [theirs.get(k), v] for k, v in identity.items()
                   if k in theirs and theirs[k] != v}
        if changed and not accept:
            raise ValueError(
                f"{path}: this run was trained on other data ("
                + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
                + "); its numbers would not continue or compare. Start a new run directory, "
                "restore the data, or pass --accept_changes true to continue anyway (recorded "
                "in resumes.jsonl)")
        return changed

    def on_fit_start(self, trainer, pl_module) -> None:
        identity = getattr(trainer.datamodule, "identity", None)
        if self.run_dir is None or not callable(identity):
            return
        path = Path(self.run_dir) / self.DATA_FILE   # compared by the CLI before anything ran
        if not path.is_file() and trainer.is_global_zero:
            atomic_write(path, json.dumps(identity(), indent=1, sort_keys=True) + "\n")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_STATE_KEY] = {"tokens_seen": int(getattr(pl_module, "tokens_seen", 0)),
                                     "config": self.config}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get(RUN_STATE_KEY) or {}
        if "tokens_seen" in state and hasattr(pl_module, "tokens_seen"):
            pl_module.tokens_seen = int(state["tokens_seen"])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._start is None:
            self._start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None and trainer.global_step > self._start:
            self.stepped = True
