"""Rotation scopes (paper Fig. 4, docs/CONVENTIONS.md §3): which coordinates rotate together.

A :class:`RotationPlan` turns a model's :class:`~rotations.layout.LayerView` list and a
:class:`~rotations.config.RotationConfig` into *units*. A unit owns one or more views and
maps their matrices (``out x in`` each) to rotated tensors of the **same shapes** and back:

| scope        | unit                                  | operation on a view ``G``           |
|--------------|---------------------------------------|-------------------------------------|
| ``none``     | :class:`IdentityUnit`                 | ``G``                               |
| ``global``   | one :class:`GlobalUnit` for all views | ``R vec(all)`` split back per view  |
| ``layerwise``| :class:`LayerUnit` per view           | ``R vec(G)``                        |
| ``outputwise``| :class:`RowUnit` per view            | every row by the same ``Q_in``      |
| ``inputwise``| :class:`ColUnit` per view             | every column by the same ``Q_out``  |
| ``svd``      | :class:`SVDUnit` per view             | ``Uᵀ G V`` (bases refreshed)        |

Rotations longer than ``block_size`` use the block-plus-permutation construction
(:class:`~rotations.sampling.BlockRotation`). 1-D parameters are columns ``(dim, 1)``:
``outputwise`` leaves them unchanged, ``inputwise`` rotates them as one block, ``svd``
uses the SVD of the column (``U`` completes ``g/|g|``; ``V = ±1``).

Since rotated tensors keep each view's shape, any optimizer (element-wise or matrix-wise
such as Muon) can run on them.

Units are the reference, one-layer-at-a-time API (probes and tests use it). The optimizer
runs the same maths through *buckets* (:func:`build_buckets`): units of one scope whose
views have the same shape (the 12 query matrices of a GPT, …) are stacked and rotated with
one batched matmul; the stacked blocks, bases and gather indices are built once per
rotation (and again after each SVD refresh), and each bucket owns one buffer that holds the
shadows of all its views, so unrotating the base optimizer's update needs no gathering of
tensors. Pure PyTorch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .config import RotationConfig
from .layout import LayerView
from .sampling import BlockRotation, BlockStack
from .svd import BasisStack, OrthoBasis, svd_bases


class Unit:
    scope = "none"

    def __init__(self, views: list[LayerView]):
        self.views = views

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


class IdentityUnit(Unit):
    scope = "none"

    def rotate(self, mats):
        return [m.clone() for m in mats]

    def unrotate(self, mats):
        return list(mats)


class _BlockUnit(Unit):
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


class GlobalUnit(_BlockUnit):
    scope = "global"

    def __init__(self, views, cfg: RotationConfig, key: str = "global"):
        super().__init__(views)
        self.sizes = [v.numel for v in views]
        self.R = BlockRotation(sum(self.sizes), cfg.block_size, cfg.seed, key, cfg.permute)
        self.rotations = {key: self.R}

    def rotate(self, mats):
        flat = torch.cat([m.reshape(-1) for m in mats])
        out = self.R.rotate(flat).split(self.sizes)
        return [o.view(v.shape) for o, v in zip(out, self.views)]

    def unrotate(self, mats):
        flat = torch.cat([m.reshape(-1) for m in mats])
        out = self.R.unrotate(flat).split(self.sizes)
        return [o.view(v.shape) for o, v in zip(out, self.views)]


class LayerUnit(_BlockUnit):
    scope = "layerwise"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.R = BlockRotation(view.numel, cfg.block_size, cfg.seed, "layer:" + view.name,
                               cfg.permute)
        self.rotations = {view.name: self.R}

    def rotate(self, mats):
        return [self.R.rotate(mats[0].reshape(-1)).view(self.views[0].shape)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0].reshape(-1)).view(self.views[0].shape)]


class RowUnit(_BlockUnit):
    """outputwise: the weights into one output neuron (a row) rotate together: ``G Q_inᵀ``."""

    scope = "outputwise"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.R = BlockRotation(view.shape[1], cfg.block_size, cfg.seed, "row:" + view.name,
                               cfg.permute)
        self.rotations = {view.name: self.R}

    def rotate(self, mats):
        return [self.R.rotate(mats[0], dim=1)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0], dim=1)]


class ColUnit(_BlockUnit):
    """inputwise: the weights out of one input neuron (a column) rotate together."""

    scope = "inputwise"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.R = BlockRotation(view.shape[0], cfg.block_size, cfg.seed, "col:" + view.name,
                               cfg.permute)
        self.rotations = {view.name: self.R}

    def rotate(self, mats):
        return [self.R.rotate(mats[0], dim=0)]

    def unrotate(self, mats):
        return [self.R.unrotate(mats[0], dim=0)]


class SVDUnit(Unit):
    """``G -> Uᵀ G V`` with full-rank bases from the SVD of the gradient, refreshed every
    ``svd_refresh_every`` steps (Alg. 5)."""

    scope = "svd"

    def __init__(self, view, cfg):
        super().__init__([view])
        self.dense_max = cfg.svd_dense_max
        self.U: Optional[OrthoBasis] = None
        self.V: Optional[OrthoBasis] = None
        self.refreshed_at = 0

    def refresh(self, g: torch.Tensor, step: int) -> None:
        U, V = svd_bases(g, self.dense_max)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for b in (U, V):   # bases identical on every rank: rank 0's are authoritative
                for t in (b.dense, b.a, b.tau, b.signs):
                    if t is not None:
                        dist.broadcast(t, src=0)
        self.U, self.V, self.refreshed_at = U, V, step

    def _check(self):
        if self.U is None:
            raise RuntimeError(f"SVD basis of {self.name!r} used before the first refresh")

    def rotate(self, mats):
        self._check()
        return [self.U.apply_t(self.V.apply_right(mats[0]))]           # Uᵀ G V

    def unrotate(self, mats):
        self._check()
        return [self.U.apply(self.V.apply_right_t(mats[0]))]           # U X Vᵀ

    def transport(self, x: torch.Tensor, old: tuple) -> torch.Tensor:
        """Carry a tensor from the old rotated basis to the current one:
        ``U_newᵀ U_old X V_oldᵀ V_new``."""
        U0, V0 = old
        standard = U0.apply(V0.apply_right_t(x))
        return self.rotate([standard])[0]

    def state(self) -> dict:
        if self.U is None:
            return {"refreshed_at": 0}
        return {"refreshed_at": self.refreshed_at, "U": self.U.state(), "V": self.V.state()}

    def load_state(self, st: dict, device=None) -> None:
        self.refreshed_at = st.get("refreshed_at", 0)
        if "U" in st:
            self.U = OrthoBasis.from_state(st["U"], device)
            self.V = OrthoBasis.from_state(st["V"], device)


class RotationPlan:
    """All units for a model under a config; views in ``none`` scope go to one identity unit."""

    def __init__(self, views: list[LayerView], config: RotationConfig):
        self.config = config
        self.views = views
        by_scope: dict[str, list[LayerView]] = {}
        for v in views:
            by_scope.setdefault(config.scope_for(v.ptype), []).append(v)
        units: list[Unit] = []
        for v in views:
            s = config.scope_for(v.ptype)
            if s == "none":
                continue
            if s == "layerwise":
                units.append(LayerUnit(v, config))
            elif s == "outputwise":
                units.append(IdentityUnit([v]) if v.shape[1] == 1 else RowUnit(v, config))
            elif s == "inputwise":
                units.append(IdentityUnit([v]) if v.shape[0] == 1 else ColUnit(v, config))
            elif s == "svd":
                units.append(SVDUnit(v, config))
        if by_scope.get("global"):
            units.append(GlobalUnit(by_scope["global"], config))
        self.units = units
        self.identity_views = by_scope.get("none", [])

    @property
    def svd_units(self) -> list[SVDUnit]:
        return [u for u in self.units if isinstance(u, SVDUnit)]

    def unit_of(self) -> dict:
        return {v.name: u for u in self.units for v in u.views}

    def state_dict(self) -> dict:
        return {"config": self.config.to_dict(),
                "units": {u.name: u.state() for u in self.units}}

    def load_state_dict(self, sd: dict, device=None) -> None:
        saved = sd.get("config", {})
        mine = self.config.to_dict()
        for key in ("scope", "block_size", "seed", "only", "permute"):
            if key in saved and saved[key] != mine[key]:
                raise ValueError(f"checkpoint was trained with rotation.{key}={saved[key]!r} "
                                 f"but the config says rotation.{key}={mine[key]!r}")
        units = sd.get("units", {})
        names = {u.name for u in self.units}
        if set(units) != names:
            raise ValueError("checkpoint rotation units do not match this model/config "
                             f"({len(units)} saved vs {len(names)} now)")
        for u in self.units:
            u.load_state(units[u.name], device)


# ------------------------------------------------------------------------------------------
# batched execution: buckets of same-shape units
# ------------------------------------------------------------------------------------------
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

    def compile(self, **kwargs) -> None:
        """Wrap the stacked maths with ``torch.compile`` (optional; default off)."""
        self._rotate = torch.compile(self._rotate, **kwargs)
        self._unrotate = torch.compile(self._unrotate, **kwargs)

    # -- per-view API ------------------------------------------------------------------------
    def rotate(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Standard-basis matrices of :attr:`views` -> rotated (fresh tensors)."""
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

    def rotate(self, mats):
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
    kind = "global"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([units[0].R], device=self.device, dtype=dtype)
        self.R.precompute("last", 1)

    def _rotate(self, X):
        return self.R.rotate_last(X.view(1, 1, -1)).view(-1)

    def _unrotate(self, Y):
        return self.R.unrotate_last(Y.view(1, 1, -1)).view(-1)


