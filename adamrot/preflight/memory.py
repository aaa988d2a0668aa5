"""Memory per device, estimated before the run (docs/CLUSTER.md, "Preflight"):

* **parameters** (fp32 master weights), **gradients** (fp32; twice under DDP, whose buckets
  hold a copy), **base-optimizer state** (bytes per element measured by one step of the
  configured optimizer on a small CPU tensor), **shadows and rotation state** (per rotation
  of dimension ``d`` with blocks ``n = min(block_size, d)``: an int32 permutation when
  ``d > n`` and the dense ``n × n`` and residual ``p × p`` blocks in fp32; an SVD view its
  two bases ``out² + in²`` (a side longer than ``svd_dense_max``: ``r`` Householder
  reflectors, ``m·r``): the floor of docs/ROTATIONS.md, computed from the model's views
  without sampling anything), the **bf16 weight copies** autocast keeps for the backward;
* **activations** of one micro-batch, for the GPT by the formula of :func:`gpt_activation_bytes`
  (what autograd saves, by attention kernel and precision, plus the loss's transient peak at
  the start of the backward), for other models by summing the tensors autograd saves in a
  forward on the meta device (:func:`saved_bytes_meta`, fp32, scaled to the activation
  precision).

The total is compared with each GPU's memory less a margin (:data:`GPUS`,
:func:`usable_bytes`), and the largest micro-batch that fits is found by bisection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

GiB = 1 << 30
#: memory of the GPUs preflight knows (bytes, as ``nvidia-smi`` reports: GiB)
GPUS = {"a100-40gb": 40 * GiB, "a100-80gb": 80 * GiB, "h100-80gb": 80 * GiB,
        "h200": 141 * GiB}
#: not available to tensors: CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation
GPU_RESERVED_BYTES = 1 * GiB
GPU_FRAGMENTATION = 0.10
#: the largest micro-batch searched
MICRO_BATCH_LIMIT = 1 << 14


def usable_bytes(gpu: str) -> int:
    """What an estimate may use on ``gpu``: its memory less 1 GiB and 10 %."""
    return int(GPUS[gpu] * (1 - GPU_FRAGMENTATION)) - GPU_RESERVED_BYTES


def precision_bytes(precision) -> tuple[int, int, bool]:
    """``(activation bytes, residual-stream bytes, autocast)`` of Lightning's ``precision``."""
    p = str(precision)
    if "mixed" in p:
        return 2, 4, True
    if p.startswith(("bf16", "16")):
        return 2, 2, False
    if p.startswith("64"):
        return 8, 8, False
    return 4, 4, False


def gpt_activation_bytes(cfg, micro_batch: int, seq_len: int, precision) -> int:
    """Bytes held at the activation peak of one micro-batch of the GPT
    (:class:`lightning_modules.gpt_model.GPTConfig`), ``a`` = activation bytes (2 under
    bf16-mixed, 4 in fp32), ``r`` = residual-stream bytes (fp32 under autocast), ``C`` width,
    ``H`` heads, ``T`` sequence, ``h`` MLP hidden, ``V`` vocabulary, per token:

    * per layer: ``2·r·C`` (the two norms' inputs) ``+ a·(2C + 3C + C)`` (norm outputs as
      the matmuls' inputs, q/k/v, the attention output fed to ``c_proj``) ``+ a·m``, with the
      MLP's ``m = 2h`` (GELU: its input and output) or ``4h`` (SwiGLU: gate, up, SiLU,
      product), ``+ a·(2C + H·T)`` for the **math** kernel (scaled q and k, the softmax
      matrix) or ``+ a·C + 4·H`` for a **fused** kernel (its output and log-sum-exp), and
      ``+ 2a·C`` for RoPE (the rotated q, k);
    * the head: ``r·C + a·C`` (final norm) ``+ 4·V`` (fp32 log-softmax kept for the
      backward) ``+ 8·V`` (the backward's first step: the gradient of the log-probabilities
      and of the logits, fp32, both alive).
    """
    a, r, _ = precision_bytes(precision)
    C, H, T, V = cfg.n_embd, cfg.n_head, seq_len, cfg.vocab_size
    h = cfg.mlp_hidden
    mlp = 4 * h if cfg.variant == "llama" else 2 * h
    attn = (2 * C + H * T) * a if cfg.attention == "math" else a * C + 4 * H
    rope = 2 * a * C if cfg.variant == "llama" else 0
    layer = 2 * r * C + a * (6 * C + mlp) + attn + rope
    head = r * C + a * C + 12 * V
    return micro_batch * T * (cfg.n_layer * layer + head)


def saved_bytes_meta(model: torch.nn.Module, example: torch.Tensor, scale: float = 1.0) -> int:
    """Bytes of the tensors autograd saves in one forward of ``model`` on the meta device
    (each tensor counted once), times ``scale``; the logits' loss is not included."""
    seen: set[int] = set()
    total = [0]

    def pack(t):
        key = id(t._base) if t._base is not None else id(t)
        if key not in seen:
            seen.add(key)
            base = t._base if t._base is not None else t
            total[0] += base.numel() * base.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(example)
    del out
    return int(total[0] * scale)


