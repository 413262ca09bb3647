"""Reads a fare table file into the pure, versioned FareTables."""

import re
import tomllib
from pathlib import Path

from ..domain.tables import FareTableError, FareTables, parse_tables
from ..errors import ConfigError


def load_fare_tables(path: Path) -> FareTables:
    """Parse and validate; a bad table raises ConfigError naming the file, key and line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"fare table not found: {path}") from None
    return fare_tables_from_text(text, str(path))


def fare_tables_from_text(text: str, where: str) -> FareTables:
    """The same from a table's text (a validator gets it from the gateway); ``where`` names it
    in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    try:
        return parse_tables(raw)
    except FareTableError as exc:
        line = _line_of(text, exc.path)
        raise ConfigError(f"{where}:{line}: {exc}" if line else f"{where}: {exc}") from None


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r'^\s*("[^"]*"|[A-Za-z0-9_-]+)\s*=')


def _line_of(text: str, key_path: str) -> int:
    """The line of ``key_path`` (e.g. ``versions[1].parks.2.ticket_fen``) in a table file, found
    by following its table headers; the nearest enclosing line when the key itself is absent."""
    target = _parts(key_path)
    if not target:
        return 0
    header: list[str] = []
    arrays: dict[str, int] = {}
    best, best_len = 0, 0
    for number, line in enumerate(text.splitlines(), 1):
        m = _HEADER.match(line)
        if m:
            name = ".".join(p.strip().strip('"') for p in m.group(2).split("."))
            if m.group(1) == "[[":  # an array of tables: count its members
                arrays[name] = arrays.get(name, -1) + 1
                for deeper in [k for k in arrays if k.startswith(name + ".")]:
                    del arrays[deeper]
            header = _resolve(name, arrays)
            full = header
        else:
            k = _KEY.match(line)
            if not k:
                continue
            full = header + [k.group(1).strip('"')]
        n = _common(full, target)
        if n == len(full) and n > best_len:  # this line encloses (or is) the target
            best, best_len = number, n
    return best


def _resolve(name: str, arrays: dict[str, int]) -> list[str]:
    """versions.concessions -> ["versions[0]", "concessions[2]"] given the array counters."""
    out: list[str] = []
    prefix = ""
    for part in name.split("."):
        prefix = f"{prefix}.{part}" if prefix else part
        out.append(f"{part}[{arrays[prefix]}]" if prefix in arrays else part)
    return out


def _parts(key_path: str) -> list[str]:
    return [p for p in re.split(r"\.(?![^\[]*\])", key_path) if p]


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def shipped_tables(name: str = "hangzhou") -> FareTables:
    """A fare table shipped in citycard/config/fares/ (the default city's is ``hangzhou``)."""
    return load_fare_tables(Path(__file__).parent / "fares" / f"{name}.toml")