class LayerBucket(Bucket):
    """layerwise: ``vec(G_l)`` of same-size layers, stacked ``(L, N)``."""

    kind = "layerwise"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([u.R for u in units], device=self.device, dtype=dtype)
        self.R.precompute("last", 1)

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


class RowBucket(Bucket):
    """outputwise: ``G_l (out, in)`` stacked ``(L, out, in)``; every row by ``R_l``."""

    kind = "outputwise"
    axis = "last"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self.R = BlockStack([u.R for u in units], device=self.device, dtype=dtype)
        out, inp = self.views[0].shape
        self.R.precompute(self.axis, out if self.axis == "last" else inp)

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
    """svd: ``U_lᵀ G_l V_l`` with the units' bases stacked (restacked after a refresh)."""

    kind = "svd"

    def __init__(self, units, device, dtype):
        super().__init__(units, device, dtype)
        self._bases: Optional[list] = None
        self.U: Optional[BasisStack] = None
        self.V: Optional[BasisStack] = None

    def prepare(self) -> None:
        cur = [(u.U, u.V) for u in self.units]
        if self._bases is not None and all(a is c and b is d for (a, b), (c, d)
                                           in zip(cur, self._bases)):
            return
        for u in self.units:
            u._check()
        self.U = BasisStack([u.U for u in self.units], device=self.device, dtype=self.dtype)
        self.V = BasisStack([u.V for u in self.units], device=self.device, dtype=self.dtype)
        self._bases = cur

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
