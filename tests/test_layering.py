"""The house's one-way rule (docs/README.md), checked by parsing every import with ``ast``
(module-level and inside functions alike): ``rotations`` <- ``callbacks`` <-
``lightning_modules`` <- ``adamrot``; ``datamodules`` imports none of rotations, callbacks,
lightning_modules or adamrot; ``rotations`` imports only torch and the standard library;
and no two modules import each other in a loop."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rotations", "callbacks", "lightning_modules", "datamodules", "adamrot")
#: what each package may import from the project
ALLOWED = {
    "rotations": {"rotations"},
    "callbacks": {"rotations", "callbacks"},
    "lightning_modules": {"rotations", "callbacks", "lightning_modules"},
    "datamodules": {"datamodules"},
    "adamrot": set(PACKAGES),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports (a ``from pkg import x`` that names a submodule
    counts as importing that submodule)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.split(".")[0] in PACKAGES:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imports(n, p, known) for n, p in mods.items()}


def test_no_module_imports_against_the_layering():
    bad = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
           if b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not bad, "imports against the layering: " + "; ".join(sorted(bad))


def test_rotations_imports_only_torch_and_the_standard_library():
    stdlib = set(sys.stdlib_module_names) | {"torch", "__future__"}
    bad = []
    for name, path in _modules().items():
        if not name.startswith("rotations"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            bad += [f"{name}: {t}" for t in tops if t not in stdlib and t != "rotations"]
    assert not bad, bad


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):                            # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"