def base_state_per_element(factory: Callable) -> tuple[float, bool]:
    """Bytes of optimizer state per parameter element after one step of ``factory`` on a small
    CPU tensor, and whether it was measured (False: 8 assumed, AdamW's)."""
    try:
        p = torch.nn.Parameter(torch.zeros(64, 64))
        opt = factory([{"params": [p]}])
        p.grad = torch.ones_like(p)
        opt.step()
        n = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                if isinstance(t, torch.Tensor) and t.numel() > 1)
        return n / p.numel(), True
    except Exception:  # noqa: BLE001 - an optimizer that needs its real setup (Muon's views)
        return 8.0, False


def rotation_bytes(views, config) -> tuple[int, int]:
    """``(shadow bytes, rotation-state bytes)`` of a RotatedOptimizer over ``views`` (fp32):
    every view has a shadow; rotation state as in the module docstring."""
    from rotations.sampling import block_structure
    from rotations.scopes import rotated_dims

    elem = 4
    shadow = sum(v.numel for v in views) * elem
    state = 0
    for _, d in rotated_dims(views, config):
        n, _, p = block_structure(d, config.block_size)
        state += (d * 4 if (config.permute and d > n) else 0) + (n * n + p * p) * elem
    for v in views:
        if config.scope_for(v.ptype) == "svd" and min(v.shape) > 1:
            r = min(v.shape)
            for m in v.shape:           # dense m x m, or r Householder reflectors of length m
                state += (m * m if (m <= config.svd_dense_max or m == r) else m * r + r) * elem
    return shadow, state


@dataclass
class Memory:
    params: int
    grads: int
    base_state: int
    base_state_measured: bool
    shadows: int
    rotation: int
    autocast_copies: int
    activations: int
    activation_method: str

    @property
    def static(self) -> int:
        return (self.params + self.grads + self.base_state + self.shadows + self.rotation
                + self.autocast_copies)

    @property
    def total(self) -> int:
        return self.static + self.activations

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d.update(static=self.static, total=self.total)
        return d


def activation_fn(module, precision) -> tuple[Optional[Callable[[int], int]], str]:
    """``micro_batch -> activation bytes`` for the model of ``module``, and the method."""
    model = getattr(module, "model", None)
    cfg = getattr(module, "config", None)
    if cfg is not None and hasattr(cfg, "n_embd") and hasattr(cfg, "vocab_size"):
        T = cfg.block_size
        return (lambda b: gpt_activation_bytes(cfg, b, T, precision),
                f"GPT formula ({cfg.attention} attention, {precision})")
    size = getattr(cfg, "image_size", None) or getattr(module, "image_size", None) or 224
    channels = getattr(cfg, "channels", None) or getattr(module, "channels", None) or 3
    if model is None:
        return None, "unknown model"
    a, _, _ = precision_bytes(precision)
    model = model.train()
    try:
        with torch.device("meta"):
            two = saved_bytes_meta(model, torch.empty(2, channels, size, size), a / 4)
            four = saved_bytes_meta(model, torch.empty(4, channels, size, size), a / 4)
    except Exception as e:  # noqa: BLE001
        return None, f"not estimated ({type(e).__name__}: {e})"
    per = (four - two) / 2
    fixed = two - 2 * per
    return (lambda b: int(fixed + per * b),
            f"tensors saved in a meta-device forward ({size}px, scaled to {a} B)")


def estimate(module, precision, micro_batch: int, world: int) -> Memory:
    """Memory per device of ``module`` (built on the meta device) trained at ``micro_batch``."""
    n = sum(p.numel() for p in module.parameters())
    elem = 4
    _, _, autocast = precision_bytes(precision)
    ratio, measured = base_state_per_element(module.optimizer_factory)
    shadows = rot = 0
    rotation = getattr(module, "rotation", None)
    if rotation is not None and rotation.active:
        shadows, rot = rotation_bytes(module.rotation_views(), rotation)
    matmul = sum(p.numel() for p in module.parameters() if p.dim() >= 2)
    fn, how = activation_fn(module, precision)
    return Memory(params=n * elem, grads=n * elem * (2 if world > 1 else 1),
                  base_state=int(ratio * n), base_state_measured=measured, shadows=shadows,
                  rotation=rot, autocast_copies=2 * matmul if autocast else 0,
                  activations=fn(micro_batch) if fn else 0, activation_method=how)


def largest_micro_batch(mem: Memory, module, precision, budget: int,
                        limit: int = MICRO_BATCH_LIMIT) -> int:
    """The largest micro-batch whose estimate fits ``budget`` bytes (0: none)."""
    fn, _ = activation_fn(module, precision)
    if fn is None:
        return 0
    fits = lambda b: mem.static + fn(b) <= budget  # noqa: E731
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / (1 << 20):.1f} MiB"


