"""The sweep keeps its experiment when the launcher changes the world size: the global batch
(nodes × devices × micro-batch × accumulation) written in the sweep file's configs is kept by
dividing ``trainer.accumulate_grad_batches`` when ``--gpus-per-node G`` / ``--nodes N`` give each
run another number of GPUs than its configs say, and refused (exit 2, naming the values) when
that does not divide. The adjustment is printed and becomes one of the run's overrides, so it is
in its command, its ``config.yaml`` and the index. See docs/CLUSTER.md."""
from __future__ import annotations

from typing import Any, Callable

import yaml

from adamrot.sweep.options import LaunchOptions
from adamrot.sweep.spec import RunSpec, SweepConfigError, SweepSpec

ACCUM = "trainer.accumulate_grad_batches"
DEVICES = "trainer.devices"
NODES = "trainer.num_nodes"


def _lookup(doc: Any, key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return False, None
        doc = doc[part]
    return True, doc


def resolved(spec: SweepSpec, run: RunSpec, key: str, default: Any,
             cache: dict | None = None) -> Any:
    """The value ``fit`` will see for a dotted ``key``: the run's override, else the last config
    file that sets it, else ``default`` (Lightning's)."""
    if key in run.overrides:
        return run.overrides[key]
    cache = {} if cache is None else cache
    value = default
    for c in spec.configs:
        if c not in cache:
            with open(c, encoding="utf-8") as f:
                cache[c] = yaml.safe_load(f) or {}
        found, v = _lookup(cache[c], key)
        if found:
            value = v
    return value


def target_world(opts: LaunchOptions) -> int | None:
    """GPUs per run the launcher gives (None: the launcher leaves the configs' devices)."""
    if opts.launcher == "slurm" and (opts.gpus_per_node or opts.nodes > 1):
        return opts.nodes * opts.tasks_per_node
    return None


def keep_global_batch(spec: SweepSpec, runs: list[RunSpec], opts: LaunchOptions,
                      say: Callable[[str], None]) -> list[RunSpec]:
    """``runs`` with ``trainer.accumulate_grad_batches`` divided so that each run's global batch
    is what its configs say on ``target_world(opts)`` GPUs; :class:`SweepConfigError` when it
    does not divide."""
    from adamrot.preflight.batch import count_devices

    world = target_world(opts)
    if world is None:
        return runs
    cache: dict = {}
    out, changes, bad = [], {}, []
    for r in runs:
        accum = resolved(spec, r, ACCUM, 1, cache)
        devices, _ = count_devices(resolved(spec, r, DEVICES, "auto", cache))
        nodes = resolved(spec, r, NODES, 1, cache) or 1
        try:
            accum, nodes = int(accum or 1), int(nodes)
        except (TypeError, ValueError):
            raise SweepConfigError(f"{ACCUM}={accum!r} / {NODES}={nodes!r} of run {r.name}: "
                                   "expected integers") from None
        written = nodes * devices
        if written == world:
            out.append(r)
            continue
        total = accum * written
        if total % world:
            bad.append(f"{r.name}: {ACCUM} {accum} x {nodes} node(s) x {devices} device(s) = "
                       f"{total} micro-batches per step is not divisible by {opts.nodes} "
                       f"node(s) x {opts.tasks_per_node} GPU(s) = {world}")
            continue
        new = total // world
        changes.setdefault((accum, written, new), []).append(r.name)
        out.append(RunSpec(name=r.name, overrides={**r.overrides, ACCUM: new}))
    if bad:
        raise SweepConfigError(
            f"--gpus-per-node/--nodes: the global batch cannot be kept ({'; '.join(bad[:3])}"
            + (f"; +{len(bad) - 3} more" if len(bad) > 3 else "")
            + f"). Choose GPUs that divide it, or write the world into the sweep's fixed "
              f"({DEVICES}, {NODES}, {ACCUM}) to run that batch as written")
    for (old, written, new), names in changes.items():
        say(f"keeping the global batch: {ACCUM} {old} -> {new} on {opts.nodes} node(s) x "
            f"{opts.tasks_per_node} GPU(s) (the configs say {written} device(s) x {old}); "
            f"{len(names)} run(s), recorded in each run's overrides and config.yaml")
    return out
