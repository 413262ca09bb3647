"""One test kit: shared test helpers live in tests/support/ and nowhere else.

Checked on the source with ``ast``: no module under tests/ imports another test module (anything
under tests/ but tests.support; conftest fixtures are injected, never imported), a suite's
folder holds only test modules, conftest.py and __init__.py, and nothing in scripts/ or
citycard/ imports from tests/.

One exception: the seeded simulation (tests/sim) is a package of its own, whose modules import
each other (never a test module); no other suite may import it.
"""

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.paths import ROOT

SUPPORT = "tests.support"
SELF_CONTAINED = ("tests.sim",)  # packages whose own non-test modules may import each other


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved; for
    ``from M import a`` both ``M`` and ``M.a`` (``a`` may be a submodule)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.append((node.lineno, node.args[0].value))  # type: ignore[attr-defined]
    return found


def _dynamic_import(node: ast.Call) -> bool:
    """``importlib.import_module("x")`` or ``__import__("x")`` with a literal name."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    return (name in ("import_module", "__import__") and bool(node.args)
            and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))


def _is_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def import_allowed(importer: str, target: str) -> bool:
    """May module ``importer`` (under tests/) import ``target``?"""
    if not _in(target, "tests"):
        return True
    if target == "tests":  # the names after it are checked on their own
        return True
    if _in(target, SUPPORT):
        return not _is_test_module(target)
    own = [p for p in SELF_CONTAINED if _in(importer, p) and _in(target, p)]
    return bool(own) and not _is_test_module(target)


def layout_violations(root: Path) -> list[str]:
    """Every import or file that breaks the rules, as ``path:line: why`` (one per import line)."""
    problems: list[str] = []
    for path in sorted((root / "tests").rglob("*.py")):
        name = module_name(path, root)
        problems += _bad_imports(path, root, lambda target, name=name: not import_allowed(name, target), "")
        problems += _misplaced(path, name, root)
    for top in ("scripts", "citycard"):
        for path in sorted((root / top).rglob("*.py")):
            problems += _bad_imports(path, root, lambda target: _in(target, "tests"), " from the tests")
    return problems


def _bad_imports(path: Path, root: Path, bad: Callable[[str], bool], why: str) -> list[str]:
    lines: dict[int, str] = {}
    for line, target in imported_names(path.read_text(), module_name(path, root), path.name == "__init__.py"):
        if bad(target):
            lines.setdefault(line, f"{path.relative_to(root)}:{line}: imports {target}{why}")
    return list(lines.values())


def _misplaced(path: Path, name: str, root: Path) -> list[str]:
    """A helper module in a suite's folder belongs in tests/support/."""
    suite_file = len(path.relative_to(root).parts) >= 3
    allowed = (_is_test_module(name) or path.name == "__init__.py" or _in(name, SUPPORT)
               or any(_in(name, p) for p in SELF_CONTAINED))
    return [] if not suite_file or allowed else [f"{path.relative_to(root)}: a helper outside tests/support"]


def test_the_repository_follows_the_layout() -> None:
    assert len(list((ROOT / "tests").rglob("test_*.py"))) >= 40  # the scan sees the real tree
    assert layout_violations(ROOT) == []


@pytest.mark.parametrize(("importer", "source"), [
    ("tests.e2e.test_a", "from tests.e2e.test_cli import _env"),
    ("tests.e2e.test_a", "from tests.robustness import now_ms"),
    ("tests.chaos.test_chaos", "from tests.chaos.load import ChaosLoad"),
    ("tests.e2e.test_a", "from tests.conftest import ROOT"),
    ("tests.integration.test_a", "from ..conftest import ServiceUrls"),
    ("tests.e2e.test_a", "import tests.e2e.helpers"),
    ("tests.e2e.test_a", "from tests import e2e"),
    ("tests.support.city", "from tests.e2e.test_cli import _env"),
    ("tests.unit.test_a", "import importlib\nimportlib.import_module('tests.unit.test_b')"),
    ("tests.unit.test_a", "from tests.sim.sim import simulate"),
    ("tests.sim.run", "from .test_sim import SEEDS"),
])
def test_the_rule_refuses(importer: str, source: str) -> None:
    found = imported_names(source, importer, False)
    assert not all(import_allowed(importer, target) for _, target in found), found


@pytest.mark.parametrize(("importer", "source"), [
    ("tests.e2e.test_a", "from tests.support.city import City, running_city"),
    ("tests.e2e.test_a", "from tests import support"),
    ("tests.support.live", "from tests.support.terminal import RawConn"),
    ("tests.sim.test_sim", "from .sim import simulate"),
    ("tests.sim.sim", "from .world import World"),
    ("tests.e2e.test_a", "from citycard.loadtest.client import TerminalClient"),
])
def test_the_rule_allows(importer: str, source: str) -> None:
    found = imported_names(source, importer, False)
    assert all(import_allowed(importer, target) for _, target in found), found


def test_scripts_and_the_product_importing_tests_are_found(tmp_path: Path) -> None:
    for top, source in (("scripts", "def f():\n    from tests.unit.test_x import Fake\n"),
                        ("citycard", "import tests.support.city\n")):
        (tmp_path / top).mkdir()
        (tmp_path / top / "m.py").write_text(source)
    (tmp_path / "tests" / "e2e").mkdir(parents=True)
    (tmp_path / "tests" / "e2e" / "helpers.py").write_text("")
    assert layout_violations(tmp_path) == [
        "tests/e2e/helpers.py: a helper outside tests/support",
        "scripts/m.py:2: imports tests.unit.test_x from the tests",
        "citycard/m.py:1: imports tests.support.city from the tests",
    ]
