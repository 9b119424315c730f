"""docs/adding-a-method.md, run as written.

The page's snippets are the fenced blocks after a ``<!-- docs-example: NAME -->`` marker.
This module reads them out of the markdown and runs them: the method registers, builds on
a tiny teacher/student pair, trains one step (its connector gets gradients, is in the
optimiser's parameter groups, and moves), rejects the pair the page says it rejects, and
loses its connector from the optimiser when ``extra_modules()`` is left out; the params
file's ``defaults``/``types``/``search``/``pairs`` pass kdbench's own checks; the
``pyproject.toml`` entry point finds the class through ``importlib.metadata`` as an
installed plugin would; the wiring-check snippet agrees with the method's loss.
"""
from __future__ import annotations

import re
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdbench.hparams import method_hparams
from kdbench.optim import SGD
from kdbench.errors import KDBenchError
from kdbench.methods import METHODS, get_method
from kdbench.methods.base import PairError
from kdbench.models import create_model
from kdbench.tuning import candidate_values, search_space
from tests import test_method_wiring as wiring  # its CHECKS helpers (imported, not collected here)

PAGE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
MARKED_BLOCK = re.compile(r"<!-- docs-example: (\S+) -->\s*\n```\w*\n(.*?)\n```", re.S)
#: the tiny pair (CIFAR ResNets at 16 px: last stages 64×4×4 on both sides)
TEACHER, STUDENT, SIZE, CLASSES = "resnet14", "resnet8", 16, 10


def snippets() -> dict:
    blocks = dict(MARKED_BLOCK.findall(PAGE.read_text(encoding="utf-8")))
    assert set(blocks) == {"pyproject.toml", "mine.py", "mine.yaml", "wiring_check.py"}, sorted(blocks)
    return blocks


def unregister(name: str) -> None:
    """Take a method this module registered out of the registry again (other test modules
    list every registered method). The registry has no public removal: tests only."""
    METHODS._entries.pop(name, None)


@pytest.fixture
def mine():
    """The page's method module, executed as a module of its own (not ``kdbench.*``, so
    kdbench's per-method checks do not count it); ``mine`` is unregistered afterwards."""
    assert "mine" not in METHODS, "another test left a method 'mine' registered"
    namespace = {"__name__": "docs_adding_a_method"}
    try:
        exec(compile(snippets()["mine.py"], f"{PAGE}:mine.py", "exec"), namespace)
        yield namespace
    finally:
        unregister("mine")


@pytest.fixture
def params_dir(tmp_path):
    (tmp_path / "mine.yaml").write_text(snippets()["mine.yaml"], encoding="utf-8")
    return tmp_path


def build(cls, hparams):
    torch.manual_seed(0)
    teacher, student = create_model(TEACHER, CLASSES), create_model(STUDENT, CLASSES)
    return cls(student, teacher, CLASSES, hparams, epochs=2, input_size=SIZE)


def batch(n=8):
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(n, 3, SIZE, SIZE, generator=g), "label": torch.randint(0, CLASSES, (n,), generator=g)}


def optimised(distiller) -> set:
    opt = SGD(distiller.param_groups(5e-4), lr=0.1, momentum=0.9)
    return {id(p) for g in opt.param_groups for p in g["params"]}


def test_the_example_trains_its_connector(mine, params_dir):
    assert get_method("mine") is mine["Mine"]
    hp = method_hparams("mine", TEACHER, STUDENT, params_dir=params_dir)
    assert hp == {"ce_weight": 1.0, "hint_weight": 10.0}
    d = build(get_method("mine"), hp)
    d.train()
    terms = d.loss(batch())
    assert set(terms) == {"ce", "hint"} and all(torch.isfinite(t) for t in terms.values())
    opt = SGD(d.param_groups(5e-4), lr=0.1, momentum=0.9)
    before = d.connector.weight.detach().clone()
    sum(terms.values()).backward()
    assert d.connector.weight.grad is not None and d.connector.weight.grad.abs().sum() > 0
    assert {id(p) for p in d.connector.parameters()} <= optimised(d)
    assert not {id(p) for p in d.teacher.parameters()} & optimised(d)
    opt.step()
    assert not torch.equal(d.connector.weight, before)


