"""Parameter layout: every parameter seen as one or more *views*, i.e. layers as ``(out, in)``
matrices (row blocks for fused Q/K/V, transposed untied embeddings, conv kernels flattened,
1-D parameters as columns; docs/CONVENTIONS.md §3). "Views" is the one name for the list of
:class:`LayerView` a model describes itself with (``rotation_layout()``, or
:func:`infer_layout` as the generic fallback). Pure PyTorch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import torch
from torch import nn

# Parameter types known to the engine. Models may only use these (a typo in a config's
# ``rotation.only`` map must be an error, not a silent no-op).
PARAM_TYPES = (
    # language models
    "embedding", "position", "query", "key", "value", "attn_out", "mlp_in", "mlp_out",
    "layernorm", "lm_head",
    # vision models
    "patch_embed", "conv", "norm", "fc", "head", "bias",
    # generic fallback
    "linear", "other",
)


@dataclass(eq=False)
class LayerView:
    """One layer of the rotation engine: a matrix view of (part of) a parameter."""

    name: str                      # unique, e.g. "transformer.h.0.attn.c_attn.weight[query]"
    param: nn.Parameter
    ptype: str                     # one of PARAM_TYPES
    rows: Optional[tuple] = None   # (start, stop) row block of the parameter, or None
    transpose: bool = False        # rotate the transposed matrix
    param_name: str = ""           # the parameter's name in model.named_parameters()
    layer_id: str = ""             # layers sharing an id count as one "layer" for probes
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.ptype not in PARAM_TYPES:
            raise ValueError(f"LayerView {self.name!r}: unknown parameter type {self.ptype!r}; "
                             f"allowed: {', '.join(PARAM_TYPES)}")
        if not self.layer_id:
            self.layer_id = self.name

    # -- shapes ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        """Matrix shape ``(out, in)`` of the view."""
        return matrix_shape(self.param.shape, self.rows, self.transpose)

    @property
    def numel(self) -> int:
        out, inp = self.shape
        return out * inp

    # -- reading and writing ----------------------------------------------------------------
    def matrix(self, t: torch.Tensor) -> torch.Tensor:
        """The view of a tensor shaped like ``param`` (e.g. its gradient) as ``(out, in)``.

        Returns a view (no copy) whenever possible.
        """
        return to_matrix(t, self.rows, self.transpose)

    def add_(self, t: torch.Tensor, delta: torch.Tensor) -> None:
        """``t[view] += delta`` where ``delta`` is an ``(out, in)`` matrix."""
        m = self.matrix(t)
        m.add_(delta.to(m.dtype))


def matrix_shape(shape, rows=None, transpose=False) -> tuple:
    shape = tuple(shape)
    if len(shape) == 0:
        out, inp = 1, 1
    elif len(shape) == 1:
        out, inp = shape[0], 1
    else:
        out, inp = shape[0], 1
        for s in shape[1:]:
            inp *= s
    if rows is not None:
        a, b = rows
        out = b - a
    return (inp, out) if transpose else (out, inp)


def to_matrix(t: torch.Tensor, rows=None, transpose=False) -> torch.Tensor:
    if t.dim() == 0:
        m = t.reshape(1, 1)
    elif t.dim() == 1:
        m = t.unsqueeze(1)
    else:
        m = t.reshape(t.shape[0], -1) if t.dim() > 2 else t
    if rows is not None:
        a, b = rows
        m = m[a:b]
    return m.t() if transpose else m


def infer_layout(module: nn.Module, tied_ok: bool = True) -> list[LayerView]:
    """Generic layout from module structure.

    ``nn.Linear`` -> ``linear`` (its bias -> ``bias``), ``nn.Conv*`` -> ``conv``,
    ``nn.Embedding`` -> ``embedding`` (transposed to ``(dim, num)``), normalisation layers
    -> ``norm``; anything else -> ``other``. Shared (tied) parameters appear once, under the
    first module that owns them.
    """
    views: list[LayerView] = []
    seen: set[int] = set()
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.RMSNorm)
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            transpose = False
            if isinstance(mod, nn.Linear):
                ptype = "linear" if p_name == "weight" else "bias"
            elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                ptype = "conv" if p_name == "weight" else "bias"
            elif isinstance(mod, nn.Embedding):
                ptype, transpose = "embedding", True
            elif isinstance(mod, norm_types):
                ptype = "norm"
            else:
                ptype = "other"
            views.append(LayerView(full, p, ptype, transpose=transpose, param_name=full,
                                   layer_id=mod_name or full))
    return views


def model_layout(model: nn.Module) -> list[LayerView]:
    """The model's own ``rotation_layout()`` if it has one, else :func:`infer_layout`.

    Checks that every trainable parameter is covered exactly once (row blocks of one
    parameter must tile it).
    """
    fn = getattr(model, "rotation_layout", None)
    views = fn() if callable(fn) else infer_layout(model)
    check_layout(model.parameters(), views)
    return views


def check_layout(params: Iterable[torch.Tensor], views: list[LayerView]) -> None:
    names = set()
    cover: dict[int, list] = {}
    for v in views:
        if v.name in names:
            raise ValueError(f"rotation layout: duplicate view name {v.name!r}")
        names.add(v.name)
        cover.setdefault(id(v.param), []).append(v)
    for p in params:
        if not p.requires_grad:
            continue
        vs = cover.get(id(p))
        if not vs:
            raise ValueError(f"rotation layout: a parameter of shape {tuple(p.shape)} is not "
                             "covered by any LayerView")
        if len(vs) == 1 and vs[0].rows is None:
            continue
        total = matrix_shape(p.shape)[0]
        spans = sorted((v.rows if v.rows is not None else (0, total)) for v in vs)
        pos = 0
        for a, b in spans:
            if a != pos:
                raise ValueError(f"rotation layout: row blocks of {vs[0].param_name!r} do not "
                                 f"tile it (gap or overlap at row {pos})")
            pos = b
        if pos != total:
            raise ValueError(f"rotation layout: row blocks of {vs[0].param_name!r} cover "
                             f"{pos} of {total} rows")
