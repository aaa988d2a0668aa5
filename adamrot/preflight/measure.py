"""The measured side of the memory estimate: peak tensor memory of one training step on the
CPU (forward, backward, optimizer step), read from the CPU allocator's own events through
``torch.profiler`` (``profile_memory=True``): the bytes alive when the step starts (weights,
gradients, optimizer and rotation state, counted storage by storage) plus the highest running
sum of the allocations and frees during the step. Used by the tests and the note that check
:mod:`adamrot.preflight.memory` within 25 %."""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile


def _live_bytes(module, opt) -> int:
    seen, total = set(), 0
    tensors = [p for p in module.parameters()] + [p.grad for p in module.parameters()
                                                 if p.grad is not None]
    from rotations.memory import optimizer_bytes

    for t in tensors:
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    if hasattr(opt, "plan"):
        b = optimizer_bytes(opt)
        return total + b["base_state"] + b["shadow"] + b["rotation"]
    for st in opt.state.values():
        for t in st.values():
            if isinstance(t, torch.Tensor):
                total += t.untyped_storage().nbytes()
    return total


def step_peak(module, batch: tuple, opt) -> int:
    """Peak bytes of tensors during one step of ``module`` (a GPT LightningModule on the CPU)
    on ``batch`` with optimizer ``opt``; gradients are kept between steps (as under
    accumulation), so the step starts with them allocated."""
    x, y = batch

    def loss_of():               # the logits die with this frame, as in training_step
        _, loss = module(x, y)
        return loss

    base = _live_bytes(module, opt)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss_of().backward()
        opt.step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    running = peak = 0
    for _, n in events:
        running += n
        peak = max(peak, running)
    return base + peak


def measured_peak(module, micro_batch: int, steps: int = 2, seed: int = 0) -> int:
    """Build ``module``'s optimizer, take ``steps - 1`` warm-up steps (state allocated, grads
    kept), and return :func:`step_peak` of the last."""
    torch.manual_seed(seed)
    cfg = module.config
    opt = module.build_optimizer()
    gen = torch.Generator().manual_seed(seed)
    batch = (torch.randint(0, cfg.vocab_size, (micro_batch, cfg.block_size), generator=gen),
             torch.randint(0, cfg.vocab_size, (micro_batch, cfg.block_size), generator=gen))
    module.train()
    for _ in range(max(0, steps - 1)):
        _, loss = module(*batch)
        loss.backward()
        opt.step()
    return step_peak(module, batch, opt)