def test_without_extra_modules_the_connector_is_silently_left_out(mine, params_dir):
    """What the page warns of: the same method without ``extra_modules()`` trains, and its
    connector gets gradients, but the optimiser never sees it."""
    forgetful = type("Forgetful", (mine["Mine"],), {"extra_modules": lambda self: []})
    d = build(forgetful, method_hparams("mine", TEACHER, STUDENT, params_dir=params_dir))
    sum(d.loss(batch()).values()).backward()
    assert d.connector.weight.grad is not None and d.connector.weight.grad.abs().sum() > 0
    assert not {id(p) for p in d.connector.parameters()} & optimised(d)
    assert "connector.weight" in d.trainable_state()


def meta(arch):
    """The pair as validation builds it: on the ``meta`` device (shapes, no values)."""
    with torch.device("meta"):
        return create_model(arch, CLASSES)


def test_check_pair_accepts_equal_last_stages_and_rejects_the_pages_pair(mine):
    cls = get_method("mine")
    cls.check_pair(meta(TEACHER), meta(STUDENT), {})
    with pytest.raises(PairError, match=r"'mine' cannot run on pair resnet32x4->shufflenetv2: last stages are "
                                         r"\(8, 8\) and \(4, 4\).*exclude_methods"):
        cls.check_pair(meta("resnet32x4"), meta("shufflenetv2"), {})


def test_the_params_file_passes_kdbenchs_checks(mine, params_dir):
    assert method_hparams("mine", "resnet56", "resnet20", params_dir=params_dir)["hint_weight"] == 5.0
    with pytest.raises(KDBenchError, match=r"hint_weight = -1.0 is invalid"):
        method_hparams("mine", TEACHER, STUDENT, overrides={"mine": {"hint_weight": -1.0}}, params_dir=params_dir)
    space = search_space("mine", params_dir=params_dir)
    assert space == {"hint_weight": {"low": 1.0, "high": 100.0, "log": True}}
    trials = candidate_values(space, method_hparams("mine", TEACHER, STUDENT, params_dir=params_dir), 4)
    assert trials[0] == {"hint_weight": 10.0} and len({t["hint_weight"] for t in trials}) == 4
    assert all(1.0 <= t["hint_weight"] <= 100.0 for t in trials)


def test_the_entry_point_finds_the_class(tmp_path, monkeypatch):
    """The page's pyproject table, as pip would install it (a dist-info on a path entry),
    with the page's method as ``mypkg/mine.py``."""
    table = tomllib.loads(snippets()["pyproject.toml"])["project"]["entry-points"]["kdbench.methods"]
    assert table == {"mine": "mypkg.mine:Mine"}
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "mine.py").write_text(snippets()["mine.py"], encoding="utf-8")
    info = tmp_path / "mypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kdbench.methods]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "mine" not in METHODS
    try:
        (ep,) = entry_points(group="kdbench.methods", name="mine")
        cls = ep.load()
        assert cls.__name__ == "Mine" and get_method("mine") is cls  # registered on import
    finally:
        unregister("mine")
        for name in ("mypkg.mine", "mypkg"):
            sys.modules.pop(name, None)


def test_the_wiring_check_snippet_matches_the_loss(mine, params_dir):
    """The page's ``CHECKS`` entry, run with tests/test_method_wiring.py's helpers on
    distinctive weights: every term equals the method's."""
    namespace = {"checks": wiring.checks, "feats": wiring.feats, "run_loss": wiring.run_loss, "F": F}
    w = {"ce_weight": 1.3, "hint_weight": 0.7}
    try:
        exec(compile(snippets()["wiring_check.py"], f"{PAGE}:wiring_check.py", "exec"), namespace)
        d = build(get_method("mine"), w)
        d.eval()
        got, want = wiring.CHECKS["mine"](d, batch(), w)
    finally:
        wiring.CHECKS.pop("mine", None)
    assert set(got) == set(want) == {"ce", "hint"}
    for name in want:
        assert float(got[name].detach()) == pytest.approx(float(want[name].detach()), rel=1e-6), name
