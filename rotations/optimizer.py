"""The rotated optimizer step (docs/CONVENTIONS.md §1; paper Alg. 4/5).

:class:`RotatedOptimizer` wraps any ``torch.optim.Optimizer`` and runs it in a rotated basis:
rotate the gradients (fp32 or better), let the base optimizer step *shadow* tensors whose
values are zero (so a shadow ends up holding the rotated update), unrotate the update and add
it to the parameters. How weight decay composes with the rotation, which parameters skip a
step, and the SVD refresh are in docs/CONVENTIONS.md §1, §4 and §5; memory and speed of the
batched path (the buckets of :mod:`rotations.scopes`) in docs/ROTATIONS.md.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional

import torch

from .config import RotationConfig
from .layout import LayerView, check_layout
from .scopes import Bucket, IdentityUnit, RotationPlan, SVDBucket, build_buckets
from .zoo import weight_decay_mode

#: state entries that are linear in the gradients (transported on an SVD refresh)
LINEAR_STATE_KEYS = ("exp_avg", "momentum_buffer")


@contextlib.contextmanager
def fp32_matmul():
    """Force full-precision float32 matmuls (no TF32) inside the block."""
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


class RotatedOptimizer(torch.optim.Optimizer):
    """Run ``base_factory``'s optimizer in the basis given by ``config`` over ``views``.

    Args:
        params: parameters or parameter groups (dicts) of the *model*, as for any optimizer.
        base_factory: ``callable(param_groups) -> torch.optim.Optimizer`` (e.g.
            ``functools.partial(torch.optim.AdamW, lr=6e-4)``, or LightningCLI's optimizer
            callable).
        views: the model's layout (:func:`rotations.layout.model_layout`).
        config: the rotation (:class:`RotationConfig`, or a dict).
        split_views: give every view its own shadow even when unrotated (needed by Muon so
            that fused Q/K/V are three matrices).
        view_group_options: ``callable(view) -> dict`` of extra base-optimizer group options
            per view (e.g. ``{"use_muon": True}``); views with different options go to
            different base groups.
        compile: wrap every bucket's rotate/unrotate maths with ``torch.compile`` (default
            off; ``True`` or a dict of ``torch.compile`` keyword arguments).
    """

    def __init__(self, params: Iterable, base_factory: Callable[..., torch.optim.Optimizer],
                 views: list[LayerView], config: RotationConfig | dict | None = None,
                 split_views: bool = False,
                 view_group_options: Optional[Callable[[LayerView], dict]] = None,
                 compile: bool | dict = False):
        self.config = RotationConfig.coerce(config)
        groups = list(params)
        if not groups:
            raise ValueError("RotatedOptimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        groups = [dict(g, params=list(g["params"])) for g in groups]
        all_params = [p for g in groups for p in g["params"]]
        check_layout(all_params, views)
        pid = {id(p) for p in all_params}
        views = [v for v in views if id(v.param) in pid]
        self.plan = RotationPlan(views, self.config)
        rotated_view = {v.name for u in self.plan.units for v in u.views}
        opts = view_group_options or (lambda v: {})

        # extra base-group options per parameter (all views of a parameter must agree)
        param_opts: dict[int, tuple] = {}
        for v in views:
            o = tuple(sorted(opts(v).items()))
            if param_opts.setdefault(id(v.param), o) != o:
                raise ValueError(f"view_group_options disagree across the views of "
                                 f"{v.param_name or v.name!r}")
        # split user groups by those options: every outer group maps to at most two base
        # groups (direct params, shadows) with the same hyperparameters
        split_groups = []
        for g in groups:
            buckets: dict[tuple, list] = {}
            for p in g["params"]:
                buckets.setdefault(param_opts.get(id(p), ()), []).append(p)
            for o, ps in buckets.items():
                split_groups.append(dict(g, **dict(o), params=ps))
        groups = split_groups

        # which params need shadows: any view rotated (or every view, if split_views)
        views_of: dict[int, list[LayerView]] = {}
        for v in views:
            views_of.setdefault(id(v.param), []).append(v)
        shadowed = {i for i, vs in views_of.items()
                    if split_views or any(v.name in rotated_view for v in vs)}
        # unrotated views of shadowed params get identity units
        extra = [v for v in views if id(v.param) in shadowed and v.name not in rotated_view]
        if extra:
            self.plan.units.append(IdentityUnit(extra))
        self.plan.identity_views = [v for v in self.plan.identity_views
                                    if id(v.param) not in shadowed]

        # buckets of same-shape units; shadows (fp32 or better), one per shadowed view, are
        # views of their bucket's buffer
        self._buckets: list[Bucket] = build_buckets(self.plan.units)
        #: the fast path's buckets (read-only for observers: memory, benchmarks)
        self.buckets: tuple[Bucket, ...] = tuple(self._buckets)
        if compile:
            kw = dict(compile) if isinstance(compile, dict) else {}
            # every bucket is one more specialisation of the same few functions: make
            # room for all of them (torch._dynamo's default limit is 8 per function)
            import torch._dynamo
            need = 4 * len(self._buckets) + 8
            cfg = torch._dynamo.config
            name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
            if getattr(cfg, name, need) < need:
                setattr(cfg, name, need)
            for b in self._buckets:
                b.compile(**kw)
        self._shadow: dict[str, torch.Tensor] = {}
        self._bucket_of_unit: dict[int, Bucket] = {}
        for b in self._buckets:
            for v, s in zip(b.views, b.shadows):
                self._shadow[v.name] = s
            for u in b.units:
                self._bucket_of_unit[id(u)] = b
        self._no_grad: set = set()

        # base optimizer groups; weight decay of shadow groups is applied by us (standard
        # basis), so the base optimizer sees weight_decay = 0 there
        inner_groups, self._parent, self._is_shadow_group = [], [], []
        self._group_of_param: dict[int, int] = {}
        for gi, g in enumerate(groups):
            hp = {k: v for k, v in g.items() if k != "params"}
            for p in g["params"]:
                self._group_of_param[id(p)] = gi
            direct = [p for p in g["params"] if id(p) not in shadowed]
            shadows = [self._shadow[v.name] for p in g["params"] if id(p) in shadowed
                       for v in views_of[id(p)]]
            if direct:
                inner_groups.append(dict(hp, params=direct))
                self._parent.append(gi)
                self._is_shadow_group.append(False)
            if shadows:
                sg = dict(hp, params=shadows)
                if "weight_decay" in sg:      # "in_rule" decay: restored by _sync_hparams
                    sg["weight_decay"] = 0.0
                inner_groups.append(sg)
                self._parent.append(gi)
                self._is_shadow_group.append(True)
        self.base = base_factory(inner_groups)
        self._wd_mode = weight_decay_mode(self.base)
        self._decoupled = self._wd_mode == "decoupled"
        self._shadowed_params = [p for g in groups for p in g["params"] if id(p) in shadowed]

        # outer groups: real params, hyperparameters mirrored from the base optimizer
        # (the weight decay of shadow groups comes from the base's defaults/the user group)
        outer = []
        for gi, g in enumerate(groups):
            merged = dict(g)
            js = [j for j, par in enumerate(self._parent) if par == gi]
            for j in js:
                for k, val in self.base.param_groups[j].items():
                    if k == "params" or k in merged:
                        continue
                    if k == "weight_decay" and self._is_shadow_group[j]:
                        continue
                    merged[k] = val
            if "weight_decay" not in merged:
                merged["weight_decay"] = self._default_weight_decay(merged)
            outer.append(merged)
        super().__init__(outer, dict(self.base.defaults))
        self._view_by_name = {v.name: v for v in self.plan.views}
        self.rotation_step = 0
        #: the step of the last SVD refresh (``None``: never, or no ``svd`` scope)
        self.last_svd_refresh: Optional[int] = None

    # -- helpers ---------------------------------------------------------------------------
    def _default_weight_decay(self, group: dict) -> float:
        """The weight decay the base optimizer would have used for this group."""
        d = self.base.defaults
        if group.get("use_muon") is False and "adamw_weight_decay" in d:
            return d["adamw_weight_decay"]
        return d.get("weight_decay", 0.0)

    @property
    def shadows(self) -> dict[str, torch.Tensor]:
        """Shadow tensor per rotated view name (the base optimizer's state is keyed by them)."""
        return self._shadow

    def _base_tensor(self, view_name: str) -> torch.Tensor:
        """The tensor the base optimizer steps for a view: its shadow (rotated coordinates)
        or, for a view of a directly handled parameter, the parameter itself."""
        s = self._shadow.get(view_name)
        if s is not None:
            return s
        v = self._view_by_name.get(view_name)
        if v is None:
            raise KeyError(f"no view named {view_name!r} in this optimizer's plan")
        return v.param

    def base_state(self, view_name: str) -> dict:
        """The base optimizer's state for a view (``{}`` before its first step): keyed by the
        view's shadow (rotated coordinates, view-shaped) when ``view_name in shadows``, else
        by the whole parameter the view is cut from (standard coordinates)."""
        return self.base.state.get(self._base_tensor(view_name), {})

    def base_group(self, view_name: str) -> dict:
        """The base optimizer's param group holding a view (see :meth:`base_state`)."""
        t = self._base_tensor(view_name)
        for g in self.base.param_groups:
            if any(p is t for p in g["params"]):
                return g
        raise KeyError(f"view {view_name!r} is in no base param group")

    def _sync_hparams(self) -> None:
        for j, ig in enumerate(self.base.param_groups):
            og = self.param_groups[self._parent[j]]
            for k, val in og.items():
                if k == "params" or k not in ig:
                    continue
                if k == "weight_decay" and self._is_shadow_group[j] and \
                        self._wd_mode != "in_rule":
                    continue
                ig[k] = val

    def _grad_matrix(self, view: LayerView, grads: dict) -> torch.Tensor:
        g = grads.get(id(view.param))
        return view.matrix(g)

    # -- the step ----------------------------------------------------------------------------
    def _effective_grads(self) -> dict:
        """Gradients of shadowed params in compute precision, with coupled weight decay
        added. A param without ``.grad`` gets zeros and goes into ``self._no_grad``: it is
        not updated, as in ``torch.optim`` (docs/CONVENTIONS.md §1)."""
        grads: dict[int, torch.Tensor] = {}
        self._no_grad = set()
        for p in self._shadowed_params:
            dt = torch.promote_types(p.dtype, torch.float32)
            if p.grad is None:
                self._no_grad.add(id(p))
                grads[id(p)] = torch.zeros_like(p, dtype=dt)
                continue
            g = p.grad.to(dt)
            wd = self.param_groups[self._group_of_param[id(p)]].get("weight_decay", 0.0)
            if wd and self._wd_mode == "coupled":
                g = g.add(p.detach().to(dt), alpha=wd)
            grads[id(p)] = g
        return grads

    def _refresh_svd(self, grads: dict) -> set:
        """Refresh the due SVD bases from this step's gradients, one layer at a time (each
        new basis goes straight into its bucket's stack); returns the refreshed units."""
        step = self.rotation_step
        done = set()
        for u in self.plan.svd_units:
            due = u.U is None or self.config.svd_refresh_due(step)
            if not due or id(u.views[0].param) in self._no_grad:
                continue                  # the first basis waits for the first real gradient
            st, carried = self.base.state.get(self._shadow[u.views[0].name], {}), {}
            if u.U is not None and self.config.svd_moments == "reproject":
                for k in LINEAR_STATE_KEYS:      # to standard coordinates with the old basis
                    if isinstance(st.get(k), torch.Tensor):
                        carried[k] = u.unrotate([st[k]])[0]
            u.refresh(self._grad_matrix(u.views[0], grads), step)
            self._bucket_of_unit[id(u)].adopt(u)
            for k, x in carried.items():
                st[k].copy_(u.rotate([x])[0])
            done.add(u)
            self.last_svd_refresh = step
        return done

    def _rotated_grads(self, b: Bucket, grads: dict, refreshed: set) -> list:
        """The bucket's gradients in rotated coordinates. On a step whose gradient defined
        the SVD bases, ``Uᵀ G V = diag(S)`` by construction and is used as such (rounding off
        the diagonal would become ±1 Adam updates; docs/CONVENTIONS.md §4)."""
        if isinstance(b, SVDBucket) and refreshed and all(u in refreshed for u in b.units):
            return [u.refresh_gradient() for u in b.units]
        return b.rotate([self._grad_matrix(v, grads) for v in b.views], scratch=True)

    def _decay(self) -> None:
        """Decoupled weight decay ``w ← w − lr·wd·w`` of the shadowed params."""
        ps, fs = [], []
        for p in self._shadowed_params:
            g = self.param_groups[self._group_of_param[id(p)]]
            wd = g.get("weight_decay", 0.0)
            if wd and id(p) not in self._no_grad:
                ps.append(p)
                fs.append(1.0 - g["lr"] * wd)
        if not ps:
            return
        if all(isinstance(f, (int, float)) for f in fs):
            torch._foreach_mul_(ps, fs)
        else:                                   # tensor learning rates
            for p, f in zip(ps, fs):
                p.mul_(f)

    def _add_deltas(self, views: list[LayerView], deltas: list[torch.Tensor]) -> None:
        """``w[view] += delta`` for every view of a param that has a gradient (one foreach
        call when dtypes agree)."""
        if self._no_grad:
            keep = [i for i, v in enumerate(views) if id(v.param) not in self._no_grad]
            views, deltas = [views[i] for i in keep], [deltas[i] for i in keep]
        if not views:
            return
        targets = [v.matrix(v.param.data) for v in views]
        if all(t.dtype == d.dtype for t, d in zip(targets, deltas)):
            torch._foreach_add_(targets, deltas)
        else:
            for t, d in zip(targets, deltas):
                t.add_(d.to(t.dtype))

    def _in_rule_decay(self) -> bool:
        """Whether the base optimizer must step the rotated weights (weight decay inside its
        rule, docs/CONVENTIONS.md §5)."""
        return self._wd_mode == "in_rule" and any(
            g.get("weight_decay", 0.0)
            for g, sh in zip(self.base.param_groups, self._is_shadow_group) if sh)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_hparams()
        self.rotation_step += 1
        grads = self._effective_grads()
        in_rule = self._in_rule_decay()
        before = {}

        with fp32_matmul():
            refreshed = self._refresh_svd(grads)
            for b in self._buckets:
                rotated = self._rotated_grads(b, grads, refreshed)
                if in_rule:
                    w = b.rotate([v.matrix(v.param.detach()).to(b.dtype) for v in b.views])
                    for s, x in zip(b.shadows, w):
                        s.copy_(x)
                    before[b] = b.buffer.clone()
                else:
                    b.buffer.zero_()
                mixed = b.mixes_views          # every global slot mixes all params
                for v, s, r in zip(b.views, b.shadows, rotated):
                    if id(v.param) in self._no_grad and not mixed:
                        s.grad = None
                    else:
                        s.grad = r if r.dtype == s.dtype else r.to(s.dtype)
                del rotated

        self.base.step()

        with fp32_matmul():
            if self._decoupled:
                self._decay()
            for b in self._buckets:
                if in_rule:
                    b.buffer.sub_(before.pop(b))
                self._add_deltas(b.views, b.unrotate())
        for b in self._buckets:
            for s in b.shadows:
                s.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        self.base.zero_grad(set_to_none)

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["base"] = self.base.state_dict()
        sd["rotation"] = dict(self.plan.state_dict(), step=self.rotation_step)
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        sd = dict(state_dict)
        if "base" not in sd or "rotation" not in sd:
            raise ValueError("optimizer state has no rotation state: the checkpoint was not "
                             "trained with a rotated optimizer (or with a different config)")
        base, rot = sd.pop("base"), sd.pop("rotation")
        device = next(iter(self._shadow.values())).device if self._shadow else None
        self.plan.load_state_dict(rot, device)
        super().load_state_dict(sd)
        self.base.load_state_dict(base)
        self.rotation_step = int(rot.get("step", 0))
        done = [u.refreshed_at for u in self.plan.svd_units if u.U is not None]
        self.last_svd_refresh = max(done) if done else None

