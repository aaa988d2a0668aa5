"""GPT language model in one file, in the style of nanoGPT's ``model.py`` (plain
``nn.Module``; docs/CONVENTIONS.md §9 for the paper's trainer it follows).

``variant="gpt2"``: nanoGPT's GPT-2 (learned position embeddings, LayerNorm, GELU MLP:
``gelu="exact"`` as nanoGPT, or the tanh approximation of GPT-2's release).
``variant="llama"``: the Llama-style model of the Orvieto & Gower reproduction (RoPE,
RMSNorm, SwiGLU whose hidden size is 2/3 of the GELU MLP's rounded up to 64, see
``GPTConfig.mlp_hidden``). Module names follow nanoGPT (``transformer.wte``,
``transformer.h[i].attn.c_attn`` fused Q/K/V, ..., ``lm_head``); a tied ``wte``/``lm_head``
is one Parameter named ``transformer.wte.weight``. The attention kernel is
:func:`lightning_modules.attention.attend`'s; the rotation layout is in
:meth:`GPT.rotation_layout` (docs/CONVENTIONS.md §3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rotations.layout import LayerView

from .attention import ATTENTION_CHOICES, attend
from .checks import positive_int

__all__ = ["GPTConfig", "GPT", "Block", "CausalSelfAttention", "MLP", "SwiGLUMLP",
           "RotaryEmbedding", "apply_rotary", "nanogpt_param_groups"]

VARIANT_CHOICES = ("gpt2", "llama")
GELU_CHOICES = ("exact", "tanh")
ROPE_BASE = 10000.0
NORM_EPS = 1e-5
INIT_STD = 0.02


# -----------------------------------------------------------------------------------------
# config
# -----------------------------------------------------------------------------------------
@dataclass
class GPTConfig:
    vocab_size: int = 50304    # GPT-2's 50257 padded up to a multiple of 64
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False         # biases in Linear and LayerNorm layers
    attention: str = "math"    # "math" | "flash"
    variant: str = "gpt2"      # "gpt2" | "llama"
    tie_embeddings: bool = True
    mlp_ratio: float = 4.0     # hidden / n_embd of the (GELU-equivalent) MLP; see mlp_hidden
    # "exact" (nanoGPT, the paper's trainer; what configs/gpt2 use) | "tanh" (GPT-2's
    # approximation: the default, so runs saved before this option load as trained)
    gelu: str = "tanh"

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            positive_int(f"GPTConfig.{name}", getattr(self, name))
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig.n_embd ({self.n_embd}) must be divisible by "
                             f"GPTConfig.n_head ({self.n_head})")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"GPTConfig.attention must be one of {ATTENTION_CHOICES}, "
                             f"got {self.attention!r}")
        if self.variant not in VARIANT_CHOICES:
            raise ValueError(f"GPTConfig.variant must be one of {VARIANT_CHOICES}, "
                             f"got {self.variant!r}")
        if self.gelu not in GELU_CHOICES:
            raise ValueError(f"GPTConfig.gelu must be one of {GELU_CHOICES}, got {self.gelu!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not float(self.mlp_ratio) > 0:
            raise ValueError(f"GPTConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if self.variant == "llama" and self.head_dim % 2 != 0:
            raise ValueError(f"GPTConfig: variant 'llama' (RoPE) needs an even head size "
                             f"n_embd / n_head, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width: ``mlp_ratio*n_embd`` (gpt2); 2/3 of that rounded up to 64 (llama)."""
        if self.variant == "llama":
            return 64 * math.ceil(2.0 / 3.0 * self.mlp_ratio * self.n_embd / 64)
        return int(self.mlp_ratio * self.n_embd)


def _norm(config: GPTConfig) -> nn.Module:
    if config.variant == "llama":
        return nn.RMSNorm(config.n_embd, eps=NORM_EPS)
    return nn.LayerNorm(config.n_embd, eps=NORM_EPS, bias=config.bias)


