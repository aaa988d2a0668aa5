"""The public surface of :class:`rotations.optimizer.RotatedOptimizer` that observers use
(plan, shadows, base_state, base_group, rotation_step, last_svd_refresh, base)."""
from __future__ import annotations

import functools

import torch
from torch import nn

from rotations.config import RotationConfig
from rotations.layout import LayerView
from rotations.optimizer import RotatedOptimizer


def _two_layer(scope_only):
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(4, 3))
    b = nn.Parameter(torch.randn(5))
    views = [LayerView("a", a, "linear", param_name="a"), LayerView("b", b, "bias", param_name="b")]
    cfg = RotationConfig(only=scope_only, svd_refresh_every=2)
    opt = RotatedOptimizer([{"params": [a]}, {"params": [b], "lr": 0.5}],
                           functools.partial(torch.optim.AdamW, lr=0.1), views, cfg)
    return a, b, opt


def test_base_state_and_group_for_rotated_and_direct_views():
    a, b, opt = _two_layer({"linear": "svd"})
    assert set(opt.shadows) == {"a"}
    assert opt.base_state("a") == {} and opt.base_state("b") == {}
    a.grad, b.grad = torch.randn(4, 3), torch.randn(5)
    opt.step()
    assert opt.base_state("a")["exp_avg"].shape == (4, 3)          # shadow, rotated coords
    assert opt.base_state("b")["exp_avg"] is opt.base.state[b]["exp_avg"]   # direct param
    assert any(p is opt.shadows["a"] for p in opt.base_group("a")["params"])
    assert opt.base_group("b")["lr"] == 0.5
    assert opt.base_group("a")["lr"] == 0.1


def test_last_svd_refresh_and_rotation_step():
    a, b, opt = _two_layer({"linear": "svd"})
    assert opt.last_svd_refresh is None and opt.rotation_step == 0
    seen = []
    for _ in range(4):
        a.grad, b.grad = torch.randn(4, 3), torch.randn(5)
        opt.step()
        seen.append((opt.rotation_step, opt.last_svd_refresh))
    assert seen == [(1, 1), (2, 1), (3, 3), (4, 3)]
    sd = opt.state_dict()
    _, _, fresh = _two_layer({"linear": "svd"})
    fresh.load_state_dict(sd)
    assert fresh.last_svd_refresh == 3 and fresh.rotation_step == 4


def test_last_svd_refresh_none_without_svd():
    a, b, opt = _two_layer({"linear": "global"})
    a.grad, b.grad = torch.randn(4, 3), torch.randn(5)
    opt.step()
    assert opt.last_svd_refresh is None and opt.rotation_step == 1
