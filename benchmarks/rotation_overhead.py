"""Rotation overhead: one rotated-AdamW optimizer step per scope vs ``torch.optim.AdamW``
(foreach, and fused where available), measured in the same run on the same parameter set,
plus the overhead on a whole training step of a small GPT.

    python -m benchmarks.rotation_overhead                    # GPT-2-124M-shaped parameters
    python -m benchmarks.rotation_overhead --model small      # quicker on a CPU
    python -m benchmarks.rotation_overhead --device cuda
    python -m benchmarks.rotation_overhead --model small --threads 2 --repeat 5

Prints the device, then every scope's step time and its ratio to foreach AdamW and to fused
AdamW (where this device has it), all measured in one run (median of ``--repeat`` calls).
On a Linux CPU, glibc hands large freed blocks back to the OS, so every step's
temporaries page-fault afresh (this slows plain foreach AdamW too); set
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296`` to measure without it.

Rotating and unrotating cost about ``4·n`` fp32 flops per parameter (``n`` = the block size,
or the row / column / layer length where that is shorter; full ``Uᵀ G V`` products for svd),
on top of the memory-bound AdamW step: on a CPU every scope but ``none`` is bound by fp32
GEMM throughput. The targets (on a GPU) are ≤ 3x a fused AdamW step for the optimizer step
and ≤ 1% of a 480x1024-token training step.
"""
from __future__ import annotations

import argparse
import functools
import inspect
import math
import platform
import statistics
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
    """Median seconds per call over ``repeat`` calls (each synchronised), after ``warmup``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def groups(model):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2]},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def optimizer_steps(cfg: dict, device, repeat: int, scopes, block_size: int,
                    compile: bool = False):
    """``(foreach_time, fused_time_or_nan, rows)`` for one optimizer step per row."""
    model = GPT(GPTConfig(**cfg)).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    adamw = functools.partial(torch.optim.AdamW, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rows = []
    ref = timed(adamw(groups(model), foreach=True).step, device, repeat)
    rows.append(("torch AdamW (foreach)", ref))
    fused = float("nan")
    try:
        fused = timed(adamw(groups(model), fused=True).step, device, repeat)
        rows.append(("torch AdamW (fused)", fused))
    except (RuntimeError, ValueError) as e:  # fused not available on this device
        rows.append((f"torch AdamW (fused): n/a ({type(e).__name__})", float("nan")))
    views = model_layout(model)
    extra = {}
    if compile:
        if "compile" not in inspect.signature(RotatedOptimizer).parameters:
            raise SystemExit("--compile: this RotatedOptimizer has no compile option")
        extra["compile"] = True
    for scope in scopes:
        opt = RotatedOptimizer(groups(model), functools.partial(adamw, foreach=True), views,
                               RotationConfig(scope=scope, block_size=block_size),
                               split_views=(scope == "none"), **extra)
        rows.append((f"rotated AdamW [{scope}]", timed(opt.step, device, repeat)))
        del opt
    return ref, fused, rows


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
    ap.add_argument("--repeat", type=int, default=5, help="timed calls (median reported)")
    ap.add_argument("--block-size", type=int, default=768)
    ap.add_argument("--scopes", default=",".join(SCOPES))
    ap.add_argument("--train-model", choices=list(MODELS), default="tiny")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: leave PyTorch's default)")
    ap.add_argument("--compile", action="store_true",
                    help="RotatedOptimizer(compile=True): torch.compile the rotation maths")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step table")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    scopes = [s for s in args.scopes.split(",") if s]
    print(f"device: {device_name(device)}; torch {torch.__version__}")
    n = sum(p.numel() for p in GPT(GPTConfig(**MODELS[args.model])).parameters())
    print(f"\n== optimizer step, {args.model} parameter set ({n / 1e6:.1f}M params), "
          f"block_size {args.block_size}, median of {args.repeat}"
          f"{', compiled' if args.compile else ''} ==")
    ref, fused, rows = optimizer_steps(MODELS[args.model], device, args.repeat, scopes,
                                       args.block_size, args.compile)
    print(f"{'':34s} {'time':>10s}      {'/ foreach':>9s}  {'/ fused':>9s}")
    for name, t in rows:
        vs_fused = f"x{t / fused:8.2f}" if not math.isnan(fused) and not math.isnan(t) else \
            f"{'n/a':>9s}"
        print(f"{name:34s} {t * 1e3:10.2f} ms   x{t / ref:8.2f}  {vs_fused}")
    if args.no_train:
        return
    print(f"\n== training step, {args.train_model} GPT, batch {args.train_batch} ==")
    tr = train_steps(MODELS[args.train_model], device, args.repeat, args.train_batch,
                     ["plain"] + [s for s in scopes if s != "none"], args.block_size)
    base = tr[0][1]
    for scope, t in tr:
        print(f"{scope:12s} {t * 1e3:10.2f} ms   overhead {100 * (t / base - 1):+6.1f}%")


if __name__ == "__main__":
    main()
