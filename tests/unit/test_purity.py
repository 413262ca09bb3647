"""The sans-I/O core stays pure: domain/ and protocols/ import no I/O library, no clock, no
randomness, neither directly (checked on the source) nor transitively (checked by importing
each module in a fresh interpreter)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import citycard

PACKAGE_DIR = Path(citycard.__file__).resolve().parent
PURE_PACKAGES = ("domain", "protocols")

# Not one of these may be imported by a pure module's source.
FORBIDDEN_IMPORTS = frozenset(
    {
        "asyncio",
        "uvloop",
        "ray",
        "asyncpg",
        "redis",
        "prometheus_client",
        "smartcard",  # pyscard
        "socket",
        "time",  # time comes in as an argument (now_ms)
        "random",  # randomness comes in as an argument
    }
)
# Not one of these may be loaded, even indirectly, by importing a pure module.
FORBIDDEN_LOADED = (
    "asyncio",
    "ray",
    "asyncpg",
    "redis",
    "uvloop",
    "prometheus_client",
    "smartcard",
)


def _pure_files() -> list[Path]:
    return sorted(p for pkg in PURE_PACKAGES for p in (PACKAGE_DIR / pkg).rglob("*.py"))


def _module_name(path: Path, root: Path = PACKAGE_DIR.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _absolute(module: str | None, level: int, path: Path, root: Path = PACKAGE_DIR.parent) -> str:
    """The absolute name an ImportFrom refers to (relative imports resolved)."""
    if level == 0:
        return module or ""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imported_modules(path: Path, source: str | None = None,
                      root: Path = PACKAGE_DIR.parent) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in the file, at any depth, including
    ``__import__("x")`` and ``importlib.import_module("x")`` with a literal name."""
    if source is None:
        source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _absolute(node.module, node.level, path, root)))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


PURE_FILES = _pure_files()
PURE_MODULES = sorted({_module_name(p) for p in PURE_FILES})


def test_the_walk_finds_the_pure_modules() -> None:
    assert "citycard.domain.ledger" in PURE_MODULES
    assert "citycard.domain.money" in PURE_MODULES
    assert "citycard.protocols.frames" in PURE_MODULES
    assert all(m.startswith(("citycard.domain", "citycard.protocols")) for m in PURE_MODULES)


def test_the_checker_sees_every_form_of_import() -> None:
    source = (
        "import os, time\n"
        "import asyncio.events as ev\n"
        "from random import randint\n"
        "from . import money\n"
        "from ..errors import CityCardError\n"
        "def f():\n"
        "    import socket\n"
        "    return __import__('ray')\n"
    )
    # as if the source were citycard/domain/sample.py
    found = _imported_modules(PACKAGE_DIR / "domain" / "sample.py", source)
    assert [name for _, name in found] == [
        "os",
        "time",
        "asyncio.events",
        "random",
        "citycard.domain",
        "citycard.errors",
        "socket",
        "ray",
    ]


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_pure_module_imports_nothing_forbidden(path: Path) -> None:
    bad = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: imports {name}"
        for line, name in _imported_modules(path)
        if name.split(".")[0] in FORBIDDEN_IMPORTS
    ]
    assert bad == []


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(PACKAGE_DIR)))
def test_pure_module_imports_only_pure_citycard_modules(path: Path) -> None:
    allowed = ("citycard.domain", "citycard.protocols", "citycard.errors")
    bad = [
        f"{path.relative_to(PACKAGE_DIR.parent)}:{line}: imports {name}"
        for line, name in _imported_modules(path)
        if name.split(".")[0] == "citycard" and not name.startswith(allowed)
    ]
    assert bad == []


_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
forbidden = sys.argv[2].split(",")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
"""


@pytest.mark.parametrize("module", PURE_MODULES)
def test_importing_pure_module_loads_no_io_library(module: str) -> None:
    # a fresh interpreter, so that modules other tests imported do not count
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, module, ",".join(FORBIDDEN_LOADED)],
        capture_output=True,
        text=True,
        cwd=PACKAGE_DIR.parent,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [], f"importing {module} loads {proc.stdout.strip()}"


# -- the layer rules (docs/architecture.md) -----------------------------------------------
REPO = PACKAGE_DIR.parent
# (files, a package they must not import, why)
LAYER_RULES = (
    ("citycard/gateway", "citycard.persistence",
     "the gateway gets what it needs from Postgres or Redis as callables from cli/runtime.py"),
    ("tests/sim", "citycard.persistence",
     "the simulation runs the product's pure pieces and seams, never its Postgres code"),
    ("citycard/domain", "citycard.persistence", "the domain is pure"),
    ("citycard/protocols", "citycard.persistence", "the protocols are pure"),
)


def _layer_violations(root: Path, folder: str, banned: str) -> list[str]:
    bad = []
    for path in sorted((root / folder).rglob("*.py")):
        for line, name in _imported_modules(path, root=root):
            if name == banned or name.startswith(banned + "."):
                bad.append(f"{path.relative_to(root)}:{line}: imports {name}")
    return bad


@pytest.mark.parametrize(("folder", "banned", "why"), LAYER_RULES, ids=[r[0] for r in LAYER_RULES])
def test_layer_rule(folder: str, banned: str, why: str) -> None:
    assert _layer_violations(REPO, folder, banned) == [], why


def test_the_layer_rule_catches_a_gateway_importing_persistence(tmp_path: Path) -> None:
    gateway = tmp_path / "citycard" / "gateway"
    gateway.mkdir(parents=True)
    (gateway / "server.py").write_text("from ..persistence.hotlist import Delta\nimport citycard.persistence.db\n")
    sim = tmp_path / "tests" / "sim"
    sim.mkdir(parents=True)
    (sim / "store.py").write_text("from citycard.persistence.recovery import Rebuild\n")
    assert len(_layer_violations(tmp_path, "citycard/gateway", "citycard.persistence")) == 2
    assert len(_layer_violations(tmp_path, "tests/sim", "citycard.persistence")) == 1
