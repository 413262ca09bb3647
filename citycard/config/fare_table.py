"""Reads a fare table file for the pure FareTable."""

import tomllib
from pathlib import Path

from ..domain.fares import FareTable
from ..errors import ConfigError


def load_fare_table(path: Path) -> FareTable:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"city.fare_table: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"city.fare_table: {path}: {exc}") from None
    try:
        return FareTable.from_dict(raw)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"city.fare_table: {path}: {exc}") from None
