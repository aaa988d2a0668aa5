"""Rotation overhead per scope: optimizer step time against torch AdamW (fused and foreach),
bytes per parameter of optimizer state (including what ``state_dict()`` does not show) and
peak memory, on the same GPT parameter set (docs/ROTATIONS.md).

    python -m benchmarks.rotation_overhead                         # small and 124M shapes
    python -m benchmarks.rotation_overhead --models small --threads 2 --repeat 5
    python -m benchmarks.rotation_overhead --baseline /path/to/old/checkout   # before/after
    python -m benchmarks.rotation_overhead --train                  # + whole training step

Every row is measured in a fresh child process (so peak memory is that row's own), median
of ``--repeat`` steps after two warm-up steps, on random gradients. With ``--baseline DIR``
(a directory holding an older ``rotations/`` package) each row is measured with the older
code and this one back to back, alternating their order, so the two columns share the
machine's load. ``state B/param`` is base state + shadows + rotation state (tensor bytes,
each storage once) per model parameter; ``+RSS``/``peak`` are resident memory added by the
optimizer after the steps / at most (CPU), or allocated device memory (CUDA).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "124m": dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "small": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256),
    "tiny": dict(vocab_size=320, block_size=128, n_layer=4, n_head=4, n_embd=128),
}
try:                                   # the scope table (older checkouts: the paper's six)
    from rotations.scopes import SCOPE_NAMES as SCOPES
except ImportError:
    SCOPES = ("none", "global", "layerwise", "outputwise", "inputwise", "svd")
SCOPES = list(SCOPES)
ROWS = ["adamw-foreach", "adamw-fused"] + SCOPES


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_module():
    """rotations/memory.py of *this* checkout, loaded on its own (works with old code too)."""
    spec = importlib.util.spec_from_file_location("_rot_memory", REPO / "rotations" / "memory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def groups(model):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2]},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def measure(model_name: str, row: str, device: str, repeat: int, block_size: int,
            base: str = "fused") -> dict:
    """One row, in this process: ms/step, state bytes, memory."""
    from lightning_modules.gpt_model import GPT, GPTConfig
    from rotations.config import RotationConfig
    from rotations.layout import model_layout
    from rotations.optimizer import RotatedOptimizer

    dev = torch.device(device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**MODELS[model_name])).to(dev)
    n = sum(p.numel() for p in model.parameters())
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    mem = (lambda: torch.cuda.memory_allocated(dev)) if dev.type == "cuda" else _rss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sync()
    before = mem()
    adamw = functools.partial(torch.optim.AdamW, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
    t0 = time.perf_counter()
    if row.startswith("adamw-"):
        opt = adamw(groups(model), **({"fused": True} if row == "adamw-fused" else
                                      {"foreach": True}))
    else:
        opt = RotatedOptimizer(groups(model), functools.partial(adamw, **{base: True}),
                               model_layout(model),
                               RotationConfig(scope=row, block_size=block_size),
                               split_views=(row == "none"))
    build_s = time.perf_counter() - t0
    for _ in range(2):
        opt.step()
    sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - t)
    after = mem()
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    if isinstance(opt, RotatedOptimizer):
        b = _memory_module().optimizer_bytes(opt)
    else:
        b = {"base_state": sum(t.untyped_storage().nbytes() for st in opt.state.values()
                               for t in st.values() if isinstance(t, torch.Tensor)),
             "shadow": 0, "rotation": 0}
    stat = min if os.environ.get("ROTATION_BENCH_STAT") == "min" else statistics.median
    return {"model": model_name, "row": row, "params": n, "ms": 1e3 * stat(times),
            "build_s": build_s, "bytes": b, "rss_added": after - before, "peak": peak}


def run_child(args, model_name: str, row: str, code_dir: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(code_dir), str(REPO)]),
               ROTATION_BENCH_STAT=args.stat)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model_name, row,
           "--device", args.device, "--repeat", str(args.repeat),
           "--block-size", str(args.block_size), "--threads", str(args.threads),
           "--base", args.base]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(code_dir))
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return {"model": model_name, "row": row, "error": f"exit {out.returncode}: {tail[0]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_row(r: dict, foreach: float, fused: float) -> str:
    if "error" in r:
        return f"{'error: ' + r['error'][:80]}"
    b = r["bytes"]
    per = (b["base_state"] + b["shadow"] + b["rotation"]) / r["params"]
    rot = b["rotation"] / r["params"]
    return (f"{r['ms']:9.1f} ms  x{r['ms'] / fused:6.2f} fused  x{r['ms'] / foreach:6.2f} "
            f"foreach  {per:6.2f} B/param (rotation {rot:5.2f})  +RSS {r['rss_added'] / 2**30:5.2f}"
            f" GiB  peak {r['peak'] / 2**30:5.2f} GiB")


def train_steps(cfg: dict, device, repeat: int, batch: int, scopes, block_size: int):
    """Whole training step (forward, backward, optimizer) per scope, this code only."""
    from lightning_modules.gpt_model import GPT, GPTConfig
    from rotations.config import RotationConfig
    from rotations.layout import model_layout
    from rotations.optimizer import RotatedOptimizer
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
        step()
        ts = []
        for _ in range(repeat):
            t = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ts.append(time.perf_counter() - t)
        out.append((scope, statistics.median(ts)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="small,124m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=5, help="timed steps (median reported)")
    ap.add_argument("--block-size", type=int, default=768)
    ap.add_argument("--scopes", default=",".join(SCOPES))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--base", choices=["fused", "foreach"], default="fused",
                    help="the AdamW implementation the rotated rows wrap (the paper configs "
                         "set fused: true)")
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="per-row statistic of the timed steps (min: on a busy machine)")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="directory with an older rotations/ package to compare against")
    ap.add_argument("--train", action="store_true", help="also time whole training steps")
    ap.add_argument("--train-model", choices=list(MODELS), default="tiny")
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "ROW"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.device, args.repeat,
                                 args.block_size, args.base)))
        return
    dev = torch.device(args.device)
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda" else
            f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
            f"threads, load {os.getloadavg()[0]:.1f})")
    print(f"device: {name}; torch {torch.__version__}; block_size {args.block_size}; "
          f"{args.stat} of {args.repeat} steps; rotated rows wrap AdamW({args.base}=True)")
    rows = ROWS[:2] + [s for s in args.scopes.split(",") if s]
    impls = [("after", REPO)] + ([("before", args.baseline.resolve())] if args.baseline else [])
    for model_name in args.models.split(","):
        res = {}
        for i, row in enumerate(rows):
            order = impls if i % 2 == 0 else impls[::-1]
            for label, code in order:
                if row.startswith("adamw-") and label == "before":
                    continue                       # torch's own optimizers: code-independent
                res[(row, label)] = run_child(args, model_name, row, code)
        n = next((r["params"] for r in res.values() if "params" in r), 0)
        print(f"\n== {model_name} parameter set ({n / 1e6:.1f}M params) ==")
        foreach = res[("adamw-foreach", "after")].get("ms", float("nan"))
        fused = res[("adamw-fused", "after")].get("ms", float("nan"))
        for row in rows:
            for label, _ in impls:
                if (row, label) in res:
                    tag = f"{row} [{label}]" if len(impls) > 1 and not row.startswith("adamw") \
                        else row
                    print(f"{tag:24s} {fmt_row(res[(row, label)], foreach, fused)}")
    if args.train:
        print(f"\n== training step, {args.train_model} GPT, batch {args.train_batch} ==")
        tr = train_steps(MODELS[args.train_model], dev, args.repeat, args.train_batch,
                         ["plain"] + [s for s in args.scopes.split(",") if s and s != "none"],
                         args.block_size)
        base = tr[0][1]
        for scope, t in tr:
            print(f"{scope:12s} {t * 1e3:10.2f} ms   overhead {100 * (t / base - 1):+6.1f}%")


if __name__ == "__main__":
    main()
