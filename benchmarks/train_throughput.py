"""Training throughput of the GPT on one device, plain and rotated, all in one run: tokens/s,
MFU and peak memory per attention kernel and per rotation scope, the optimizer step's share
of the training step, and the rotation's bf16 vs fp32 error (docs/CONVENTIONS.md §6).

    python -m benchmarks.train_throughput --model 124m --compile     # on a GPU (gpu_check.sh)
    python -m benchmarks.train_throughput --model tiny --accum 2     # CPU smoke run

The model, optimizer and rotation are built as training builds them
(:class:`lightning_modules.gpt.GPTLightningModule` and its ``build_optimizer``), with the
exact GELU, bf16 autocast on CUDA, gradient clipping at 1 and one optimizer step per
``--accum`` micro-batches (the paper: 40 x 12 x 1,024 tokens). Targets (one H100/H200, 124M):
rotated steps within 1 % of the plain one, and peak memory at most plain + 2 GB.
"""
from __future__ import annotations

import argparse
import functools
import gc
import platform
import statistics
import time

import torch

from lightning_modules.base import peak_bf16_flops
from lightning_modules.gpt import GPTLightningModule
from rotations.config import SCOPES, RotationConfig

MODELS = {
    "124m": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "small": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256),
    "tiny": dict(vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=64),
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(cfg: dict, attention: str, device, compile_model: bool) -> GPTLightningModule:
    torch.manual_seed(0)
    adamw = functools.partial(torch.optim.AdamW, lr=6e-4, betas=(0.9, 0.95), eps=1e-8,
                              weight_decay=0.1, fused=True)
    module = GPTLightningModule(**cfg, attention=attention, gelu="exact", optimizer=adamw,
                                compile=compile_model).to(device)
    module.configure_model()                   # compiles in place, as the Trainer does
    if compile_model:
        x = torch.zeros(1, cfg["block_size"] + 1, dtype=torch.long, device=device)
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                module(x[:, :-1], x[:, 1:])[1].backward()
        except Exception as e:  # noqa: BLE001 - report it and measure the eager model
            print(f"compile failed ({type(e).__name__}: {str(e)[:200]}); eager instead")
            return build(cfg, attention, device, False)
        module.zero_grad(set_to_none=True)
    return module


