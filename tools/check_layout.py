"""The house rules that code review keeps forgetting, checked from the source alone (no import):

* no import cycle between toxrt's modules, counting imports inside functions too;
* no private (underscore) name imported from another module, in toxrt/, tools/ or tests/;
* every module of toxrt is described in docs/architecture.md, and every module it names exists.

    .venv/bin/python tools/check_layout.py      # prints what it finds; exit status 1 when anything
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "toxrt"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (packages by their ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) of every import statement in the file."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [alias.name for alias in node.names], node.lineno))
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from package import module`` counts as the module)."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for module, names, _ in _imports(path, name):
            targets = [module] + [f"{module}.{n}" for n in names]
            graph[name].update(t for t in targets if t in known and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports() -> list[str]:
    """``file:line: module._name`` for every private name of a toxrt module used in another file:
    imported (``from toxrt.x import _y``) or reached through the module (``x._y``)."""
    known = modules()
    files = list(PACKAGE.rglob("*.py")) + list((ROOT / "tools").glob("*.py")) + list((ROOT / "tests").glob("*.py"))
    found = []
    for path in sorted(files):
        rel = path.relative_to(ROOT)
        name = ".".join(rel.with_suffix("").parts)
        aliases: dict[str, str] = {}  # local name -> toxrt module
        for module, names, line in _imports(path, name):
            if module != "toxrt" and not module.startswith("toxrt."):
                continue
            for imported in names:
                if f"{module}.{imported}" in known:
                    aliases[imported] = f"{module}.{imported}"
                elif _private(imported):
                    found.append(f"{rel}:{line}: {module}.{imported}")
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.alias) and node.asname and node.name in aliases:
                aliases[node.asname] = aliases[node.name]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _private(node.attr)):
                found.append(f"{rel}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    return found


def undocumented() -> tuple[list[str], list[str]]:
    """(modules the architecture document does not name, files it names that do not exist).

    A module is named by its path below toxrt/ in backquotes (``sources/files.py``); a package by
    its folder (``offline/``) covers its modules.
    """
    text = ARCHITECTURE.read_text()
    named = {n for n in re.findall(r"`([a-z_/]+\.py)`", text) if not n.startswith(("tools/", "tests/"))}
    folders = set(re.findall(r"`([a-z_]+)/`", text))
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    missing = sorted(f for f in files if f not in named and f.split("/")[0] not in folders
                     and not f.endswith("__init__.py") and f != "__main__.py")
    stale = sorted(f for f in named if f not in files and not (PACKAGE / f).exists())
    return missing, stale


def main() -> int:
    problems = 0
    for component in cycles(import_graph()):
        problems += 1
        print("import cycle:", " <-> ".join(component))
    for line in private_imports():
        problems += 1
        print("private name imported:", line)
    missing, stale = undocumented()
    for name in missing:
        problems += 1
        print("not in docs/architecture.md:", name)
    for name in stale:
        problems += 1
        print("docs/architecture.md names a missing module:", name)
    print(f"{len(modules())} modules checked; {problems} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
