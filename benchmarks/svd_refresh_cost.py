"""Cost of one SVD refresh of GPT-2 124M (every matrix view, docs/CONVENTIONS.md §4): the
float64 factorisation the optimizer uses against a float32 one, per view shape, on the
machine it runs on.

    python -m benchmarks.svd_refresh_cost                      # 124M, 2 threads, 3 repeats
    python -m benchmarks.svd_refresh_cost --threads 16 --device cuda

Each distinct view shape is timed with both precisions back to back, alternating which
goes first, and multiplied by its count; the float64 path is :func:`rotations.svd.svd_factors`
(factorisation, sign convention, basis completion), the float32 row the same steps with
``torch.linalg.svd`` in float32 (the code before 2026-12-08). A refresh happens once every
``svd_refresh_every`` steps (200; 250 in the NeurIPS version), so the amortised cost per
step is the total divided by F.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch

from rotations.svd import OrthoBasis, sign_convention, svd_factors


def _float32_factors(g: torch.Tensor, dense_max: int = 4096):
    u, s, vh = torch.linalg.svd(g.float(), full_matrices=False)
    u, v = sign_convention(u, vh.t())
    return OrthoBasis.complete(u, dense_max), s, OrthoBasis.complete(v, dense_max)


def gpt2_124m_shapes() -> collections.Counter:
    """Matrix views of GPT-2 124M as the model lays them out (tied embedding (50257, 768);
    per block query/key/value/attn_out (768, 768), mlp_in (3072, 768), mlp_out
    (768, 3072); position (768, 1024))."""
    from lightning_modules.gpt_model import GPT, GPTConfig

    with torch.device("meta"):
        model = GPT(GPTConfig())
    return collections.Counter(tuple(v.shape) for v in model.rotation_layout()
                               if min(v.shape) > 1)


def _time(fn, g, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(g)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shapes = gpt2_124m_shapes()
    print(f"GPT-2 124M matrix views: {sum(shapes.values())} in {len(shapes)} shapes; "
          f"device {device}, {args.threads} threads, median of {args.repeat}")
    print(f"{'shape':>14} {'count':>5} {'float32 s':>10} {'float64 s':>10} {'ratio':>6}")
    tot32 = tot64 = 0.0
    gen = torch.Generator().manual_seed(0)
    for shape, count in sorted(shapes.items()):
        g = torch.randn(shape, generator=gen).to(device)
        t32, t64 = [], []
        for i in range(args.repeat):
            order = [(t32, _float32_factors), (t64, svd_factors)]
            for out, fn in (order if i % 2 == 0 else order[::-1]):
                out.append(_time(fn, g, device))
        m32, m64 = statistics.median(t32), statistics.median(t64)
        tot32 += m32 * count
        tot64 += m64 * count
        print(f"{str(shape):>14} {count:>5} {m32:>10.3f} {m64:>10.3f} {m64 / m32:>6.2f}")
    print(f"{'one refresh':>14} {'':>5} {tot32:>10.2f} {tot64:>10.2f} {tot64 / tot32:>6.2f}")


if __name__ == "__main__":
    main()