# -----------------------------------------------------------------------------------------
# rotary position embedding (llama variant)
# -----------------------------------------------------------------------------------------
class RotaryEmbedding(nn.Module):
    """Precomputed RoPE tables ``cos, sin`` of shape ``(max_seq_len, head_dim)``.

    Non-persistent buffers (not in the state dict). After building on the meta device and
    ``to_empty()``, call ``reset_parameters()`` (or ``GPT.reset_parameters()``) to refill them.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = ROPE_BASE):
        super().__init__()
        self.head_dim, self.max_seq_len, self.base = head_dim, max_seq_len, base
        self.register_buffer("cos", torch.empty(max_seq_len, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(max_seq_len, head_dim), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        dev = self.cos.device
        if dev.type == "meta":
            return
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, device=dev,
                                                     dtype=torch.float64) / self.head_dim))
        t = torch.arange(self.max_seq_len, device=dev, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)                  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)           # (T, D): rotate-half pairing
        self.cos.copy_(emb.cos())
        self.sin.copy_(emb.sin())

    def forward(self, seq_len: int):
        return self.cos[:seq_len], self.sin[:seq_len]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(B, H, T, D)`` by position; ``cos, sin`` are ``(T, D)``."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


# -----------------------------------------------------------------------------------------
# blocks
# -----------------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        # Q, K, V for all heads in one matrix: rows [0,C) = Q, [C,2C) = K, [2C,3C) = V
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attention = config.attention

    def forward(self, x: torch.Tensor, rope=None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        y = attend(q, k, v, self.attention, causal=True,
                   dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """GPT-2 MLP: ``c_proj(gelu(c_fc(x)))``, exact GELU (nanoGPT) or its tanh approximation."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class SwiGLUMLP(nn.Module):
    """Llama MLP: ``c_proj(silu(c_fc(x)) * c_fc2(x))`` (``c_fc`` = gate, ``c_fc2`` = up)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_fc2 = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.silu(self.c_fc(x)) * self.c_fc2(x)))


class Block(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config)
        self.mlp = SwiGLUMLP(config) if config.variant == "llama" else MLP(config)

    def forward(self, x, rope=None):
        x = x + self.attn(self.ln_1(x), rope)
        x = x + self.mlp(self.ln_2(x))
        return x


# -----------------------------------------------------------------------------------------
# the model
# -----------------------------------------------------------------------------------------
class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.variant == "gpt2":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules["drop"] = nn.Dropout(config.dropout)
        modules["h"] = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        modules["ln_f"] = _norm(config)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # one Parameter, named "transformer.wte.weight" in named_parameters()
            self.transformer.wte.weight = self.lm_head.weight
        self.rotary = (RotaryEmbedding(config.head_dim, config.block_size)
                       if config.variant == "llama" else None)
        self.reset_parameters()

    # -- init -----------------------------------------------------------------------------
    @property
    def tied(self) -> bool:
        return self.transformer.wte.weight is self.lm_head.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) for Linear/Embedding, zero biases, norms to 1 (and 0);
        residual projections (``attn.c_proj``, ``mlp.c_proj``) N(0, 0.02/sqrt(2*n_layer)).
        Also refills the RoPE tables (needed after ``to_empty()`` from the meta device)."""
        self.apply(self._init_weights)
        std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=std)
        if self.rotary is not None:
            self.rotary.reset_parameters()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            module.reset_parameters()

    # -- forward --------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """``idx`` (B, T) token ids -> ``(logits (B, T, vocab), loss or None)``.

        ``loss`` is the mean cross-entropy over targets != -1. Full logits are always
        computed (no inference shortcut), so HVPs through the loss work with ``math``.
        """
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"GPT.forward: sequence length {T} exceeds "
                             f"GPTConfig.block_size {self.config.block_size}")
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            pos = torch.arange(0, T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        rope = self.rotary(T) if self.rotary is not None else None
        for block in self.transformer.h:
            x = block(x, rope)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    # -- rotation layout ------------------------------------------------------------------
    def rotation_layout(self) -> list[LayerView]:
        """Every parameter as one or more LayerViews, typed from the module structure
        (never from name patterns), ``C = n_embd``:

        * tied ``wte`` = ``lm_head``: ONE ``embedding`` view ``(vocab, C)``, no transpose
          (LM-head layout); untied: ``wte`` ``embedding`` transposed to ``(C, vocab)`` and
          ``lm_head`` ``(vocab, C)``; ``wpe``: ``position`` transposed to ``(C, block)``;
        * ``c_attn.weight``: ``query``, ``key``, ``value`` row blocks ``(0,C) (C,2C) (2C,3C)``;
          ``attn.c_proj``: ``attn_out``; ``mlp.c_fc`` (and ``c_fc2``): ``mlp_in``;
          ``mlp.c_proj``: ``mlp_out``;
        * norm weights/biases: ``layernorm`` columns ``(C, 1)``; Linear biases: ``bias``
          columns (``c_attn.bias`` split in three like its weight, ``meta["of"]`` its layer's
          type).

        ``layer_id`` is the module path for matrices (``transformer.h.0.attn.c_attn[query]``:
        Q, K, V are three layers) and the view's own name for 1-D parameters (each its own
        layer). ``meta`` holds ``module`` and ``block`` (Block index or ``None``).
        """
        param_names = {id(p): n for n, p in self.named_parameters()}
        module_names = {id(m): n for n, m in self.named_modules()}
        views: list[LayerView] = []
        C = self.config.n_embd

        def add(param, ptype, module, *, block=None, transpose=False, rows=None, part=None,
                meta=None):
            pname = param_names[id(param)]
            mpath = module_names[id(module)]
            name = f"{pname}[{part}]" if part else pname
            if param.dim() >= 2:
                layer_id = f"{mpath}[{part}]" if part else mpath
            else:
                layer_id = name        # 1-D parameters: each is its own layer
            views.append(LayerView(name=name, param=param, ptype=ptype, rows=rows,
                                   transpose=transpose, param_name=pname, layer_id=layer_id,
                                   meta={"module": mpath, "block": block, **(meta or {})}))

        def add_norm(norm, block=None):
            for p in norm.parameters(recurse=False):
                add(p, "layernorm", norm, block=block)

        def add_linear(lin, ptype, block=None):
            add(lin.weight, ptype, lin, block=block)
            if lin.bias is not None:
                add(lin.bias, "bias", lin, block=block, meta={"of": ptype})

        tr = self.transformer
        if self.tied:
            # the tied weight is treated in LM-head layout (vocab, C), docs/CONVENTIONS.md §3
            add(tr.wte.weight, "embedding", tr.wte, meta={"tied_with": "lm_head.weight"})
        else:
            add(tr.wte.weight, "embedding", tr.wte, transpose=True)
        if "wpe" in tr:
            add(tr.wpe.weight, "position", tr.wpe, transpose=True)
        for i, blk in enumerate(tr.h):
            add_norm(blk.ln_1, i)
            c_attn = blk.attn.c_attn
            for j, part in enumerate(("query", "key", "value")):
                add(c_attn.weight, part, c_attn, block=i, rows=(j * C, (j + 1) * C), part=part)
            if c_attn.bias is not None:
                for j, part in enumerate(("query", "key", "value")):
                    add(c_attn.bias, "bias", c_attn, block=i, rows=(j * C, (j + 1) * C),
                        part=part, meta={"of": part})
            add_linear(blk.attn.c_proj, "attn_out", i)
            add_norm(blk.ln_2, i)
            add_linear(blk.mlp.c_fc, "mlp_in", i)
            if isinstance(blk.mlp, SwiGLUMLP):
                add_linear(blk.mlp.c_fc2, "mlp_in", i)
            add_linear(blk.mlp.c_proj, "mlp_out", i)
        add_norm(tr.ln_f)
        if not self.tied:
            add_linear(self.lm_head, "lm_head")
        return views

    # -- helpers --------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied weight counted once).

        ``non_embedding=True`` (nanoGPT's MFU convention) leaves out the lookup tables: the
        position embedding and, when untied, the token embedding. A tied ``wte`` is kept,
        since it is also the LM head's weight.
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.tied:
                n -= self.transformer.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """nanoGPT / PaLM estimate of training FLOPs per token (forward + backward):
        ``6*N + 12*L*H*Q*T`` with ``N = num_params(non_embedding=True)``, ``Q`` the head size
        and ``T = seq_len`` (default ``block_size``). MFU = flops_per_token * tokens/s / peak.
        """
        cfg = self.config
        T = cfg.block_size if seq_len is None else seq_len
        return 6 * self.num_params(non_embedding=True) + \
            12 * cfg.n_layer * cfg.n_head * cfg.head_dim * T


def nanogpt_param_groups(named_params, weight_decay: float | None = None) -> list[dict]:
    """nanoGPT's grouping: trainable tensors with ≥ 2 dims (matmul weights, embeddings) are
    decayed (at ``weight_decay``, or the optimizer's own when ``None``), the rest (norms,
    biases) are not. An empty second group is left out."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay}]
    if weight_decay is not None:
        groups[0]["weight_decay"] = weight_decay
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
