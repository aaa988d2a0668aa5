"""One preflight: build (:mod:`.build`), then the batch, memory, cost and data sections and
the findings, as a JSON-able dict; and the table printed from it."""
from __future__ import annotations

import json
import os
from typing import Optional

from adamrot.preflight.batch import DOCUMENTED, paper_findings, plan_batch
from adamrot.preflight.build import Built, build
from adamrot.preflight.cost import estimate_cost, load_calibration
from adamrot.preflight.memory import (GPUS, MICRO_BATCH_LIMIT, estimate, fmt_bytes,
                                      largest_micro_batch, usable_bytes)

LEVELS = ("error", "warning", "info")
DEFAULT_COST_GPU = "a100-80gb"


def dataset_size(built: Built) -> Optional[dict]:
    """Windows (images) per epoch: from the data module when read, else documented sizes."""
    dm = built.datamodule
    args = built.data
    if dm is not None:
        dm.setup()
        if hasattr(dm, "eot_token"):
            from datamodules.text import read_index_windows

            return {"samples": read_index_windows(dm.path, "train", dm.block_size + 1),
                    "source": f"prepared {dm.path}"}
        return {"samples": len(dm.train_set), "source": "prepared "
                + str(getattr(dm, "prepared", None) or "in memory")}
    if built.data_class.endswith("TextDataModule"):
        doc = DOCUMENTED.get(args.get("hub_dataset"))
        if doc and args.get("source") == "hub" and args.get("tokenizer") == "gpt2" \
                and not args.get("hub_data_files"):
            window = int(args.get("block_size") or 1024) + 1
            return {"samples": doc["train_tokens"] // window,
                    "source": f"documented: {doc['source']}, {doc['train_tokens']:,} tokens"}
    if built.data_class.endswith("ImageNetDataModule") and args.get("source") != "embedded":
        classes = getattr(built.model, "num_classes", None) or \
            (built.dump.get("model") or {}).get("init_args", {}).get("num_classes")
        if classes == 1000:
            doc = DOCUMENTED["imagenet-1k"]
            return {"samples": doc["train_images"],
                    "source": f"documented: {doc['source']}, {doc['train_images']:,} images"}
    return None


def preflight(argv: list[str], gpu: Optional[str] = None, mfu: Optional[float] = None,
              calibration: Optional[str] = None, read_data: bool = True,
              built: Optional[Built] = None) -> dict:
    """Everything ``adamrot preflight ARGV`` prints, as a dict."""
    built = built or build(argv, read_data=read_data)
    findings = list(built.findings)
    model_args = (built.dump.get("model") or {}).get("init_args") or {}
    try:
        size = dataset_size(built)
    except (ValueError, OSError, RuntimeError) as e:
        size = None
        findings.append(("error", f"data: {e}"))
    plan = plan_batch(built.trainer, built.data, model_args, built.data_class, built.configs,
                      size)
    if plan.devices_note:
        findings.append(("info", plan.devices_note))
    findings += paper_findings(plan)
    if plan.steps is None:
        findings.append(("warning", "steps: unknown (max_steps unset and the dataset size is "
                                    "not known here)"))
    precision = built.trainer.get("precision") or "32-true"
    mem = estimate(built.model, precision, plan.micro_batch, plan.world)
    fits = {}
    for name in GPUS:
        budget = usable_bytes(name)
        fits[name] = {"memory": GPUS[name], "usable": budget, "fits": mem.total <= budget,
                      "largest_micro_batch": largest_micro_batch(mem, built.model, precision,
                                                                 budget)}
    if gpu:
        if not fits[gpu]["fits"]:
            findings.append(("error", f"memory: {fmt_bytes(mem.total)} per device does not fit "
                                      f"{gpu} ({fmt_bytes(fits[gpu]['usable'])} usable); largest "
                                      f"micro-batch that fits: "
                                      f"{fits[gpu]['largest_micro_batch']}"))
    elif not any(f["fits"] for f in fits.values()):
        findings.append(("warning", f"memory: {fmt_bytes(mem.total)} per device fits none of "
                                    f"{', '.join(GPUS)}"))
    cal = load_calibration(calibration)
    cost = estimate_cost(built.model, plan.per_step, plan.steps, plan.world,
                         gpu or DEFAULT_COST_GPU, cal, mfu)
    data: dict = {"note": built.data_note}
    if built.datamodule is not None:
        from adamrot.preflight.data import check_data

        try:
            more, found = check_data(built.datamodule, plan.world, plan.epochs)
            data.update(more)
            findings += found
        except (ValueError, OSError, RuntimeError) as e:
            findings.append(("error", f"data: {e}"))
    return {"configs": built.configs, "argv": list(argv),
            "root_dir": built.trainer.get("default_root_dir"), "root_given": built.root_given,
            "batch": plan.to_dict(), "memory": mem.to_dict(), "gpus": fits,
            "cost": cost.to_dict(), "data": data,
            "findings": [{"level": lv, "message": m} for lv, m in findings]}


def _n(v, fmt: str = ",") -> str:
    if v is None:
        return "?"
    return format(v, fmt)


def _big(v: Optional[float]) -> str:
    if v is None:
        return "?"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:,.0f}"


