"""Training throughput of the GPT: tokens/s, MFU and peak memory, plain vs rotated, math vs
flash attention, eager vs ``torch.compile``, all measured in one run on one device.

    python -m benchmarks.train_throughput --model 124m --batch 12 --device cuda --compile
    python -m benchmarks.train_throughput --model tiny                  # CPU smoke run

Targets (one H100, GPT-2 124M, bf16, sequence 1024): ≥ 400k tokens/s (≈ 35% MFU) with the
flash kernel and torch.compile; rotated runs within a few percent of plain ones and peak
memory ≤ plain + 2 GB.
"""
from __future__ import annotations

import argparse
import functools
import time

import torch

from benchmarks.rotation_overhead import MODELS, device_name, groups, sync
from lightning_modules.gpt_model import GPT, GPTConfig
from rotations.config import RotationConfig
from rotations.layout import model_layout
from rotations.optimizer import RotatedOptimizer

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def measure(cfg: dict, device, batch: int, steps: int, attention: str, scope: str,
            compile_model: bool, block_size: int) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg, attention=attention)).to(device)
    fwd = torch.compile(model) if compile_model else model
    base = functools.partial(torch.optim.AdamW, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                             fused=device.type == "cuda")
    opt = (base(groups(model)) if scope == "plain" else
           RotatedOptimizer(groups(model), base, model_layout(model),
                            RotationConfig(scope=scope, block_size=block_size)))
    T = cfg["block_size"]
    data = torch.randint(0, cfg["vocab_size"], (batch, T + 1), device=device)
    amp = device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            _, loss = fwd(data[:, :-1], data[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    dt = (time.perf_counter() - t) / steps
    tokens = batch * T / dt
    pk = peak_flops(device)
    out = {"tokens_per_s": tokens, "step_ms": dt * 1e3,
           "mfu": model.flops_per_token() * tokens / pk if pk else None}
    if device.type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    del opt, model, fwd
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--block-size", type=int, default=768)
    ap.add_argument("--scopes", default="plain,global,layerwise,outputwise,inputwise,svd")
    ap.add_argument("--attention", default="flash,math")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    print(f"device: {device_name(device)}; torch {torch.__version__}; model {args.model}; "
          f"batch {args.batch} x {MODELS[args.model]['block_size']}; compile {args.compile}")
    print(f"{'attention':9s} {'scope':10s} {'tokens/s':>12s} {'step ms':>9s} {'MFU':>6s} "
          f"{'peak GB':>8s} {'vs plain':>9s}")
    for attention in args.attention.split(","):
        plain = None
        for scope in args.scopes.split(","):
            r = measure(MODELS[args.model], device, args.batch, args.steps, attention, scope,
                        args.compile, args.block_size)
            plain = plain or r["tokens_per_s"]
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
            mem = f"{r['peak_mem_gb']:.2f}" if "peak_mem_gb" in r else "n/a"
            print(f"{attention:9s} {scope:10s} {r['tokens_per_s']:12.0f} {r['step_ms']:9.1f} "
                  f"{mfu:>6s} {mem:>8s} {r['tokens_per_s'] / plain:9.3f}")


if __name__ == "__main__":
    main()
