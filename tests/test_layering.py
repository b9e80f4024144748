"""The dependency direction of docs/ARCHITECTURE.md, checked on the source: no module imports a layer above its
own, no module imports a private module or name of another package, and the module graph has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "invertible"

# activations, dense, io -> lipschitz, inverse, logdet -> nn -> distributions -> models -> training
#   -> analysis, invariance, ims -> experiments -> commands -> cli
RANK = {
    "activations": 0, "fused": 0, "checks": 0, "dense": 0, "io": 0, "norms": 0, "threads": 0,
    "data": 1,
    "lipschitz": 2, "inverse": 2, "inverse_gradient": 2, "logdet_exact": 2, "logdet": 2, "logdet_chain": 2,
    "logdet_recompute": 2,
    "nn": 3,
    "distributions": 4, "": 4,  # "" is the package itself (`import invertible`): it re-exports the core
    "models": 5,
    "training": 6,
    "analysis": 7, "invariance": 7, "ims": 7,
    "experiments": 8,
    "commands": 9,
    "cli": 10,
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, imported name or None)`` for every ``invertible`` import, at any depth of the file (except
    under ``if TYPE_CHECKING:``, which never runs)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for b in node.body for n in ast.walk(b)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "invertible"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "invertible":
            found += [(node.module, a.name) for a in node.names]
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _target(module: str, name: str | None) -> str:
    """The module an import resolves to (``from invertible.nn import residual`` is the module nn.residual)."""
    if name is not None and f"{module}.{name}" in MODULES:
        return f"{module}.{name}"
    return module


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_dependency_direction(module):
    own = _package(module)
    assert own in RANK, f"{module}: package {own!r} has no place in the layer order; add it to RANK and ARCHITECTURE"
    for imported, name in _imports(MODULES[module]):
        target = _target(imported, name)
        pkg = _package(target)
        assert pkg in RANK, f"{module} imports {target}, which has no layer"
        if module == "invertible" or pkg == own:
            continue
        assert RANK[pkg] <= RANK[own], f"{module} (layer {own}) imports {target} (layer {pkg}, above it)"
        private_module = any(part.startswith("_") for part in target.split(".")[2:])
        private_name = name is not None and name.startswith("_") and target == imported
        assert not private_module and not private_name, f"{module} imports private {target}:{name}"


def test_no_import_cycles_between_modules():
    graph = {m: {_target(i, n) for i, n in _imports(p)} & MODULES.keys() for m, p in MODULES.items()}
    for m in graph:  # a package's __init__ re-exporting its own modules is not a cycle
        graph[m] = {t for t in graph[m] if not (t != m and m.startswith(t + ".") and t != "invertible")}
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if t == m or (t == "invertible"):
                continue
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(t):], t]))
            if t not in state:
                visit(t, [*stack, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checker_sees_a_violation(tmp_path, monkeypatch):
    """The layer test can fail: a core module that imported the training layer would be reported."""
    fake = tmp_path / "lipschitz.py"
    fake.write_text("from invertible.training.engine import Trainer\n")
    monkeypatch.setitem(MODULES, "invertible.lipschitz", fake)
    with pytest.raises(AssertionError, match="above it"):
        test_imports_follow_the_dependency_direction("invertible.lipschitz")
