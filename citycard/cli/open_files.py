"""The open-file limit: raised to the hard limit at start, and how many processes a number of
connections needs under it (a gateway or a load-lab sender holds one file per terminal)."""

import math
import resource

# files a process keeps besides its terminals: Ray's sockets and pipes, Postgres and Redis
# connections, logs (a gateway process had about 150 open with no terminal)
RESERVED_FILES = 1_000


def raise_open_files() -> int:
    """Soft limit up to the hard limit (what a process may do without privileges); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep what we have; processes_for plans with it
    return soft


def processes_for(connections: int, limit: int, reserved: int = RESERVED_FILES) -> int:
    """Processes that hold ``connections`` between them, each under ``limit`` open files."""
    per_process = max(1, limit - reserved)
    return max(1, math.ceil(connections / per_process))
