"""Shared test fixtures. Tiny CPU models: one intra-op thread is faster than two on a shared
2-core machine and keeps timings stable (set before any test runs)."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _prepared_data_cache(tmp_path_factory):
    """Auto-prepared corpora go to a per-session cache, never to ``~/.cache/adamrot``
    (``os.environ``, so commands the tests start as subprocesses inherit it)."""
    import os
    old = os.environ.get("ADAMROT_CACHE")
    os.environ["ADAMROT_CACHE"] = str(tmp_path_factory.mktemp("adamrot_cache"))
    yield
    if old is None:
        os.environ.pop("ADAMROT_CACHE", None)
    else:
        os.environ["ADAMROT_CACHE"] = old

#: the tiny GPT every model test starts from (override any GPTConfig field)
TINY_GPT = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32)


def _gpt_config(**overrides):
    from lightning_modules.gpt_model import GPTConfig
    return GPTConfig(**{**TINY_GPT, **overrides})


def _gpt(seed: int = 0, dtype=torch.float32, **overrides):
    from lightning_modules.gpt_model import GPT
    torch.manual_seed(seed)
    return GPT(_gpt_config(**overrides)).to(dtype)


def _gpt_module(seed: int = 0, **kwargs):
    from lightning_modules.gpt import GPTLightningModule
    torch.manual_seed(seed)
    return GPTLightningModule(**{**TINY_GPT, **kwargs})


@pytest.fixture
def tiny_gpt_config():
    """``tiny_gpt_config(**overrides) -> GPTConfig`` (TINY_GPT plus overrides)."""
    return _gpt_config


@pytest.fixture
def tiny_gpt():
    """``tiny_gpt(seed=0, dtype=torch.float32, **GPTConfig overrides) -> GPT``, seeded."""
    return _gpt


@pytest.fixture
def tiny_gpt_module():
    """``tiny_gpt_module(seed=0, **GPTLightningModule kwargs) -> GPTLightningModule``."""
    return _gpt_module
