"""The package's shape, measured (issue 23): the imports of kdbench's own modules made
inside functions, the import cycles between kdbench's modules (counting those imports
too), and the functions longer than a screen. ``tests/test_architecture.py`` holds the
limits; docs/architecture.md explains the layers.

    python scripts/code_shape.py [REPO]      # prints the three lists and the numbers
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set, Tuple

MAX_FUNCTION_LINES = 80


def modules(root: Path) -> Dict[str, Path]:
    """kdbench's module names -> files (a package is its __init__.py)."""
    out = {}
    for f in sorted((root / "kdbench").rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _targets(name: str, node, is_pkg: bool, mods) -> List[str]:
    """The kdbench modules an import statement of module ``name`` imports."""
    if isinstance(node, ast.ImportFrom):
        base = name.split(".") if is_pkg else name.split(".")[:-1]
        prefix = ".".join(base[:len(base) - node.level + 1]) if node.level else ""
        target = ".".join(p for p in (prefix, node.module or "") if p)
        found = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
    else:
        found = [a.name for a in node.names]
    out = []
    for t in found:
        while t not in mods and "." in t:
            t = t.rsplit(".", 1)[0]
        if t in mods:
            out.append(t)
    return out


def _in_function(node, parents) -> bool:
    p = parents.get(node)
    while p is not None:
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
        p = parents.get(p)
    return False


def scan(root: Path) -> Tuple[Dict[str, Set[str]], List[Tuple[str, int, str]], List[Tuple[int, str, str]]]:
    """(import graph, function-level imports [(module, line, target)], long functions
    [(lines, module, function)])."""
    mods = modules(root)
    graph, inner, long = defaultdict(set), [], []
    for name, f in mods.items():
        tree = ast.parse(f.read_text())
        parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long.append((size, name, node.name))
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _targets(name, node, f.name == "__init__.py", mods)
                graph[name].update(targets)
                if targets and _in_function(node, parents):
                    inner.append((name, node.lineno, targets[0]))
    return graph, inner, sorted(long, reverse=True)


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv=None) -> int:
    root = Path((argv or sys.argv[1:] or ["."])[0]).resolve()
    graph, inner, long = scan(root)
    print(f"function-level imports of kdbench modules: {len(inner)}")
    for name, line, target in inner:
        print(f"  {name}:{line} -> {target}")
    found = cycles(graph)
    print(f"import cycles: {len(found)}")
    for comp in found:
        print("  " + " <-> ".join(comp))
    print(f"functions longer than {MAX_FUNCTION_LINES} lines: {len(long)}")
    for size, name, fn in long:
        print(f"  {name}.{fn}: {size} lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
