"""Optimizer zoo: the base optimizers the rotation engine can wrap (docs/CONVENTIONS.md §5).

Every class here is a plain :class:`torch.optim.Optimizer` (state in ``self.state[p]``,
hyperparameters in ``param_groups``, ``state_dict()`` round-trips, ``step(closure=None)``),
and its update depends only on the gradient and the optimizer state, never on the parameter
values, except through weight decay. Each class carries a class attribute
``decoupled_weight_decay`` that the engine reads through :func:`is_decoupled`:

* decoupled (AdamW style): ``p <- p - lr * wd * p``, applied before the update;
* coupled (L2): ``g <- g + wd * p`` is added to the gradient inside ``step``.

Where PyTorch has the optimizer we use it (``torch.optim.AdamW``, ``SGD``, ``RMSprop``,
``Muon``); this module only adds what it lacks:

=====================  ==========================================================  =========
class                  update                                                      wd
=====================  ==========================================================  =========
:class:`SignSGD`       ``p <- p - lr * sign(g)``                                   decoupled
:class:`Signum`        ``m <- b*m + (1-b)*g``; ``p <- p - lr * sign(m)``           decoupled
:class:`AdamOneBeta`   ``torch.optim.AdamW`` with ``betas=(beta, beta)``          decoupled
:class:`ClippedSGD`    ``torch.optim.SGD`` on a clipped gradient (global/coord.)   coupled
:class:`MuonAdamW`     ``torch.optim.Muon`` on flagged 2-D groups, AdamW on rest   decoupled
=====================  ==========================================================  =========

:func:`adam_moment_stats` reads Adam's state with ``beta1 = beta2`` as an online estimate of
the gradient mean and variance (Orvieto & Gower 2025): ``sigma2 = v_hat - m_hat**2`` and the
update direction ``m_hat / sqrt(v_hat) = m_hat / sqrt(m_hat**2 + sigma2)``.

Pure PyTorch: no Lightning import.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = [
    "SignSGD",
    "Signum",
    "AdamOneBeta",
    "ClippedSGD",
    "MuonAdamW",
    "Float32Muon",
    "newton_schulz_fp32",
    "is_decoupled",
    "weight_decay_mode",
    "WEIGHT_DECAY_MODES",
    "DECOUPLED_WEIGHT_DECAY",
    "adam_moment_stats",
]


def _check_nonneg(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0.0):
        raise ValueError(f"{name} must be a float >= 0, got {value!r}")


def _raw_step(cls: type) -> Callable:
    """``cls.step`` without torch's profiling/hook wrapper.

    ``Optimizer._patch_step_function`` wraps ``step`` so that step hooks run; a subclass
    (or composite) that calls another class's ``step`` itself must call the unwrapped
    function, or the instance's hooks would run twice.
    """
    fn = cls.step
    while getattr(fn, "hooked", False) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _grad_of(p: Tensor) -> Tensor:
    g = p.grad
    if g.is_sparse:
        raise RuntimeError("sparse gradients are not supported")
    if torch.is_complex(p):
        raise RuntimeError("complex parameters are not supported")
    return g


# ---------------------------------------------------------------------------------------
# signSGD / Signum
# ---------------------------------------------------------------------------------------
class SignSGD(Optimizer):
    r"""signSGD (Bernstein et al. 2018) with decoupled weight decay.

    ``p <- p * (1 - lr * weight_decay) - lr * sign(g)``, with ``sign(0) = 0``
    (``torch.sign``). No optimizer state.
    """

    decoupled_weight_decay = True

    def __init__(self, params, lr: float, weight_decay: float = 0.0) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("weight_decay", weight_decay)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _grad_of(p)
                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                p.add_(torch.sign(g), alpha=-lr)
        return loss


class Signum(Optimizer):
    r"""Signum: sign of an exponential moving average of the gradient.

    Convention (Bernstein et al. 2018, Alg. 3; Orvieto & Gower 2025), zero-initialised
    buffer, state key ``"momentum_buffer"``::

        m <- momentum * m + (1 - momentum) * g
        d <- (1 - momentum) * g + momentum * m     if nesterov   (as torch.optim.Muon)
             m                                   otherwise
        p <- p * (1 - lr * weight_decay) - lr * sign(d)

    The ``(1 - momentum)`` factor only rescales the buffer, so ``sign(d)`` is the same as
    with an SGD-style buffer ``b <- momentum * b + g`` (``torch.optim.SGD``, dampening 0,
    nesterov ``g + momentum * b``); the choice matters only for reading the stored buffer.
    With ``momentum = 0`` this is :class:`SignSGD`. ``sign(0) = 0``.
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("weight_decay", weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum <= 0.0:
            raise ValueError("nesterov momentum requires momentum > 0")
        super().__init__(
            params,
            {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov},
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta, nesterov = group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _grad_of(p)
                if beta != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    if buf is None:
                        buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                        state["momentum_buffer"] = buf
                    buf.mul_(beta).add_(g, alpha=1.0 - beta)
                    d = torch.add(g * (1.0 - beta), buf, alpha=beta) if nesterov else buf
                else:
                    d = g
                if wd != 0:
                    p.mul_(1.0 - lr * wd)
                p.add_(torch.sign(d), alpha=-lr)
        return loss


# ---------------------------------------------------------------------------------------
# Adam with one beta
# ---------------------------------------------------------------------------------------
class AdamOneBeta(torch.optim.AdamW):
    r"""``torch.optim.AdamW`` with ``beta1 = beta2 = beta`` (Orvieto & Gower 2025).

    Their best 160M setting is ``beta = 0.95``. The groups store ``betas = (beta, beta)``
    (so the state dict is an AdamW one); a param group may give ``"beta"`` instead of
    ``"betas"``. Extra keyword arguments (``foreach``, ``fused``, ...) go to AdamW.
    """

    decoupled_weight_decay = True

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        beta: float = 0.95,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if "betas" in kwargs:
            raise TypeError("AdamOneBeta takes `beta`, not `betas`")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        super().__init__(
            params, lr=lr, betas=(beta, beta), eps=eps, weight_decay=weight_decay, **kwargs
        )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "beta" in param_group:
            if "betas" in param_group:
                raise ValueError("param group gives both `beta` and `betas`")
            param_group = dict(param_group)
            b = param_group.pop("beta")
            param_group["betas"] = (b, b)
        super().add_param_group(param_group)


# ---------------------------------------------------------------------------------------
# SGD on a clipped gradient
# ---------------------------------------------------------------------------------------
_CLIP_MODES = ("global", "coordinate")


class ClippedSGD(torch.optim.SGD):
    r"""``torch.optim.SGD`` (heavy ball, optional Nesterov) on a clipped gradient.

    * ``mode="global"``: the gradient of *all* parameters of the optimizer (every group
      whose mode is ``"global"``), seen as one vector, is scaled by
      ``min(1, clip / ||g||_2)`` (no epsilon; ``||g|| = 0`` leaves it unchanged). The norm
      is accumulated in (at least) fp32. If global groups have different ``clip`` values, each group
      uses its own ``clip`` against the common norm.
    * ``mode="coordinate"``: every entry is clamped to ``[-clip, clip]``.

    The clipped gradient is handed to ``torch.optim.SGD.step`` unchanged, so the update is
    exactly SGD's (``dampening = 0``, SGD's momentum buffer ``b <- momentum * b + g``).
    ``p.grad`` is restored afterwards (clipping does not modify the caller's gradient).

    Weight decay is **coupled** (L2, as in ``torch.optim.SGD``) and is added *after*
    clipping: ``g_sgd = clip(g) + weight_decay * p`` — i.e. this equals
    ``clip_grad_norm_`` followed by ``torch.optim.SGD``. Since the decay term enters after a
    non-linear step, it cannot be added to the gradient before rotating:
    ``weight_decay_mode = "in_rule"`` tells the rotation engine to hand the optimizer the
    rotated weights (docs/CONVENTIONS.md §5).
    """

    decoupled_weight_decay = False
    weight_decay_mode = "in_rule"

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        *,
        clip: float,
        mode: str = "global",
        weight_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        _check_nonneg("lr", lr)
        if not (isinstance(clip, (int, float)) and clip > 0):
            raise ValueError(f"clip must be a float > 0, got {clip!r}")
        if mode not in _CLIP_MODES:
            raise ValueError(f"mode must be one of {_CLIP_MODES}, got {mode!r}")
        if kwargs.get("dampening", 0) != 0:
            raise ValueError("ClippedSGD uses dampening = 0")
        self._clip_defaults = {"clip": float(clip), "mode": mode}
        super().__init__(
            params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
            **kwargs,
        )
        self.defaults.update(self._clip_defaults)  # pickled with the optimizer

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        src = self.defaults if "clip" in self.defaults else self._clip_defaults
        for k in ("clip", "mode"):
            param_group.setdefault(k, src[k])
        if param_group["mode"] not in _CLIP_MODES:
            raise ValueError(f"mode must be one of {_CLIP_MODES}, got {param_group['mode']!r}")
        if not param_group["clip"] > 0:
            raise ValueError(f"clip must be > 0, got {param_group['clip']!r}")
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        src = self.defaults if "clip" in self.defaults else getattr(self, "_clip_defaults", {})
        for group in self.param_groups:
            for k, v in src.items():
                if k in ("clip", "mode"):
                    group.setdefault(k, v)

    @torch.no_grad()
    def clipped_grads(self) -> dict[Tensor, Tensor]:
        """The clipped gradient of every parameter that has one (new tensors)."""
        out: dict[Tensor, Tensor] = {}
        global_params = [
            p for g in self.param_groups if g["mode"] == "global"
            for p in g["params"] if p.grad is not None
        ]
        norm = None
        if global_params:
            dev = global_params[0].grad.device
            norms = [
                torch.linalg.vector_norm(
                    _grad_of(p), dtype=torch.promote_types(p.grad.dtype, torch.float32)
                ).to(device=dev, dtype=torch.float64)
                for p in global_params
            ]
            norm = torch.linalg.vector_norm(torch.stack(norms))
        for group in self.param_groups:
            clip = group["clip"]
            if group["mode"] == "global":
                scale = None if norm is None else torch.clamp(clip / norm, max=1.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _grad_of(p)
                if group["mode"] == "coordinate":
                    out[p] = g.clamp(-clip, clip)
                else:
                    out[p] = g * scale.to(device=g.device, dtype=g.dtype)
        return out

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        clipped = self.clipped_grads()
        originals = {p: p.grad for p in clipped}
        try:
            for p, g in clipped.items():
                p.grad = g
            _raw_step(torch.optim.SGD)(self)
        finally:
            for p, g in originals.items():
                p.grad = g
        return loss


# ---------------------------------------------------------------------------------------
# Muon + AdamW
# ---------------------------------------------------------------------------------------
_ADAMW_ALIASES = ("adamw_lr", "adamw_betas", "adamw_eps", "adamw_weight_decay")


def newton_schulz_fp32(g: Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> Tensor:
    """The quintic Newton–Schulz orthogonalisation of ``torch.optim.Muon`` (same coefficients,
    normalisation and transposition rule), computed in float32 instead of bfloat16."""
    a, b, c = ns_coefficients
    x = g.float()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Float32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with its Newton–Schulz iteration in float32 (see
    :func:`newton_schulz_fp32`); everything else — momentum buffer (state key
    ``momentum_buffer``), Nesterov, lr adjustment, decoupled weight decay — is Muon's."""

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        from torch.optim._muon import _adjust_lr  # the library's own adjustment rule

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - mom)
                update = g.lerp(buf, mom) if group["nesterov"] else buf
                update = newton_schulz_fp32(update, group["ns_coefficients"],
                                            group["ns_steps"], group["eps"])
                p.mul_(1 - lr * wd)
                p.add_(update.to(p.dtype),
                       alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


#: ``MuonAdamW(ns_dtype=...)`` -> the Muon class used for the hidden matrices
NS_DTYPES: dict[str, type] = {"bfloat16": torch.optim.Muon, "float32": Float32Muon}


class MuonAdamW(Optimizer):
    r"""``torch.optim.Muon`` on groups flagged ``use_muon=True``, ``torch.optim.AdamW`` on the rest.

    NeurIPS Alg. 6: Muon for hidden 2-D matrices; AdamW for embeddings, the LM head and
    1-D parameters. The caller decides by setting ``use_muon`` per param group; a group
    without the flag is split by ``p.ndim == 2`` (2-D -> Muon, else AdamW; the Muon part
    comes first), so ``MuonAdamW(model.parameters())`` sends the embedding and LM head to
    Muon — flag them explicitly for Alg. 6.

    **One** ``param_groups`` list: its dicts *are* the inner optimizers' group dicts (the
    same objects), so an LR scheduler that edits ``group["lr"]`` (and stores
    ``group["initial_lr"]``) edits the inner optimizer directly — no syncing. Inside a
    group, keys have the inner optimizer's own names: ``lr``, ``weight_decay`` (and
    ``momentum``, ``nesterov``, ``ns_steps``, ``ns_coefficients``, ``eps``,
    ``adjust_lr_fn`` for Muon; ``betas``, ``eps`` for AdamW). The constructor's ``adamw_*``
    arguments are the defaults of AdamW groups (so an AdamW group's ``group["lr"]`` starts
    at ``adamw_lr``); they are not valid group keys.

    Both parts use decoupled weight decay ``p <- p - group["lr"] * group["weight_decay"] * p``
    (Muon uses the unadjusted lr for it).

    ``ns_dtype``: ``"bfloat16"`` (default) runs ``torch.optim.Muon`` itself, whose
    Newton–Schulz iteration is in bfloat16 — fast on GPUs, but ~50× slower than fp32 on
    CPUs without bf16 matrix units. ``"float32"`` runs the identical algorithm (same state
    key ``momentum_buffer``, same lr adjustment and weight decay) with the iteration in
    float32 (:class:`Float32Muon`), for CPU runs.

    ``state`` is shared with the inner optimizers;
    ``state_dict()`` is the standard one over the combined groups, and
    ``load_state_dict`` re-links the loaded groups into the inner optimizers.
    """

    decoupled_weight_decay = True
    #: the rotation engine gives every LayerView its own tensor (fused Q/K/V -> 3 matrices)
    requires_split_views = True

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adamw_lr: float = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
        adjust_lr_fn: Optional[str] = None,
        ns_coefficients: Optional[tuple[float, float, float]] = None,
        muon_eps: Optional[float] = None,
        ns_dtype: str = "bfloat16",
    ) -> None:
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"MuonAdamW ns_dtype={ns_dtype!r} is not supported; allowed: "
                             f"{', '.join(NS_DTYPES)}")
        self._muon_cls = NS_DTYPES[ns_dtype]
        muon_defaults: dict[str, Any] = {
            "lr": lr, "momentum": momentum, "nesterov": nesterov, "ns_steps": ns_steps,
            "weight_decay": weight_decay, "adjust_lr_fn": adjust_lr_fn,
        }
        if ns_coefficients is not None:
            muon_defaults["ns_coefficients"] = tuple(ns_coefficients)
        if muon_eps is not None:
            muon_defaults["eps"] = muon_eps
        self._muon_defaults = muon_defaults
        self._adamw_defaults: dict[str, Any] = {
            "lr": adamw_lr, "betas": tuple(adamw_betas), "eps": adamw_eps,
            "weight_decay": adamw_weight_decay,
        }
        self._muon: Optional[torch.optim.Muon] = None
        self._adamw: Optional[torch.optim.AdamW] = None
        defaults = dict(muon_defaults)
        defaults.update({f"adamw_{k}": v for k, v in self._adamw_defaults.items()})
        super().__init__(params, defaults)

    # -- groups ---------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        bad = [k for k in _ADAMW_ALIASES if k in param_group]
        if bad:
            raise ValueError(
                f"param group keys {bad} are not valid: inside a group use lr/betas/eps/"
                "weight_decay (with use_muon=False for an AdamW group)"
            )
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("optimizer parameters must be an ordered collection, not a set")
        else:
            params = list(params)

        def tensor(x):
            return x[1] if isinstance(x, tuple) else x

        flag = param_group.get("use_muon")
        if flag is None:
            parts = [
                (True, [x for x in params if tensor(x).ndim == 2]),
                (False, [x for x in params if tensor(x).ndim != 2]),
            ]
            parts = [pt for pt in parts if pt[1]] or [(False, [])]
        else:
            parts = [(bool(flag), params)]
        for use_muon, ps in parts:
            group = {k: v for k, v in param_group.items() if k != "params"}
            group["params"] = ps
            group["use_muon"] = use_muon
            self._add_one(group)

    def _add_one(self, group: dict[str, Any]) -> None:
        use_muon = group["use_muon"]
        tensors = [x[1] if isinstance(x, tuple) else x for x in group["params"]]
        if use_muon:
            for p in tensors:
                if p.ndim != 2:
                    raise ValueError(
                        f"use_muon=True needs 2-D parameters, got shape {tuple(p.shape)}"
                    )
        seen = {p for g in self.param_groups for p in g["params"]}
        if any(p in seen for p in tensors):
            raise ValueError("some parameters appear in more than one parameter group")
        kind_defaults = self._muon_defaults if use_muon else self._adamw_defaults
        for k, v in kind_defaults.items():
            group.setdefault(k, v)
        inner = self._muon if use_muon else self._adamw
        if inner is None:
            cls = self._muon_cls if use_muon else torch.optim.AdamW
            inner = cls([group], **kind_defaults)  # appends `group` itself
            inner.state = self.state
            if use_muon:
                self._muon = inner
            else:
                self._adamw = inner
        else:
            inner.add_param_group(group)
        assert inner.param_groups[-1] is group
        self.param_groups.append(group)

    def _relink(self) -> None:
        """Point the inner optimizers at the (possibly new) group dicts and state."""
        for use_muon in (True, False):
            inner = self._muon if use_muon else self._adamw
            groups = [g for g in self.param_groups if bool(g.get("use_muon")) == use_muon]
            if inner is None:
                if groups:
                    raise RuntimeError("loaded param groups do not match this MuonAdamW")
                continue
            for g in groups:
                for k, v in inner.defaults.items():
                    g.setdefault(k, v)
            inner.param_groups = groups
            inner.state = self.state

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(
            _muon=self._muon, _adamw=self._adamw, _muon_cls=self._muon_cls,
            _muon_defaults=self._muon_defaults, _adamw_defaults=self._adamw_defaults,
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_muon_cls", torch.optim.Muon)
        if "_muon" in self.__dict__:
            self._relink()

    # -- step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Unwrapped steps: step hooks run once, for this optimizer (not for the inner ones).
        if self._muon is not None:
            _raw_step(type(self._muon))(self._muon)
        if self._adamw is not None:
            _raw_step(torch.optim.AdamW)(self._adamw)
        return loss


# ---------------------------------------------------------------------------------------
# Coupled or decoupled weight decay
# ---------------------------------------------------------------------------------------
# torch.optim classes by how their weight decay works (class defaults). Adam, NAdam and
# RAdam take a `decoupled_weight_decay` option stored in their groups: an *instance* is
# judged by its groups.
DECOUPLED_WEIGHT_DECAY: dict[type, bool] = {
    torch.optim.AdamW: True,
    torch.optim.Muon: True,
    torch.optim.Adafactor: True,
    torch.optim.Adam: False,
    torch.optim.NAdam: False,
    torch.optim.RAdam: False,
    torch.optim.SGD: False,
    torch.optim.RMSprop: False,
    torch.optim.Adagrad: False,
    torch.optim.Adadelta: False,
    torch.optim.Adamax: False,
    torch.optim.ASGD: False,
}


def is_decoupled(opt_or_cls: Union[Optimizer, type]) -> bool:
    """Whether an optimizer (class or instance) applies decoupled weight decay.

    Order: a boolean class attribute ``decoupled_weight_decay`` (the classes of this
    module); for an instance, the ``decoupled_weight_decay`` key of its param groups
    (``torch.optim.Adam(..., decoupled_weight_decay=True)`` is decoupled; mixed groups are
    an error); otherwise :data:`DECOUPLED_WEIGHT_DECAY` along the MRO. Unknown classes
    (and those without weight decay: LBFGS, Rprop, SparseAdam) raise ``ValueError``.
    """
    cls = opt_or_cls if isinstance(opt_or_cls, type) else type(opt_or_cls)
    attr = getattr(cls, "decoupled_weight_decay", None)
    if isinstance(attr, bool):
        return attr
    if not isinstance(opt_or_cls, type):
        flags = {
            bool(g["decoupled_weight_decay"])
            for g in opt_or_cls.param_groups if "decoupled_weight_decay" in g
        }
        if len(flags) > 1:
            raise ValueError(f"{cls.__name__} has groups with both coupled and decoupled decay")
        if flags:
            return flags.pop()
    for base in cls.__mro__:
        if base in DECOUPLED_WEIGHT_DECAY:
            return DECOUPLED_WEIGHT_DECAY[base]
    raise ValueError(
        f"unknown weight decay convention for {cls.__module__}.{cls.__qualname__}: give the "
        "class a boolean attribute `decoupled_weight_decay`"
    )


#: how an optimizer's weight decay composes with a rotation ``R`` (docs/CONVENTIONS.md §5)
WEIGHT_DECAY_MODES = {
    "none": "the optimizer has no weight_decay",
    "decoupled": "w <- w - lr*wd*w after the rule; commutes with R (applied in the standard basis)",
    "coupled": "g <- g + wd*w before the rule; linear, so R(g + wd*w) = Rg + wd*Rw (added "
               "before rotating)",
    "in_rule": "the rule uses w after a non-linear step (ClippedSGD: clip(g) + wd*w); the "
               "optimizer is given the rotated weights Rw",
}


def weight_decay_mode(opt: Optimizer) -> str:
    """One of :data:`WEIGHT_DECAY_MODES` for an optimizer instance: ``"none"`` without a
    ``weight_decay`` default, else a string class attribute ``weight_decay_mode``, else
    ``"decoupled"``/``"coupled"`` from :func:`is_decoupled`."""
    if "weight_decay" not in opt.defaults:
        return "none"
    mode = getattr(type(opt), "weight_decay_mode", None)
    if isinstance(mode, str):
        if mode not in WEIGHT_DECAY_MODES:
            raise ValueError(f"{type(opt).__name__}.weight_decay_mode = {mode!r}; allowed: "
                             f"{', '.join(WEIGHT_DECAY_MODES)}")
        return mode
    return "decoupled" if is_decoupled(opt) else "coupled"


# ---------------------------------------------------------------------------------------
# Adam with beta1 = beta2 as an online mean / variance estimator
# ---------------------------------------------------------------------------------------
_QUANTILES = {"q05": 0.05, "median": 0.5, "q95": 0.95}


def _flat(x: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().reshape(-1)
    return torch.cat([t.detach().reshape(-1) for t in x])


def _quantiles(x: Tensor, qs: Sequence[float]) -> list[float]:
    """Linear-interpolation quantiles (as ``torch.quantile``), any size (sort-based)."""
    s, _ = torch.sort(x)
    n = s.numel()
    out = []
    for q in qs:
        pos = q * (n - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        a, b = s[lo].double(), s[hi].double()
        out.append(float(a + (b - a) * frac))
    return out


def _stats(x: Tensor, prefix: str) -> dict[str, float]:
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    qs = _quantiles(x, list(_QUANTILES.values()))
    out = {f"{prefix}_mean": float(x.sum(dtype=torch.float64) / x.numel())}
    out.update({f"{prefix}_{k}": v for k, v in zip(_QUANTILES, qs)})
    out[f"{prefix}_min"] = float(x.min())
    out[f"{prefix}_max"] = float(x.max())
    return out


@torch.no_grad()
def adam_moment_stats(
    exp_avg: Union[Tensor, Sequence[Tensor]],
    exp_avg_sq: Union[Tensor, Sequence[Tensor]],
    step: Union[int, float, Tensor],
    beta1: float,
    beta2: float,
) -> dict[str, Any]:
    r"""Adam's state as a gradient mean/variance estimate (Orvieto & Gower 2025).

    With ``beta1 = beta2 = beta`` the bias-corrected moments
    ``m = exp_avg / (1 - beta**t)`` and ``v = exp_avg_sq / (1 - beta**t)`` are the mean and
    second moment of the gradients under the normalised weights
    ``w_i = (1 - beta) beta**(t-i) / (1 - beta**t)``, so ``sigma2 = v - m**2`` is their
    weighted variance (``>= 0`` up to rounding; it is **not** clamped: ``sigma2_min`` is
    the raw minimum) and ``ratio = m / sqrt(v) = m / sqrt(m**2 + sigma2)`` — Adam's update
    direction with ``eps = 0`` — lies in ``[-1, 1]``. ``ratio`` is 0 where ``v = 0``.

    Note: the bias corrections do **not** cancel in the ratio. With equal betas,
    ``m / sqrt(v) = (exp_avg / sqrt(exp_avg_sq)) / sqrt(1 - beta**t)`` (one factor of
    ``1 - beta**t`` against its square root); the raw ratio is smaller by
    ``sqrt(1 - beta**t)`` and only agrees as ``t -> inf``. ``raw_sigma2 =
    exp_avg_sq - exp_avg**2`` is also returned (non-negative too). For ``beta1 != beta2``
    the function still runs but ``sigma2`` is not a variance and may be negative.

    ``exp_avg``/``exp_avg_sq`` may be one tensor or a list (flattened and concatenated).
    Returns tensors ``m``, ``v``, ``sigma2``, ``ratio``, ``raw_sigma2`` (flat) and floats
    ``{sigma2,ratio}_{mean,median,q05,q95,min,max}`` and ``bias_correction``.
    """
    t = float(step.item() if isinstance(step, Tensor) else step)
    if t < 1:
        raise ValueError(f"step must be >= 1, got {t}")
    ea, eas = _flat(exp_avg), _flat(exp_avg_sq)
    if ea.shape != eas.shape:
        raise ValueError("exp_avg and exp_avg_sq differ in size")
    bc1 = 1.0 - beta1 ** t
    bc2 = 1.0 - beta2 ** t
    m = ea / bc1
    v = eas / bc2
    sigma2 = v - m * m
    sqrt_v = v.sqrt()
    ratio = torch.where(v > 0, m / torch.where(v > 0, sqrt_v, torch.ones_like(sqrt_v)),
                        torch.zeros_like(m))
    out: dict[str, Any] = {
        "m": m, "v": v, "sigma2": sigma2, "ratio": ratio,
        "raw_sigma2": eas - ea * ea,
        "bias_correction": bc1 if beta1 == beta2 else (bc1, bc2),
    }
    out.update(_stats(sigma2, "sigma2"))
    out.update(_stats(ratio, "ratio"))
    return out
