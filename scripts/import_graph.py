"""The project's import graph, read from the source with `ast`: modules, arrows, circles.

    python scripts/import_graph.py [ROOT]

ROOT: a checkout (default: this one). Modules are the .py files of tvcore/ and
cli/ (installed as `tvclean`); an arrow is an import of one of them by another
(a name resolves to the nearest module it lies in; the top-level package
`tvcore` itself, imported for __version__, is left out); circles are the
strongly connected groups of more than one module. tests/test_layering.py
checks the layering with the same functions.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

TOP = "tvcore"  # the top-level package: `from .. import __version__`, not a dependency


def modules(root: Path) -> dict[str, Path]:
    """Module name -> its file, for tvcore/ and cli/ (as `tvclean`) below root."""
    found = {}
    for package, folder in (("tvcore", root / "tvcore"), ("tvclean", root / "cli")):
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(module: str, path: Path) -> set[str]:
    """Absolute names of everything the module imports (module-level or inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def project_imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `module` imports (each name resolved to the nearest module)."""
    found = set()
    for name in imports(module, path):
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module and not module.startswith(name + "."):
            found.add(name)
    return found


def graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, the top-level package left out."""
    return {m: project_imports(m, p, known) - {TOP} for m, p in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
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
    for v in edges:
        if v not in index:
            visit(v)
    return groups


def main(argv: list[str]) -> None:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1])
    known = modules(root)
    edges = graph(known)
    lines = sum(len(f.read_text(encoding="utf-8").splitlines()) for f in known.values())
    found = circles(edges)
    print(f"{len(known)} modules, {sum(map(len, edges.values()))} import arrows, "
          f"{len(found)} circles {found if found else ''}, {lines} lines")


if __name__ == "__main__":
    main(sys.argv[1:])
