"""The attention kernel switch shared by the GPT and the ViT (docs/CONVENTIONS.md §9).

``"math"`` forces ``SDPBackend.MATH``: a composite of differentiable ops (double backward,
hence Hessian-vector products, works) with the rounding behaviour the rotation paper's runs
have ("without flash attention (the setting we use for our experiments)", App. A.4).
``"flash"`` lets SDPA pick FLASH / EFFICIENT / CUDNN attention on CUDA (fp16, bf16, fp32)
and its default elsewhere; these fused kernels generally lack double backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_CHOICES = ("math", "flash")
_FLASH_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                   SDPBackend.CUDNN_ATTENTION]
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def attend(q, k, v, kernel: str, *, causal: bool, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q kᵀ / √d) v`` over ``(B, H, T, D)`` tensors with the chosen kernel."""
    if kernel == "math":
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                                  is_causal=causal)
    if q.is_cuda and q.dtype in _FUSED_DTYPES:
        with sdpa_kernel(_FLASH_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                                  is_causal=causal)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
