"""The report's ``command`` row: the run as a shell line that runs it again, with the
``CITYCARD_*`` environment overrides in effect as ``VAR=value`` in front, the subcommand and
every option as given. A value that looks like a secret (a token, a password, a key, a URL's
password) is shown as ``<redacted>``: put your own back to re-run."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"
_SECRET_NAME = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|KEY|CREDENTIAL|AUTH)", re.IGNORECASE)
_SECRET_OPTIONS = ("--api-token", "--token", "--password", "--master-key")


def _without_url_password(value: str) -> str:
    """``postgresql://u:pw@h/db`` -> ``postgresql://u:<redacted>@h/db``; other text as it is."""
    if "://" not in value or "@" not in value:
        return value
    try:
        parts = urlsplit(value)
    except ValueError:
        return REDACTED
    if parts.password is None:
        return value
    netloc = f"{parts.username or ''}:{REDACTED}@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """The ``CITYCARD_*`` variables in effect, sorted, secrets redacted (test-only variables
    included: they change what the run talks to)."""
    out = []
    for name in sorted(environ):
        if not name.startswith("CITYCARD_"):
            continue
        value = environ[name]
        out.append((name, REDACTED if _SECRET_NAME.search(name) else _without_url_password(value)))
    return out


def redact_argv(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    secret_next = False
    for arg in argv:
        if secret_next:
            out.append(REDACTED)
            secret_next = False
        elif arg in _SECRET_OPTIONS:
            out.append(arg)
            secret_next = True
        elif arg.startswith(tuple(f"{o}=" for o in _SECRET_OPTIONS)):
            out.append(arg.split("=", 1)[0] + "=" + REDACTED)
        else:
            out.append(_without_url_password(arg))
    return out


def rerunnable(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """``argv`` is ``sys.argv``: its first item (the program) becomes ``citycard``, the rest
    (global options, the subcommand, its options) is kept as given."""
    env = [f"{name}={shlex.quote(value)}" for name, value in env_overrides(environ)]
    return " ".join([*env, "citycard", *(shlex.quote(a) for a in redact_argv(list(argv)[1:]))])


__all__ = ["REDACTED", "env_overrides", "redact_argv", "rerunnable"]
