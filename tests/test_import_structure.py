"""The import structure, read from the source with ``ast``: lit_mcmc never imports callbacks, and no modules of
lit_mcmc or callbacks import each other in a circle (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lit_mcmc", "callbacks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a.b import c`` is a.b.c when that is a module, else a.b)."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per dot after the first
                    parents = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parents + ([base] if base else []))
                for alias in node.names:
                    imported.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_lit_mcmc_never_imports_callbacks():
    graph = import_graph()
    wrong = {name: sorted(m for m in imports if m.split(".")[0] == "callbacks")
             for name, imports in graph.items() if name.split(".")[0] == "lit_mcmc"}
    assert not {k: v for k, v in wrong.items() if v}


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_checks_see_imports():
    """The graph is not empty by mistake: known arrows are there."""
    graph = import_graph()
    assert "lit_mcmc.samplers.kernels" in graph["lit_mcmc.samplers.annealed"]
    assert "lit_mcmc.data.shards" in graph["callbacks.sample_writer"]
    assert circles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