def table(r: dict) -> str:
    """The printed table of one preflight."""
    b, m, c, d = r["batch"], r["memory"], r["cost"], r["data"]
    unit = "sequences" if b["seq_len"] else "images"
    lines = [f"preflight: {' + '.join(r['configs']) or '(no config)'}"]
    p = b["paper"] or {}
    row = lambda k, v, paper=None: lines.append(  # noqa: E731
        f"  {k:<28} {v}" + (f"   (paper: {paper})" if p and paper not in (None, "?") else ""))
    lines.append("batch")
    row("nodes x devices x micro x accum", f"{b['nodes']} x {b['devices']} x {b['micro_batch']}"
        f" x {b['accumulation']} = {b['per_step']:,} {unit} per step", _n(p.get("per_step")))
    if b["seq_len"]:
        row("tokens per step", f"{b['per_step']:,} x {b['seq_len']:,} = "
            f"{b['tokens_per_step']:,}", _n(p.get("tokens_per_step")) if p else None)
    row("optimizer steps", _n(b["steps"]), _n(p.get("steps")) if "steps" in p else None)
    if b["seq_len"]:
        row("total tokens", f"{_big(b['total_tokens'])} ({_n(b['total_tokens'])})",
            _big(p.get("total_tokens")) if p.get("total_tokens") else None)
    else:
        row("total images", _n(b["total_samples"]))
    row("epochs", f"{b['epochs']:.2f} over {_n(b['dataset_samples'])} {unit} "
        f"({b['dataset_source']})" if b["epochs"] is not None else "? (dataset size unknown)",
        p.get("epochs") if p.get("epochs") else None)
    lines.append("memory per device")
    for k in ("params", "grads", "base_state", "shadows", "rotation", "autocast_copies",
              "activations", "total"):
        extra = ""
        if k == "activations":
            extra = f"  [{m['activation_method']}, micro-batch {b['micro_batch']}]"
        if k == "base_state" and not m["base_state_measured"]:
            extra = "  [assumed 8 B/param]"
        row(k.replace("_", " "), fmt_bytes(m[k]) + extra)
    for name, f in r["gpus"].items():
        row(f"  {name} ({fmt_bytes(f['usable'])} usable)",
            f"{'fits' if f['fits'] else 'DOES NOT FIT'}; largest micro-batch "
            + (f">= {MICRO_BATCH_LIMIT:,}" if f["largest_micro_batch"] >= MICRO_BATCH_LIMIT
               else f"{f['largest_micro_batch']:,}"))
    lines.append(f"time and cost ({c['gpu']}, {b['world']} GPU(s))")
    row("FLOPs per step", _big(c["flops_per_step"]))
    if c["rotation_flops_per_step"] or c["rotation_bytes_per_step"]:
        row("rotation per step", f"{_big(c['rotation_flops_per_step'])} FLOPs, "
            f"{fmt_bytes(c['rotation_bytes_per_step'])} moved, ~{c['rotation_s'] * 1e3:.0f} ms")
        for scope, w in (c.get("rotation_by_scope") or {}).items():
            row(f"  {scope}", f"{_big(w['flops'])} FLOPs, {fmt_bytes(w['bytes'])} moved, "
                f"{w['elements']:,} rotated elements")
    row("MFU", f"{c['mfu']:.0%} ({c['mfu_source']})")
    step = c["step_s"]
    row("step time", "?" if step is None else f"{step:.2f} s" if step >= 0.1
        else f"{step * 1e3:.3g} ms")
    hours = c["gpu_hours"]
    row("GPU-hours", "?" if hours is None else f"{hours:,.0f}" if hours >= 10
        else f"{hours:.3g}")
    lines.append("data")
    if d.get("note"):
        row("read here", d["note"])
    for k, label in (("prepared", "prepared"), ("filesystem", "filesystem"),
                     ("litdata_mode", "litdata detects")):
        if d.get(k):
            row(label, d[k])
    if d.get("chunks"):
        ch = d["chunks"]
        per = (f"{ch['windows_per_reader']:,} windows" if "windows_per_reader" in ch
               else f"{ch['items_per_reader']:,} items")
        row("chunks", f"{ch['chunks']} for {ch['readers']} readers (ranks x workers): "
            f"{per} per reader")
    for k, what in (("documents_per_batch", "documents"), ("classes_per_batch", "classes")):
        if d.get(k):
            s = d[k]
            row(f"distinct {what} per batch", f"{s['mean']:.1f} of {s['batch']} (min {s['min']}, "
                f"{s['batches']} batches sampled)")
    if d.get("epoch2_repeats") is not None:
        row("epoch 2 repeats epoch 1", f"{d['epoch2_repeats']:.0%} of windows")
    counts = {lv: sum(f["level"] == lv for f in r["findings"]) for lv in LEVELS}
    lines.append(f"findings: {counts['error']} error(s), {counts['warning']} warning(s)")
    for f in sorted(r["findings"], key=lambda f: LEVELS.index(f["level"])):
        lines.append(f"  {f['level']}: {f['message']}")
    return "\n".join(lines)


def write_json(r: dict, path: str) -> None:
    from adamrot.runs import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, json.dumps(r, indent=2, default=str) + "\n")


def errors(r: dict) -> list[str]:
    return [f["message"] for f in r["findings"] if f["level"] == "error"]
