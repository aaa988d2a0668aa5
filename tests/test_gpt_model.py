"""Tests for lightning_modules/gpt_model.py (quick, CPU)."""
import math

import pytest
import torch

from lightning_modules.gpt_model import GPT, GPTConfig, SwiGLUMLP, nanogpt_param_groups
from rotations.layout import PARAM_TYPES, check_layout, model_layout


VARIANTS = [dict(variant="gpt2"), dict(variant="llama")]


# -- parameter counts (meta device) --------------------------------------------------------
def _gpt2_124m_count(bias: bool) -> int:
    V, T, L, C = 50257, 1024, 12, 768
    per_block = 2 * C + 3 * C * C + C * C + 4 * C * C + 4 * C * C   # ln_1, ln_2, qkv, proj, fc, proj
    if bias:
        per_block += 2 * C + 3 * C + C + 4 * C + C                    # ln biases + linear biases
    return V * C + T * C + L * per_block + C + (C if bias else 0)


def test_gpt2_124m_parameter_count_on_meta():
    with torch.device("meta"):
        m = GPT(GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12,
                          n_embd=768, bias=True))
    assert next(m.parameters()).is_meta
    # the classic GPT-2 small count (with biases, tied, incl. wpe); nanoGPT's non-embedding
    # figure is the "123.65M" it prints for gpt2
    assert m.num_params() == 124_439_808 == _gpt2_124m_count(bias=True)
    assert m.num_params(non_embedding=True) == 124_439_808 - 1024 * 768 == 123_653_376
    with torch.device("meta"):
        m = GPT(GPTConfig(vocab_size=50257, bias=False))
    assert m.num_params() == 124_337_664 == _gpt2_124m_count(bias=False)
    # flops estimate: 6N + 12 L H Q T
    N = m.num_params(non_embedding=True)
    assert m.flops_per_token() == 6 * N + 12 * 12 * 12 * 64 * 1024
    assert m.flops_per_token(seq_len=256) == 6 * N + 12 * 12 * 12 * 64 * 256


def test_llama_160m_on_meta():
    with torch.device("meta"):
        m = GPT(GPTConfig(variant="llama", tie_embeddings=False))   # 12 / 12 / 768, vocab 50304
    assert m.config.mlp_hidden == 2048                                # 2/3 * 4 * 768
    assert "wpe" not in m.transformer
    assert isinstance(m.transformer.h[0].mlp, SwiGLUMLP)
    assert isinstance(m.transformer.ln_f, torch.nn.RMSNorm)
    C, V, H, L = 768, 50304, 2048, 12
    expected = 2 * V * C + L * (2 * C + 4 * C * C + 3 * C * H) + C
    assert m.num_params() == expected == 162_220_800
    check_layout(m.parameters(), m.rotation_layout())
    # rope buffers are not persistent
    assert not any("cos" in k or "sin" in k for k in m.state_dict())


def test_meta_then_to_empty_and_reset(tiny_gpt_config):
    with torch.device("meta"):
        m = GPT(tiny_gpt_config(variant="llama"))
    m = m.to_empty(device="cpu")
    m.reset_parameters()
    torch.manual_seed(0)
    ref = GPT(tiny_gpt_config(variant="llama"))
    assert torch.equal(m.rotary.cos, ref.rotary.cos) and torch.equal(m.rotary.sin, ref.rotary.sin)
    logits, loss = m(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    assert torch.isfinite(loss)


# -- config validation --------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(n_embd=30, n_head=4), "n_head"),
    (dict(attention="xformers"), "attention"),
    (dict(variant="bert"), "variant"),
    (dict(dropout=1.5), "dropout"),
    (dict(n_layer=0), "n_layer"),
    (dict(mlp_ratio=0), "mlp_ratio"),
    (dict(variant="llama", n_embd=6, n_head=2), "head size"),
])
def test_config_validation(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)


# -- forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_shapes_and_initial_loss(kw, tiny_gpt):
    m = tiny_gpt(**kw)
    idx = torch.randint(0, 97, (3, 16))
    logits, loss = m(idx)
    assert logits.shape == (3, 16, 97) and loss is None
    # independent targets (with targets == idx a tied model favours repeating the input)
    logits, loss = m(idx, torch.randint(0, 97, (3, 16)))
    assert loss.ndim == 0
    assert abs(loss.item() - math.log(97)) < 0.1
    tgt = torch.randint(0, 97, (3, 16))
    tgt[:, :8] = -1                                   # ignore_index=-1 (nanoGPT)
    _, loss_masked = m(idx, tgt)
    ref = torch.nn.functional.cross_entropy(logits[:, 8:].reshape(-1, 97), tgt[:, 8:].reshape(-1))
    torch.testing.assert_close(loss_masked, ref)
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))


