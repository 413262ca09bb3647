"""Starting the region's link inside a platform (cli/runtime.py): the issuer's LinkServer and
the acquirer's RemoteDesk, hooked into the gateway's router. Only when settings have a
``[region]`` section; without one nothing here runs."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..config.issuers import registry_from_dict
from ..config.settings import Region
from ..domain.cards import Category
from ..domain.money import percent_of_fen
from ..domain.rules import home_ride_fare
from ..domain.taps import Tap, TapKind
from ..errors import ConfigError
from .desk import LinkMetrics, RemoteDesk
from .house_poll import HousePoller, PollMetrics
from .server import LinkServer, router_decide

_RIDES = frozenset((int(TapKind.BUS), int(TapKind.WATER_BUS)))


def load_link_key(path: str) -> Ed25519PrivateKey:
    """The city's Ed25519 link key: a file of 64 hex digits (the 32-byte seed)."""
    try:
        seed = bytes.fromhex(Path(path).expanduser().read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"region.link_key_path: cannot read a hex key from {path}: {exc}") from None
    if len(seed) != 32:
        raise ConfigError(f"region.link_key_path: {path} must hold 32 bytes (64 hex digits), got {len(seed)}")
    return Ed25519PrivateKey.from_private_bytes(seed)


def fare_pricer(fares: Any) -> Callable[[Tap, int], int]:
    """The acquirer prices a visitor's ride by its own table: the adult card fare of the route,
    at its table's rate for the issuer (interop.issuers); other taps carry their amount."""

    def price(tap: Tap, issuer_prefix: int) -> int:
        if tap.kind in _RIDES and tap.route > 0:
            ver = fares.at(tap.time_ms)
            if ver is not None:
                fare = home_ride_fare(ver, tap.kind, tap.route, int(Category.ADULT), False)
                if fare >= 0:
                    rule = ver.issuers.get(issuer_prefix)
                    return percent_of_fen(fare, rule.percent if rule is not None else 100)
        return tap.amount_fen

    return price


@dataclass
class RegionLink:
    server: LinkServer
    desk: RemoteDesk
    poller: HousePoller | None = None  # when region.house_url is set

    async def stop(self) -> None:
        if self.poller is not None:
            await self.poller.stop()
        await self.desk.stop()
        await self.server.stop()


async def start_region(region: Region, pool: Any, router: Any, metrics_registry: Any, fares: Any,
                       hotlisted: Callable[[int], bool], *, link_port: int | None = None) -> RegionLink:
    registry = registry_from_dict({"own": region.own, "issuers": region.issuers})
    key = load_link_key(region.link_key_path)
    if key.public_key().public_bytes_raw() != registry.own.link_public_key:
        raise ConfigError(f"region.link_key_path: the key is not {region.own}'s registered link key")
    server = LinkServer(registry, key, pool, router_decide(router), host=region.link_host,
                        port=region.link_port if link_port is None else link_port, heartbeat_ms=region.heartbeat_ms)
    desk = RemoteDesk(registry, key, pool, LinkMetrics(metrics_registry), price=fare_pricer(fares),
                      hotlisted=hotlisted, tap_timeout_ms=region.tap_timeout_ms,
                      connect_timeout_ms=region.connect_timeout_ms, max_inflight=region.max_inflight_taps,
                      standin_window_ms=region.standin_window_ms, backoff_min_ms=region.backoff_min_ms,
                      backoff_max_ms=region.backoff_max_ms)
    await server.start()
    try:
        await desk.start()
    except BaseException:
        await server.stop()
        raise
    router.remote = desk
    poller = None
    if region.house_url:
        poller = HousePoller(region.house_url, region.house_poll_ms, region.house_timeout_ms, desk.set_suspended,
                             PollMetrics(metrics_registry))
        await poller.poll_once()  # the house's suspensions before the first visitor's tap, if it answers
        poller.start()
    return RegionLink(server, desk, poller)


__all__ = ["RegionLink", "fare_pricer", "load_link_key", "start_region"]
