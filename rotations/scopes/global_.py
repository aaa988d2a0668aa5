"""``global``: all views of the scope as one vector, rotated by one ``R = B P``
(docs/CONVENTIONS.md §2–3)."""
from __future__ import annotations

import torch

from ..sampling import BlockRotation
from ..stacks import BlockStack
from .base import BlockUnit, FlatBucket, compute_dtype


class GlobalUnit(BlockUnit):
    scope = "global"
    joint = True

    def __init__(self, views, cfg, key: str = "global"):
        super().__init__(views)
        self.sizes = [v.numel for v in views]
        self.R = BlockRotation(sum(self.sizes), cfg.block_size, cfg.seed, key, cfg.permute)
        self.rotations = {key: self.R}

    @classmethod
    def dims(cls, views):
        return [("global", sum(v.numel for v in views))] if views else []

    def rotate(self, mats):
        flat = torch.cat([m.reshape(-1) for m in mats])
        out = self.R.rotate(flat).split(self.sizes)
        return [o.view(v.shape) for o, v in zip(out, self.views)]

    def unrotate(self, mats):
        flat = torch.cat([m.reshape(-1) for m in mats])
        out = self.R.unrotate(flat).split(self.sizes)
        return [o.view(v.shape) for o, v in zip(out, self.views)]


class GlobalBucket(FlatBucket):
    """One ``R = B P`` over the concatenated views; the update is unrotated in place in the
    shadow buffer (no second vector of the model's size)."""

    kind = "global"
    mixes_views = True

    @classmethod
    def key(cls, unit) -> tuple:
        return (id(unit),)

    @classmethod
    def dtype_of(cls, unit) -> torch.dtype:
        dt = unit.views[0].param.dtype
        for v in unit.views:
            dt = torch.promote_types(dt, compute_dtype(v))
        if any(compute_dtype(v) != dt for v in unit.views):
            raise ValueError("global rotation over parameters of different dtypes is not "
                             "supported (the shadows share one buffer)")
        return dt

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([units[0].R], device=self.device, dtype=dtype)
        self.R.precompute("last", 1)
        units[0].R.release()

    def _rotate(self, X):
        return self.R.rotate_last(X.view(1, 1, -1)).view(-1)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y.view(1, 1, -1)).view(-1)

    def rotate(self, mats, scratch: bool = False):
        """As :meth:`Bucket.rotate`; ``scratch=True`` concatenates the inputs into the shadow
        buffer (its values are not kept) instead of a new vector of the model's size."""
        if not scratch or self.compiled:
            return super().rotate(mats)
        torch.cat([m.reshape(-1) for m in mats], out=self.buffer)
        return self._split(self._rotate(self.buffer))

    def unrotate(self, mats=None):
        if mats is not None or self.compiled:
            return super().unrotate(mats)
        self.R.unrotate_last(self.buffer.view(1, 1, -1), out=self.buffer)
        return list(self.shadows)
