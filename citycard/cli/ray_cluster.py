"""Joining a Ray cluster (``ray.address``) with Ray's token auth, and spreading the shards over
its nodes (docs/deploy.md).

Ray >= 2.52 turns token auth on for a cluster whose ``ray start`` found a token (RAY_AUTH_TOKEN,
RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), but a client given an explicit address sends none
unless RAY_AUTH_MODE=token is set: the GCS then answers InvalidAuthToken for 20 s and ray.init
raises a bare ConnectionError. Here the settings become Ray's environment before ray.init, and
each failure is one line naming the setting (ConfigError)."""

import os
import socket
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config.settings import Ray as RaySettings
from ..errors import ConfigError

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
PROBE_TIMEOUT_S = 3.0
# A placed actor must ask for some CPU: Ray ignores node affinity for num_cpus=0 (ray#25360).
PLACED_CPUS = 0.001
_ADDRESS = "ray.address (RAY_ADDRESS)"
_TOKEN_SETTINGS = ("ray.auth_token (CITYCARD_RAY__AUTH_TOKEN or RAY_AUTH_TOKEN) or ray.auth_token_file"
                   " (CITYCARD_RAY__AUTH_TOKEN_FILE)")


def auth_env(ray_s: RaySettings, env: Mapping[str, str], home: Path) -> dict[str, str]:
    """The variables Ray's client needs for the settings' token auth (none for "auto" with no
    token anywhere). Pure: the environment and the home directory come in."""
    out: dict[str, str] = {}
    if ray_s.auth_token:
        out[TOKEN_ENV] = ray_s.auth_token.strip()
    elif ray_s.auth_token_file:
        path = Path(ray_s.auth_token_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"ray.auth_token_file {path} is not a file: copy the cluster's token there"
                              " (the head node's ~/.ray/auth_token, or `ray get-auth-token`)")
        out[TOKEN_PATH_ENV] = str(path)
    known = bool(out) or bool(env.get(TOKEN_ENV)) or bool(env.get(TOKEN_PATH_ENV)) \
        or (home / ".ray" / "auth_token").is_file()
    if ray_s.auth_mode == "disabled":
        out[MODE_ENV] = "disabled"
    elif ray_s.auth_mode == "token" or (known and MODE_ENV not in env):
        if not known:
            raise ConfigError(f"ray.auth_mode is token but no token is set: set {_TOKEN_SETTINGS}")
        out[MODE_ENV] = "token"
    return out


def probe_address(address: str) -> tuple[str, int] | None:
    """The (host, port) a cluster address names; None for "auto" (Ray looks on this machine)."""
    if address == "auto":
        return None
    target = urlsplit(address if "://" in address else f"//{address}")
    try:
        port = target.port
    except ValueError:
        port = None
    if not target.hostname or port is None:
        raise ConfigError(f"{_ADDRESS} must be host:port (the head's GCS port, 6379 by default)"
                          f" or ray://host:port, got {address!r}")
    return target.hostname, port


def check_reachable(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    where = probe_address(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=timeout_s):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"no Ray cluster answers at {_ADDRESS} {address}: {why}; start its head with"
                          " `ray start --head` or set the head's address") from None


def check_cluster(ray_s: RaySettings) -> None:
    """What can be checked before anything starts: the token settings, and that the address answers."""
    auth_env(ray_s, os.environ, Path.home())
    check_reachable(ray_s.address)


def connect_cluster(ray_s: RaySettings, init_kwargs: dict[str, Any],
                    environ: MutableMapping[str, str] | None = None) -> None:
    """ray.init against ``ray_s.address``; a missing cluster or a refused token is one line."""
    import ray

    environ = os.environ if environ is None else environ
    extra = auth_env(ray_s, environ, Path.home())
    check_reachable(ray_s.address)
    # In os.environ, not only for ray.init: Ray's client reads the token from there for this
    # process's later GCS calls too. Children inherit it; on a cluster none is started but Ray's.
    environ.update(extra)
    if extra:
        _reload_ray_config()
    try:
        ray.init(address=ray_s.address, **init_kwargs)
    except ray.exceptions.AuthenticationError:
        raise ConfigError(f"the Ray cluster at {ray_s.address} wants a token and none was found: set"
                          f" {_TOKEN_SETTINGS}") from None
    except ConnectionError:
        mode = environ.get(MODE_ENV, "unset")
        # Ray says only ConnectionError: a refused token and a GCS port that stopped answering look alike
        raise ConfigError(f"the Ray cluster at {_ADDRESS} {ray_s.address} refused this client or is unreachable"
                          f" (RAY_AUTH_MODE {mode}): check {_TOKEN_SETTINGS} (the head node's token) and that"
                          " the cluster's ports are reachable from here (docs/deploy.md)") from None


def _reload_ray_config() -> None:
    """Ray caches its config (auth mode included) per process; re-read it from the environment,
    as Ray's own token setup does."""
    from ray._raylet import Config

    Config.initialize("")


def node_order() -> list[str]:
    """The cluster's alive nodes, the head first, then by id: shard i goes to node i mod n."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    alive.sort(key=lambda n: ("node:__internal_head__" not in n.get("Resources", {}), n["NodeID"]))
    return [n["NodeID"] for n in alive]


def placement(node_ids: list[str], index: int) -> dict[str, Any]:
    """Actor options putting shard ``index`` on node ``index mod n`` (soft: when that node is
    gone, Ray restarts it on another). One node: no options, local mode as it always was."""
    if len(node_ids) < 2:
        return {}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_ids[index % len(node_ids)], soft=True),
            "num_cpus": PLACED_CPUS}


__all__ = ["auth_env", "check_cluster", "check_reachable", "connect_cluster", "node_order", "placement", "probe_address"]
