"""``adamrot preflight``: the batch of the paper config (and the sweep's kept batch), the memory
estimate against the measured CPU peak, the cost calibration, the command line."""
from __future__ import annotations

import functools
import json
import os

import pytest
import torch

from adamrot.preflight import main as preflight_main
from adamrot.preflight.cost import estimate_cost, parse_gpu_check
from adamrot.preflight.measure import measured_peak
from adamrot.preflight.memory import estimate
from adamrot.preflight.report import preflight, table
from adamrot.sweep.options import LaunchOptions
from adamrot.sweep.preflight import fit_args
from adamrot.sweep.spec import expand_runs, parse_spec
from adamrot.sweep.world import keep_global_batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join("configs", "gpt2", "base.yaml")


@pytest.fixture
def repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_gpt2_base_batch_tokens_and_the_sweeps_kept_batch(repo):
    """480 sequences x 1,024 = 491,520 tokens per step, 100k steps = 49.152 B tokens; on 4
    devices the sweep divides the accumulation (40 -> 10) and the step is still 491,520."""
    r = preflight(["--config", BASE], read_data=False)
    b = r["batch"]
    assert (b["per_step"], b["tokens_per_step"], b["steps"]) == (480, 491_520, 100_000)
    assert b["total_tokens"] == 49_152_000_000
    text = table(r)
    assert "480 x 1,024 = 491,520" in text and "49.15B" in text
    assert not [f for f in r["findings"] if f["level"] == "warning"]

    plain4 = preflight(["--config", BASE, "--trainer.devices", "4"], read_data=False)
    assert plain4["batch"]["tokens_per_step"] == 4 * 491_520
    assert any("tokens per step: 1,966,080 here, 491,520 in the paper" in f["message"]
               for f in plain4["findings"])

    spec = parse_spec({"configs": [BASE], "grid": {"model.init_args.rotation.scope":
                                                   ["none", "global"]}})
    opts = LaunchOptions(launcher="slurm", gpus_per_node=4, time=60)
    said = []
    runs = keep_global_batch(spec, expand_runs(spec), opts, said.append)
    assert [r.overrides["trainer.accumulate_grad_batches"] for r in runs] == [10, 10]
    assert "40 -> 10" in said[0]
    kept = preflight(fit_args(spec, runs[1], "runs/x/scope=global", opts), read_data=False)
    kb = kept["batch"]
    assert (kb["devices"], kb["accumulation"], kb["tokens_per_step"]) == (4, 10, 491_520)
    assert not [f for f in kept["findings"] if f["level"] == "warning"]
    assert kept["memory"]["shadows"] > 0 and kept["memory"]["rotation"] > 0   # global


MODELS = {"tiny": dict(vocab_size=320, block_size=128, n_layer=4, n_head=4, n_embd=128),
          "small": dict(vocab_size=8192, block_size=256, n_layer=4, n_head=4, n_embd=256)}


@pytest.mark.parametrize("scope", ["none", "global", "svd"])
@pytest.mark.parametrize("model", ["tiny", "small"])
def test_memory_estimate_within_25_percent_of_the_measured_cpu_peak(model, scope):
    """fp32 on the CPU: the estimate (built on the meta device) against the peak tensor memory
    of a real training step (forward, backward, optimizer step) read from the allocator."""
    from lightning_modules.gpt import GPTLightningModule

    torch.set_num_threads(1)
    kw = dict(MODELS[model], attention="math", gelu="exact",
              optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
              rotation={"scope": scope, "block_size": 64})
    batch = 8 if model == "tiny" else 4
    with torch.device("meta"):
        meta = GPTLightningModule(**kw)
    est = estimate(meta, "32-true", batch, world=1)
    peak = measured_peak(GPTLightningModule(**kw), batch)
    print(f"{model} {scope}: estimate {est.total / 2**20:.1f} MiB, measured "
          f"{peak / 2**20:.1f} MiB, error {est.total / peak - 1:+.1%}")
    assert abs(est.total / peak - 1) <= 0.25
    assert (est.rotation > 0) == (scope != "none")


