"""Training-time overhead of the measurement callbacks, and the cost of one Hessian row.

Usage::

    python benchmarks/callback_overhead.py [--steps 1200] [--repeats 2] [--scope global]
                                            [--device cpu]

Trains a tiny GPT (2 layers, 64 wide, vocab 257, 64 tokens x 8 sequences per step) with
Lightning on random tokens, AdamW in the given rotation scope, with and without the
callbacks at their default intervals (``SecondMomentHistogram`` every 500 steps,
``UpdateOrthogonality`` every 100, ``SVDRefreshLogger`` every step). Reports, from the same
process:

* ``in-hook``: time spent inside the callbacks' hooks / training time of that run without
  it — the overhead proper, immune to machine noise between runs (target ≤ 3 %);
* ``A/B``: steady-state time per step with callbacks / without (interleaved runs, best of
  ``--repeats``), which also sees second-order effects but is noisy on a shared machine;
* one Hessian row: one HVP (double backward) on one batch of the same tiny GPT, in rotated
  coordinates, against one plain gradient step (forward + backward).
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    proc = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                proc = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {proc}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"


MODEL = dict(vocab_size=257, block_size=64, n_layer=2, n_head=4, n_embd=64, warmup_steps=10)


def make_module(scope: str):
    from lightning_modules.gpt import GPTLightningModule

    torch.manual_seed(0)
    return GPTLightningModule(
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.95),
                                    weight_decay=0.1),
        rotation={"scope": scope, "block_size": 768, "svd_refresh_every": 200}, **MODEL)


def loader(steps: int, batch: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, MODEL["vocab_size"], (steps * batch, MODEL["block_size"] + 1),
                      generator=g)
    ds = torch.utils.data.TensorDataset(x[:, :-1], x[:, 1:])
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)


class Timed:
    """Wrap a callback's ``on_train_batch_end``/``on_train_end`` to time them."""

    def __init__(self, cb):
        self.cb, self.seconds, self.calls = cb, 0.0, 0
        for hook in ("on_train_batch_end", "on_train_end"):
            orig = getattr(cb, hook)

            def timed(*a, _orig=orig, **k):
                t = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    self.seconds += time.perf_counter() - t
                    self.calls += 1
            setattr(cb, hook, timed)


class StepClock:
    """Steady-state seconds per step (after ``warm`` steps) of a run."""

    def __init__(self, warm: int):
        from lightning.pytorch.callbacks import Callback

        clock = self

        class _C(Callback):
            def on_train_batch_start(self, trainer, *a):
                if trainer.global_step == warm and clock.t0 is None:
                    clock.t0 = time.perf_counter()

            def on_train_end(self, trainer, *a):
                clock.t1 = time.perf_counter()
                clock.steps = trainer.global_step - warm

        self.t0 = self.t1 = None
        self.steps = 0
        self.callback = _C()

    @property
    def per_step(self) -> float:
        return (self.t1 - self.t0) / max(1, self.steps)


def fit(scope: str, steps: int, with_callbacks: bool, device: str, root: str):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from callbacks import SecondMomentHistogram, SVDRefreshLogger, UpdateOrthogonality

    clock = StepClock(warm=20)
    cbs = [clock.callback]
    timed = []
    if with_callbacks:
        timed = [Timed(SecondMomentHistogram(png=False)), Timed(UpdateOrthogonality()),
                 Timed(SVDRefreshLogger())]
        cbs += [t.cb for t in timed]
    trainer = L.Trainer(max_steps=steps, accelerator=device.split(":")[0], devices=1,
                        logger=TensorBoardLogger(root, name="", version=""),
                        callbacks=cbs, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=50,
                        num_sanity_val_steps=0, limit_val_batches=0)
    module = make_module(scope)
    t = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader(steps))
    total = time.perf_counter() - t
    return {"per_step": clock.per_step, "total": total,
            "hooks": {type(x.cb).__name__: (x.seconds, x.calls) for x in timed},
            "module": module, "trainer": trainer}


def hessian_row_cost(scope: str, device: str, repeats: int = 5) -> dict:
    from adamrot.probe import gpt_loss
    from rotations.probes import RotatedSpace, hessian_rows

    module = make_module(scope).to(device)
    opt = module.build_optimizer()
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, MODEL["vocab_size"], (8, MODEL["block_size"] + 1), generator=g).to(device)
    batch = (x[:, :-1], x[:, 1:])
    model = module.model
    # one optimizer step so that SVD bases (if any) exist
    opt.zero_grad()
    gpt_loss(model, batch).backward()
    opt.step()
    space = RotatedSpace.from_optimizer(opt, module.rotation_views())

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    hessian_rows(model, gpt_loss, [batch], space, [5])       # warm-up
    ts = []
    for r in range(repeats):
        sync()
        t = time.perf_counter()
        hessian_rows(model, gpt_loss, [batch], space, [100 * r + 7])
        sync()
        ts.append(time.perf_counter() - t)
    gs = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        model.zero_grad()
        gpt_loss(model, batch).backward()
        sync()
        gs.append(time.perf_counter() - t)
    return {"row": min(ts), "grad": min(gs), "d": space.d}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--scope", default="global")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import warnings
    warnings.filterwarnings("ignore")

    print(f"device: {device_name(args.device)}")
    print(f"torch {torch.__version__}; tiny GPT {MODEL}; AdamW, rotation scope {args.scope}; "
          f"{args.steps} steps per run")
    base, withc = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            base.append(fit(args.scope, args.steps, False, args.device, f"{tmp}/b{r}"))
            withc.append(fit(args.scope, args.steps, True, args.device, f"{tmp}/c{r}"))
    b = min(x["per_step"] for x in base)
    c = min(x["per_step"] for x in withc)
    print(f"step time without callbacks: {b * 1e3:.2f} ms   with: {c * 1e3:.2f} ms   "
          f"A/B ratio {c / b:.4f} ({(c / b - 1) * 100:+.2f} %, best of {args.repeats})")
    run = min(withc, key=lambda x: x["per_step"])
    train_time = run["total"] - sum(s for s, _ in run["hooks"].values())
    tot = 0.0
    for name, (sec, calls) in run["hooks"].items():
        tot += sec
        print(f"  in-hook {name:22s} {sec * 1e3:9.1f} ms over {calls} calls "
              f"= {sec / train_time * 100:6.3f} % of training time")
    print(f"in-hook overhead, all callbacks: {tot / train_time * 100:.3f} % "
          f"(ratio {1 + tot / train_time:.4f}; target <= 3 %)")
    h = hessian_row_cost(args.scope, args.device)
    print(f"one Hessian row, one batch (d = {h['d']}, {args.scope}): {h['row'] * 1e3:.1f} ms = "
          f"{h['row'] / h['grad']:.2f} x one gradient ({h['grad'] * 1e3:.1f} ms); "
          f"a paper-style row (k batches) costs k times that")
    return 0


if __name__ == "__main__":
    sys.exit(main())
