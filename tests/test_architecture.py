"""The package's shape (issue 23; docs/architecture.md): layers that only import
downwards, no import cycle (imports inside functions count), few function-level
imports of kdbench's own modules (each with a comment saying why), and no function
longer than a screen. Measured by scripts/code_shape.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("code_shape", ROOT / "scripts" / "code_shape.py")
shape = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shape)

#: the layers, lowest first: a module may import its own layer and those below it
LAYERS = [
    ("leaf", ["kdbench.errors", "kdbench.registry", "kdbench.io", "kdbench.optim", "kdbench.integrity",
              "kdbench.config", "kdbench.functional"]),
    ("models and data", ["kdbench.models", "kdbench.data", "kdbench.tracking"]),
    ("methods", ["kdbench.methods"]),
    ("training and evaluation", ["kdbench.hparams", "kdbench.engine", "kdbench.evaluation", "kdbench.explain"]),
    ("protocols and the board", ["kdbench.tuning", "kdbench.teachers", "kdbench.board", "kdbench.plots"]),
    ("profile checks", ["kdbench.profile"]),
    ("commands", ["kdbench.commands"]),
    ("command line", ["kdbench.cli", "kdbench.__main__"]),
]
MAX_FUNCTION_LEVEL_IMPORTS = 25


def layer_of(module: str) -> int:
    for level, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return level
    if module == "kdbench":
        return 0
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it (docs/architecture.md)")


@pytest.fixture(scope="module")
def scanned():
    return shape.scan(ROOT)


def test_every_import_goes_down_the_layers(scanned):
    graph, _, _ = scanned
    upward = [f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})"
              for src, targets in sorted(graph.items()) for dst in sorted(targets)
              if layer_of(dst) > layer_of(src)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle(scanned):
    graph, _, _ = scanned
    assert shape.cycles(graph) == []


def test_function_level_imports_are_few_and_explained(scanned):
    _, inner, _ = scanned
    assert len(inner) <= MAX_FUNCTION_LEVEL_IMPORTS, inner
    unexplained = []
    for module, line, target in inner:
        path = shape.modules(ROOT)[module]
        lines = path.read_text().split("\n")
        above = lines[line - 2].strip() if line >= 2 else ""
        if "#" not in lines[line - 1] and not above.startswith("#"):
            unexplained.append(f"{module}:{line} -> {target}")
    assert not unexplained, "a function-level import needs a comment saying why:\n" + "\n".join(unexplained)


def test_no_function_longer_than_a_screen(scanned):
    _, _, long = scanned
    assert long == [], long


def test_the_checks_can_fail(tmp_path):
    """The scanner finds a cycle, a function-level import and a long function."""
    pkg = tmp_path / "kdbench"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from kdbench import b\n")
    (pkg / "b.py").write_text("def f():\n    from kdbench import a\n" + "    x = 1\n" * 85)
    graph, inner, long = shape.scan(tmp_path)
    assert shape.cycles(graph) == [["kdbench.a", "kdbench.b"]]
    assert inner == [("kdbench.b", 2, "kdbench.a")]
    assert long == [(87, "kdbench.b", "f")]