def test_activation_formula_grows_with_the_math_kernel_and_the_micro_batch(repo):
    from adamrot.preflight.build import build

    math = build(["--config", BASE], read_data=False)
    flash = build(["--config", BASE, "--config", "configs/gpt2/flash.yaml"], read_data=False)
    m12 = estimate(math.model, "bf16-mixed", 12, 1).activations
    f12 = estimate(flash.model, "bf16-mixed", 12, 1).activations
    assert estimate(math.model, "bf16-mixed", 24, 1).activations == 2 * m12
    cfg = math.model.config   # math keeps the softmax (H·T) and the scaled q, k per token
    per_token = (m12 - f12) / (12 * 1024 * cfg.n_layer)
    assert per_token == 2 * (cfg.n_head * 1024 + 2 * cfg.n_embd) - (2 * cfg.n_embd + 4 * cfg.n_head)


GPU_CHECK = """device: NVIDIA H100 80GB HBM3; torch 2.9; model 124m; 40 x 12 x 1024 tokens per step
attention scope        tokens/s    MFU   step s   opt ms opt share  vs AdamW  peak GB
math      plain          150000  40.0%    3.277     12.0     0.37%    +0.00%    30.10
math      global         140000  37.3%    3.511     250.0    7.12%    +7.14%    31.50
flash     plain          300000  60.0%    1.638     12.0     0.73%    +0.00%    12.00
flash     global             74    n/a    3.468    409.5    11.81%    +7.19%      n/a
"""


def test_gpu_check_calibrates_the_cost(repo, tmp_path):
    cal = parse_gpu_check(GPU_CHECK)
    assert cal["device"] == "NVIDIA H100 80GB HBM3" and len(cal["rows"]) == 4
    assert cal["rows"][3]["mfu"] is None and cal["rows"][3]["peak_gb"] is None
    assert cal["rows"][1] == {"attention": "math", "scope": "global", "tokens_per_s": 140000.0,
                              "mfu": pytest.approx(0.373), "step_s": 3.511, "opt_ms": 250.0,
                              "vs_adamw": pytest.approx(0.0714), "peak_gb": 31.5}
    from adamrot.preflight.build import build

    b = build(["--config", BASE, "--model.init_args.rotation.scope", "global"], read_data=False)
    assumed = estimate_cost(b.model, 480, 100_000, 1, "h100-80gb")
    assert assumed.mfu == 0.30 and assumed.mfu_source == "assumed"
    cal["path"] = "gpu_check.json"
    measured = estimate_cost(b.model, 480, 100_000, 1, "h100-80gb", cal)
    assert measured.mfu == pytest.approx(0.40) and measured.mfu_source.startswith("measured")
    plain_s = measured.flops_per_step / (989e12 * 0.40)
    assert measured.step_s == pytest.approx(plain_s * 1.0714)
    assert measured.gpu_hours == pytest.approx(measured.step_s * 100_000 / 3600)
    assert assumed.rotation_flops_per_step > 0
    g = assumed.rotation_by_scope["global"]            # one permuted rotation of all d, n = 768
    d = sum(v.numel for v in b.model.rotation_views())
    assert g["elements"] == d and g["bytes"] == 40 * d
    n, k, p = 768, d // 768, d % 768
    assert g["flops"] == 2 * (2 * k * n * n + 2 * p * p)


def test_cli_writes_preflight_json_and_refuses_bad_input(repo, tmp_path, capsys):
    run = tmp_path / "run"
    rc = preflight_main(["--config", BASE, "--gpu", "a100-40gb", "--no-data",
                         "--trainer.default_root_dir", str(run)])
    out = capsys.readouterr().out
    assert rc == 0, out
    saved = json.loads((run / "preflight.json").read_text())
    assert saved["batch"]["tokens_per_step"] == 491_520 and saved["gpus"]["a100-40gb"]["fits"]
    # 40 sequences per micro-batch of math attention do not fit 40 GB: an error, exit 1
    rc = preflight_main(["--config", BASE, "--gpu", "a100-40gb", "--no-data",
                         "--data.init_args.batch_size", "40"])
    out = capsys.readouterr().out
    assert rc == 1 and "error: memory:" in out and "does not fit a100-40gb" in out
    with pytest.raises(SystemExit) as e:
        preflight_main(["--config", "nope.yaml"])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("adamrot: error:")
    with pytest.raises(SystemExit) as e:
        preflight_main(["--config", BASE, "--mfu", "2"])
    assert e.value.code == 2 and "--mfu" in capsys.readouterr().err
