"""What ``citycard up`` (and the load lab's own platform) checks before it starts anything: the fare table parses and its ports
are free. Each failure is one line naming the setting to change (ConfigError), not the actors'
or the event loop's tracebacks that the same mistake gives once services are starting."""

import errno
import socket

from ..config.fare_table import load_fare_tables
from ..config.settings import Settings
from ..errors import ConfigError


def check_port(what: str, host: str, port: int, key: str) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
            sock.bind((host, port))
    except OSError as exc:
        why = "in use (another citycard up, or another program?)" if exc.errno == errno.EADDRINUSE \
            else f"not usable ({exc.strerror})"
        env = "CITYCARD_" + key.upper().replace(".", "__")
        raise ConfigError(f"{what} address {host}:{port} is {why}: set {key} ({env}) to a free port") from None


def check_up(settings: Settings) -> None:
    load_fare_tables(settings.fare_table_path())  # a bad table: the same line `fares check` prints
    s = settings
    for what, host, port, key in (("gateway", s.gateway.host, s.gateway.port, "gateway.port"),
                                  ("metrics", s.metrics.host, s.metrics.port, "metrics.port"),
                                  ("card-services API", s.api.host, s.api.port, "api.port")):
        if port:  # 0: an ephemeral gateway port, or metrics / API off
            check_port(what, host, port, key)


def address_in_use(exc: BaseException) -> bool:
    """A bind that lost the race between the check and the start."""
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


__all__ = ["address_in_use", "check_port", "check_up"]
