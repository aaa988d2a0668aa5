"""The rotation's memory floor (docs/ROTATIONS.md), by tensor bytes: the int32 permutation is stored
once (no inverse, no int64 copy), the Haar blocks once in the compute dtype (no float64
masters kept), SVD bases once; and the sampled rotations are the same as before from the
same seed (docs/ROTATIONS.md)."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from lightning_modules.gpt_model import GPT, GPTConfig
from rotations.scopes import SVDBucket
from rotations.config import RotationConfig
from rotations.layout import model_layout
from rotations.memory import optimizer_bytes
from rotations.optimizer import RotatedOptimizer
from rotations.sampling import BlockRotation, block_structure, seeded_generator

ADAMW = functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1)


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=37, block_size=8, n_layer=2, n_head=2, n_embd=16,
                         attention="math"))


def _step(model, opt, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()


def _blocks_bytes(d, block_size, itemsize=4):
    n, _, p = block_structure(d, block_size)
    return itemsize * (n * n + p * p)


def test_same_rotations_from_the_same_seed():
    """Values recorded with the previous code (int64 randperm then int32, float64 blocks):
    the int32 ``randperm`` draws the same permutation, so old checkpoints and runs agree."""
    R = BlockRotation(1000, 64, 0, "global")
    assert R.fingerprint() == 30280.575776230482
    assert R.perm[:5].tolist() == [791, 774, 248, 977, 269] and R.perm.dtype == torch.int32
    ref = torch.randperm(1000, generator=seeded_generator(0, "global"))   # int64 convention
    assert torch.equal(R.perm.long(), ref)
    assert float(R.R_n[0, 0]) == -0.0011699658070511987
    R.release()                                   # re-sampled bit-identically on demand
    assert float(R.R_n[0, 0]) == -0.0011699658070511987


def test_permutation_is_uniform():
    """Each of the 3! permutations of 3 coordinates appears with probability 1/6 over keys."""
    counts: dict = {}
    N = 1200
    for i in range(N):
        perm = tuple(BlockRotation(3, 1, 0, f"k{i}").perm.tolist())
        counts[perm] = counts.get(perm, 0) + 1
    assert len(counts) == 6
    chi2 = sum((c - N / 6) ** 2 / (N / 6) for c in counts.values())
    assert chi2 < 20.5                     # p = 0.001 for 5 degrees of freedom


@pytest.mark.parametrize("scope", ["global", "layerwise", "outputwise", "inputwise"])
def test_block_scopes_hold_one_int32_permutation_and_fp32_blocks(scope):
    model = tiny_gpt()
    views = model_layout(model)
    opt = RotatedOptimizer(model.parameters(), ADAMW, views,
                           RotationConfig(scope=scope, block_size=5))
    _step(model, opt)
    _step(model, opt, 1)
    got = optimizer_bytes(opt)
    expect, small = 0, 0
    for u in opt.plan.units:
        R = getattr(u, "R", None)
        if R is None:
            continue
        expect += _blocks_bytes(R.d, 5) + (4 * R.d if R.permuted else 0)
        if scope in ("outputwise", "inputwise"):      # row/column gather indices
            small += 3 * 8 * R.d
    assert expect <= got["rotation"] <= expect + small, (got, expect)
    assert got["shadow"] == 4 * sum(v.numel for v in views)
    for b in opt._buckets:                            # no float64 copy kept
        for u in b.units:
            if getattr(u, "R", None) is not None:
                assert u.R._blocks is None


def test_svd_bases_stored_once():
    model = tiny_gpt()
    views = model_layout(model)
    opt = RotatedOptimizer(model.parameters(), ADAMW, views,
                           RotationConfig(scope="svd", svd_dense_max=10 ** 4))
    _step(model, opt)
    _step(model, opt, 1)
    expect = sum(4 * (v.shape[0] ** 2 + v.shape[1] ** 2) for v in views)
    assert optimizer_bytes(opt)["rotation"] == expect
    for b in opt._buckets:
        assert isinstance(b, SVDBucket)
        for l, u in enumerate(b.units):               # the unit's basis is a slot of the stack
            assert u.U.dense.data_ptr() == b.U.dense[l].data_ptr()


def test_gpt2_124m_global_rotation_state_is_4_bytes_per_param():
    """GPT-2 124M shape on CPU tensors (uninitialised: nothing is trained): the global
    rotation holds one int32 permutation of all 124M coordinates plus one 768 x 768 block.
    (Sampling the permutation takes a few seconds.)"""
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12,
                              n_embd=768))
    model = model.to_empty(device="cpu")
    model.transformer.wte.weight = model.lm_head.weight      # to_empty unties them
    n = sum(p.numel() for p in model.parameters())
    opt = RotatedOptimizer(model.parameters(), ADAMW, model_layout(model),
                           RotationConfig(scope="global", block_size=768))
    got = optimizer_bytes(opt)
    assert got["rotation"] == 4 * n + _blocks_bytes(n, 768)
    per_param = got["rotation"] / n
    assert per_param <= 4.02, per_param
    assert got["shadow"] == 4 * n
    assert math.isclose(n, 124.4e6, rel_tol=0.01)


def test_sampling_rule_counts_time_and_memory():
    from rotations.memory import (MAX_SAMPLE_SECONDS, SAMPLE_FLOPS_PER_S, check_sampling,
                                  sampling_cost)
    # one global unit of d = 50_000 in blocks of 20_000: two copies share one 20k block,
    # plus a 10k residual
    cost = sampling_cost([("global", 50_000)], 20_000)
    flops = 8 / 3 * (20_000 ** 3 + 10_000 ** 3)
    assert cost["flops"] == pytest.approx(flops)
    assert cost["seconds"] == pytest.approx(flops / SAMPLE_FLOPS_PER_S)
    assert cost["bytes"] == 8 * (20_000 ** 2 + 10_000 ** 2) + 2 * 8 * 20_000 ** 2
    with pytest.raises(ValueError, match=r"rotation.block_size=20000: .* about 1200 s .*"
                                         r"at most 120 s"):
        check_sampling([("global", 50_000)], 20_000)
    # the paper's 768 on GPT-2 124M layerwise (48 matrices of 768 x 3072) is allowed
    ok = check_sampling([(f"layer:{i}", 768 * 3072) for i in range(48)], 768)
    assert ok["seconds"] < MAX_SAMPLE_SECONDS
    with pytest.raises(ValueError, match=r"needs 0.6 GiB .* this machine has 0.0 GiB"):
        check_sampling([("global", 5_000)], 5_000, memory_bytes=1 << 20)
