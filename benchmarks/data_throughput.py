"""Data throughput: tokens/s of ``adamrot prepare`` (GPT-2 tokenizer) and of the training loader.

    .venv/bin/python -m benchmarks.data_throughput --ranks-file gpt2.tiktoken --max-bytes 16000000

Prepare is measured per worker process against tiktoken's own ``encode_ordinary_batch`` on
the same texts (the ceiling: tokenizing only, one thread and tiktoken's default threads); the
loader (block 1024, batch 12, GPT-2's 124M setting) with 0, 1 and 2 workers. Both are set
against what one H100 consumes training GPT-2 124M, ~470k tokens/s (llm.c's published pace).
Corpus: the embedded one (standard-library sources; code tokenizes into more tokens per
byte than web text). Offline machines pass a local GPT-2 ranks file (``--ranks-file``).
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

H100_TOKENS_PER_S = 470_000


def measure_prepare(texts, args, out_root: str) -> dict:
    from datamodules.prepare import TextCorpus, prepare_text
    from datamodules.tokenizers import build_tokenizer

    tok = build_tokenizer("gpt2", args.ranks_file)
    results = {}
    for threads in (1, None):
        t = time.perf_counter()
        kwargs = {"num_threads": threads} if threads else {}
        n = sum(len(ids) for ids in tok.encoding.encode_ordinary_batch(texts, **kwargs))
        results[f"tiktoken encode_ordinary_batch ({threads or 'default'} threads)"] = \
            n / (time.perf_counter() - t)
    corpus = TextCorpus("embedded", max_bytes=args.max_bytes)
    for workers in args.prepare_workers:
        t = time.perf_counter()
        _, m = prepare_text(corpus, "gpt2", args.ranks_file, out=f"{out_root}/w{workers}",
                            workers=workers)
        rate = (m["train_tokens"] + m["val_tokens"]) / (time.perf_counter() - t)
        results[f"adamrot prepare, {workers} worker(s) (total)"] = rate
        results[f"adamrot prepare, {workers} worker(s) (per worker)"] = rate / workers
    return results


def measure_loader(args, out_root: str) -> dict:
    from datamodules.text import TextDataModule

    results = {}
    for workers in args.loader_workers:
        dm = TextDataModule(prepared=f"{out_root}/w{args.prepare_workers[0]}",
                            block_size=args.block, batch_size=args.batch, num_workers=workers)
        it = iter(dm.train_dataloader())
        for _ in range(5):                                   # start-up, workers warm
            next(it)
        t = time.perf_counter()
        for _ in range(args.batches):
            x, _ = next(it)
        results[f"training loader, {workers} worker(s)"] = \
            args.batches * x.numel() / (time.perf_counter() - t)
        del it
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks-file", help="local GPT-2 .tiktoken ranks file (offline machines)")
    p.add_argument("--max-bytes", type=int, default=16_000_000)
    p.add_argument("--prepare-workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--batches", type=int, default=300)
    args = p.parse_args()

    from datamodules.corpus import read_embedded

    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    texts = read_embedded(args.max_bytes)
    print(f"corpus: embedded, {len(texts)} documents, {sum(map(len, texts)) / 1e6:.1f} M chars")
    with tempfile.TemporaryDirectory(prefix="adamrot-bench-") as root:
        results = {**measure_prepare(texts, args, root), **measure_loader(args, root)}
    print(f"\n{'what':<58} {'tokens/s':>12} {'x H100 need':>12}")
    for what, rate in results.items():
        print(f"{what:<58} {rate:>12,.0f} {rate / H100_TOKENS_PER_S:>11.2f}x")
    per_worker = results[f"training loader, {args.loader_workers[-1]} worker(s)"] / \
        max(1, args.loader_workers[-1])
    print(f"\none H100 at GPT-2 124M consumes ~{H100_TOKENS_PER_S:,} tokens/s: "
          f"{H100_TOKENS_PER_S / per_worker:.2f} loader workers of this machine keep up")


if __name__ == "__main__":
    main()