def test_init_statistics(tiny_gpt_config):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=512, block_size=64, n_layer=4, n_head=4, n_embd=256))
    blk = m.transformer.h[0]
    assert abs(blk.attn.c_attn.weight.std().item() - 0.02) < 1e-3
    assert abs(blk.mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    resid = 0.02 / math.sqrt(2 * 4)
    assert abs(blk.attn.c_proj.weight.std().item() - resid) < 5e-4
    assert abs(blk.mlp.c_proj.weight.std().item() - resid) < 5e-4
    assert torch.all(blk.ln_1.weight == 1) and blk.ln_1.bias is None
    mb = GPT(tiny_gpt_config(bias=True))
    assert all(torch.all(b.bias == 0) for b in [mb.transformer.h[0].attn.c_attn,
                                                mb.transformer.h[0].mlp.c_fc,
                                                mb.transformer.h[0].ln_1])


@pytest.mark.parametrize("kw", VARIANTS)
def test_causality(kw, tiny_gpt):
    m = tiny_gpt(**kw).eval()
    idx = torch.randint(0, 97, (2, 16))
    idx2 = idx.clone()
    idx2[:, 10] = (idx2[:, 10] + 1) % 97
    a, _ = m(idx)
    b, _ = m(idx2)
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


@pytest.mark.parametrize("kw", VARIANTS)
def test_math_and_flash_agree(kw, tiny_gpt):
    m_math = tiny_gpt(attention="math", **kw)
    m_flash = tiny_gpt(attention="flash", **kw)
    m_flash.load_state_dict(m_math.state_dict())
    idx = torch.randint(0, 97, (2, 16))
    a, la = m_math(idx, idx)
    b, lb = m_flash(idx, idx)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    la.backward()
    lb.backward()
    for p, q in zip(m_math.parameters(), m_flash.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", VARIANTS)
def test_hvp_double_backward_math(kw, tiny_gpt):
    """HVP by double backward through math attention equals a finite difference of grads."""
    m = tiny_gpt(dtype=torch.float64, attention="math", **kw)
    params = list(m.parameters())
    idx = torch.randint(0, 97, (2, 12))
    tgt = torch.randint(0, 97, (2, 12))
    torch.manual_seed(1)
    vec = [torch.randn_like(p) for p in params]

    def grads():
        return torch.autograd.grad(m(idx, tgt)[1], params)

    loss = m(idx, tgt)[1]
    g = torch.autograd.grad(loss, params, create_graph=True)
    gv = sum((gi * vi).sum() for gi, vi in zip(g, vec))
    hv = torch.autograd.grad(gv, params)

    eps = 1e-5
    with torch.no_grad():
        for p, v in zip(params, vec):
            p.add_(v, alpha=eps)
    gp = grads()
    with torch.no_grad():
        for p, v in zip(params, vec):
            p.add_(v, alpha=-2 * eps)
    gm = grads()
    fd = [(a - b) / (2 * eps) for a, b in zip(gp, gm)]
    num = sum(((h - f) ** 2).sum() for h, f in zip(hv, fd)).sqrt()
    den = sum((f ** 2).sum() for f in fd).sqrt()
    assert den > 0
    assert (num / den).item() < 1e-6


def test_tied_weights_share_storage(tiny_gpt):
    m = tiny_gpt()
    assert m.lm_head.weight is m.transformer.wte.weight
    assert m.lm_head.weight.data_ptr() == m.transformer.wte.weight.data_ptr()
    names = [n for n, _ in m.named_parameters()]
    assert "transformer.wte.weight" in names and "lm_head.weight" not in names
    u = tiny_gpt(tie_embeddings=False)
    assert u.lm_head.weight is not u.transformer.wte.weight


# -- rotation layout ----------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(bias=True), dict(tie_embeddings=False),
                                dict(variant="llama"), dict(variant="llama", bias=True,
                                                            tie_embeddings=False)])
def test_layout_covers_every_parameter_once(kw, tiny_gpt):
    m = tiny_gpt(**kw)
    views = m.rotation_layout()
    check_layout(m.parameters(), views)
    assert model_layout(m) is not None
    assert all(v.ptype in PARAM_TYPES for v in views)
    assert sum(v.numel for v in views) == m.num_params()
    pnames = dict(m.named_parameters())
    for v in views:
        assert pnames[v.param_name] is v.param
    assert len({v.name for v in views}) == len(views)


