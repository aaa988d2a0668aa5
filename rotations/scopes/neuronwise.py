"""``outputwise`` and ``inputwise``: the weights into one output neuron (a row), or out of
one input neuron (a column), rotate together; one ``R_l`` per view shared by its rows
(columns). A view with a single column (row) has nothing to mix and stays unrotated."""
from __future__ import annotations

from ..sampling import BlockRotation
from ..stacks import BlockStack
from .base import BlockUnit, Bucket
from .none import IdentityUnit


class RowUnit(BlockUnit):
    """outputwise: ``G Q_inᵀ``."""

    scope = "outputwise"
    axis = 1                                   # the axis a rotation acts on

    def __init__(self, view, cfg):
        super().__init__([view])
        d = view.shape[self.axis]
        self.R = BlockRotation(d, cfg.block_size, cfg.seed, self._key(view), cfg.permute)
        self.rotations = {view.name: self.R}

    @classmethod
    def _key(cls, view) -> str:
        return ("row:" if cls.axis == 1 else "col:") + view.name

    @classmethod
    def build(cls, views, cfg):
        return [cls(v, cfg) if v.shape[cls.axis] > 1 else IdentityUnit([v]) for v in views]

    @classmethod
    def dims(cls, views):
        return [(cls._key(v), v.shape[cls.axis]) for v in views if v.shape[cls.axis] > 1]

    def rotate(self, mats):
        return [self.R.rotate(mats[0], dim=self.axis)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0], dim=self.axis)]


class ColUnit(RowUnit):
    """inputwise: ``Q_out G``."""

    scope = "inputwise"
    axis = 0


class RowBucket(Bucket):
    """``G_l (out, in)`` stacked ``(L, out, in)``; every row by ``R_l``."""

    kind = "outputwise"
    axis = "last"

    @classmethod
    def key(cls, unit) -> tuple:
        return (tuple(unit.views[0].shape), unit.R.signature)

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([u.R for u in units], device=self.device, dtype=dtype)
        out, inp = self.views[0].shape
        self.R.precompute(self.axis, out if self.axis == "last" else inp)
        for u in units:
            u.R.release()

    def _rotate(self, X):
        return self.R.rotate_last(X)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y)


class ColBucket(RowBucket):
    """inputwise: every column by ``R_l`` (left multiplication, no transposes)."""

    kind = "inputwise"
    axis = "first"

    def _rotate(self, X):
        return self.R.rotate_first(X)

    def _unrotate(self, Y):
        return self.R.unrotate_first(Y)
