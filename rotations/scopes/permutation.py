"""``permutation`` (our own scope, not in the papers; the worked example of
docs/ROTATIONS.md): each view's coordinates reordered by a seeded uniform permutation ``P_l``
— an orthogonal change of basis that mixes nothing. Every coordinate-wise optimizer (Adam,
signSGD, Signum, …) is equivariant to it, so a run under ``permutation`` must match the
unrotated run exactly (tested): a control that separates the effect of *mixing* coordinates
from that of merely relabelling them."""
from __future__ import annotations

import torch

from ..sampling import index_dtype, seeded_generator
from .base import Unit, VectorBucket


class PermutationUnit(Unit):
    scope = "permutation"

    def __init__(self, view, cfg):
        super().__init__([view])
        g = seeded_generator(cfg.seed, "perm:" + view.name)
        self.perm = torch.randperm(view.numel, generator=g, dtype=index_dtype(view.numel))

    def rotate(self, mats):                   # (P x)_i = x[perm[i]]
        return [mats[0].reshape(-1)[self.perm.long()].view(self.views[0].shape)]

    def unrotate(self, mats):
        out = torch.empty_like(mats[0]).reshape(-1)
        out[self.perm.long()] = mats[0].reshape(-1)
        return [out.view(self.views[0].shape)]

    def state(self) -> dict:                  # regenerated from the seed; checked on load
        return {"fingerprint": int(self.perm[:8].long().sum())}

    def load_state(self, st: dict, device=None) -> None:
        if "fingerprint" in st and st["fingerprint"] != int(self.perm[:8].long().sum()):
            raise ValueError(f"checkpoint permutation of {self.name!r} does not match the one "
                             "regenerated from rotation.seed: was the config changed?")


class PermutationBucket(VectorBucket):
    """Same-size views stacked ``(L, N)``: one gather in, one scatter out."""

    kind = "permutation"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.index = torch.stack([u.perm.long() for u in units]).to(self.device)

    def _rotate(self, X):
        return torch.gather(X, 1, self.index)

    def _unrotate(self, Y):
        return torch.empty_like(Y).scatter_(1, self.index, Y)
