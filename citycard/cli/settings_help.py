"""The settings list that ``citycard up --help`` prints: every key of the shipped defaults,
its default and the environment variable that overrides it, read from default.toml itself so
the help can never drift from what the platform reads."""

import tomllib
from typing import Any

from ..config.settings import _NAMED_ENV, DEFAULT_TOML

_NAMED = {where: name for name, where in _NAMED_ENV.items()}


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if value else "''"
    if isinstance(value, list):
        return f"[{len(value)} entries]" if value else "[]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def settings_epilog() -> str:
    with DEFAULT_TOML.open("rb") as f:
        raw = tomllib.load(f)
    lines = ["settings (default; environment variable). Override them in a TOML file (--config or",
             "CITYCARD_CONFIG) or by environment; citycard/config/default.toml says what each is for:"]
    for section, keys in raw.items():
        if not isinstance(keys, dict):
            continue
        for key, value in keys.items():
            if isinstance(value, dict):
                continue  # nested tables (fare rules) are files of their own, not settings
            env = _NAMED.get((section, key), f"CITYCARD_{section.upper()}__{key.upper()}")
            lines.append(f"  {section}.{key} = {_shown(value)}  ({env})")
    return "\n".join(lines)


__all__ = ["settings_epilog"]
