"""Tiny CPU models: one intra-op thread is faster than two on a shared 2-core machine and
keeps timings stable (set before any test runs)."""
import torch

torch.set_num_threads(1)
