"""Count the project's modules, import arrows between them, and import circles.

    python scripts/import_graph.py [ROOT]

ROOT: a checkout (default: this one). Modules are the .py files of tvcore/ and
cli/ (cli is installed as `tvclean`); an arrow is an import of one of them by
another (a package's own submodules count, not the package); circles are the
strongly connected groups of more than one module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("tvcore", "cli")


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in (root / package).rglob("*.py"):
            parts = list(file.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = file
    return found


def _canonical(name: str) -> str:
    return "cli" + name[len("tvclean"):] if name.startswith("tvclean") else name


def _targets(module: str, file: Path, node: ast.AST, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [_canonical(a.name) for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".")
        if file.name != "__init__.py":
            base = base[:-1]
        base = base[:len(base) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = _canonical(node.module or "")
    subs = [f"{name}.{a.name}" for a in node.names if f"{name}.{a.name}" in known]
    return subs or [name]


def arrows(known: dict[str, Path]) -> set[tuple[str, str]]:
    found = set()
    for module, file in known.items():
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            found.update((module, t) for t in _targets(module, file, node, known)
                         if t in known and t != module)
    return found


def circles(known: dict[str, Path], edges: set[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {m: [] for m in known}
    for a, b in edges:
        graph[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in known:
        if v not in index:
            visit(v)
    return groups


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1])
    known = modules(root)
    edges = arrows(known)
    lines = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in known.values())
    found = circles(known, edges)
    print(f"{len(known)} modules, {len(edges)} import arrows, {len(found)} circles "
          f"{found if found else ''}, {lines} lines")


if __name__ == "__main__":
    main(sys.argv[1:])
