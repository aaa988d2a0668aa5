"""The optimizer's fast path (docs/CONVENTIONS.md §3, docs/ROTATIONS.md): *buckets* of views
of one scope and shape, rotated together by the stacks of :mod:`rotations.stacks`; each
bucket owns one buffer holding its views' shadows. Tested against the reference units of
:mod:`rotations.scopes` (tests/test_rotation_batching.py). Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch

from .layout import LayerView
from .scopes import ColUnit, GlobalUnit, IdentityUnit, LayerUnit, RowUnit, SVDUnit, Unit
from .stacks import BasisStack, BlockStack

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
    """

    kind = "none"

    def __init__(self, units: list[Unit], device, dtype: torch.dtype):
        self.units = units
        self.views = [v for u in units for v in u.views]
        self.device, self.dtype = torch.device(device), dtype
        self.buffer = torch.zeros(self._buffer_shape(), device=self.device, dtype=dtype)
        self.shadows = self._split(self.buffer)

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


class _FlatBucket(Bucket):
    """Views of any shapes concatenated into one vector (identity and global)."""

    def _buffer_shape(self) -> tuple:
        self.sizes = [v.numel for v in self.views]
        self.shapes = [tuple(v.shape) for v in self.views]
        return (sum(self.sizes),)

    def _stack(self, mats):
        return torch.cat([m.reshape(-1) for m in mats])

    def _split(self, flat):
        return [c.view(s) for c, s in zip(flat.split(self.sizes), self.shapes)]


class IdentityBucket(_FlatBucket):
    kind = "none"

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


class GlobalBucket(_FlatBucket):
    """global: all views as one vector, rotated by one ``R = B P``; the update is unrotated
    in place in the shadow buffer (no second vector of the model's size)."""

    kind = "global"

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


class LayerBucket(Bucket):
    """layerwise: ``vec(G_l)`` of same-size layers, stacked ``(L, N)``; unrotated in place."""

    kind = "layerwise"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([u.R for u in units], device=self.device, dtype=dtype)
        self.R.precompute("last", 1)
        for u in units:
            u.R.release()

    def _buffer_shape(self):
        return (len(self.views), self.views[0].numel)

    def _stack(self, mats):
        return super()._stack([m.reshape(-1) for m in mats])

    def _split(self, stacked):
        return [s.view(v.shape) for s, v in zip(stacked.unbind(0), self.views)]

    def _rotate(self, X):
        return self.R.rotate_last(X.unsqueeze(1)).squeeze(1)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y.unsqueeze(1)).squeeze(1)

    def unrotate(self, mats=None):
        if mats is not None or self.compiled or not self.R.permuted:
            return super().unrotate(mats)
        self.R.unrotate_last(self.buffer.unsqueeze(1), out=self.buffer)
        return list(self.shadows)


class RowBucket(Bucket):
    """outputwise: ``G_l (out, in)`` stacked ``(L, out, in)``; every row by ``R_l``."""

    kind = "outputwise"
    axis = "last"

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


class SVDBucket(Bucket):
    """svd: ``U_lᵀ G_l V_l``. The bucket's stacks are the only copy of the bases: a unit's
    fresh bases are moved in by :meth:`adopt` (one layer at a time, right after its refresh)."""

    kind = "svd"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.U: Optional[BasisStack] = None
        self.V: Optional[BasisStack] = None
        self._held = [None] * len(units)

    def adopt(self, unit: SVDUnit) -> None:
        l = next(i for i, u in enumerate(self.units) if u is unit)
        self._adopt_bases(l, unit.U, unit.V)
        self._held[l] = (unit.U, unit.V)

    def _adopt_bases(self, l: int, U, V) -> None:
        if self.U is None:
            self.U = BasisStack.slots(len(self.units), U, self.device, self.dtype)
            self.V = BasisStack.slots(len(self.units), V, self.device, self.dtype)
        self.U.adopt(l, U)
        self.V.adopt(l, V)

    def prepare(self) -> None:
        """Adopt every unit's current bases; a unit with none yet (its view has had no
        gradient) rotates by the identity until its first refresh."""
        for l, u in enumerate(self.units):
            held = self._held[l]
            if held is not None and held[0] is u.U and held[1] is u.V:
                continue
            if u.U is None:
                self._adopt_bases(l, *u.identity_bases(self.dtype, self.device))
                self._held[l] = (None, None)
            else:
                self.adopt(u)

    def _rotate(self, X):
        return self.U.apply_t(self.V.apply_right(X))

    def _unrotate(self, Y):
        return self.U.apply(self.V.apply_right_t(Y))


def build_buckets(units: list[Unit], device=None) -> list[Bucket]:
    """Group units into buckets: one per scope, compute dtype, device and view shape (and
    rotation structure); identity views of one dtype/device share one bucket."""
    keyed: dict[tuple, list] = {}
    for u in units:
        v0 = u.views[0]
        dev = torch.device(device) if device is not None else v0.param.device
        if isinstance(u, IdentityUnit):
            for v in u.views:
                keyed.setdefault(("none", compute_dtype(v), str(dev)), []).append(
                    IdentityUnit([v]))
            continue
        dt = compute_dtype(v0)
        if isinstance(u, GlobalUnit):
            dt = v0.param.dtype
            for v in u.views:
                dt = torch.promote_types(dt, compute_dtype(v))
            if any(compute_dtype(v) != dt for v in u.views):
                raise ValueError("global rotation over parameters of different dtypes is not "
                                 "supported (the shadows share one buffer)")
            key = ("global", id(u))
        elif isinstance(u, LayerUnit):
            key = ("layerwise", u.R.signature)
        elif isinstance(u, ColUnit):            # (ColUnit before RowUnit: no subclassing,
            key = ("inputwise", tuple(v0.shape), u.R.signature)   # but keep it explicit)
        elif isinstance(u, RowUnit):
            key = ("outputwise", tuple(v0.shape), u.R.signature)
        elif isinstance(u, SVDUnit):
            key = ("svd", tuple(v0.shape))
        else:
            raise TypeError(f"no bucket for unit type {type(u).__name__}")
        keyed.setdefault(key + (dt, str(dev)), []).append(u)
    cls = {"none": IdentityBucket, "global": GlobalBucket, "layerwise": LayerBucket,
           "outputwise": RowBucket, "inputwise": ColBucket, "svd": SVDBucket}
    buckets = []
    for key, us in keyed.items():
        dt, dev = key[-2], key[-1]
        buckets.append(cls[key[0]](us, dev, dt))
    return buckets
