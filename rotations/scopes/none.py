"""``none``: the standard basis. Its unit copies, its bucket holds the shadows of unrotated
views that still need one (Muon's split views, the unrotated types of ``rotation.only``)."""
from __future__ import annotations

import torch

from .base import FlatBucket, Unit, compute_dtype


class IdentityUnit(Unit):
    scope = "none"

    def rotate(self, mats):
        return [m.clone() for m in mats]

    def unrotate(self, mats):
        return list(mats)


class IdentityBucket(FlatBucket):
    """Identity views of one dtype and device share one bucket, whatever their units."""

    kind = "none"

    @classmethod
    def parts(cls, unit):
        return [IdentityUnit([v]) for v in unit.views]

    @classmethod
    def key(cls, unit) -> tuple:
        return ()

    def rotate(self, mats, scratch: bool = False):
        # per-view copies (not one concatenated tensor): on the CPU, glibc maps and unmaps a
        # single large block on every step, and the page faults cost more than the copies
        return [m.clone(memory_format=torch.contiguous_format) for m in mats]

    def _rotate(self, X):
        return X.clone()

    def _unrotate(self, Y):
        return Y

    def unrotate(self, mats=None):
        return list(self.shadows) if mats is None else list(mats)

    def compile(self, **kwargs) -> None:
        pass


__all__ = ["IdentityUnit", "IdentityBucket", "compute_dtype"]
