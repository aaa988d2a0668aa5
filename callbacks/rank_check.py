"""DDP ranks agree at the end of training: parameters, rotation state and optimizer state
digests are all-gathered and compared (docs/RUNS.md)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch.callbacks import Callback

from callbacks.checkpoint_io import digest
from callbacks.files import atomic_write

__all__ = ["RankAgreementCheck", "training_digests"]


def training_digests(pl_module, optimizers) -> dict[str, str]:
    """Digests of the parameters, the rotation state (seeds, fingerprints, SVD bases) and the
    whole optimizer state of this process."""
    out = {"params": digest({n: p for n, p in pl_module.named_parameters()})}
    rot, full = [], []
    for opt in optimizers:
        sd = opt.state_dict()
        rot.append(sd.get("rotation"))
        full.append(sd)
    out["rotation"] = digest(rot)
    out["optimizer"] = digest(full)
    return out


class RankAgreementCheck(Callback):
    """At the end of training, all-gather every rank's :func:`training_digests` (parameters,
    rotation state, optimizer state) and raise ``RuntimeError`` if any differs. Rank 0 writes
    them to ``default_root_dir/rank_agreement.json``. Does nothing on a single process.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.last: Optional[dict] = None

    def _run(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.world_size < 2:
            return
        mine = training_digests(pl_module, trainer.optimizers)
        keys = sorted(mine)
        words = torch.tensor([int(mine[k][i:i + 15], 16) for k in keys for i in range(0, 60, 15)],
                             dtype=torch.int64, device=pl_module.device)
        gathered = trainer.strategy.all_gather(words).reshape(trainer.world_size, -1).cpu()
        per_rank = []
        for r in range(trainer.world_size):
            row = gathered[r].tolist()
            per_rank.append({k: "".join(f"{row[j * 4 + i]:015x}" for i in range(4))
                             for j, k in enumerate(keys)})
        self.last = {"step": trainer.global_step, "ranks": per_rank}
        if trainer.is_global_zero:
            atomic_write(Path(trainer.default_root_dir) / "rank_agreement.json",
                         json.dumps(self.last, indent=1))
        differ = [k for k in keys if len({d[k] for d in per_rank}) > 1]
        if differ:
            raise RuntimeError(f"ranks disagree at step {trainer.global_step} on: "
                               f"{', '.join(differ)} (digests per rank: {per_rank})")

    def on_train_end(self, trainer, pl_module) -> None:
        self._run(trainer, pl_module)
