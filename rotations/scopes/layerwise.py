"""``layerwise``: each view's ``vec(G)`` rotated by its own ``R_l = B_l P_l``."""
from __future__ import annotations

from ..sampling import BlockRotation
from ..stacks import BlockStack
from .base import BlockUnit, VectorBucket


class LayerUnit(BlockUnit):
    scope = "layerwise"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.R = BlockRotation(view.numel, cfg.block_size, cfg.seed, "layer:" + view.name,
                               cfg.permute)
        self.rotations = {view.name: self.R}

    @classmethod
    def dims(cls, views):
        return [("layer:" + v.name, v.numel) for v in views]

    def rotate(self, mats):
        return [self.R.rotate(mats[0].reshape(-1)).view(self.views[0].shape)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0].reshape(-1)).view(self.views[0].shape)]


class LayerBucket(VectorBucket):
    """``vec(G_l)`` of same-size layers, stacked ``(L, N)``; unrotated in place."""

    kind = "layerwise"

    @classmethod
    def key(cls, unit) -> tuple:
        return (unit.R.signature,)

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([u.R for u in units], device=self.device, dtype=dtype)
        self.R.precompute("last", 1)
        for u in units:
            u.R.release()

    def _rotate(self, X):
        return self.R.rotate_last(X.unsqueeze(1)).squeeze(1)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y.unsqueeze(1)).squeeze(1)

    def unrotate(self, mats=None):
        if mats is not None or self.compiled or not self.R.permuted:
            return super().unrotate(mats)
        self.R.unrotate_last(self.buffer.unsqueeze(1), out=self.buffer)
        return list(self.shadows)
