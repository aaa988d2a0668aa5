"""Which runs are seeds of one label: label keys from the saved configs, grouping, baselines.

Label keys: the config keys whose value varies across runs, except the seed, group keys,
path-like keys, values naming the run's own directory and ``X.init_args.*`` keys fixed by
``X.class_path``. Runs with the same label (and group) are the seeds of that label.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from adamrot.runs import canon
from adamrot.sweep import short_key, short_keys, value_label

from .events import ReportError, RunData

SEED_KEY = "seed_everything"
RUN_KEY = "run"          # the label key of runs without config.yaml (their directory name)
PATHLIKE_LAST = {
    "default_root_dir", "save_dir", "dirpath", "ckpt_path", "log_dir", "logdir",
    "root_dir", "config", "filename", "output_dir", "out_dir",
}
ABSENT = "\0absent"


def ordered_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    seen = set()
    for c in configs:
        for k in c:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    return keys


def mapping_keys(keys: Sequence[str]) -> list[str]:
    """The dotted prefixes of flattened keys that are not keys themselves: keys whose value is a
    mapping (``rotation.only`` of ``rotation.only.value``), in first-seen order."""
    leaves = set(keys)
    return list(dict.fromkeys(k[:i] for k in keys for i, ch in enumerate(k)
                              if ch == "." and k[:i] not in leaves))


def config_value(config: dict[str, Any], key: str) -> Any:
    """The value of ``key`` in a flattened config. A key whose value is a non-empty mapping was
    flattened into ``key.sub`` leaves (``rotation.only: {value: layerwise}``): the mapping is
    rebuilt from them, so that it labels the run. ``ABSENT`` when neither is there."""
    if key in config:
        return config[key]
    pre = key + "."
    sub = {k[len(pre):]: v for k, v in config.items() if k.startswith(pre)}
    if not sub:
        return ABSENT
    out: dict[str, Any] = {}
    for k, v in sub.items():
        *path, leaf = k.split(".")
        d = out
        for part in path:
            d = d.setdefault(part, {})
        d[leaf] = v
    return out


def with_configs(runs: Sequence[RunData]) -> list[RunData]:
    """The runs to label. Runs without ``config.yaml`` are left out with a warning when some
    run has one; when none has, every run is labelled by its directory name."""
    have = [r for r in runs if r.has_config]
    if have:
        for r in runs:
            if not r.has_config:
                warnings.warn(f"{r.path or r.name}: no config.yaml; left out of the report "
                              f"(its settings are unknown)")
        return have
    warnings.warn("no run has a config.yaml; runs are labelled by directory name")
    for r in runs:
        r.config = {RUN_KEY: r.name}
    return list(runs)


def auto_label_keys(runs: Sequence[RunData], exclude: Iterable[str] = ()) -> list[str]:
    """Config keys that vary across runs (see the module docstring for exclusions)."""
    exclude = set(exclude) | {SEED_KEY}
    configs = [r.config for r in runs]
    keys = ordered_keys(configs)
    names = [os.path.basename(os.path.normpath(r.path or r.name)) or r.name for r in runs]

    def names_run(n: str, v: Any) -> bool:  # value is/contains this run's dir name
        return isinstance(v, str) and bool(n) and (
            v == n or v.endswith("/" + n) or f"/{n}/" in v)

    out = []
    for k in keys:
        if k in exclude or k.split(".")[-1] in PATHLIKE_LAST:
            continue
        vals = [c.get(k, ABSENT) for c in configs]
        if len({canon(v) for v in vals}) <= 1:
            continue
        if k != RUN_KEY and all(names_run(n, v) for n, v in zip(names, vals)):
            continue  # e.g. logger name / version set to the run name
        if ".init_args." in k:
            cp = k[: k.rindex(".init_args.")] + ".class_path"   # the nearest enclosing class
            if cp in keys:
                by_cls: dict[str, set[str]] = {}
                for c, v in zip(configs, vals):
                    by_cls.setdefault(canon(c.get(cp, ABSENT)), set()).add(canon(v))
                if all(len(s) == 1 for s in by_cls.values()):
                    continue
        out.append(k)
    return out


def resolve_key(key: str, all_keys: Sequence[str]) -> str:
    """Full dotted key, or a unique short name / dotted suffix of one; failing that, the same
    among the mapping-valued keys (:func:`mapping_keys`), whose values :func:`config_value`
    rebuilds."""
    key = key.strip().lstrip("-")
    if key in all_keys:
        return key
    if key == "seed":
        return SEED_KEY

    def matches(keys: Sequence[str]) -> list[str]:
        if key in keys:
            return [key]
        return [k for k in keys if short_key(k) == key] or [k for k in keys if k.endswith("." + key)]

    cands = matches(all_keys) or matches(mapping_keys(all_keys))
    if len(cands) == 1:
        return cands[0]
    if not cands:
        raise ReportError(f"unknown config key {key!r} (not in any run's config.yaml)")
    raise ReportError(f"ambiguous key {key!r}: matches {', '.join(cands)}")


def fmt_value(v: Any) -> str:
    return "n/a" if v is ABSENT or v == ABSENT else value_label(v)


def natural(v: Any) -> tuple:
    if v is None or v == ABSENT:
        return (0, 0, "")
    if isinstance(v, bool):
        return (1, int(v), "")
    if isinstance(v, (int, float)):
        return (1, float(v), "")
    return (2, 0, canon(v))


@dataclass(eq=False)
class LabelGroup:
    """The seeds of one label within one group."""

    group: str                 # "" when no group keys
    group_values: dict[str, Any]
    label: str
    values: dict[str, Any]     # label key -> value
    runs: list[RunData] = field(default_factory=list)

    @property
    def seeds(self) -> list[Any]:
        return [r.config.get(SEED_KEY) for r in self.runs]


def label_string(values: dict[str, Any], shorts: dict[str, str]) -> str:
    if not values:
        return "all"
    return ", ".join(f"{shorts[k]}={fmt_value(v)}" for k, v in values.items())


#: marks a run whose hyper-parameters changed mid-run (its label carries the change)
CHANGED = "†"


def change_note(run: RunData) -> str:
    """`` † lr 0.003→0.001 at step 4`` for a run whose hyper-parameters changed on a resume
    (``resumes.jsonl``); empty otherwise. Its label is its starting config (``config.yaml``)
    plus this note, so it is never averaged with runs that kept their settings."""
    if not run.changes:
        return ""
    parts = []
    for step, key, old, new in run.changes:
        name = key if key.startswith("data.json") else short_key(key)
        parts.append(f"{name} {fmt_value(old)}→{fmt_value(new)} at step {step}")
    return f" {CHANGED} " + "; ".join(parts)


def group_runs(runs: Sequence[RunData], label_keys: Sequence[str],
               group_keys: Sequence[str] = ()) -> list[LabelGroup]:
    """Partition runs into (group, label) cells, sorted by group then label values. A run
    whose hyper-parameters changed mid-run gets its own label (:func:`change_note`)."""
    shorts = short_keys(list(label_keys) + [k for k in group_keys if k not in label_keys])
    cells: dict[tuple[str, str], LabelGroup] = {}
    for r in runs:
        gv = {k: config_value(r.config, k) for k in group_keys}
        lv = {k: config_value(r.config, k) for k in label_keys}
        g = label_string(gv, shorts) if group_keys else ""
        lab = label_string(lv, shorts) + change_note(r)
        cell = cells.get((g, lab))
        if cell is None:
            cell = cells[(g, lab)] = LabelGroup(g, gv, lab, lv)
        cell.runs.append(r)
    return sorted(cells.values(), key=lambda c: ([natural(v) for v in c.group_values.values()],
                                                 [natural(v) for v in c.values.values()],
                                                 c.label))


def _scope_key(label_keys: Sequence[str]) -> str | None:
    for k in label_keys:
        if k.endswith("rotation.scope") or short_key(k) == "scope":
            return k
    return None


def _is_none_scope(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "identity"))


def match_label(query: str, cells: Sequence[LabelGroup], shorts: dict[str, str]) -> LabelGroup:
    """The cell meant by ``query`` among ``cells`` (one group): the full label, a ``k=v[,k=v]``
    subset that identifies one label, or the bare value(s)."""
    q = query.strip()
    norm = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    exact = [c for c in cells if c.label == q or norm(c.label) == norm(q)]
    if len(exact) == 1:
        return exact[0]
    if "=" in q:
        pairs = []
        for part in re.split(r"[,;]", q):
            if not part.strip():
                continue
            if "=" not in part:
                raise ReportError(f"--baseline {query!r}: cannot parse {part!r} as key=value")
            k, v = part.split("=", 1)
            pairs.append((k.strip(), v.strip()))
        hits = []
        for c in cells:
            ok = True
            for k, v in pairs:
                ks = [lk for lk in c.values if lk == k or shorts.get(lk) == k or lk.endswith("." + k)]
                if not ks or all(fmt_value(c.values[lk]) != v and str(c.values[lk]) != v for lk in ks):
                    ok = False
                    break
            if ok:
                hits.append(c)
    else:
        hits = [c for c in cells
                if q in ("/".join(fmt_value(v) for v in c.values.values()),
                         ",".join(fmt_value(v) for v in c.values.values()))]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ReportError(f"--baseline {query!r} is ambiguous: " + "; ".join(h.label for h in hits))
    raise ReportError(f"--baseline {query!r} matches no label; labels: "
                      + "; ".join(c.label for c in cells))


def assign_baselines(cells: Sequence[LabelGroup], label_keys: Sequence[str],
                     baseline: str | None, shorts: dict[str, str]) -> dict[int, LabelGroup | None]:
    """Map ``id(cell)`` -> its baseline cell (or None). Without ``baseline``: the label with
    scope none; several such labels: the one agreeing on every other label key."""
    out: dict[int, LabelGroup | None] = {id(c): None for c in cells}
    groups: dict[str, list[LabelGroup]] = {}
    for c in cells:
        groups.setdefault(c.group, []).append(c)
    errors = []
    for g, gcells in groups.items():
        if baseline is not None:
            try:
                b = match_label(baseline, gcells, shorts)
            except ReportError as e:
                errors.append((g, e))
                continue
            for c in gcells:
                out[id(c)] = b
            continue
        sk = _scope_key(label_keys)
        if sk is None:
            continue
        nones = [c for c in gcells if _is_none_scope(c.values.get(sk))]
        nones = [c for c in nones if CHANGED not in c.label] or nones
        if len(nones) == 1:
            for c in gcells:
                out[id(c)] = nones[0]
        elif len(nones) > 1:
            for c in gcells:
                other = {k: canon(v) for k, v in c.values.items() if k != sk}
                for b in nones:
                    if {k: canon(v) for k, v in b.values.items() if k != sk} == other:
                        out[id(c)] = b
                        break
    if baseline is not None and errors:
        if len(errors) == len(groups):
            raise errors[0][1]
        for g, e in errors:
            warnings.warn(f"group {g!r}: {e}; no slowdown there")
    return out


def metric_mode(metric: str, mode: str | None = None) -> str:
    if mode:
        if mode not in ("min", "max"):
            raise ReportError(f"--mode must be min or max, got {mode!r}")
        return mode
    return "max" if "acc" in metric.lower() else "min"
