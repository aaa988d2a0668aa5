"""What every scope is made of (docs/CONVENTIONS.md §3, docs/ROTATIONS.md): a *unit*, the
reference maths that maps the ``(out, in)`` matrices of its views to rotated tensors of the
same shapes and back, one layer at a time; and a *bucket*, the fast path that rotates the
views of many same-structure units together with batched operations and owns their shadows.
One file per scope holds its unit and its bucket; :mod:`.table` lists them. Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..layout import LayerView


class Unit:
    """The views of one rotation. Subclasses set :attr:`scope` and, when one unit covers all
    the views of its scope (``global``), :attr:`joint`."""

    scope = "none"
    joint = False

    def __init__(self, views: list[LayerView]):
        self.views = views

    # -- how a plan builds units and checks their cost (overridden per scope) -----------------
    @classmethod
    def build(cls, views: list[LayerView], cfg) -> list["Unit"]:
        """The units for the views a config puts in this scope (one per view by default)."""
        if cls.joint:
            return [cls(views, cfg)] if views else []
        return [cls(v, cfg) for v in views]

    @classmethod
    def dims(cls, views: list[LayerView]) -> list[tuple[str, int]]:
        """``(key, d)`` of every block rotation these views would sample (none by default):
        the ``rotation.block_size`` rule and the memory estimate read it."""
        return []

    @property
    def name(self) -> str:
        return self.views[0].name if len(self.views) == 1 else f"{self.scope}[{len(self.views)}]"

    def rotate(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def unrotate(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def state(self) -> dict:
        return {}

    def load_state(self, st: dict, device=None) -> None:
        pass


class BlockUnit(Unit):
    """Units built from seeded block rotations; state = fingerprints for verification."""

    rotations: dict

    def state(self) -> dict:
        return {"fingerprints": {k: r.fingerprint() for k, r in self.rotations.items()}}

    def load_state(self, st: dict, device=None) -> None:
        saved = st.get("fingerprints", {})
        for k, r in self.rotations.items():
            if k in saved and abs(saved[k] - r.fingerprint()) > 1e-9 * max(1.0, abs(saved[k])):
                raise ValueError(f"checkpoint rotation for {k!r} does not match the rotation "
                                 "regenerated from rotation.seed/block_size: was the config changed?")


def compute_dtype(view: LayerView) -> torch.dtype:
    """Rotations run in fp32 or better (the shadows' dtype)."""
    return torch.promote_types(view.param.dtype, torch.float32)


class Bucket:
    """Views of one or more units, rotated together by batched operations.

    A bucket owns :attr:`buffer`, one tensor holding the *shadows* of all its views
    (:attr:`shadows`, views of the buffer in the views' ``(out, in)`` shapes), so the
    optimizer can hand the shadows to its base optimizer and unrotate the whole buffer at
    once. ``rotate(mats)`` / ``unrotate(mats)`` take and return per-view matrices
    (``unrotate()`` with no argument reads the shadows); the stacked maths lives in
    ``_rotate`` / ``_unrotate`` (tensor in, tensor out, no host syncs), which
    :meth:`compile` may wrap with ``torch.compile``.

    How units are grouped: :meth:`parts` (a unit, or its views one by one), :meth:`key`
    (units with equal keys, dtypes and devices share a bucket) and :meth:`dtype_of`.
    :attr:`mixes_views`: every slot of the buffer mixes several parameters (``global``).
    """

    kind = "none"
    mixes_views = False

    def __init__(self, units: list[Unit], device, dtype: torch.dtype):
        self.units = units
        self.views = [v for u in units for v in u.views]
        self.device, self.dtype = torch.device(device), dtype
        self.buffer = torch.zeros(self._buffer_shape(), device=self.device, dtype=dtype)
        self.shadows = self._split(self.buffer)

    # -- grouping (class level) ----------------------------------------------------------------
    @classmethod
    def parts(cls, unit: Unit) -> list[Unit]:
        return [unit]

    @classmethod
    def key(cls, unit: Unit) -> tuple:
        return (tuple(unit.views[0].shape),)

    @classmethod
    def dtype_of(cls, unit: Unit) -> torch.dtype:
        return compute_dtype(unit.views[0])

    @property
    def name(self) -> str:
        return f"{self.kind}[{len(self.views)} x {tuple(self.views[0].shape)}]"

    # -- layout --------------------------------------------------------------------------
    def _buffer_shape(self) -> tuple:
        return (len(self.views),) + tuple(self.views[0].shape)

    def _stack(self, mats: list[torch.Tensor]) -> torch.Tensor:
        if len(mats) == 1:
            return mats[0].unsqueeze(0)
        return torch.stack(mats)

    def _split(self, stacked: torch.Tensor) -> list[torch.Tensor]:
        return list(stacked.unbind(0))

    # -- maths on stacked tensors -----------------------------------------------------------
    def prepare(self) -> None:
        """Bring cached stacks up to date (SVD bases after a refresh)."""

    def _rotate(self, X: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _unrotate(self, Y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    compiled = False

    def compile(self, **kwargs) -> None:
        """Wrap the stacked maths with ``torch.compile`` (optional; default off)."""
        self.compiled = True
        self._rotate = torch.compile(self._rotate, **kwargs)
        self._unrotate = torch.compile(self._unrotate, **kwargs)

    # -- per-view API ------------------------------------------------------------------------
    def rotate(self, mats: list[torch.Tensor], scratch: bool = False) -> list[torch.Tensor]:
        """Standard-basis matrices of :attr:`views` -> rotated (fresh tensors). ``scratch``:
        the shadow buffer may be used as scratch space (the optimizer's gradient path)."""
        self.prepare()
        return self._split(self._rotate(self._stack(mats)))

    def unrotate(self, mats: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
        """Rotated matrices (default: the shadows) -> standard basis (fresh tensors)."""
        self.prepare()
        X = self.buffer if mats is None else self._stack(mats)
        return self._split(self._unrotate(X))


class FlatBucket(Bucket):
    """Views of any shapes concatenated into one vector (identity and global)."""

    def _buffer_shape(self) -> tuple:
        self.sizes = [v.numel for v in self.views]
        self.shapes = [tuple(v.shape) for v in self.views]
        return (sum(self.sizes),)

    def _stack(self, mats):
        return torch.cat([m.reshape(-1) for m in mats])

    def _split(self, flat):
        return [c.view(s) for c, s in zip(flat.split(self.sizes), self.shapes)]


class VectorBucket(Bucket):
    """Same-size views flattened and stacked ``(L, N)`` (layerwise, permutation)."""

    @classmethod
    def key(cls, unit: Unit) -> tuple:
        return (unit.views[0].numel,)

    def _buffer_shape(self):
        return (len(self.views), self.views[0].numel)

    def _stack(self, mats):
        return super()._stack([m.reshape(-1) for m in mats])

    def _split(self, stacked):
        return [s.view(v.shape) for s, v in zip(stacked.unbind(0), self.views)]
