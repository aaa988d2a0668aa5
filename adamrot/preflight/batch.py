"""The batch as ``fit`` will run it: nodes × devices × micro-batch × accumulation, sequences
(images) and tokens per optimizer step, steps, total tokens (images) and epochs; and, for the
catalogue's paper configs, the paper's own numbers beside them."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Optional

#: the paper's numbers per paper config (docs/CONVENTIONS.md §7, the configs' headers)
PAPER = {
    "configs/gpt2/base.yaml": {"what": "GPT-2 124M, rotation paper App. B", "per_step": 480,
                               "tokens_per_step": 491_520, "steps": 100_000,
                               "total_tokens": 49_152_000_000},
    "configs/vit_s16/base.yaml": {"what": "SimpleViT-S/16, Beyer et al. 2022", "per_step": 1024,
                                  "epochs": 100},
    "configs/resnet50/base.yaml": {"what": "ResNet-50, torchvision recipe", "per_step": 256,
                                   "epochs": 100},
    "configs/paper/og_llama160m.yaml": {"what": "160M Llama, Orvieto & Gower", "per_step": 256,
                                        "tokens_per_step": 524_288, "steps": 6_200,
                                        "total_tokens": 3_250_585_600},
}
#: dataset sizes used when the data is not prepared on this machine (documented numbers)
DOCUMENTED = {
    "Skylion007/openwebtext": {"train_tokens": 9_035_582_198, "documents": 8_013_769,
                               "source": "OpenWebText with the GPT-2 tokenizer (nanoGPT's count)"},
    "imagenet-1k": {"train_images": 1_281_167, "classes": 1000,
                    "source": "ImageNet-1k train split"},
}


@dataclass
class BatchPlan:
    nodes: int
    devices: int
    devices_note: str
    micro_batch: int
    accumulation: int
    seq_len: Optional[int]           # tokens per sequence (None for images)
    per_step: int                    # sequences (images) per optimizer step
    tokens_per_step: Optional[int]
    steps: Optional[int]
    total_samples: Optional[int]
    total_tokens: Optional[int]
    dataset_samples: Optional[int]   # windows (images) per epoch over all ranks
    dataset_source: str
    epochs: Optional[float]
    paper: Optional[dict]

    @property
    def world(self) -> int:
        return self.nodes * self.devices

    def to_dict(self) -> dict:
        return {**asdict(self), "world": self.world}


def _int(v: Any, default: int) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def count_devices(devices: Any) -> tuple[int, str]:
    """``trainer.devices`` as a number: an int, a list of ids, ``"4"``, ``"0,1"``; ``auto`` and
    ``-1`` count as 1 (what a one-GPU job gets; pass ``--trainer.devices N`` for more)."""
    if isinstance(devices, (list, tuple)):
        return len(devices), ""
    if isinstance(devices, int) and devices > 0:
        return devices, ""
    if isinstance(devices, str) and devices.strip().isdigit() and int(devices) > 0:
        return int(devices), ""
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()]), ""
    return 1, f"trainer.devices={devices!r} counted as 1 (set --trainer.devices N for N GPUs)"


def paper_of(configs: list[str]) -> Optional[tuple[str, dict]]:
    for c in configs:
        rel = os.path.relpath(os.path.abspath(c)).replace(os.sep, "/")
        for key, numbers in PAPER.items():
            if rel == key or rel.endswith("/" + key):
                return key, numbers
    return None


def plan_batch(trainer: dict, data_args: dict, model_args: dict, data_class: str,
               configs: list[str], dataset: Optional[dict] = None) -> BatchPlan:
    """``dataset``: ``{"samples": windows or images per epoch, "source": text}`` when known."""
    nodes = max(1, _int(trainer.get("num_nodes"), 1))
    devices, note = count_devices(trainer.get("devices", "auto"))
    micro = _int(data_args.get("batch_size"), 1)
    accum = max(1, _int(trainer.get("accumulate_grad_batches"), 1))
    text = data_class.endswith("TextDataModule")
    seq = _int(data_args.get("block_size") or model_args.get("block_size"), 0) if text else None
    per_step = nodes * devices * micro * accum
    tps = per_step * seq if seq else None
    samples = (dataset or {}).get("samples")
    max_steps = _int(trainer.get("max_steps"), -1)
    max_epochs = trainer.get("max_epochs")
    steps: Optional[int] = None
    if max_steps and max_steps > 0:
        steps = max_steps
        if max_epochs not in (None, -1) and samples:
            steps = min(steps, int(max_epochs) * steps_per_epoch(samples, nodes * devices,
                                                                 micro, accum))
    elif max_epochs not in (None, -1) and samples:
        steps = int(max_epochs) * steps_per_epoch(samples, nodes * devices, micro, accum)
    total = steps * per_step if steps is not None else None
    paper = paper_of(configs)
    return BatchPlan(nodes=nodes, devices=devices, devices_note=note, micro_batch=micro,
                     accumulation=accum, seq_len=seq, per_step=per_step, tokens_per_step=tps,
                     steps=steps, total_samples=total,
                     total_tokens=total * seq if (total is not None and seq) else None,
                     dataset_samples=samples, dataset_source=(dataset or {}).get("source", ""),
                     epochs=(total / samples) if (total and samples) else None,
                     paper={"config": paper[0], **paper[1]} if paper else None)


def steps_per_epoch(samples: int, world: int, micro: int, accum: int) -> int:
    """Optimizer steps per epoch: each rank reads ``samples // world`` items in full
    micro-batches (drop_last); Lightning steps on the last batch of an epoch too."""
    batches = (samples // world) // micro
    return max(1, -(-batches // accum))


def paper_findings(plan: BatchPlan) -> list[tuple[str, str]]:
    """A warning for every number that differs from the paper's."""
    p = plan.paper
    if not p:
        return []
    out = []
    checks = [("sequences (images) per step", plan.per_step, p.get("per_step")),
              ("tokens per step", plan.tokens_per_step, p.get("tokens_per_step")),
              ("optimizer steps", plan.steps if "steps" in p else None, p.get("steps")),
              ("total tokens", plan.total_tokens, p.get("total_tokens"))]
    for what, mine, theirs in checks:
        if theirs is not None and mine is not None and mine != theirs:
            out.append(("warning", f"{what}: {mine:,} here, {theirs:,} in the paper "
                                   f"({p['what']}, {p['config']})"))
    if p.get("epochs") and plan.epochs is not None and abs(plan.epochs - p["epochs"]) > 0.5:
        out.append(("warning", f"epochs: {plan.epochs:.1f} here, {p['epochs']} in the paper"))
    return out
