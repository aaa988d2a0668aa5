"""Rotation overhead: one rotated-AdamW optimizer step per scope vs ``torch.optim.AdamW``
(foreach, and fused where available), measured in the same run on the same parameter set,
plus the overhead on a whole training step of a small GPT.

    python -m benchmarks.rotation_overhead                    # GPT-2-124M-shaped parameters
    python -m benchmarks.rotation_overhead --model small      # quicker on a CPU
    python -m benchmarks.rotation_overhead --device cuda

Prints times and ratios (rotated / plain) and the device. On a GPU the floor is about 1–2x a
fused AdamW step (both are memory-bound); the targets are ≤ 3x for the optimizer step and
≤ 1% of a 480x1024-token training step.
"""
from __future__ import annotations

import argparse
import functools
import platform
import time

import torch

from lightning_modules.gpt_model import GPT, GPTConfig
from rotations.config import RotationConfig
from rotations.layout import model_layout
from rotations.optimizer import RotatedOptimizer

MODELS = {
    "124m": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "small": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256),
    "tiny": dict(vocab_size=320, block_size=128, n_layer=4, n_head=4, n_embd=128),
}
SCOPES = ["none", "global", "layerwise", "outputwise", "inputwise", "svd"]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def groups(model):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2]},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def optimizer_steps(cfg: dict, device, repeat: int, scopes, block_size: int):
    model = GPT(GPTConfig(**cfg)).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    adamw = functools.partial(torch.optim.AdamW, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rows = []
    ref = timed(adamw(groups(model), foreach=True).step, device, repeat)
    rows.append(("torch AdamW (foreach)", ref))
    try:
        rows.append(("torch AdamW (fused)", timed(adamw(groups(model), fused=True).step,
                                                  device, repeat)))
    except (RuntimeError, ValueError) as e:  # fused not available on this device
        rows.append((f"torch AdamW (fused): n/a ({type(e).__name__})", float("nan")))
    views = model_layout(model)
    for scope in scopes:
        opt = RotatedOptimizer(groups(model), functools.partial(adamw, foreach=True), views,
                               RotationConfig(scope=scope, block_size=block_size),
                               split_views=(scope == "none"))
        rows.append((f"rotated AdamW [{scope}]", timed(opt.step, device, repeat)))
        del opt
    return ref, rows


def train_steps(cfg: dict, device, repeat: int, batch: int, scopes, block_size: int):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg)).to(device)
    T = cfg["block_size"]
    x = torch.randint(0, cfg["vocab_size"], (batch, T + 1), device=device)
    out = []
    for scope in scopes:
        base = functools.partial(torch.optim.AdamW, lr=1e-4, foreach=True)
        opt = (base(groups(model)) if scope == "plain" else
               RotatedOptimizer(groups(model), base, model_layout(model),
                                RotationConfig(scope=scope, block_size=block_size)))

        def step():
            opt.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            opt.step()
        out.append((scope, timed(step, device, repeat, warmup=1)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="124m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--block-size", type=int, default=768)
    ap.add_argument("--scopes", default=",".join(SCOPES))
    ap.add_argument("--train-model", choices=list(MODELS), default="tiny")
    ap.add_argument("--train-batch", type=int, default=8)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    scopes = [s for s in args.scopes.split(",") if s]
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    n = sum(p.numel() for p in GPT(GPTConfig(**MODELS[args.model])).parameters())
    print(f"\n== optimizer step, {args.model} parameter set ({n / 1e6:.1f}M params), "
          f"block_size {args.block_size} ==")
    ref, rows = optimizer_steps(MODELS[args.model], device, args.repeat, scopes, args.block_size)
    for name, t in rows:
        print(f"{name:34s} {t * 1e3:10.2f} ms   x{t / ref:6.2f} vs foreach AdamW")
    print(f"\n== training step, {args.train_model} GPT, batch {args.train_batch} ==")
    tr = train_steps(MODELS[args.train_model], device, args.repeat, args.train_batch,
                     ["plain"] + [s for s in scopes if s != "none"], args.block_size)
    base = tr[0][1]
    for scope, t in tr:
        print(f"{scope:12s} {t * 1e3:10.2f} ms   overhead {100 * (t / base - 1):+6.1f}%")


if __name__ == "__main__":
    main()