def test_layout_types_and_shapes(tiny_gpt):
    m = tiny_gpt()
    C, V, T, L = 32, 97, 16, 2
    views = {v.name: v for v in m.rotation_layout()}
    for i in range(L):
        for j, part in enumerate(("query", "key", "value")):
            v = views[f"transformer.h.{i}.attn.c_attn.weight[{part}]"]
            assert v.ptype == part and v.shape == (C, C) and v.rows == (j * C, (j + 1) * C)
            assert v.param_name == f"transformer.h.{i}.attn.c_attn.weight"
            assert v.layer_id == f"transformer.h.{i}.attn.c_attn[{part}]"
            assert v.meta["block"] == i
            torch.testing.assert_close(v.matrix(v.param), v.param[j * C:(j + 1) * C])
        assert views[f"transformer.h.{i}.attn.c_proj.weight"].ptype == "attn_out"
        assert views[f"transformer.h.{i}.mlp.c_fc.weight"].ptype == "mlp_in"
        assert views[f"transformer.h.{i}.mlp.c_fc.weight"].shape == (4 * C, C)
        assert views[f"transformer.h.{i}.mlp.c_proj.weight"].ptype == "mlp_out"
        for ln in ("ln_1", "ln_2"):
            v = views[f"transformer.h.{i}.{ln}.weight"]
            assert v.ptype == "layernorm" and v.shape == (C, 1)
    assert views["transformer.ln_f.weight"].ptype == "layernorm"
    # position embedding is transposed to (dim, num)
    wpe = views["transformer.wpe.weight"]
    assert wpe.ptype == "position" and wpe.transpose and wpe.shape == (C, T)
    # tied embedding: ONE view, LM-head layout (vocab, dim), no transpose
    emb = [v for v in views.values() if v.ptype in ("embedding", "lm_head")]
    assert len(emb) == 1
    assert emb[0].ptype == "embedding" and not emb[0].transpose and emb[0].shape == (V, C)
    assert emb[0].param is m.lm_head.weight


def test_layout_untied_and_bias(tiny_gpt):
    m = tiny_gpt(tie_embeddings=False, bias=True)
    C, V = 32, 97
    views = {v.name: v for v in m.rotation_layout()}
    wte, head = views["transformer.wte.weight"], views["lm_head.weight"]
    assert wte.ptype == "embedding" and wte.transpose and wte.shape == (C, V)
    assert head.ptype == "lm_head" and not head.transpose and head.shape == (V, C)
    assert views["transformer.h.0.ln_1.bias"].ptype == "layernorm"
    b = views["transformer.h.0.attn.c_attn.bias[value]"]
    assert b.ptype == "bias" and b.rows == (2 * C, 3 * C) and b.meta["of"] == "value"
    assert b.layer_id == b.name
    assert views["transformer.h.0.mlp.c_fc.bias"].meta["of"] == "mlp_in"


def test_layout_llama(tiny_gpt):
    m = tiny_gpt(variant="llama")
    views = {v.name: v for v in m.rotation_layout()}
    assert views["transformer.h.0.mlp.c_fc2.weight"].ptype == "mlp_in"
    assert views["transformer.h.1.ln_2.weight"].ptype == "layernorm"
    assert not any(v.ptype == "position" for v in views.values())


# -- optimizer groups ---------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(), dict(bias=True, tie_embeddings=False),
                                dict(variant="llama")])
def test_param_groups(kw, tiny_gpt):
    m = tiny_gpt(**kw)
    groups = nanogpt_param_groups(m.named_parameters(), 0.1)
    assert [set(g) for g in groups] == [{"params", "weight_decay"}] * 2
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    all_params = list(m.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == len(all_params)
    assert sum(p.numel() for g in groups for p in g["params"]) == m.num_params()
    L = m.config.n_layer
    n_mats = 5 if m.config.variant == "llama" else 4
    n_emb = (1 if m.tied else 2) + (1 if "wpe" in m.transformer else 0)
    assert len(decay["params"]) == L * n_mats + n_emb
    torch.optim.AdamW(groups, lr=1e-3)   # accepted by torch optimizers


# -- GELU ---------------------------------------------------------------------------------
def test_gelu_exact_is_nanogpts_and_tanh_is_gpt2s(tiny_gpt):
    exact, approx = tiny_gpt(gelu="exact"), tiny_gpt(gelu="tanh")
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(exact.transformer.h[0].mlp.gelu(x), torch.nn.GELU()(x))
    torch.testing.assert_close(approx.transformer.h[0].mlp.gelu(x),
                               torch.nn.GELU(approximate="tanh")(x))
    idx = torch.randint(0, 97, (2, 16))
    a, b = exact(idx)[0], approx(idx)[0]          # same weights (same seed), other GELU
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, b, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="gelu"):
        GPTConfig(gelu="erf")