def measure(module, scope: str, block_size: int, batch: int, accum: int, steps: int,
            device) -> dict:
    """Time ``steps`` optimizer steps of ``accum`` micro-batches each (after one warm-up
    step, which holds any SVD refresh); the optimizer step is timed on its own too."""
    module.rotation = RotationConfig(scope=scope, block_size=block_size)
    opt = module.build_optimizer()
    params = list(module.parameters())
    cfg = module.config
    data = torch.randint(0, cfg.vocab_size, (accum, batch, cfg.block_size + 1), device=device)
    amp = device.type == "cuda"

    def step(opt_times: list | None):
        for x in data:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                _, loss = module(x[:, :-1], x[:, 1:])
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        sync(device)
        t = time.perf_counter()
        opt.step()
        sync(device)
        if opt_times is not None:
            opt_times.append(time.perf_counter() - t)
        opt.zero_grad(set_to_none=True)

    step(None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    opt_times: list = []
    t0 = time.perf_counter()
    for _ in range(steps):
        step(opt_times)
    dt = (time.perf_counter() - t0) / steps
    tokens = accum * batch * cfg.block_size / dt
    peak = peak_bf16_flops(device)
    out = {"step_s": dt, "opt_ms": 1e3 * statistics.median(opt_times),
           "tokens_per_s": tokens,
           "mfu": module.model.flops_per_token() * tokens / peak if peak else None,
           "peak_gb": (torch.cuda.max_memory_allocated(device) / 2 ** 30
                       if device.type == "cuda" else None)}
    del opt
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def update_errors(cfg: dict, scopes: list[str], block_size: int, device):
    """Per scope, the relative error of one rotated AdamW update computed in bf16 and in fp32
    against the same update in fp64 (weights start at 0 and weight decay is off, so the
    parameter after the step is the update itself; scope ``none`` is AdamW's own error).
    Yields ``(scope, {"fp32": e, "bf16": e})``, or ``(scope, exception)``."""
    torch.manual_seed(1)
    module = GPTLightningModule(**cfg, gelu="exact").to(device)
    x = torch.randint(0, cfg["vocab_size"], (2, cfg["block_size"] + 1), device=device)
    module(x[:, :-1], x[:, 1:])[1].backward()
    grads = [p.grad.double() for p in module.parameters()]
    adam = functools.partial(torch.optim.AdamW, lr=1.0, weight_decay=0.0)
    models = {dt: module.to(dtype=dt) if dt == torch.float64 else
              GPTLightningModule(**cfg, gelu="exact", optimizer=adam).to(device=device, dtype=dt)
              for dt in (torch.float64, torch.float32, torch.bfloat16)}
    models[torch.float64].optimizer_factory = adam
    for scope in scopes:
        try:
            deltas = {}
            for dt, m in models.items():
                m.rotation = RotationConfig(scope=scope, block_size=block_size)
                with torch.no_grad():
                    for p, g in zip(m.parameters(), grads):
                        p.zero_()
                        p.grad = g.to(dt)
                m.build_optimizer().step()
                deltas[dt] = torch.cat([p.detach().double().flatten() for p in m.parameters()])
            ref = deltas[torch.float64]
            yield scope, {name: ((deltas[dt] - ref).norm() / ref.norm()).item()
                          for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        except Exception as e:  # noqa: BLE001 - one failing row must not hide the rest
            yield scope, e


def fmt(v, spec: str, scale: float = 1.0) -> str:
    return "n/a" if v is None else format(v * scale, spec)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=list(MODELS), default="tiny")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=12, help="sequences per micro-batch")
    ap.add_argument("--accum", type=int, default=40, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per row")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--block-size", type=int, default=768, help="rotation block size")
    ap.add_argument("--attention", default="math,flash",
                    help="kernels for the plain rows; the first is used for the rotated rows")
    ap.add_argument("--scopes", default=",".join(s for s in SCOPES if s != "none"))
    ap.add_argument("--error-model", choices=list(MODELS), default=None,
                    help="model for the bf16/fp32 error table (default: --model)")
    ap.add_argument("--no-error", action="store_true", help="skip the bf16/fp32 error table")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    cfg = MODELS[args.model]
    attentions = args.attention.split(",")
    scopes = [s for s in args.scopes.split(",") if s]
    print(f"device: {device_name(device)}; torch {torch.__version__}; model {args.model}; "
          f"{args.accum} x {args.batch} x {cfg['block_size']} tokens per step; "
          f"compile {args.compile}; fused AdamW; rotation block {args.block_size}")
    print(f"{'attention':9s} {'scope':10s} {'tokens/s':>10s} {'MFU':>6s} {'step s':>8s} "
          f"{'opt ms':>8s} {'opt share':>9s} {'vs AdamW':>9s} {'peak GB':>8s}")
    t_start = time.perf_counter()
    for i, attention in enumerate(attentions):
        module = build(cfg, attention, device, args.compile)
        rows = ["none"] + (scopes if i == 0 else [])
        plain = None
        for scope in rows:
            try:
                r = measure(module, scope, args.block_size, args.batch, args.accum,
                            args.steps, device)
            except Exception as e:  # noqa: BLE001 - one failing row must not hide the rest
                print(f"{attention:9s} {scope:10s} failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            plain = plain or r
            share = r["opt_ms"] / 1e3 / r["step_s"]
            extra = (r["step_s"] - plain["step_s"]) / plain["step_s"]
            print(f"{attention:9s} {scope if scope != 'none' else 'plain':10s} "
                  f"{r['tokens_per_s']:10.0f} {fmt(r['mfu'], '.1%'):>6s} {r['step_s']:8.3f} "
                  f"{r['opt_ms']:8.1f} {share:9.2%} {extra:+9.2%} "
                  f"{fmt(r['peak_gb'], '.2f'):>8s}", flush=True)
        del module
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("opt share: optimizer step / training step; vs AdamW: training step time against "
          "the plain fused-AdamW row of the same kernel")
    if not args.no_error:
        ecfg = MODELS[args.error_model or args.model]
        print(f"\nrotated AdamW update vs fp64, relative error (model "
              f"{args.error_model or args.model}):")
        print(f"{'scope':10s} {'fp32':>10s} {'bf16':>10s}")
        for scope, e in update_errors(ecfg, ["none"] + scopes, args.block_size, device):
            if isinstance(e, Exception):
                print(f"{scope:10s} failed: {type(e).__name__}: {str(e)[:200]}")
            else:
                print(f"{scope:10s} {e['fp32']:10.2e} {e['bf16']:10.2e}", flush=True)
    print(f"\nwall time: {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
