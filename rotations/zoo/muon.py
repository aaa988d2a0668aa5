"""Muon for hidden matrices + AdamW for the rest (NeurIPS Alg. 6; docs/CONVENTIONS.md §5)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.optim import Optimizer

from ._util import _raw_step

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
    #: parameter types Muon takes (2-D hidden matrices, NeurIPS Alg. 6); the rest, the
    #: embeddings, the LM head and 1-D parameters, go to AdamW
    muon_types = frozenset({"query", "key", "value", "attn_out", "mlp_in", "mlp_out",
                            "linear", "conv"})

    @classmethod
    def view_options(cls, view) -> dict:
        """Base-group options of one LayerView (:func:`rotations.zoo.traits`)."""
        return {"use_muon": view.ptype in cls.muon_types and min(view.shape) > 1}

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
