"""SimpleViT (Beyer, Zhai, Kolesnikov 2022, *Better plain ViT baselines for ImageNet-1k*) in
one file, in the style of nanoGPT's ``model.py``; and its LightningModule (paper Fig. 1b).

big_vision's ``vit.py`` with the paper's choices: no class token, fixed 2-D sin-cos position
embedding (a non-persistent buffer), pre-norm blocks, GELU in the tanh approximation (flax's
``nn.gelu`` default), global average pooling, a final LayerNorm, a zero-initialised linear
head. ViT-S/16 is the default: 21,974,632 parameters. Module names follow nanoGPT
(``blocks[i].attn.c_attn`` fused Q/K/V, ``mlp.c_fc`` ...); the rotation layout is in
:meth:`SimpleViT.rotation_layout` (docs/CONVENTIONS.md §3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, Optional

import torch
from torch import nn

from rotations.layout import LayerView

from .attention import ATTENTION_CHOICES, attend
from .checks import positive_int
from .classification import ClassificationModule

__all__ = ["ViTConfig", "SimpleViT", "ViTLightningModule", "posemb_sincos_2d"]

NORM_EPS = 1e-6


# -----------------------------------------------------------------------------------------
# config
# -----------------------------------------------------------------------------------------
@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    num_classes: int = 1000
    dim: int = 384
    depth: int = 12
    heads: int = 6
    mlp_dim: int = 1536
    channels: int = 3
    attention: str = "math"    # "math" | "flash"

    def __post_init__(self):
        for name in ("image_size", "patch_size", "num_classes", "dim", "depth", "heads",
                     "mlp_dim", "channels"):
            positive_int(f"ViTConfig.{name}", getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.image_size ({self.image_size}) must be divisible by "
                             f"ViTConfig.patch_size ({self.patch_size})")
        if self.dim % self.heads:
            raise ValueError(f"ViTConfig.dim ({self.dim}) must be divisible by "
                             f"ViTConfig.heads ({self.heads})")
        if self.dim % 4:
            raise ValueError(f"ViTConfig.dim ({self.dim}) must be a multiple of 4 "
                             "(2-D sin-cos position embedding)")
        if self.attention not in ATTENTION_CHOICES:
            raise ValueError(f"ViTConfig.attention must be one of {ATTENTION_CHOICES}, "
                             f"got {self.attention!r}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid ** 2


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0,
                     device=None, dtype=torch.float32) -> torch.Tensor:
    """big_vision's fixed position embedding, ``(h*w, dim)``: ``[sin x, cos x, sin y, cos y]``
    with ``dim/4`` frequencies ``temperature ** -(k / (dim/4 - 1))`` (row-major patches)."""
    if dim % 4:
        raise ValueError(f"posemb_sincos_2d: dim ({dim}) must be a multiple of 4")
    y, x = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64),
                          torch.arange(w, device=device, dtype=torch.float64), indexing="ij")
    n = dim // 4
    omega = torch.arange(n, device=device, dtype=torch.float64) / max(1, n - 1)
    omega = 1.0 / temperature ** omega
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).to(dtype)


def lecun_normal_(w: torch.Tensor) -> torch.Tensor:
    """flax's ``lecun_normal``: truncated normal on [-2σ, 2σ] with variance ``1 / fan_in``
    (σ is divided by 0.8796..., the std of a standard normal truncated at ±2)."""
    std = math.sqrt(1.0 / w[0].numel()) / 0.87962566103423978
    return nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)


# -----------------------------------------------------------------------------------------
# blocks
# -----------------------------------------------------------------------------------------
class SelfAttention(nn.Module):

    def __init__(self, config: ViTConfig):
        super().__init__()
        # Q, K, V for all heads in one matrix: rows [0,D) = Q, [D,2D) = K, [2D,3D) = V
        self.c_attn = nn.Linear(config.dim, 3 * config.dim)
        self.c_proj = nn.Linear(config.dim, config.dim)
        self.heads, self.dim, self.attention = config.heads, config.dim, config.attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.size()
        q, k, v = self.c_attn(x).split(self.dim, dim=2)
        q = q.view(B, T, self.heads, D // self.heads).transpose(1, 2)   # (B, nh, T, hs)
        k = k.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, D // self.heads).transpose(1, 2)
        y = attend(q, k, v, self.attention, causal=False)
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.c_proj(y)


class MLP(nn.Module):

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.dim, config.mlp_dim)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(config.mlp_dim, config.dim)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim, eps=NORM_EPS)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim, eps=NORM_EPS)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


# -----------------------------------------------------------------------------------------
# the model
# -----------------------------------------------------------------------------------------
class SimpleViT(nn.Module):

    def __init__(self, config: Optional[ViTConfig] = None):
        super().__init__()
        config = config or ViTConfig()
        self.config = config
        p = config.patch_size
        self.patch_embed = nn.Conv2d(config.channels, config.dim, kernel_size=p, stride=p)
        self.register_buffer("pos_embed", torch.empty(config.num_patches, config.dim),
                             persistent=False)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.depth)])
        self.norm = nn.LayerNorm(config.dim, eps=NORM_EPS)
        self.head = nn.Linear(config.dim, config.num_classes)
        self.reset_parameters()

    # -- init -----------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """big_vision's init: Linear weights Xavier-uniform (Q, K, V each as its own
        ``dim x dim`` matrix), attention biases 0, MLP biases N(0, 1e-6), patch embedding
        LeCun normal with zero bias, LayerNorm 1/0, head zeros; refills ``pos_embed`` (needed
        after ``to_empty()`` from the meta device)."""
        D = self.config.dim
        lecun_normal_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        for blk in self.blocks:
            for j in range(3):      # Q, K, V: Xavier on each (D, D) block, as flax does
                nn.init.xavier_uniform_(blk.attn.c_attn.weight[j * D:(j + 1) * D])
            nn.init.zeros_(blk.attn.c_attn.bias)
            nn.init.xavier_uniform_(blk.attn.c_proj.weight)
            nn.init.zeros_(blk.attn.c_proj.bias)
            for lin in (blk.mlp.c_fc, blk.mlp.c_proj):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.normal_(lin.bias, std=1e-6)
            blk.ln_1.reset_parameters()
            blk.ln_2.reset_parameters()
        self.norm.reset_parameters()
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.reset_buffers()

    @torch.no_grad()
    def reset_buffers(self) -> None:
        if self.pos_embed.device.type == "meta":
            return
        g = self.config.grid
        self.pos_embed.copy_(posemb_sincos_2d(g, g, self.config.dim,
                                              device=self.pos_embed.device))

    # -- forward --------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` (B, channels, H, W) with H = W = image_size -> logits (B, classes)."""
        cfg = self.config
        if images.dim() != 4 or images.shape[1:] != (cfg.channels, cfg.image_size,
                                                     cfg.image_size):
            raise ValueError(f"SimpleViT expects images of shape (B, {cfg.channels}, "
                             f"{cfg.image_size}, {cfg.image_size}), got {tuple(images.shape)}")
        x = self.patch_embed(images)                     # (B, D, g, g)
        x = x.flatten(2).transpose(1, 2)                 # (B, g*g, D), row-major patches
        x = x + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        x = x.mean(dim=1)                                # global average pooling
        return self.head(x)

    # -- rotation layout ------------------------------------------------------------------
    def rotation_layout(self) -> list[LayerView]:
        """Every parameter as one or more LayerViews, typed from the module structure:

        ``patch_embed.weight`` -> ``patch_embed`` ``(dim, channels*p*p)``; ``c_attn.weight``
        -> ``query/key/value`` row blocks ``(0,D) (D,2D) (2D,3D)``; ``attn.c_proj`` ->
        ``attn_out``; ``mlp.c_fc`` -> ``mlp_in``; ``mlp.c_proj`` -> ``mlp_out``; ``head`` ->
        ``head``; LayerNorm weight and bias -> ``norm`` columns; biases -> ``bias`` columns
        (``c_attn.bias`` split in three like its weight). ``layer_id`` is the module path for
        matrices (Q, K, V are three layers) and the view's name for 1-D parameters; ``meta``
        holds ``module``, ``block`` and, for biases, ``of``."""
        param_names = {id(p): n for n, p in self.named_parameters()}
        module_names = {id(m): n for n, m in self.named_modules()}
        views: list[LayerView] = []
        D = self.config.dim

        def add(param, ptype, module, *, block=None, rows=None, part=None, meta=None):
            pname = param_names[id(param)]
            mpath = module_names[id(module)]
            name = f"{pname}[{part}]" if part else pname
            if param.dim() >= 2:
                layer_id = f"{mpath}[{part}]" if part else mpath
            else:
                layer_id = name            # 1-D parameters: each is its own layer
            views.append(LayerView(name=name, param=param, ptype=ptype, rows=rows,
                                   param_name=pname, layer_id=layer_id,
                                   meta={"module": mpath, "block": block, **(meta or {})}))

        def add_weight_bias(mod, ptype, block=None):
            add(mod.weight, ptype, mod, block=block)
            if mod.bias is not None:
                add(mod.bias, "bias", mod, block=block, meta={"of": ptype})

        def add_norm(norm, block=None):
            for p in norm.parameters(recurse=False):
                add(p, "norm", norm, block=block)

        add_weight_bias(self.patch_embed, "patch_embed")
        for i, blk in enumerate(self.blocks):
            add_norm(blk.ln_1, i)
            c_attn = blk.attn.c_attn
            for j, part in enumerate(("query", "key", "value")):
                add(c_attn.weight, part, c_attn, block=i, rows=(j * D, (j + 1) * D), part=part)
            for j, part in enumerate(("query", "key", "value")):
                add(c_attn.bias, "bias", c_attn, block=i, rows=(j * D, (j + 1) * D),
                    part=part, meta={"of": part})
            add_weight_bias(blk.attn.c_proj, "attn_out", i)
            add_norm(blk.ln_2, i)
            add_weight_bias(blk.mlp.c_fc, "mlp_in", i)
            add_weight_bias(blk.mlp.c_proj, "mlp_out", i)
        add_norm(self.norm)
        add_weight_bias(self.head, "head")
        return views

    # -- helpers --------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_sample(self) -> int:
        """Training FLOPs per image (forward + backward, the ``6N`` rule per token): every
        weight but the head's is applied to each of the ``T`` patches, the head once per
        image, and attention adds ``12 * depth * T^2 * dim`` (scores and weighted values)."""
        cfg = self.config
        T = cfg.num_patches
        head = sum(p.numel() for p in self.head.parameters())
        return 6 * (self.num_params() - head) * T + 6 * head + 12 * cfg.depth * T * T * cfg.dim


# -----------------------------------------------------------------------------------------
# LightningModule
# -----------------------------------------------------------------------------------------
class ViTLightningModule(ClassificationModule):
    """SimpleViT trained by classification (paper Fig. 1b). Model args mirror
    :class:`ViTConfig`; ``**kwargs`` are :class:`ClassificationModule`'s (``label_smoothing``)
    and :class:`~lightning_modules.base.RotatableModule`'s."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_classes: int = 1000,
                 dim: int = 384, depth: int = 12, heads: int = 6, mlp_dim: int = 1536,
                 channels: int = 3, attention: Literal["math", "flash"] = "math", **kwargs):
        super().__init__(num_classes=num_classes, **kwargs)

    def configure_models(self) -> None:
        names = {f.name for f in fields(ViTConfig)}
        self.config = ViTConfig(**{k: v for k, v in self.hparams.items() if k in names})
        self.model = SimpleViT(self.config)

    def flops_per_sample(self) -> Optional[float]:
        return float(self.model.flops_per_sample())

    def expected_data(self) -> dict:
        return {"num_classes": self.config.num_classes, "channels": self.config.channels,
                "image_size": self.config.image_size}
