"""``adamrot prepare``: tokenize a text corpus (or pack an image dataset) once for training.

    adamrot prepare hub --tokenizer gpt2 --workers 16 --out /data/owt        # OpenWebText
    adamrot prepare local 'corpus/*.jsonl' --out prepared/mine
    adamrot prepare imagefolder /data/imagenet --out /data/imagenet-prepared
    adamrot fit --config configs/gpt2/base.yaml --data.init_args.prepared /data/owt

Re-running with the same corpus and tokenizer is a no-op; an interrupted run is redone.
Preparation, caching and sampling: docs/DATA.md.
"""
from __future__ import annotations

import argparse
import sys

from adamrot.errors import refused_write

TEXT_SOURCES = ("embedded", "local", "hub")
IMAGE_SOURCES = ("imagefolder", "imagenet-parquet")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adamrot prepare", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="details: docs/DATA.md")
    p.add_argument("source", choices=TEXT_SOURCES + IMAGE_SOURCES,
                   help="text: embedded | local | hub; images: imagefolder | imagenet-parquet")
    p.add_argument("paths", nargs="*", help="local: files, directories or globs "
                   "(.txt/.jsonl/.parquet); imagefolder: the root holding train/ and val/")
    p.add_argument("--out", help="output directory or object-store URL (text default: the "
                   "cache the training data module uses, $ADAMROT_CACHE/prepared/<key>)")
    p.add_argument("--workers", type=int, default=1, help="parallel tokenizer processes")
    p.add_argument("--tokenizer", choices=("bytes", "gpt2"), default="bytes")
    p.add_argument("--tiktoken-ranks-file", help="local GPT-2 ranks file (offline machines)")
    p.add_argument("--hub-dataset", default="Skylion007/openwebtext")
    p.add_argument("--hub-data-files", help="explicit files/glob (local or hf://) to read")
    p.add_argument("--hub-split", default="train")
    p.add_argument("--text-column", default="text")
    p.add_argument("--max-bytes", type=int, help="only the first MAX_BYTES bytes of text")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of documents held out for validation (text)")
    p.add_argument("--train-files", nargs="+", help="imagenet-parquet: training files/globs")
    p.add_argument("--val-files", nargs="+", help="imagenet-parquet: validation files/globs")
    p.add_argument("--train-split", default="train", help="imagefolder split directory")
    p.add_argument("--val-split", default="val", help="imagefolder split directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        out = _prepare_text(args) if args.source in TEXT_SOURCES else _prepare_images(args)
        print(f"prepared: {out}\ntrain with: --data.init_args.prepared {out}")
    except (ValueError, FileNotFoundError) as e:
        print(f"adamrot: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:                 # disk full, quota, permissions: one line, exit 2
        return refused_write(e, "the preparation stopped (re-run the same command once there "
                                "is room: an interrupted preparation is redone)")
    return 0


def _prepare_text(args) -> str:
    from datamodules.prepare import TextCorpus, prepare_text

    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    if args.max_bytes is not None and args.max_bytes < 1:
        raise ValueError(f"--max-bytes must be positive, got {args.max_bytes}")
    corpus = TextCorpus(args.source, tuple(args.paths), args.hub_dataset, args.hub_data_files,
                        args.hub_split, args.text_column, args.max_bytes)
    out, manifest = prepare_text(corpus, args.tokenizer, args.tiktoken_ranks_file, out=args.out,
                                 val_fraction=args.val_fraction, workers=args.workers,
                                 progress=not args.no_progress,
                                 log=lambda m: print(m, file=sys.stderr))
    print(f"{manifest['train_documents']} training documents ({manifest['train_tokens']} "
          f"tokens), {manifest['val_documents']} validation documents "
          f"({manifest['val_tokens']} tokens), tokenizer {manifest['tokenizer']}")
    return out


def _prepare_images(args) -> str:
    from datamodules.image_prepare import prepare_images

    if not args.out:
        raise ValueError("--out is required for images")
    if args.source == "imagefolder":
        if len(args.paths) != 1:
            raise ValueError("imagefolder takes one path: the root holding "
                             f"{args.train_split}/ and {args.val_split}/")
        splits = {"train": f"{args.paths[0]}/{args.train_split}",
                  "val": f"{args.paths[0]}/{args.val_split}"}
    else:
        if not args.train_files or not args.val_files:
            raise ValueError("imagenet-parquet needs --train-files and --val-files")
        splits = {"train": args.train_files, "val": args.val_files}
    return prepare_images(args.source, splits, args.out, workers=args.workers,
                          progress=not args.no_progress)


if __name__ == "__main__":
    raise SystemExit(main())
