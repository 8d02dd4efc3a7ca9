"""The architecture, checked: each concern imports only the layers below it (see docs/conventions.md).

Imports are read from the source with `ast`, so a new upward import fails here, not in a review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "grpokit"


def grpokit_imports(path: Path) -> set[str]:
    """Every grpokit module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("grpokit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("grpokit"))
    return found


def files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).glob("*.py"))


@pytest.mark.parametrize("module", ["losses.py", "advantages.py"])
def test_the_maths_is_pure(module):
    assert grpokit_imports(PACKAGE / module) == set(), f"{module} must stay a pure function of tensors"


def test_config_depends_on_nothing_above_it():
    assert grpokit_imports(PACKAGE / "config.py") <= {"grpokit.errors"}


@pytest.mark.parametrize("path", files("parallel"), ids=lambda p: p.name)
def test_parallel_knows_no_method_and_no_trainer(path):
    outside = {m for m in grpokit_imports(path) if not m.startswith("grpokit.parallel")} - {"grpokit.errors"}
    assert outside == set(), f"{path.name} imports {outside}"


@pytest.mark.parametrize("path", files("methods"), ids=lambda p: p.name)
def test_methods_receive_the_backend_and_never_choose_one(path):
    imports = grpokit_imports(path)
    assert not {m for m in imports if m.startswith(("grpokit.parallel", "grpokit.trainer", "grpokit.collector"))}
    calls = {n.func.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name)}
    assert "world" not in calls, f"{path.name} asks for the process world itself; use backend.world"


def test_the_config_offers_exactly_the_registered_methods():
    from grpokit.config import CHOICES
    from grpokit.methods import METHODS

    assert CHOICES["train.method"] == tuple(METHODS)
